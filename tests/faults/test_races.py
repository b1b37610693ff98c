"""FAULTS cases 7–9: a paused runner, cancels racing with claims, a job that kills its runner."""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Env, pid_alive, wait_for

from faults.conftest import (
    Invariants,
    J,
    age_leases,
    all_events,
    end_kinds,
    job_of,
    start_worker,
    status_counts,
    store_of,
    wait_started,
    wait_status,
)
from flask_bgjobs import run_background_job
from flask_bgjobs.errors import DatabaseBusy, InvalidTransition
from flask_bgjobs.models import jobs

pytestmark = pytest.mark.usefixtures("ctx")


def snapshot(app: Any) -> tuple[list[Any], int]:
    """Every job row, and the number of events: what "changes nothing" compares."""
    with store_of(app).engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.select(jobs).order_by(jobs.c.id))]
    return rows, len(all_events(app))


def test_a_resumed_runner_whose_lease_was_taken_over_changes_nothing(
    env: Env, app: Any, invariants: Invariants
) -> None:
    """Case 7: SIGSTOP past the lease, another runner reruns the job, SIGCONT: fenced."""
    gate = env.tmp / "gate"
    job = invariants.enqueue(J, "wait_for_file", [str(gate), "paused"], retry_attempts=1)
    host_a = start_worker(env, runner_id="host-a")
    [first] = wait_started(env, "paused")
    os.kill(host_a.pid, signal.SIGSTOP)
    try:
        age_leases(app, owner="host-a")  # "past its lease", without waiting for it
        start_worker(env, runner_id="host-b")  # sweeps at start, then reruns the job
        wait_started(env, "paused", count=2)
        gate.touch()  # both attempts now finish: host-a's child too, while host-a sleeps
        done = wait_status(app, job.id, "succeeded")
        wait_for(lambda: not pid_alive(first), what="host-a's attempt to exit")
        before = snapshot(app)
    finally:
        os.kill(host_a.pid, signal.SIGCONT)

    wait_for(
        lambda: "Job result discarded" in env.main_log.read_text(),
        what="host-a to try, and fail, to record its stale result",
    )
    assert snapshot(app) == before
    assert (done.attempts, done.runner_id, end_kinds(done)) == (
        2,
        "host-b",
        ["lease_expired", "succeeded"],
    )
    assert host_a.poll() is None  # resumed and serving
    after = invariants.enqueue(J, "add", [1, 1])
    wait_status(app, after.id, "succeeded")
    invariants.check()


def test_cancels_racing_with_four_runners_end_each_job_exactly_one_way(
    env: Env, app: Any, bgjobs: Any, invariants: Invariants, figures: Callable[[str], None]
) -> None:
    """Case 8: 500 short jobs, each cancelled at a random moment while 4 runners claim them.

    A job cancelled while waiting never runs; a job cancelled while running is killed or its
    result discarded (it may have run: cancel cannot undo that); a job that finished first
    refuses the cancel. Then a second action on any finished job is refused and changes nothing.
    """
    total = 500
    for n in range(4):
        start_worker(env, runner_id=f"host-{n}")
    wait_for(lambda: len(env.runner_sockets()) == 4, timeout=30, what="4 runners to listen")

    todo: queue.Queue[int | None] = queue.Queue()
    verdicts: dict[int, str] = {}  # job id -> "cancelled" or "refused"
    errors: list[BaseException] = []

    def canceller() -> None:
        rng = random.Random()
        with app.app_context():
            while (job_id := todo.get()) is not None:
                # Some cancels land before the claim, some during the run, some after.
                time.sleep(rng.choice((0, 0, 0, 0.005, 0.02, 0.05, 0.15)))
                while True:
                    try:
                        bgjobs.cancel(job_id)
                        verdicts[job_id] = "cancelled"
                        break
                    except InvalidTransition:
                        verdicts[job_id] = "refused"
                        break
                    except DatabaseBusy:
                        continue  # nothing written: try again
                    except BaseException as exc:  # noqa: BLE001 - reported below
                        errors.append(exc)
                        break

    threads = [threading.Thread(target=canceller) for _ in range(8)]
    for t in threads:
        t.start()
    started = time.monotonic()
    ids = []
    try:
        for _ in range(total):
            job = invariants.enqueue(J, "record", ["ran"], retry_attempts=0)
            ids.append(job.id)
            todo.put(job.id)
    finally:
        for _ in threads:
            todo.put(None)
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    counts = wait_for(
        lambda: (
            (c := status_counts(app, ids))
            and sum(c.get(s, 0) for s in ("succeeded", "failed", "cancelled")) == total
            and c
        ),
        timeout=120,
        what="every job to finish",
    )
    took = time.monotonic() - started

    ran = Counter(int(line.split()[0]) for line in env.marks_of("ran"))
    kinds: Counter[str] = Counter()
    for job_id in ids:
        job = job_of(app, job_id)
        evs = [e.kind for e in job.events or ()]
        if job.status == "cancelled":
            assert verdicts[job_id] == "cancelled", (job_id, verdicts[job_id])
            if evs == ["cancelled"]:
                kinds["cancelled, never ran"] += 1
                assert ran[job_id] == 0, f"job {job_id} was cancelled while pending, yet ran"
            else:  # cancelled while running: no outcome of that attempt was recorded
                assert evs == ["started", "cancelled"], (job_id, evs)
                assert ran[job_id] <= 1
                kinds["cancelled while running"] += 1
        else:
            assert job.status == "succeeded", (job_id, job.status, job.error)
            assert verdicts[job_id] == "refused", (job_id, verdicts[job_id])
            assert evs == ["started", "succeeded"], (job_id, evs)
            assert ran[job_id] == 1, (job_id, ran[job_id])
            kinds["succeeded"] += 1
    figures(f"case 8: {total} jobs in {took:.1f} s, {dict(kinds)}, statuses {counts}")

    before = snapshot(app)
    for job_id in ids:
        with pytest.raises(InvalidTransition):
            bgjobs.cancel(job_id)
        if job_of(app, job_id).status == "succeeded":
            with pytest.raises(InvalidTransition):
                bgjobs.retry(job_id)
    assert snapshot(app) == before
    invariants.check()


