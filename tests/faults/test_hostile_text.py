"""Issue 12, defect 1, as a fault: text a database cannot store, then SIGTERM.

On 0.1.0 a job raising ``ValueError("poison\\x00again")`` on PostgreSQL wedged the runner's
whole outcome batch: the healthy job beside it stayed ``running`` and, after SIGTERM, a sweep
recorded it ``failed`` (lease_expired) though it had succeeded. Both backends now store the
same replacement text, and nothing waits on it.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
from conftest import Env

from faults.conftest import (
    Invariants,
    J,
    end_kinds,
    job_of,
    start_worker,
    wait_started,
    wait_status,
)

pytestmark = pytest.mark.usefixtures("ctx")


def test_a_poisoned_outcome_beside_a_healthy_job_then_sigterm_records_both_truly(
    env: Env, app: Any, invariants: Invariants
) -> None:
    gate = env.tmp / "gate"
    healthy = invariants.enqueue(J, "wait_for_file", [str(gate), "healthy"], retry_attempts=0)
    poison = invariants.enqueue(J, "poison", retry_attempts=0)
    noisy = invariants.enqueue(J, "progress_poison", [1.0], retry_attempts=0)
    worker = start_worker(env, "--concurrency", "3", runner_id="host-a")
    wait_started(env, "healthy")
    assert wait_status(app, poison.id, "failed").error == "ValueError: poison\ufffdagain \ufffd"
    assert wait_status(app, noisy.id, "succeeded").progress_message == "a\ufffdb"
    gate.touch()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    done = job_of(app, healthy.id)
    assert (done.status, done.attempts, end_kinds(done)) == ("succeeded", 1, ["succeeded"])
    invariants.check()
