"""FAULTS cases 10–11: SQLite held by another process, and many processes writing at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Env, wait_for

from faults.conftest import (
    Invariants,
    J,
    all_events,
    end_kinds,
    full_run,
    job_of,
    row_count,
    sqlite_held,
    sqlite_only,
    start_worker,
    status_counts,
    store_of,
    wait_started,
    wait_status,
)
from flask_bgjobs.errors import DatabaseBusy
from flask_bgjobs.models import jobs

pytestmark = pytest.mark.usefixtures("ctx")


@sqlite_only
def test_a_database_held_exclusively_for_10_s_delays_or_refuses_enqueues_and_loses_nothing(
    env: Env, app: Any, invariants: Invariants, figures: Callable[[str], None]
) -> None:
    """Case 10: an enqueue waits, or fails with `DatabaseBusy` and no row; the runner logs,
    retries its write and carries on; no lease is taken back."""
    gate = env.tmp / "gate"
    running = invariants.enqueue(J, "wait_for_file", [str(gate), "held"])
    worker = start_worker(env, runner_id="host-a")
    wait_started(env, "held")
    rows_before = row_count(app)
    with sqlite_held(env) as locked_at:
        gate.touch()  # the job ends while its runner cannot write the outcome
        t0 = time.monotonic()
        with pytest.raises(DatabaseBusy, match="nothing was written"):
            invariants.enqueue(J, "record", ["refused"])
        refused_after = time.monotonic() - t0
        # A second enqueue, started shortly before the holder lets go, waits and succeeds.
        time.sleep(max(0.0, locked_at + 9.5 - time.monotonic()))  # the case: a 10 s hold
        waited: list[int | str] = []
        t1 = time.monotonic()
        enqueuer = threading.Thread(
            target=lambda: waited.append(_enqueue_in_context(app, invariants)), daemon=True
        )
        enqueuer.start()
        time.sleep(0.5)  # let it queue on the lock
        held_for = time.monotonic() - locked_at
    enqueuer.join(timeout=10)
    figures(
        f"case 10: lock held {held_for:.1f} s; refused enqueue after {refused_after:.1f} s; "
        f"waiting enqueue took {time.monotonic() - t1:.1f} s: {waited}"
    )
    assert waited and isinstance(waited[0], int), waited
    assert row_count(app) == rows_before + 1  # the refused enqueue left no partial row

    done = wait_status(app, running.id, "succeeded")
    assert done.attempts == 1
    assert wait_status(app, waited[0], "succeeded").runner_id == "host-a"
    assert not [e for e in all_events(app) if e[2] == "lease_expired"]  # nothing rescued
    errors = env.error_log.read_text()
    assert "database error during" in errors and "will retry" in errors
    assert worker.poll() is None
    invariants.check()


#: Lease renewals fail (as they do while another process holds the database); nothing else does.
RENEWALS_FAIL = """
CREATE TRIGGER fault_renewals_fail BEFORE UPDATE OF lease_expires_at ON bgjobs_jobs
WHEN OLD.status = 'running' AND NEW.status = 'running'
BEGIN SELECT RAISE(ABORT, 'lease renewal refused by the fault test'); END
"""


@sqlite_only
def test_a_runner_whose_renewals_failed_never_takes_back_its_own_live_attempt(
    env: Env, app: Any, invariants: Invariants, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 10, "nothing rescued wrongly": a stall longer than the lease (here: a trigger that
    refuses renewals, standing in for a lock released between the runner's renewal and its
    sweep, which a 10 s lock and a 3 s lease produce about every other time) must not make a
    runner take back the attempt it is still running. Other hosts may; it knows better."""
    monkeypatch.setenv("BGJOBS_LEASE_SECONDS", "3")  # renewal and sweep every second
    gate = env.tmp / "gate"
    job = invariants.enqueue(J, "wait_for_file", [str(gate), "alive"], retry_attempts=1)
    start_worker(env, runner_id="host-a")
    wait_started(env, "alive")
    with store_of(app).engine.begin() as conn:
        conn.exec_driver_sql(RENEWALS_FAIL)
    try:
        wait_for(
            lambda: (
                end_kinds(j := job_of(app, job.id)) or (j.lease_expires_at or 0) < time.time() - 3
            ),  # expired three sweeps ago
            what="the lease to run out",
        )
    finally:
        with store_of(app).engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER fault_renewals_fail")
    gate.touch()
    done = wait_status(app, job.id, "succeeded", "failed")
    assert (done.attempts, end_kinds(done)) == (1, ["succeeded"]), [
        (e.kind, e.attempt, e.message) for e in done.events or ()
    ]
    invariants.check()


