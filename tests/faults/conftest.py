"""What every fault case shares: workers with a host identity of their own, time aged in the
database, and the invariants I1–I4 of FAULTS.md, checked at the end of each case.

- (I1) no ``running`` job whose lease expired more than one sweep (a third of the lease) ago;
- (I2) no job finished twice for the same attempt;
- (I3) every enqueue that reported success has its row;
- (I4) ``PRAGMA integrity_check`` is ``ok`` on SQLite.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import ALLOWED, APP_IMPORT, Env, pid_alive, wait_for

from flask_bgjobs import models, run_background_job
from flask_bgjobs.models import Job, events, jobs

J = "jobapp.jobs.Jobs"
F = "jobapp.faultjobs.FaultJobs"

#: Run only on SQLite (``backend`` is the shared fixture, parametrised indirectly).
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
#: Run only on PostgreSQL.
postgres_only = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)

#: Scheduling slack on top of one sweep interval before a stale lease counts against I1.
SWEEP_SLACK = 1.0


@pytest.fixture
def figures(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print a case's figures (times, counts) to the terminal even while output is captured."""

    def show(text: str) -> None:
        with capsys.disabled():
            print(f"\n{text}")

    return show


def full_run() -> bool:
    """``BGJOBS_FAULTS_FULL=1`` runs the long cases at their FAULTS.md length."""
    return os.environ.get("BGJOBS_FAULTS_FULL", "") not in ("", "0", "false", "no")


def pg_admin_url(uri: str) -> str:
    """A libpq URL for psycopg from a SQLAlchemy one."""
    return (
        sa.engine.make_url(uri).set(drivername="postgresql").render_as_string(hide_password=False)
    )


# -- processes -------------------------------------------------------------------------------


def start_worker(
    env: Env,
    *args: str,
    runner_id: str | None = None,
    extra_env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start ``flask bgjobs worker <args>`` as host `runner_id`; killed by PID at teardown.

    Its output goes to a file under the test's temporary folder, never to a pipe nobody reads
    (a chatty worker would block once the pipe is full). `prefix` runs it under another
    command, such as ``prlimit``.
    """
    child_env = dict(os.environ)
    if runner_id is not None:
        child_env["BGJOBS_RUNNER_ID"] = runner_id
    child_env.update(extra_env or {})
    out_dir = env.tmp / "worker-output"
    out_dir.mkdir(exist_ok=True)
    with open(out_dir / f"{runner_id or 'worker'}-{time.monotonic_ns()}.out", "wb") as out:
        proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "flask",
                "--app",
                APP_IMPORT,
                "bgjobs",
                "worker",
                *args,
            ],
            cwd=env.tmp,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    env.procs.append(proc)
    return proc


def started_pids(env: Env, tag: str) -> list[int]:
    """Process ids of the attempts tagged `tag` (``sleep``, ``wait_for_file`` mark ``start <pid>``)."""
    return [int(line.split()[1]) for line in env.marks_of(tag) if line.startswith("start ")]


def wait_started(env: Env, tag: str, count: int = 1, timeout: float = 30.0) -> list[int]:
    """Wait until `count` attempts tagged `tag` have started; return their process ids."""
    return wait_for(
        lambda: pids if len(pids := started_pids(env, tag)) >= count else None,
        timeout=timeout,
        what=f"{count} attempt(s) tagged {tag!r} to start",
    )


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry))
    return members


def tree_of(env: Env, tag: str, attempt: int = 1) -> list[int]:
    """``[job pid, child, orphaned grandchild]`` of attempt `attempt` of ``spawn_tree``."""
    lines = wait_for(
        lambda: len(env.marks_of(tag)) >= attempt and env.marks_of(tag),
        what=f"attempt {attempt} of {tag!r} to spawn its children",
    )
    return [int(pid) for pid in lines[attempt - 1].split()]


def wait_tree_gone(tree: list[int], timeout: float = 10.0) -> None:
    """Wait until none of `tree` lives, nor anything else in its leader's process group."""
    leader = tree[0]
    wait_for(
        lambda: not [p for p in tree if pid_alive(p)] and not process_group_members(leader),
        timeout=timeout,
        what=f"every process of group {leader} to die",
    )


# -- the database ----------------------------------------------------------------------------

#: Holds an SQLite file with BEGIN EXCLUSIVE until a line arrives on stdin.
_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


@contextmanager
def sqlite_held(env: Env) -> Iterator[float]:
    """Hold the case's SQLite file with ``BEGIN EXCLUSIVE`` in another process for the block.

    Yields the monotonic time the lock was taken. WAL readers still read meanwhile.
    """
    path = sa.engine.make_url(env.database_uri).database
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    env.procs.append(holder)  # type: ignore[arg-type]
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield time.monotonic()
    finally:
        if holder.stdin is not None:
            holder.stdin.write("release\n")
            holder.stdin.close()
        holder.wait(timeout=10)


def row_count(app: Any) -> int:
    """How many jobs the store holds."""
    with store_of(app).engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one())


