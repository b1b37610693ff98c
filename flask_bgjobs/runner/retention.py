"""``BGJOBS_RETENTION_DAYS``: runners delete old finished jobs, a bounded batch at a time.

At most once an hour per runner (several runners deleting the same rows is harmless: a row is
deleted once), and at most `MAX_BATCHES` batches each time, each its own short transaction, so
a first purge of a year of history never holds SQLite's write lock for long; what is left
goes the next hour.
"""

from __future__ import annotations

from flask_bgjobs.runner.clock import Now
from flask_bgjobs.runner.health import Health
from flask_bgjobs.store import Store

#: Seconds between purges.
EVERY = 3600.0
#: Jobs deleted per transaction.
BATCH = 500
#: Most batches one purge may delete (10,000 jobs an hour per runner).
MAX_BATCHES = 20


class Retention:
    """Deletes finished jobs past the retention period."""

    def __init__(self, store: Store, days: float, health: Health) -> None:
        self.store = store
        self.days = days
        self.health = health
        self.next_run = 0.0  # monotonic: a new runner purges at once
        #: Jobs deleted by this runner so far (for the log and tests).
        self.deleted = 0

    def step(self, now: Now) -> None:
        """Purge when the hour is up."""
        if self.days <= 0:
            return
        if now.mono < self.next_run:
            return
        self.next_run = now.mono + EVERY
        day = 86400.0
        try:
            for _ in range(MAX_BATCHES):
                n = self.store.purge(
                    done_before=now.wall - self.days * day,
                    failed_before=now.wall - 2 * self.days * day,
                    limit=BATCH,
                )
                self.deleted += n
                if n < BATCH:
                    break
        except Exception as exc:  # noqa: BLE001 - next hour, then
            self.health.failed("retention", exc, now.mono)

    def next_wake(self) -> float | None:
        """When the next purge is due (monotonic)."""
        return self.next_run if self.days > 0 else None
