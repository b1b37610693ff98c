"""Attempts in the calling process, for tests: ``BGJOBS_EXECUTION`` ``inline`` and ``manual``.

No second engine: a job is claimed and finished through the store's own transitions (under a
lease owner of this call's, every write fenced), its target resolved and called by the job
process's `executor.run_attempt`, its end reason given by the runner's `classify`, and its
outcome, progress and log lines written by the runner's `Recorder`. So the row, the events, the
logs, `current_job` and the signals are what a runner would have left, with these differences:

- attempts follow one another at once (a failed attempt with attempts left is retried now,
  and a ``RetryJob`` wait is not waited), and a job due later runs now (`run_job`);
- the call happens in this process, in an app context of its own (so Flask-SQLAlchemy gives
  the job a session of its own), with no timeout and no memory or CPU limit;
- its exception is recorded, not raised.

Only imported when a job runs this way: it loads the executor and the runner's outcome code.
"""

from __future__ import annotations

import os
import secrets
import time

from flask import Flask, current_app

from flask_bgjobs import current, executor, joblog, security
from flask_bgjobs.errors import BgJobsError, DatabaseBusy
from flask_bgjobs.models import Job
from flask_bgjobs.runner.health import Health
from flask_bgjobs.runner.outcomes import Recorder, classify, rejected
from flask_bgjobs.state import AppState
from flask_bgjobs.store import Outcome

#: How long an outcome that the database refuses (SQLite locked) is retried before giving up.
WRITE_PATIENCE = 30.0


def run_job(state: AppState, job_id: int) -> Job:
    """Run a job just enqueued, attempt after attempt, to its end; return it as it ended.

    A job that is not waiting any more (a job enqueued by a job that ran it already, or
    cancelled) is returned as it is.
    """
    session = _Session(state)
    job = session.claim(job_id)
    if job is not None:
        session.attempts(job)
    return state.store.get(job_id)


def run_due(state: AppState) -> int:
    """Run every job due now, in claim order (priority, then due time), each to its end;
    jobs that they enqueue, and that are due, too. Returns how many jobs ran."""
    session = _Session(state)
    ran = 0
    while True:
        claimed = state.store.claim(
            owner=session.owner,
            runner_id=session.runner_id,
            limit=1,
            lease_seconds=state.settings.lease_seconds,
            queue_limits=state.settings.queue_limits,
            on_expired=session.log_expired,
        )
        if not claimed:
            return ran
        session.attempts(claimed[0])
        ran += 1


class _Session:
    """One call's lease owner and recorder."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        self.runner_id = state.runner_id()
        # Unique per call, as a runner's is per start: a lease of ours is never another's.
        self.owner = f"{self.runner_id}~inline-{secrets.token_hex(4)}"
        self.recorder = Recorder(
            state.store, state.joblog, self.owner, Health(state.joblog, self.runner_id)
        )

    def claim(self, job_id: int) -> Job | None:
        return self.state.store.claim_job(
            job_id,
            owner=self.owner,
            runner_id=self.runner_id,
            lease_seconds=self.state.settings.lease_seconds,
        )

    def attempts(self, job: Job | None) -> None:
        """Run a claimed job's attempts until one is not retried."""
        while job is not None:
            outcome = self.attempt(job)
            if outcome.retry_in is None:
                return
            job = self.claim(job.id)

    def attempt(self, job: Job) -> Outcome:
        """One attempt of a claimed job, recorded as a runner records it."""
        s = self.state.settings
        self.recorder.started([job])
        try:
            # The runner's last check before anything is imported (`Claims.claim`).
            self.state.allowlist.check(job.class_name, job.method_name)
            security.decode_params(job.params_json, s.max_params_bytes)
        except BgJobsError as exc:
            outcome = rejected(job, f"{type(exc).__name__}: {exc}")
            self.recorder.outcome(outcome, job, None)
            self.flush()
            return outcome

        def report(percent: float, message: str) -> None:
            self.recorder.progress(job, percent, message, os.getpid())
            self.flush()

        work = executor.Work(
            job.id, job.attempts, job.class_name, job.method_name, job.params_json, job=job
        )
        started = time.monotonic()
        with (
            self.app.app_context(),
            current.running(current.JobContext(job.id, job.attempts, report)),
        ):
            final = executor.run_attempt(work, self.state.allowlist, s.max_params_bytes)
        if "retry_in" in final:
            final["retry_in"] = 0.0  # attempt after attempt, without waiting
        ended = classify(
            job,
            final=final,
            status=None,
            killed=None,
            retry_in=lambda j: None if self.state.retry_in(j) is None else 0.0,
            pid=os.getpid(),
        )
        assert ended is not None  # only a lost lease gives none, and nothing killed this one
        self.recorder.outcome(ended, job, time.monotonic() - started)
        self.flush()
        return ended

    def flush(self) -> None:
        """Write what the recorder holds now; wait out a locked database, within reason."""
        deadline = time.monotonic() + WRITE_PATIENCE
        while True:
            now = time.monotonic()
            self.recorder.flush(now)
            if not self.recorder.unsaved:
                return
            if now > deadline:
                raise DatabaseBusy(
                    f"could not record the outcome of job {self.recorder.unsaved[0].job_id} "
                    f"for {WRITE_PATIENCE:g} s: the job database stayed locked or away"
                )
            time.sleep(max(0.01, self.recorder.retry_at - now))

    def log_expired(self, expired: list[Job]) -> None:
        lines = [("WARNING", joblog.expired(j.name, j.id)) for j in expired]
        if not self.state.joblog.write(lines):
            self.recorder.log_failed([j.id for j in expired])
