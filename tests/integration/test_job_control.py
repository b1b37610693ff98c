"""``DiscardJob`` and ``RetryJob`` raised by jobs that real runners run (SPEC §12)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Env, wait_for

from flask_bgjobs import run_background_job

J = "jobapp.jobs.Jobs"

pytestmark = pytest.mark.usefixtures("ctx")


def test_a_discarded_job_fails_for_good_with_attempts_left(env: Env, bgjobs: Any) -> None:
    job = run_background_job(J, "discard", ["order 7 is gone", "gone"], retry_attempts=5)
    env.start_worker()
    done = wait_for(
        lambda: bgjobs.get_job(job.id).status == "failed" and bgjobs.get_job(job.id),
        what="the job to fail",
    )
    assert (done.attempts, done.end_reason) == (1, "discarded")
    assert done.error == "DiscardJob: order 7 is gone"
    assert "raise DiscardJob(reason)" in (done.traceback or "")
    assert [e.kind for e in done.events] == ["started", "discarded"]
    assert env.marks_of("gone") == ["1"]
    log = env.main_log.read_text()
    assert (
        f"ERROR: Job failed for {J}::discard (job {job.id}, attempt 1/6). Error: DiscardJob" in log
    )
    assert "retrying" not in log


def test_retry_job_waits_the_jobs_own_delay_then_runs_again(env: Env, bgjobs: Any) -> None:
    # BGJOBS_RETRY_DELAY is 0.05 s here: the job asks for 1.5 s instead.
    job = run_background_job(J, "retry_later", [1.5, "later", 1], retry_attempts=2)
    env.start_worker()
    done = wait_for(
        lambda: bgjobs.get_job(job.id).status == "succeeded" and bgjobs.get_job(job.id),
        what="the second attempt to succeed",
    )
    assert (done.attempts, done.result) == (2, "done")
    first, second = (float(line.split()[1]) for line in env.marks_of("later"))
    assert second - first >= 1.5
    ends = [e for e in done.events if e.kind != "started"]
    assert [e.kind for e in ends] == ["exception", "succeeded"]
    assert ends[0].message == "RetryJob: retry in 1.5 s; retrying in 1.5 s"


def test_retry_job_with_no_attempt_left_fails(env: Env, bgjobs: Any) -> None:
    job = run_background_job(J, "retry_later", [60, "last", 5], retry_attempts=0)
    env.burst()
    done = bgjobs.get_job(job.id)
    assert (done.status, done.attempts, done.end_reason) == ("failed", 1, "exception")
    assert done.error == "RetryJob: retry in 60 s"