def store_of(app: Any) -> Any:
    """The app's `flask_bgjobs.store.Store`: reads and ageing, with no app context needed."""
    return app.extensions["bgjobs"].store


def age_leases(app: Any, *, owner: str | None = None, seconds: float = 3600) -> int:
    """Make running jobs' leases look expired (only host `owner`'s, if given); return how many.

    Ages the lease instead of sleeping until it runs out.
    """
    stmt = jobs.update().where(jobs.c.status == models.RUNNING)
    if owner is not None:
        stmt = stmt.where(jobs.c.lease_owner.like(f"{owner}~%"))
    with store_of(app).engine.begin() as conn:
        result = conn.execute(stmt.values(lease_expires_at=jobs.c.lease_expires_at - seconds))
        return int(result.rowcount)


def job_of(app: Any, job_id: int) -> Job:
    """The job with its events, read without an app context."""
    return store_of(app).get(job_id, with_events=True)  # type: ignore[no-any-return]


def wait_status(app: Any, job_id: int, *statuses: str, timeout: float = 30.0) -> Job:
    """Wait until the job is in one of `statuses`; return it (with its events)."""
    return wait_for(
        lambda: (j := job_of(app, job_id)).status in statuses and j,
        timeout=timeout,
        what=f"job {job_id} to become {'/'.join(statuses)}",
    )


def end_kinds(job: Job) -> list[str]:
    """The attempt-end events of a job, in order (``started`` and ``progress`` left out)."""
    return [e.kind for e in job.events or () if e.kind in models.END_REASONS]


def status_counts(app: Any, ids: Iterable[int] | None = None) -> dict[str, int]:
    """Jobs per status (of `ids` only, if given); statuses with none are left out."""
    stmt = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
    if ids is not None:
        stmt = stmt.where(jobs.c.id.in_(list(ids)))
    with store_of(app).engine.connect() as conn:
        return {str(s): int(n) for s, n in conn.execute(stmt)}


def all_events(app: Any) -> list[tuple[int, int, str, int | None, str]]:
    """Every event as ``(id, job_id, kind, attempt, message)``, in the order written."""
    stmt = sa.select(
        events.c.id, events.c.job_id, events.c.kind, events.c.attempt, events.c.message
    ).order_by(events.c.id)
    with store_of(app).engine.connect() as conn:
        return [(int(i), int(j), str(k), a, str(m)) for i, j, k, a, m in conn.execute(stmt)]


# -- the invariants --------------------------------------------------------------------------


def stale_running(app: Any, lease_seconds: float, now: float | None = None) -> list[int]:
    """(I1) Running jobs whose lease expired more than one sweep ago."""
    now = time.time() if now is None else now
    limit = now - (lease_seconds / 3 + SWEEP_SLACK)
    stmt = sa.select(jobs.c.id).where(
        jobs.c.status == models.RUNNING, jobs.c.lease_expires_at < limit
    )
    with store_of(app).engine.connect() as conn:
        return [int(i) for i in conn.execute(stmt).scalars()]


