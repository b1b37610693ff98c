"""FAULTS cases 12–13 and issue 4's many hosts: runners on one PostgreSQL that lose their
connections, see the server restart, get killed, and stand in for separate machines."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from conftest import PG_URI, Env, pid_alive, wait_for

from faults.conftest import (
    Invariants,
    J,
    age_leases,
    all_events,
    end_kinds,
    job_of,
    pg_admin_url,
    postgres_only,
    start_worker,
    status_counts,
    store_of,
    wait_started,
    wait_status,
)
from flask_bgjobs import models
from flask_bgjobs.models import jobs
from flask_bgjobs.store import NOTIFY_CHANNEL

pytestmark = [pytest.mark.usefixtures("ctx"), postgres_only]


# -- helpers ---------------------------------------------------------------------------------


def _admin() -> psycopg.Connection[Any]:
    """A connection to the server's maintenance database (never the case's own)."""
    return psycopg.connect(pg_admin_url(PG_URI), autocommit=True)


def backends(database_uri: str, *, listening: bool | None = None) -> list[int]:
    """Server pids of the connections to the case's database (only LISTENers, or none)."""
    sql = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    if listening is not None:
        sql += " AND query " + ("" if listening else "NOT ") + "LIKE 'LISTEN%%'"
    with _admin() as conn:
        rows = conn.execute(sql, (sa.engine.make_url(database_uri).database,)).fetchall()
    return [int(r[0]) for r in rows]


def terminate(database_uri: str, *, listening: bool | None = None) -> int:
    """``pg_terminate_backend`` the case's connections (only LISTENers, or none); how many."""
    pids = backends(database_uri, listening=listening)
    with _admin() as conn:
        return sum(
            1 for pid in pids if conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        )


def listeners(database_uri: str) -> int:
    """How many runners hold a ``LISTEN bgjobs`` connection to the case's database."""
    return len(backends(database_uri, listening=True))


@contextmanager
def connections_refused(database_uri: str) -> Iterator[None]:
    """The case's database refuses new connections (open ones carry on) during the block."""
    name = sa.engine.make_url(database_uri).database
    with _admin() as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        yield
    finally:
        with _admin() as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def restart_unavailable() -> str | None:
    """Why this machine cannot restart the PostgreSQL server, or ``None`` if it can."""
    if os.environ.get("BGJOBS_FAULTS_NO_PG_RESTART"):
        return "BGJOBS_FAULTS_NO_PG_RESTART is set"
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root"
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_isready") is None:
        return "pg_ctlcluster/pg_isready not installed"
    host = sa.engine.make_url(PG_URI).host or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        return f"the test server ({host}) is not local"
    try:
        versions = os.listdir("/etc/postgresql")
    except OSError:
        return "no /etc/postgresql"
    if len(versions) != 1:
        return f"expected one cluster version in /etc/postgresql, found {versions}"
    return None


def restart_postgres(timeout: float = 60.0) -> float:
    """Restart the local cluster (fast mode) and wait until it accepts connections."""
    [version] = os.listdir("/etc/postgresql")
    url = sa.engine.make_url(PG_URI)
    started = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=timeout,
        capture_output=True,
    )
    ready = [
        "pg_isready",
        "-q",
        "-h",
        url.host or "127.0.0.1",
        "-p",
        str(url.port or 5432),
        "-t",
        "2",
    ]
    wait_for(
        lambda: subprocess.run(ready, check=False, timeout=10).returncode == 0,
        timeout=timeout,
        interval=0.2,
        what="PostgreSQL to accept connections again",
    )
    return time.monotonic() - started


def claim_plan(app: Any, *, seqscan: bool = True) -> str:
    """EXPLAIN of the runner's claim, exactly as `Store.claim` sends it, with the clock at now."""
    return str(store_of(app).explain_claim(limit=4, seqscan=seqscan))


def index_scans(app: Any) -> dict[str, int]:
    """``idx_scan`` of each index on the jobs table (how often the planner really used it)."""
    with store_of(app).engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes "
                "WHERE relname = 'bgjobs_jobs' ORDER BY indexrelname"
            )
        ).all()
    return {str(name): int(n) for name, n in rows}


def insert_jobs(
    app: Any,
    count: int,
    method: str,
    params: str,
    *,
    max_attempts: int,
    batch: int,
    notify: bool = True,
) -> list[int]:
    """Insert `count` pending jobs as `Store.enqueue` would, `batch` rows a time, each batch
    announced with the NOTIFY an enqueue sends (unless `notify` is false)."""
    store = store_of(app)
    store.ensure_tables()
    ids: list[int] = []
    for start in range(0, count, batch):
        now = time.time()
        row = {
            "class_name": J, "method_name": method, "params": params, "status": "pending",
            "priority": 1, "attempts": 0, "max_attempts": max_attempts, "delay": 0.0,
            "timeout": 0.0, "run_at": now, "created_at": now, "log_incomplete": False,
        }  # fmt: skip
        with store.engine.begin() as conn:
            result = conn.execute(
                jobs.insert().returning(jobs.c.id), [row] * min(batch, count - start)
            )
            ids += [int(i) for i in result.scalars()]
            if notify:
                conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, "")))
    return ids


