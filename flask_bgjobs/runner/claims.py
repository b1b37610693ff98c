"""When to claim, and the claim itself with the runner's last check before anything runs.

A claim is wanted after a wake-up (an enqueue on this host, a NOTIFY from another), when a
slot frees up, and when the earliest waiting job falls due: the next due time is polled every
`POLL_INTERVAL`, so a job that nobody announced (a delay ran out, a retry wait ended, a row
inserted by hand) starts within about a second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flask_bgjobs import security
from flask_bgjobs.errors import BgJobsError
from flask_bgjobs.models import Job
from flask_bgjobs.runner.clock import Now
from flask_bgjobs.runner.health import Health
from flask_bgjobs.store import Store

#: Fallback poll for the next due time when no wake-up arrives (seconds).
POLL_INTERVAL = 1.0


class Claims:
    """Decides when to claim and claims; the loop starts what it returns."""

    def __init__(
        self,
        store: Store,
        allowlist: security.Allowlist,
        *,
        owner: str,
        runner_id: str,
        lease_seconds: float,
        max_params_bytes: int,
        health: Health,
        queues: tuple[str, ...] | None = None,
        queue_limits: Mapping[str, int] | None = None,
        on_expired: Callable[[list[Job]], None] | None = None,
    ) -> None:
        self.store = store
        #: The queues this runner serves (``None``: all) and the limits it applies.
        self.queues = queues
        self.queue_limits = dict(queue_limits or {})
        self.on_expired = on_expired
        self.allowlist = allowlist
        self.owner = owner
        self.runner_id = runner_id
        self.lease_seconds = lease_seconds
        self.max_params_bytes = max_params_bytes
        self.health = health
        #: A claim may find something: set by wake-ups, freed slots and due times.
        self.wanted = True
        self.next_poll = 0.0  # monotonic
        #: When the earliest waiting job falls due (epoch seconds), as last polled.
        self.next_due: float | None = None
        self.retry_at = 0.0  # monotonic
        # Jobs due at or before this (epoch) were seen by the last claim: one still waiting is
        # held back (a limit, a pause) and wants a claim only with the next poll, not at once.
        self._considered_until = float("-inf")
        self._relook = False

    def want(self) -> None:
        """Something may be claimable now."""
        self.wanted = True

    def step(self, now: Now) -> None:
        """Poll for the next due time when its timer ran out; a due job makes a claim wanted.

        A job the last claim saw but left (its queue paused or at a limit, its key busy) is
        tried again once per `POLL_INTERVAL`, when a limit may have freed on another runner.
        """
        if self.next_due is not None and self.next_due <= now.wall:
            self.next_due = None
            self.wanted = True
        if now.mono < self.next_poll or now.mono < self.retry_at:
            return
        timer, self._relook = not self._relook, False
        self.next_poll = now.mono + POLL_INTERVAL
        try:
            self.next_due = self.store.next_due_at(self.queues)
        except Exception as exc:  # noqa: BLE001 - a locked or lost database must not kill us
            self.retry_at = self.health.failed("poll", exc, now.mono)
            return
        if self.next_due is not None and self.next_due <= now.wall:
            if timer or self.next_due > self._considered_until:
                self.wanted = True
            self.next_due = None

    def claim(self, now: Now, free: int) -> tuple[list[Job], list[tuple[Job, str]]]:
        """Claim up to `free` due jobs: those to start, and those refused at this last check."""
        if not self.wanted or free <= 0 or now.mono < self.retry_at:
            return [], []
        try:
            jobs = self.store.claim(
                owner=self.owner,
                runner_id=self.runner_id,
                limit=free,
                lease_seconds=self.lease_seconds,
                now=now.wall,
                queues=self.queues,
                queue_limits=self.queue_limits,
                on_expired=self.on_expired,
            )
        except Exception as exc:  # noqa: BLE001
            self.retry_at = self.health.failed("claim", exc, now.mono)
            return [], []
        self.health.ok()
        self._considered_until = now.wall
        if len(jobs) < free:
            # Drained what is due: stop claiming and look up the next due time right away.
            self.wanted = False
            self.next_due = None
            self.next_poll = now.mono
            self._relook = True  # that poll only learns the next due time
        ready: list[Job] = []
        refused: list[tuple[Job, str]] = []
        for job in jobs:
            try:
                # Before anything is imported: the row may have been edited since the enqueue.
                self.allowlist.check(job.class_name, job.method_name)
                security.decode_params(job.params_json, self.max_params_bytes)
            except BgJobsError as exc:
                refused.append((job, f"{type(exc).__name__}: {exc}"))
                continue
            ready.append(job)
        return ready, refused

    def next_wake(self, now: Now, free: int) -> float:
        """When the loop should come back for this part (monotonic)."""
        if self.wanted and free > 0:
            return self.retry_at
        wake = max(self.next_poll, self.retry_at)
        if self.next_due is not None:
            wake = min(wake, now.mono + max(0.0, self.next_due - now.wall))
        return wake

    def due_now(self, now: Now) -> bool:
        """True when a job is due now (a burst worker keeps going); True when unsure."""
        try:
            due = self.store.next_due_at(self.queues)
        except Exception as exc:  # noqa: BLE001
            self.retry_at = self.health.failed("poll", exc, now.mono)
            return True
        return due is not None and due <= now.wall
