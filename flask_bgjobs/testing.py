"""Helpers for tests of a host app: run stored jobs here, and see what was enqueued.

With ``BGJOBS_EXECUTION = "manual"`` jobs are stored and nothing runs them (no runner is
woken or started) until a test calls `run_jobs`; `enqueued` shows what waits. With
``"inline"`` every job has run by the time ``run_background_job`` returns. Both run jobs the
way `flask_bgjobs.inline` describes: in the calling process, recorded as a runner records them.
Both need an application context, like ``run_background_job``.
"""

from __future__ import annotations

from flask_bgjobs.models import Job
from flask_bgjobs.state import get_state

__all__ = ["enqueued", "run_jobs"]


def run_jobs() -> int:
    """Run every job due now in this process, each to its end (its retries at once); return
    how many jobs ran.

    Jobs due later (a ``delay``, a ``run_at``) stay; jobs of a paused queue stay; jobs that the
    jobs enqueue run too, when due. A job's exception is recorded on the job, not raised.
    """
    from flask_bgjobs import inline  # loads the job process's code: only when jobs run

    return inline.run_due(get_state())


def enqueued(class_name: str | None = None, method_name: str | None = None) -> list[Job]:
    """The ``pending`` jobs, oldest first; only those of `class_name` (a class path, or a
    module path for a function) and `method_name` when given."""
    return get_state().store.pending_jobs(class_name, method_name)
