"""Retry policy in one place: how long a failed attempt waits before the next one."""

from __future__ import annotations

import random
from collections.abc import Callable

from flask_bgjobs.models import Job

#: The longest wait exponential backoff grows to (seconds).
MAX_BACKOFF = 3600.0
#: Exponential waits vary by up to this fraction either way, so retries of jobs that failed
#: together (a database outage) do not all come back in the same second.
JITTER = 0.1


def backoff(
    attempt: int,
    base: float,
    kind: str,
    *,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    ``fixed`` waits `base` every time; ``exponential`` waits ``base * 2**(attempt-1)`` with
    ±10 % jitter, capped at `MAX_BACKOFF`.
    """
    if kind != "exponential":
        return base
    wait: float = min(MAX_BACKOFF, base * 2.0 ** min(attempt - 1, 64))
    return min(MAX_BACKOFF, wait * (1 + JITTER * (2 * rand() - 1)))


def retry_in(job: Job, *, retry_delay: float | None, kind: str) -> float | None:
    """Wait before the next attempt of `job`, or ``None`` when its attempts are used up.

    `job.attempts` already counts the attempt that just failed. The base wait is
    ``BGJOBS_RETRY_DELAY`` when set, else the job's own delay, else 1 s.
    """
    if job.attempts >= job.max_attempts:
        return None
    base = retry_delay if retry_delay is not None else (job.delay or 1.0)
    return backoff(max(1, job.attempts), base, kind)
