"""FAULTS cases 4–6: SIGTERM with and without a grace period, and timeouts of process trees."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Env, wait_for

from faults.conftest import (
    F,
    Invariants,
    J,
    end_kinds,
    job_of,
    start_worker,
    tree_of,
    wait_started,
    wait_status,
    wait_tree_gone,
)

pytestmark = pytest.mark.usefixtures("ctx")


def test_one_sigterm_claims_nothing_new_lets_the_job_finish_and_exits_0(
    env: Env, app: Any, invariants: Invariants
) -> None:
    """Case 4: even with a free slot and a fresh wake-up, a stopping runner claims nothing."""
    gate = env.tmp / "gate"
    running = invariants.enqueue(J, "wait_for_file", [str(gate), "term"])
    worker = start_worker(env, "--concurrency", "2", runner_id="host-a")
    wait_started(env, "term")
    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping" in env.main_log.read_text(), what="the SIGTERM to be handled")
    queued = invariants.enqueue(J, "record", ["queued"])  # wakes the runner; a slot is free
    time.sleep(0.5)  # give a wrongful claim the chance to happen (nothing waits on this)
    gate.touch()
    assert worker.wait(timeout=20) == 0
    done = job_of(app, running.id)
    assert (done.status, done.attempts, end_kinds(done)) == ("succeeded", 1, ["succeeded"])
    left = job_of(app, queued.id)
    assert (left.status, left.attempts, left.events) == ("pending", 0, ())
    assert env.marks_of("queued") == []
    invariants.check()


@pytest.mark.parametrize("how", ["grace-expires", "second-sigterm"])
def test_a_forced_shutdown_kills_the_job_process_group_and_requeues_the_job(
    env: Env,
    app: Any,
    invariants: Invariants,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    figures: Callable[[str], None],
) -> None:
    """Case 5: the whole group dies, the job is pending again (reason "shutdown", attempt
    given back), and the runner exits within grace + 5 s."""
    grace = 1.0 if how == "grace-expires" else 10.0
    monkeypatch.setenv("BGJOBS_SHUTDOWN_GRACE", f"{grace:g}")
    job = invariants.enqueue(F, "spawn_tree", ["tree"])
    worker = start_worker(env, runner_id="host-a")
    tree = tree_of(env, "tree")

    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    if how == "second-sigterm":
        # Signals of one kind do not queue: send the second once the first was handled.
        wait_for(lambda: "stopping" in env.main_log.read_text(), what="the first SIGTERM")
        worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=grace + 5) == 0
    took = time.monotonic() - started
    figures(f"case 5 ({how}): runner exited {took:.2f} s after SIGTERM (grace {grace:g} s)")
    assert took < grace + 5
    wait_tree_gone(tree)
    done = job_of(app, job.id)
    assert (done.status, done.attempts, done.end_reason) == ("pending", 0, "shutdown")
    assert end_kinds(done) == ["shutdown"]
    invariants.check()


def test_a_timed_out_job_leaves_nothing_of_its_process_group_behind(
    env: Env, app: Any, invariants: Invariants
) -> None:
    """Case 6: children that ignore SIGTERM or were orphaned die with the attempt, each time."""
    job = invariants.enqueue(F, "spawn_tree", ["tree"], retry_attempts=1, timeout=1)
    worker = start_worker(env, runner_id="host-a")
    first = tree_of(env, "tree", attempt=1)
    second = tree_of(env, "tree", attempt=2)
    wait_tree_gone(first)
    done = wait_status(app, job.id, "failed")
    wait_tree_gone(second)
    assert (done.attempts, done.end_reason, done.error) == (2, "timeout", "timeout after 1 s")
    assert end_kinds(done) == ["timeout", "timeout"]
    after = invariants.enqueue(J, "add", [2, 2])
    assert wait_status(app, after.id, "succeeded").result == 4
    assert worker.poll() is None
    invariants.check()