def lock_holder(instance: Path) -> int | None:
    """The pid the host lock names: the auto-started runner that holds it last."""
    locks = list((instance / "bgjobs-run").glob("*.lock"))
    text = locks[0].read_text().strip() if locks else ""
    return int(text) if text.isdigit() else None


@pytest.fixture
def web(app: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A second app, built with autostart on: its enqueues start runners as a web app's do."""
    from jobapp import create_app

    monkeypatch.setenv("BGJOBS_AUTOSTART", "true")
    monkeypatch.setenv("BGJOBS_IDLE_TIMEOUT", "30")
    web = create_app()
    yield web
    web.extensions["bgjobs"].store.close()


def test_a_job_that_kills_its_auto_started_runner_every_time_ends_failed(
    env: Env, app: Any, web: Any, invariants: Invariants
) -> None:
    """Case 9, through autostart: each enqueue starts a runner, the job kills it, the next
    runner takes it back; the attempts run out and it fails, with no crash loop."""
    killed: list[int] = []

    def enqueue(*args: Any, **kwargs: Any) -> int:
        with web.app_context():
            job_id = run_background_job(*args, **kwargs).id
        invariants.enqueued.add(job_id)
        return job_id

    job_id = enqueue(J, "kill_runner", ["killer"], retry_attempts=1)
    for attempt in (1, 2):
        wait_for(lambda a=attempt: len(env.marks_of("killer")) == a, what=f"attempt {attempt}")
        runner = wait_for(
            lambda: (pid := lock_holder(env.instance)) not in (None, *killed) and pid,
            what="the auto-started runner's pid",
        )
        wait_for(lambda p=runner: not pid_alive(p), what=f"runner {runner} to be killed")
        killed.append(runner)
        assert job_of(app, job_id).status == "running"
        age_leases(app)
        # The next enqueue finds no runner alive and starts one, which sweeps at once.
        enqueue(J, "noop")

    done = wait_status(app, job_id, "failed")
    assert (done.attempts, done.end_reason) == (2, "lease_expired")
    assert end_kinds(done) == ["lease_expired", "lease_expired"]
    assert env.marks_of("killer") == ["1", "2"]
    survivor = wait_for(
        lambda: (pid := lock_holder(env.instance)) not in (None, *killed) and pid,
        what="the third runner",
    )
    for noop in sorted(invariants.enqueued - {job_id}):
        wait_status(app, noop, "succeeded")
    assert pid_alive(survivor)  # it took the job back and serves on: no crash loop
    assert len(re.findall(r"Runner \S+ started \(pid", env.main_log.read_text())) == 3
    invariants.check()
