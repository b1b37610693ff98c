"""Recurring jobs: every runner watches the clock, the database decides who enqueues a tick.

At each tick, every runner that notices it asks the store to take it (`Store.take_tick`): a
compare-and-set on the schedule's ``last_tick`` plus a unique (schedule, tick) index make
exactly one of them enqueue the job, on any number of hosts, and a runner killed half-way
commits nothing. After downtime only the latest tick is taken, once: the older ones are
simply behind ``last_tick`` by then. A runner remembers the ticks it has seen, so between
ticks it does not touch the database at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flask_bgjobs import joblog, recurring, security
from flask_bgjobs.errors import BgJobsError
from flask_bgjobs.runner.clock import Now
from flask_bgjobs.runner.health import Health
from flask_bgjobs.store import NewJob, Store

#: Longest sleep between looks at the clock, in case it jumps (seconds).
MAX_WAIT = 30.0


class Scheduler:
    """Takes the ticks of the app's recurring jobs as they fall."""

    def __init__(
        self,
        store: Store,
        schedules: Callable[[], Mapping[str, recurring.Schedule]],
        build: Callable[[recurring.Schedule, float], NewJob],
        log: joblog.JobLog,
        health: Health,
    ) -> None:
        self.store = store
        self.schedules = schedules
        self.build = build
        self.log = log
        self.health = health
        self.next_check = 0.0  # monotonic
        self.retry_at = 0.0
        #: Per schedule, the latest tick this runner knows was taken (by anyone).
        self._seen: dict[str, float] = {}
        self._added: set[str] = set()

    def active(self) -> bool:
        """True while the app has recurring jobs (an auto-started runner then stays up)."""
        return bool(self.schedules())

    def step(self, now: Now) -> bool:
        """Take the ticks that fell since the last look; True if a job was enqueued."""
        if now.mono < max(self.next_check, self.retry_at):
            return False
        specs = self.schedules()
        if not specs:
            self.next_check = now.mono + MAX_WAIT
            return False
        enqueued = False
        try:
            new = {
                n: (s.latest_tick(now.wall), s.timing)
                for n, s in specs.items()
                if n not in self._added
            }
            if new:
                # A schedule new to the database (or with a new timing) starts as if its latest
                # tick were taken (it waits for the next); one known already keeps its last
                # tick: the loop below then takes the latest tick missed while no runner was
                # up, once.
                self.store.add_schedules(new, now=now.wall)
                self._added.update(new)
            for name, spec in specs.items():
                tick = spec.latest_tick(now.wall)
                if tick <= self._seen.get(name, float("-inf")):
                    continue
                enqueued = self._take(spec, tick, now) or enqueued
                self._seen[name] = tick
        except Exception as exc:  # noqa: BLE001 - a locked or lost database must not kill us
            self.retry_at = self.health.failed("schedules", exc, now.mono)
            return enqueued
        soonest = min(s.next_tick(now.wall) for s in specs.values())
        self.next_check = now.mono + min(MAX_WAIT, max(0.0, soonest - now.wall))
        return enqueued

    def _take(self, spec: recurring.Schedule, tick: float, now: Now) -> bool:
        try:
            new: NewJob | None = self.build(spec, tick)
            problem = None
        except BgJobsError as exc:  # the allowlist or the spec changed since init_app
            new, problem = None, exc
        taken = self.store.take_tick(
            spec.name,
            tick,
            new,
            skip_if_running=spec.overlap == recurring.OVERLAP_SKIP,
            now=now.wall,
        )
        if taken is None:
            return False  # another runner took it, or the schedule is paused
        when = recurring.iso_minute(tick)
        if taken.skipped_for is not None:
            self.log.info(joblog.skipped(spec.name, when, taken.skipped_for))
        elif taken.job is not None:
            self.log.info(
                f"Schedule {security.printable(spec.name)} enqueued job {taken.job.id} for {when}."
            )
            return True
        elif problem is not None:
            self.log.write_error(
                f"Schedule {security.printable(spec.name)} enqueued nothing for {when}. "
                f"Error: {joblog.error_text(problem)}"
            )
        return False

    def next_wake(self) -> float:
        """When to look again (monotonic): the next tick, or `MAX_WAIT` from the last look."""
        return max(self.next_check, self.retry_at)
