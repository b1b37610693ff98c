"""FAULTS case 15: the log files cannot grow (``/dev/full``, ``prlimit --fsize``)."""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

import pytest
from conftest import Env, pid_alive, wait_for

from faults.conftest import (
    Invariants,
    J,
    age_leases,
    job_of,
    start_worker,
    wait_started,
    wait_status,
)

pytestmark = pytest.mark.usefixtures("ctx")

#: The file-size limit of the worker in the ``prlimit`` variant (the database stays far below).
FSIZE = 4 * 1024 * 1024


@pytest.mark.parametrize("how", ["dev-full", "prlimit-fsize"])
def test_a_full_log_disk_changes_no_outcome_and_marks_the_jobs_log_incomplete(
    env: Env, app: Any, invariants: Invariants, how: str
) -> None:
    """Case 15: every write to the logs fails (ENOSPC, or EFBIG past ``RLIMIT_FSIZE`` with
    SIGXFSZ ignored); outcomes are recorded as usual, each job is flagged ``log_incomplete``,
    and the runner keeps serving (no crash, no crash loop)."""
    extra_env: dict[str, str] = {}
    prefix: tuple[str, ...] = ()
    if how == "dev-full":
        extra_env = {"BGJOBS_LOG_FILE": "/dev/full", "BGJOBS_ERROR_LOG_FILE": "/dev/full"}
    else:
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            pytest.skip("prlimit (util-linux) is not installed")
        prefix = (prlimit, f"--fsize={FSIZE}", "--")
        env.main_log.parent.mkdir(parents=True, exist_ok=True)
        for log in (env.main_log, env.error_log):  # both logs already at the limit
            log.write_bytes(b"[2026-01-01 00:00:00] INFO: filler\n" * (FSIZE // 35 + 1))
    sizes = {log: log.stat().st_size for log in (env.main_log, env.error_log) if log.exists()}

    ok = invariants.enqueue(J, "add", [2, 3])
    bad = invariants.enqueue(J, "fail", ["disk"], retry_attempts=1)
    steps = invariants.enqueue(J, "progress", [4])
    worker = start_worker(env, runner_id="host-a", extra_env=extra_env, prefix=prefix)

    assert wait_status(app, ok.id, "succeeded").result == 5
    failed = wait_status(app, bad.id, "failed")
    assert (failed.attempts, failed.error) == (2, "ValueError: disk")
    progressed = wait_status(app, steps.id, "succeeded")
    assert (progressed.progress, progressed.progress_message) == (100.0, "step 4 of 4")
    later = invariants.enqueue(J, "add", [1, 1])  # still serving
    assert wait_status(app, later.id, "succeeded").result == 2
    for job in (ok, bad, steps, later):  # marked just after the outcome's commit
        wait_for(
            lambda j=job: job_of(app, j.id).log_incomplete,
            what=f"job {job.id} to be marked log_incomplete",
        )

    assert worker.poll() is None and pid_alive(worker.pid)
    assert {log: log.stat().st_size for log in sizes} == sizes  # not one byte got through
    output = b"".join(p.read_bytes() for p in (env.tmp / "worker-output").iterdir())
    assert b"Traceback" not in output, output[-2000:]
    invariants.check()


def test_a_job_taken_back_while_the_log_disk_is_full_is_marked_log_incomplete(
    env: Env, app: Any, invariants: Invariants
) -> None:
    """Case 15 with case 1: the runner that takes the job back cannot log its failure."""
    gate = env.tmp / "gate"
    job = invariants.enqueue(J, "wait_for_file", [str(gate), "lost"], retry_attempts=0)
    host_a = start_worker(env, runner_id="host-a")  # its logs are fine
    [pid] = wait_started(env, "lost")
    os.kill(host_a.pid, signal.SIGKILL)
    host_a.wait(timeout=10)
    wait_for(lambda: not pid_alive(pid), what="the job process to die with its runner")
    age_leases(app, owner="host-a")
    full = {"BGJOBS_LOG_FILE": "/dev/full", "BGJOBS_ERROR_LOG_FILE": "/dev/full"}
    start_worker(env, runner_id="host-b", extra_env=full)  # sweeps at start
    done = wait_status(app, job.id, "failed")
    assert done.end_reason == "lease_expired"
    # The mark follows the failed log write, itself after the commit that took the job back.
    wait_for(
        lambda: job_of(app, job.id).log_incomplete,
        what="the job whose failure could not be logged to be marked log_incomplete",
    )
    invariants.check()