def runner_log(instance: Path) -> str:
    """The main log of a runner whose instance folder is `instance`."""
    path = instance / "logs" / "background_jobs.log"
    return path.read_text() if path.exists() else ""


# -- case 12 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "which",
    [
        "pooled",
        "all",
    ],
)
def test_runners_reconnect_after_their_connections_are_terminated_and_stale_writes_are_refused(
    env: Env, app: Any, invariants: Invariants, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """Case 12, first half: ``pg_terminate_backend`` of the runners' pooled connections (or
    of all, LISTEN included) while one runner is paused past its lease; the other takes the
    job over; the paused one's late result is refused; both serve on, nothing is lost."""
    monkeypatch.setenv("BGJOBS_LEASE_SECONDS", "6")  # sweeps every 2 s
    gate = env.tmp / "gate"
    first = [invariants.enqueue(J, "record", ["c12"]) for _ in range(20)]
    long = invariants.enqueue(J, "wait_for_file", [str(gate), "long"], retry_attempts=2)
    workers = {name: start_worker(env, runner_id=name) for name in ("host-a", "host-b")}
    wait_started(env, "long")
    owner = str(wait_status(app, long.id, "running").runner_id)
    paused, survivor = workers[owner], workers[next(n for n in workers if n != owner)]
    wait_for(lambda: listeners(env.database_uri) == 2, what="both runners to LISTEN")

    os.kill(paused.pid, signal.SIGSTOP)
    try:
        if which == "all":
            assert terminate(env.database_uri) >= 4  # two pools, two LISTENers
        else:
            assert terminate(env.database_uri, listening=False) >= 2
        age_leases(app, owner=owner)
        wait_started(env, "long", count=2)  # the other runner reconnected and took it over
        gate.touch()
        done = wait_status(app, long.id, "succeeded")
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    wait_for(
        lambda: "Job result discarded" in env.main_log.read_text(),
        what=f"{owner} to try, and fail, to record its stale result",
    )
    assert job_of(app, long.id) == done
    assert done.attempts == 2 and done.runner_id != owner
    assert end_kinds(done) == ["lease_expired", "succeeded"]

    later = [invariants.enqueue(J, "record", ["c12"]) for _ in range(20)]
    for job in first + later:
        wait_status(app, job.id, "succeeded")
    wait_for(
        lambda: (
            paused.poll() is not None
            or survivor.poll() is not None
            or listeners(env.database_uri) == 2
        ),
        what="both runners to LISTEN again",
    )
    assert (paused.poll(), survivor.poll()) == (None, None), "a runner died"
    assert listeners(env.database_uri) == 2
    invariants.check()


def test_a_runner_whose_listen_connection_dies_keeps_running_jobs_and_listens_again(
    env: Env, app: Any, invariants: Invariants
) -> None:
    """Case 12: the LISTEN connection is terminated while the server refuses new connections
    (so the runner cannot LISTEN again at once); it must go on running jobs, found by polling,
    and LISTEN again once it can."""
    worker = start_worker(env, runner_id="host-a")
    wait_for(lambda: listeners(env.database_uri) == 1, timeout=30, what="the runner to LISTEN")
    job_of(app, invariants.enqueue(J, "add", [0, 0]).id)  # this process's pool is connected
    with connections_refused(env.database_uri):
        assert terminate(env.database_uri, listening=True) == 1
        wait_for(
            lambda: env.error_log.exists() and "during LISTEN" in env.error_log.read_text(),
            what="the runner to notice its LISTEN connection is gone",
        )
        job = invariants.enqueue(J, "add", [1, 2])  # nudged over its socket: claimed at once
        wait_for(
            lambda: worker.poll() is not None or job_of(app, job.id).status == "succeeded",
            what="the job to succeed (or the runner to die)",
        )
    assert worker.poll() is None, "the runner died"
    done = job_of(app, job.id)
    assert (done.status, done.result) == ("succeeded", 3)
    wait_for(lambda: listeners(env.database_uri) == 1, what="the runner to LISTEN again")
    invariants.check()


def test_runners_ride_out_a_server_restart_mid_run_and_lose_nothing(
    env: Env,
    app: Any,
    invariants: Invariants,
    monkeypatch: pytest.MonkeyPatch,
    figures: Callable[[str], None],
) -> None:
    """Case 12, second half: the server restarts while jobs run and more wait; afterwards
    every job succeeds exactly once and notifications flow again."""
    reason = restart_unavailable()
    if reason:
        pytest.skip(f"cannot restart PostgreSQL here: {reason}")
    monkeypatch.setenv("BGJOBS_LEASE_SECONDS", "6")
    gate = env.tmp / "gate"
    long = invariants.enqueue(J, "wait_for_file", [str(gate), "long"], retry_attempts=2)
    queued = [invariants.enqueue(J, "record", ["c12"], delay=1) for _ in range(30)]
    workers = [start_worker(env, runner_id=name) for name in ("host-a", "host-b")]
    wait_started(env, "long")
    wait_for(lambda: listeners(env.database_uri) == 2, what="both runners to LISTEN")

    took = restart_postgres()
    gate.touch()
    wait_for(
        lambda: any(w.poll() is not None for w in workers) or listeners(env.database_uri) == 2,
        timeout=30,
        what="both runners to LISTEN again",
    )
    assert [w.poll() for w in workers] == [None, None], "a runner died"
    after = [invariants.enqueue(J, "record", ["c12"]) for _ in range(30)]
    for job in [long, *queued, *after]:
        done = wait_status(app, job.id, "succeeded", timeout=60)
        assert end_kinds(done).count("succeeded") == 1
    marks = Counter(line.split()[0] for line in env.marks_of("c12"))
    figures(
        f"case 12: server restarted in {took:.1f} s; long job attempts {job_of(app, long.id).attempts}"
    )
    assert sorted(int(i) for i in marks) == sorted(j.id for j in queued + after)
    assert [w.poll() for w in workers] == [None, None], "a runner died"
    invariants.check()


# -- case 13 ---------------------------------------------------------------------------------

#: Seconds between two kills of a worker in case 13.
KILL_EVERY = 4.0


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~75 s on an idle 2-core machine; a busy one may need much longer
def test_workers_killed_now_and_then_over_10000_jobs_lose_none_and_double_none(
    env: Env,
    app: Any,
    invariants: Invariants,
    monkeypatch: pytest.MonkeyPatch,
    figures: Callable[[str], None],
) -> None:
    """Case 13: 3 workers ("host-a/b/c") race over 10,000 jobs (``BGJOBS_FAULTS_C13_JOBS``);
    every 4 s one is killed with SIGKILL (its leases aged) and restarted under the same host
    name. Every job succeeds exactly once; a job runs twice only when its earlier attempt was
    interrupted; the claim reads the partial index ``ix_bgjobs_jobs_due``."""
    total = int(os.environ.get("BGJOBS_FAULTS_C13_JOBS") or 10_000)
    monkeypatch.setenv("BGJOBS_LEASE_SECONDS", "6")
    hosts = ["host-a", "host-b", "host-c"]
    workers = {h: start_worker(env, "--concurrency", "8", runner_id=h) for h in hosts}
    started = time.monotonic()
    # Inserted in batches while the workers run (case 14 covers enqueue under load).
    ids = insert_jobs(app, total, "record", '["c13"]', max_attempts=6, batch=500)
    enqueued_in = time.monotonic() - started
    invariants.enqueued.update(ids)
    assert len(ids) == total
    plan = claim_plan(app)
    if "ix_bgjobs_jobs_due" not in plan:
        plan = claim_plan(app, seqscan=False)

    kills = 0
    rng = random.Random(13)
    next_kill = time.monotonic() + KILL_EVERY
    deadline = time.monotonic() + 840
    while status_counts(app).get("succeeded", 0) < total:
        assert time.monotonic() < deadline, f"not done: {status_counts(app)}"
        if time.monotonic() >= next_kill:
            victim = rng.choice(hosts)
            os.kill(workers[victim].pid, signal.SIGKILL)
            workers[victim].wait(timeout=10)
            kills += 1
            age_leases(app, owner=victim)
            workers[victim] = start_worker(env, "--concurrency", "8", runner_id=victim)
            next_kill = time.monotonic() + KILL_EVERY
        time.sleep(0.2)
    took = time.monotonic() - started

    evs = all_events(app)
    ends: dict[tuple[int, int | None], list[str]] = defaultdict(list)
    for _id, job_id, kind, attempt, _msg in evs:
        if kind in models.END_REASONS:
            ends[(job_id, attempt)].append(kind)
    runs: dict[int, list[int]] = defaultdict(list)
    for line in env.marks_of("c13"):
        job_id, attempt, _pid = map(int, line.split())
        runs[job_id].append(attempt)
    with store_of(app).engine.connect() as conn:
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.attempts, jobs.c.runner_id)).all()
    per_worker = Counter(r.runner_id for r in rows)
    succeeded = Counter(job_id for (job_id, _a), kinds in ends.items() if "succeeded" in kinds)
    duplicates = {j: a for j, a in runs.items() if len(a) > 1}
    interrupted = sum(1 for kinds in ends.values() if kinds == ["lease_expired"])
    figures(
        f"case 13: {total} jobs, 3 workers, {kills} kills: inserted in {enqueued_in:.1f} s, "
        f"all succeeded after {took:.1f} s; succeeded per worker {dict(sorted(per_worker.items()))}; "
        f"{interrupted} interrupted attempts; {len(duplicates)} jobs ran twice "
        f"(each after an interrupted attempt); index scans {index_scans(app)}\n"
        f"claim plan:\n{plan}"
    )
    assert "ix_bgjobs_jobs_due" in plan
    assert sorted(runs) == sorted(ids)  # every job ran
    assert all(succeeded[j] == 1 for j in ids) and len(succeeded) == total  # each succeeded once
    for row in rows:
        assert ends[(row.id, row.attempts)] == ["succeeded"], (row.id, row.attempts)
    for job_id, attempts in duplicates.items():
        # Ran more than once: every run but the successful one was an interrupted attempt.
        assert len(attempts) == len(set(attempts)), (job_id, attempts)
        for attempt in attempts:
            kinds = ends[(job_id, attempt)]
            assert kinds in (["succeeded"], ["lease_expired"]), (job_id, attempt, kinds)
    invariants.check()


