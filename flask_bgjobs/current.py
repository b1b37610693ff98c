"""`flask_bgjobs.current_job`: the job the current process is running.

Set by whatever runs the attempt (the executor in a job process) with `running`; the proxy
itself knows nothing of pipes or databases, it hands progress to the `report` it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: Longest progress message kept (characters).
MAX_PROGRESS_MESSAGE = 1000


@dataclass(frozen=True)
class JobContext:
    """The attempt under way and where its progress goes."""

    job_id: int
    attempt: int
    report: Callable[[float, str], None]


_context: JobContext | None = None


@contextmanager
def running(context: JobContext) -> Iterator[None]:
    """Make `context` the current job for the duration of the block."""
    global _context
    previous, _context = _context, context
    try:
        yield
    finally:
        _context = previous


class CurrentJob:
    """The job this process is running; outside a job every attribute raises `RuntimeError`."""

    def _ctx(self) -> JobContext:
        if _context is None:
            raise RuntimeError(
                "Working outside of a background job: current_job is only set inside a job "
                "run by flask-bgjobs."
            )
        return _context

    @property
    def id(self) -> int:
        """The job's id."""
        return self._ctx().job_id

    @property
    def attempt(self) -> int:
        """The number of this attempt, 1 for the first run."""
        return self._ctx().attempt

    def progress(self, percent: float, message: str = "") -> None:
        """Report progress (0–100) with an optional message; it updates the record and log."""
        ctx = self._ctx()
        if isinstance(percent, bool) or not isinstance(percent, (int, float)):
            raise TypeError("percent must be a number from 0 to 100")
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be from 0 to 100, got {percent!r}")
        ctx.report(float(percent), str(message)[:MAX_PROGRESS_MESSAGE])

    def __bool__(self) -> bool:
        return _context is not None

    def __repr__(self) -> str:
        if _context is None:
            return "<current_job: none>"
        return f"<current_job {_context.job_id} attempt {_context.attempt}>"


current_job = CurrentJob()