def double_finishes(evs: Iterable[tuple[int, int, str, int | None, str]]) -> list[str]:
    """(I2) Attempts that ended twice, from the event history.

    Each ``started`` event opens attempt *n* of a job; each attempt-end event must close an
    open attempt. A shutdown gives its attempt number back (the next ``started`` reuses it) and
    an operator's ``retry`` starts the count again, so both are allowed to reuse a number. A
    ``cancelled`` event of a job that was not running ends no attempt.
    """
    open_attempts: dict[int, set[int | None]] = {}
    problems: list[str] = []
    for event_id, job_id, kind, attempt, message in evs:
        opened = open_attempts.setdefault(job_id, set())
        if kind == "started":
            opened.add(attempt)
        elif kind == "retry":
            opened.clear()
        elif kind in models.END_REASONS:
            if attempt in opened:
                opened.discard(attempt)
            elif kind == models.END_CANCELLED:
                continue  # cancelled while pending or retrying: no attempt was running
            else:
                problems.append(
                    f"job {job_id}: {kind!r} (event {event_id}, {message!r}) ends attempt "
                    f"{attempt}, which was not running"
                )
    return problems


def sqlite_integrity(uri: str) -> str | None:
    """(I4) ``None`` when PRAGMA integrity_check says ok (or the store is not SQLite)."""
    url = sa.engine.make_url(uri)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    conn = sqlite3.connect(f"file:{url.database}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return None if rows == [("ok",)] else repr(rows)


@dataclass
class Invariants:
    """Collects what a case enqueued and checks I1–I4; `check()` at the end of each case."""

    app: Any
    enqueued: set[int] = field(default_factory=set)
    checked: bool = False

    def enqueue(self, *args: Any, **kwargs: Any) -> Job:
        """`run_background_job`, remembering the id for I3."""
        job = run_background_job(*args, **kwargs)
        self.enqueued.add(job.id)
        return job

    def lease_seconds(self) -> float:
        # Cases shorten the lease of the workers they start through the environment.
        text = os.environ.get("BGJOBS_LEASE_SECONDS")
        return float(text) if text else float(self.app.extensions["bgjobs"].settings.lease_seconds)

    def check(self) -> None:
        """Assert I1–I4 now (while the case's runners still run)."""
        self.checked = True
        problems: list[str] = []
        stale = stale_running(self.app, self.lease_seconds())
        if stale:
            problems.append(f"I1: running with a lease expired over a sweep ago: {stale}")
        problems += [f"I2: {p}" for p in double_finishes(all_events(self.app))]
        if self.enqueued:
            with store_of(self.app).engine.connect() as conn:
                present = set(
                    conn.execute(
                        sa.select(jobs.c.id).where(jobs.c.id.in_(sorted(self.enqueued)))
                    ).scalars()
                )
            missing = sorted(self.enqueued - present)
            if missing:
                problems.append(f"I3: {len(missing)} enqueued job(s) have no row: {missing[:20]}")
        integrity = sqlite_integrity(store_of(self.app).uri)
        if integrity is not None:
            problems.append(f"I4: integrity_check: {integrity}")
        assert not problems, "invariants violated:\n" + "\n".join(problems)


@pytest.fixture(autouse=True)
def _fault_settings(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings of every case, on top of the shared ``env`` (and before the ``app`` is built)."""
    # The dashboard plays no part in these cases; leaving it out keeps them about the engine.
    monkeypatch.setenv("BGJOBS_DASHBOARD", "false")
    monkeypatch.setenv("BGJOBS_ALLOWED_JOBS", f"{ALLOWED},{F}:*")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def invariants(app: Any, request: pytest.FixtureRequest) -> Iterator[Invariants]:
    """I1–I4 for this case: call ``invariants.check()`` at its end (done here if forgotten).

    Its teardown runs before the shared ``env`` kills the case's workers.
    """
    inv = Invariants(app)
    yield inv
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.passed and not inv.checked:
        inv.check()