# -- many hosts ------------------------------------------------------------------------------


def test_workers_standing_in_for_separate_hosts_share_one_postgresql(
    env: Env,
    app: Any,
    invariants: Invariants,
    monkeypatch: pytest.MonkeyPatch,
    figures: Callable[[str], None],
) -> None:
    """Issue 4, many hosts: each worker has its own ``BGJOBS_RUNNER_ID`` and instance folder
    (no shared host lock, no datagram nudges: only the database joins them). NOTIFY wakes idle
    workers; polling catches a job whose notification was lost; a job of a dead host is taken
    back by another after the lease; no job runs twice."""
    monkeypatch.setenv("BGJOBS_LEASE_SECONDS", "3")
    instances = {h: env.tmp / f"{h}-instance" for h in ("host-a", "host-b")}
    workers = {
        h: start_worker(env, runner_id=h, extra_env={"JOBAPP_INSTANCE": str(inst)})
        for h, inst in instances.items()
    }
    wait_for(lambda: listeners(env.database_uri) == 2, timeout=30, what="both hosts to LISTEN")
    assert env.runner_sockets() == []  # this "host" has no runner to nudge

    latencies = []
    for _ in range(5):
        job = invariants.enqueue(J, "record", ["hosts"])
        done = wait_status(app, job.id, "succeeded")
        latencies.append(float(done.started_at or 0) - done.created_at)

    # A notification lost: the row appears without one. The 1 s poll still finds it.
    [silent] = insert_jobs(app, 1, "record", '["hosts"]', max_attempts=1, batch=1, notify=False)
    invariants.enqueued.add(silent)
    unnotified = wait_status(app, silent, "succeeded")
    polled = float(unnotified.started_at or 0) - unnotified.created_at

    # Host A dies holding a job; host B takes it back once the lease is over.
    gate = env.tmp / "gate"
    long = invariants.enqueue(J, "wait_for_file", [str(gate), "long"], retry_attempts=1)
    [pid] = wait_started(env, "long")
    dead = str(wait_status(app, long.id, "running").runner_id)
    alive = next(h for h in workers if h != dead)
    os.kill(workers[dead].pid, signal.SIGKILL)
    workers[dead].wait(timeout=10)
    wait_for(lambda: not pid_alive(pid), what="the dead host's job process to die")
    gate.touch()
    age_leases(app, owner=dead)
    done = wait_status(app, long.id, "succeeded")
    assert (done.runner_id, done.attempts) == (alive, 2)
    [taken] = [e for e in done.events or () if e.kind == "lease_expired"]
    assert taken.message == f"lease of {dead} expired (runner lost)"

    figures(
        "many hosts: enqueue-to-start latency with NOTIFY "
        + ", ".join(f"{1000 * s:.0f} ms" for s in latencies)
        + f"; without a notification (poll) {1000 * polled:.0f} ms"
    )
    ran = Counter(line.split()[0] for line in env.marks_of("hosts"))
    assert len(ran) == 6 and set(ran.values()) == {1}
    assert "Runner host-a started" in runner_log(instances["host-a"])
    invariants.check()
