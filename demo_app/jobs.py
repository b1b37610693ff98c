"""Sample jobs for the demo: each one shows one thing the runner does for you.

They run in a process of their own, forked by the runner inside an application context, so
they may use the app (``flask.current_app``) as a request handler would. Only the names in
``BGJOBS_ALLOWED_JOBS`` (see ``.env.example``) can be enqueued.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from typing import Any

from flask_bgjobs import DiscardJob, RetryJob, current_job


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


# -- release 0.2.0: queues, keys, time, limits, retry control ----------------------------------


class Mail:
    """Mail goes to its own queue, ``mail``: the demo caps it at one job at a time
    (``BGJOBS_QUEUE_LIMITS``), and its buttons pause and resume it."""

    def welcome(self, user: str, seconds: float = 1.0) -> str:
        """Send a welcome mail (here: wait ``seconds``, as an SMTP server would make us)."""
        time.sleep(seconds)
        return f"welcome mail sent to {user}"


class Digest:
    """A digest enqueued with a ``unique_key``: clicking twice still builds it once."""

    def build(self, day: str, seconds: float = 2.0) -> str:
        """Build the day's digest (about ``seconds``)."""
        time.sleep(seconds)
        return f"digest for {day} built"


class Printer:
    """One printer, many pages: a ``concurrency_key`` lets one job use it at a time."""

    def print_page(self, page: int, seconds: float = 1.0) -> str:
        """Print one page (about ``seconds``)."""
        time.sleep(seconds)
        return f"page {page} printed"


class Sms:
    """An SMS gateway that takes one message at a time (``concurrency_key="sms-gateway"``)."""

    def hold_line(self, seconds: float = 6.0) -> str:
        """Keep the gateway busy for ``seconds`` (a slow bulk send)."""
        time.sleep(seconds)
        return f"bulk send done after {seconds:g} s"

    def send_code(self, code: str) -> str:
        """Send a one-time code: worthless once its ``expires_in`` has passed."""
        return f"code {code} sent"


class Limits:
    """Jobs that show what the runner records and enforces for each attempt's process."""

    def chatty(self, lines: int = 3) -> str:
        """Print to stdout and stderr: the attempt's output is kept with the job."""
        for n in range(1, lines + 1):
            print(f"step {n} of {lines}: working")
        print("a warning on stderr", file=sys.stderr)
        return f"printed {lines} lines"

    def hog_memory(self, mib: int = 256) -> int:
        """Allocate ``mib`` MiB, one at a time: under a smaller ``memory_limit`` the
        allocation fails with MemoryError, and the attempt ends by ``memory``."""
        chunks = [bytearray(1024 * 1024) for _ in range(mib)]
        return len(chunks)

    def burn_cpu(self, seconds: float = 10.0) -> int:
        """Spin for up to ``seconds`` of wall-clock time: under a ``cpu_limit`` of 1 s the
        kernel stops the process after one second of CPU, and the attempt ends by ``cpu``."""
        rounds = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rounds += 1
        return rounds


class Control:
    """A job deciding about its own retries with ``DiscardJob`` and ``RetryJob``."""

    def discard(self, order: int = 7) -> None:
        """Fail for good at once, whatever attempts remain: retrying cannot help."""
        raise DiscardJob(f"order {order} was deleted: nothing to do")

    def retry_later(self, in_seconds: float = 5.0) -> str:
        """Ask for a retry in ``in_seconds`` on the first attempt; succeed on the second."""
        if current_job.attempt == 1:
            raise RetryJob(in_seconds)
        return f"done on attempt {current_job.attempt}"


class Ops:
    """Recurring jobs: the runners enqueue one job per tick of their schedules."""

    def heartbeat(self) -> str:
        """Every 30 s (schedule ``heartbeat``): say the runners are alive."""
        return f"alive at {time.strftime('%H:%M:%S', time.gmtime())} UTC"
