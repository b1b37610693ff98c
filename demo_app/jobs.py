"""Sample jobs for the demo: each one shows one thing the runner does for you.

They run in a process of their own, forked by the runner inside an application context, so
they may use the app (``flask.current_app``) as a request handler would. Only the names in
``BGJOBS_ALLOWED_JOBS`` (see ``.env.example``) can be enqueued.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Any

from flask_bgjobs import current_job


class Reports:
    """A report built in steps, with progress you can watch in the log and the job list."""

    def process_data(self, rows: int | list[float] = 100, seconds: float = 3.0) -> dict[str, Any]:
        """Sum ``rows`` (a list of numbers, or how many to make up) over about ``seconds``."""
        values = [float(i) for i in range(rows)] if isinstance(rows, int) else list(rows)
        steps = 5
        for step in range(1, steps + 1):
            time.sleep(seconds / steps)
            done = len(values) * step // steps
            current_job.progress(100 * step / steps, f"processed {done} of {len(values)} rows")
        return {"rows": len(values), "total": sum(values)}


class Flaky:
    """A call to a service that is not ready yet: it fails, is retried, then succeeds."""

    def call(self, failures: int = 2) -> str:
        """Raise on the first ``failures`` attempts, succeed on the next one."""
        attempt = current_job.attempt
        if attempt <= failures:
            # Shows up in the error log with its traceback, and as a "retrying" warning.
            raise ConnectionError(f"upstream not ready (attempt {attempt})")
        return f"connected on attempt {attempt}"


class Slow:
    """CPU work that takes a while: what you would never do inside a request."""

    def crunch(self, seconds: float = 5.0) -> dict[str, Any]:
        """Hash in a loop for ``seconds``, reporting progress once a second."""
        digest = b"flask-bgjobs"
        rounds = 0
        start = time.monotonic()
        next_report = start + 1
        while (elapsed := time.monotonic() - start) < seconds:
            for _ in range(1000):
                digest = hashlib.sha256(digest).digest()
            rounds += 1000
            if time.monotonic() >= next_report:
                next_report += 1
                current_job.progress(min(99.0, 100 * elapsed / seconds), f"{rounds} rounds")
        current_job.progress(100, f"{rounds} rounds")
        return {"rounds": rounds, "digest": digest.hex()[:16]}


class Mailer:
    """Bulk and urgent mail in one queue: priority decides which due job starts first."""

    def newsletter(self, batch: int, seconds: float = 1.0) -> str:
        """Send one batch of a newsletter: bulk work that can wait (enqueued at priority 0)."""
        time.sleep(seconds)
        return f"newsletter batch {batch} sent"

    def password_reset(self, user: str) -> str:
        """Send a password-reset mail: someone is waiting for it (enqueued at priority 10)."""
        return f"password reset mail sent to {user}"


class Reminders:
    """Something to do later: enqueued with ``delay``, it stays ``pending`` until then."""

    def send(self, message: str) -> str:
        """Deliver the reminder (here: store it as the job's result)."""
        return f"reminder: {message}"


class Stuck:
    """A call that hangs: enqueued with ``timeout=3``, the runner kills it after 3 s."""

    def wait(self, seconds: float = 10.0) -> str:
        """Sleep ``seconds``; under a shorter timeout the attempt ends as ``timeout``."""
        current_job.progress(0, f"sleeping {seconds:g} s")
        time.sleep(seconds)
        return f"woke up after {seconds:g} s"


class Broken:
    """A job with a bug: every attempt raises, so it ends ``failed`` once retries run out."""

    def run(self, order: int = 42) -> None:
        """Raise on every attempt (the traceback goes to the error log and the job page)."""
        raise ValueError(f"order {order} has no line items (attempt {current_job.attempt})")


def word_count(text: str, top: int = 3) -> dict[str, Any]:
    """A module function job (``demo_app.jobs::word_count``): count the words in ``text``."""
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    counts = Counter(w for w in words if w)
    return {"words": sum(counts.values()), "top": counts.most_common(top)}