@sqlite_only
def test_a_runner_stopped_while_the_database_is_locked_still_records_the_outcome_it_holds(
    env: Env, app: Any, invariants: Invariants
) -> None:
    """Cases 4 and 10 together: the job ends while the database is locked, then SIGTERM
    arrives; within its grace period the runner keeps trying and records the success."""
    grace = 10.0  # conftest's BGJOBS_SHUTDOWN_GRACE
    gate = env.tmp / "gate"
    job = invariants.enqueue(J, "wait_for_file", [str(gate), "held"])
    worker = start_worker(env, runner_id="host-a")
    wait_started(env, "held")
    with sqlite_held(env):
        gate.touch()
        wait_for(
            lambda: env.error_log.exists() and "during finish" in env.error_log.read_text(),
            what="the runner to fail to record the outcome",
        )
        worker.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        # Keep the database locked a little while longer, not past the grace period.
        wait_for(
            lambda: worker.poll() is not None or time.monotonic() - stopped > 3,
            what="the runner to exit or 3 s to pass",
        )
    assert worker.wait(timeout=grace + 5) == 0
    done = job_of(app, job.id)
    assert (done.status, done.attempts) == ("succeeded", 1), (done.status, done.lease_owner)
    invariants.check()


def _enqueue_in_context(app: Any, invariants: Invariants) -> int | str:
    with app.app_context():
        try:
            return invariants.enqueue(J, "record", ["waited"]).id
        except DatabaseBusy as exc:
            return f"DatabaseBusy: {exc}"


#: One enqueuing process: enqueues for `seconds`, keeping the backlog short, then reports.
ENQUEUER = """
import json, sys, time
from jobapp import create_app
from flask_bgjobs import run_background_job
from flask_bgjobs.models import jobs
import sqlalchemy as sa

seconds, out = float(sys.argv[1]), sys.argv[2]
app = create_app()
ids, errors = [], []
store = app.extensions["bgjobs"].store
waiting = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == "pending")
with app.app_context():
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            ids.append(run_background_job("jobapp.jobs.Jobs", "record", ["c11"]).id)
            if len(ids) % 10 == 0:
                with store.engine.connect() as conn:
                    while conn.execute(waiting).scalar_one() > 40 and time.monotonic() < end:
                        conn.rollback()
                        time.sleep(0.02)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
with open(out, "w") as fh:
    json.dump({"ids": ids, "errors": errors}, fh)
"""


@pytest.mark.slow
@sqlite_only
def test_four_processes_enqueuing_claiming_and_finishing_never_see_database_is_locked(
    env: Env, app: Any, invariants: Invariants, figures: Callable[[str], None]
) -> None:
    """Case 11: 4 enqueuers and 4 runners on one SQLite file for 20 s (60 s with
    ``BGJOBS_FAULTS_FULL=1``): no "database is locked" reaches user code; every runner claims."""
    seconds = 60.0 if full_run() else 20.0
    names = [f"host-{n}" for n in range(4)]
    for name in names:
        start_worker(env, runner_id=name)
    wait_for(lambda: len(env.runner_sockets()) == 4, timeout=30, what="4 runners to listen")
    outputs = [env.tmp / f"enqueuer-{n}.json" for n in range(4)]
    started = time.monotonic()
    enqueuers = [
        subprocess.Popen([sys.executable, "-c", ENQUEUER, str(seconds), str(out)], cwd=env.tmp)
        for out in outputs
    ]
    env.procs.extend(enqueuers)
    for proc in enqueuers:
        assert proc.wait(timeout=seconds + 60) == 0
    reports = [json.loads(out.read_text()) for out in outputs]
    ids = [i for r in reports for i in r["ids"]]
    invariants.enqueued.update(ids)
    errors = [e for r in reports for e in r["errors"]]
    wait_for(
        lambda: status_counts(app, ids).get("succeeded", 0) == len(ids),
        timeout=120,
        what=f"all {len(ids)} jobs to succeed",
    )
    took = time.monotonic() - started
    with store_of(app).engine.connect() as conn:
        per_runner = Counter(
            dict(
                conn.execute(
                    sa.select(jobs.c.runner_id, sa.func.count()).group_by(jobs.c.runner_id)
                ).all()
            )
        )
    locked = (
        [
            line
            for line in env.error_log.read_text().splitlines()
            if "locked" in line or "DatabaseBusy" in line
        ]
        if env.error_log.exists()
        else []
    )
    figures(
        f"case 11: {len(ids)} jobs enqueued by 4 processes in {seconds:g} s, all done after "
        f"{took:.1f} s; claims per runner {dict(per_runner)}; enqueue errors {len(errors)}; "
        f"runner lock errors {len(locked)}"
    )
    assert errors == []
    assert locked == []
    assert set(per_runner) == set(names), per_runner
    invariants.check()
