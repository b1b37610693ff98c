"""FAULTS cases 1–3: a runner or a job process dies with SIGKILL; no job is lost or doubled."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from conftest import Env, kill_tree, pid_alive, wait_for

from faults.conftest import (
    F,
    Invariants,
    J,
    age_leases,
    end_kinds,
    job_of,
    start_worker,
    tree_of,
    wait_started,
    wait_status,
    wait_tree_gone,
)

pytestmark = pytest.mark.usefixtures("ctx")


def test_a_runner_killed_mid_job_has_its_jobs_taken_back_by_another_runner(
    env: Env, app: Any, invariants: Invariants, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 1: after the lease, the live runner takes both jobs back as failed attempts."""
    monkeypatch.setenv("BGJOBS_LEASE_SECONDS", "3")  # host-b sweeps every second
    gate = env.tmp / "gate"
    retried = invariants.enqueue(J, "wait_for_file", [str(gate), "retried"], retry_attempts=1)
    last = invariants.enqueue(J, "wait_for_file", [str(gate), "last"], retry_attempts=0)
    host_a = start_worker(env, "--concurrency", "2", runner_id="host-a")
    [retried_pid] = wait_started(env, "retried")
    [last_pid] = wait_started(env, "last")
    start_worker(env, runner_id="host-b")
    wait_for(lambda: len(env.runner_sockets()) == 2, what="host-b to listen")

    os.kill(host_a.pid, signal.SIGKILL)
    host_a.wait(timeout=10)
    for pid in (retried_pid, last_pid):
        wait_for(lambda p=pid: not pid_alive(p), what=f"host-a's job process {pid} to die")
    gate.touch()
    age_leases(app, owner="host-a")

    done = wait_status(app, retried.id, "succeeded")
    assert (done.attempts, done.runner_id) == (2, "host-b")
    assert end_kinds(done) == ["lease_expired", "succeeded"]
    failed = wait_status(app, last.id, "failed")
    assert (failed.attempts, failed.end_reason) == (1, "lease_expired")
    assert failed.error == "LeaseExpired: lease of host-a expired (runner lost)"
    assert end_kinds(failed) == ["lease_expired"]
    invariants.check()


def test_a_killed_worker_takes_its_job_process_along_and_nobody_runs_the_job_meanwhile(
    env: Env, app: Any, bgjobs: Any, invariants: Invariants
) -> None:
    """Case 2: PR_SET_PDEATHSIG kills the orphan; the lease keeps others off; one completion."""
    job = invariants.enqueue(J, "sleep", [3, "orphan"], retry_attempts=1)
    host_a = start_worker(env, runner_id="host-a")
    [orphan] = wait_started(env, "orphan")
    start_worker(env, runner_id="host-b")
    wait_for(lambda: len(env.runner_sockets()) == 2, what="host-b to listen")

    os.kill(host_a.pid, signal.SIGKILL)
    host_a.wait(timeout=10)
    wait_for(lambda: not pid_alive(orphan), timeout=10, what="the orphaned job process to die")
    # host-b is serving (it runs other jobs) but leaves the leased job alone.
    probe = invariants.enqueue(J, "record", ["probe"])
    assert wait_status(app, probe.id, "succeeded").runner_id == "host-b"
    held = job_of(app, job.id)
    assert (held.status, held.attempts, held.runner_id) == ("running", 1, "host-a")
    assert len(env.marks_of("orphan")) == 1  # started once, never finished

    age_leases(app, owner="host-a")
    # host-b sweeps only every 10 s (a third of the 30 s lease): sweep now, as an operator would.
    assert [r.job.id for r in bgjobs.sweep()] == [job.id]
    done = wait_status(app, job.id, "succeeded")
    assert (done.attempts, done.runner_id) == (2, "host-b")
    assert end_kinds(done) == ["lease_expired", "succeeded"]
    assert env.marks_of("orphan").count("end") == 1  # the orphan never completed
    invariants.check()


def test_a_killed_worker_leaves_nothing_of_its_jobs_process_group_behind(
    env: Env, app: Any, bgjobs: Any, invariants: Invariants
) -> None:
    """Case 2, the job's own children: like a timeout (case 6), the death of the runner must
    take the attempt's whole process group along, or the rerun overlaps the first attempt."""
    job = invariants.enqueue(F, "spawn_tree", ["tree"], retry_attempts=0)
    host_a = start_worker(env, runner_id="host-a")
    tree = tree_of(env, "tree")
    try:
        os.kill(host_a.pid, signal.SIGKILL)
        host_a.wait(timeout=10)
        wait_for(lambda: not pid_alive(tree[0]), what="the job process to die (PDEATHSIG)")
        wait_tree_gone(tree, timeout=5)
    finally:
        for pid in tree:  # whatever survived must not outlive the test
            kill_tree(pid)
    age_leases(app, owner="host-a")
    assert [r.job.id for r in bgjobs.sweep()] == [job.id]
    invariants.check()


def test_a_job_process_killed_with_sigkill_is_retried_and_the_runner_keeps_serving(
    env: Env, app: Any, invariants: Invariants
) -> None:
    """Case 3: the attempt ends "killed by signal 9"; a retry follows; the runner lives on."""
    gate = env.tmp / "gate"
    job = invariants.enqueue(J, "wait_for_file", [str(gate), "victim"], retry_attempts=1)
    once = invariants.enqueue(J, "wait_for_file", [str(gate), "once"], retry_attempts=0)
    worker = start_worker(env, "--concurrency", "2", runner_id="host-a")
    pids = wait_started(env, "victim") + wait_started(env, "once")

    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    retrying = wait_for(
        lambda: (j := job_of(app, job.id)).end_reason == "signal" and j,
        what="the killed attempt to be recorded",
    )
    assert retrying.error == "killed by signal 9 (SIGKILL)"
    killed = [e for e in retrying.events or () if e.kind == "signal"]
    assert [(e.attempt, e.message.split(";")[0]) for e in killed] == [
        (1, "killed by signal 9 (SIGKILL)")
    ]
    assert "retrying in" in killed[0].message
    failed = wait_status(app, once.id, "failed")
    assert (failed.end_reason, failed.error) == ("signal", "killed by signal 9 (SIGKILL)")

    gate.touch()
    done = wait_status(app, job.id, "succeeded")
    assert (done.attempts, end_kinds(done)) == (2, ["signal", "succeeded"])
    after = invariants.enqueue(J, "add", [1, 2])
    assert wait_status(app, after.id, "succeeded").runner_id == "host-a"
    assert worker.poll() is None
    invariants.check()
