"""Recurring jobs (SPEC §11): what a schedule says, and when its ticks fall. Pure: no I/O.

A schedule has exactly one of ``cron`` (five fields, read by cronsim in an IANA time zone, so
daylight-saving changes are cronsim's to get right) or ``every`` (seconds; ticks fall on whole
multiples of it since the Unix epoch, so every runner agrees on them without talking). Each
tick is identified by its time; the database refuses a second job for one (schedule, tick).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = ["OVERLAP_ALLOW", "OVERLAP_SKIP", "Schedule", "ScheduleError", "parse"]

OVERLAP_SKIP = "skip"
OVERLAP_ALLOW = "allow"
#: A schedule's name: what logs, the CLI and the unique index call it.
NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,200}", re.ASCII)
_OPTIONS = frozenset(
    {"job", "cron", "every", "timezone", "params", "priority", "retry_attempts", "timeout",
     "queue", "overlap"}
)  # fmt: skip


class ScheduleError(ValueError):
    """A malformed schedule: says which schedule and which field."""

    def __init__(self, name: str, field_name: str, message: str) -> None:
        self.schedule, self.field = name, field_name
        super().__init__(f"schedule {name!r}, field {field_name!r}: {message}")


@dataclass(frozen=True)
class Schedule:
    """One recurring job, checked."""

    name: str
    class_name: str
    method_name: str
    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"
    params: list[Any] | dict[str, Any] | None = None
    priority: int | None = None
    retry_attempts: int | None = None
    timeout: float | None = None
    queue: str | None = None
    overlap: str = OVERLAP_SKIP
    _zone: Any = field(default=None, repr=False, compare=False)

    @property
    def job_name(self) -> str:
        """``pkg.mod.Class::method``, as logs name jobs."""
        return f"{self.class_name}::{self.method_name}"

    @property
    def timing(self) -> str:
        """When the ticks fall, as one text: a schedule whose timing changed starts afresh."""
        return (
            f"every {self.every}" if self.every is not None else f"cron {self.cron} {self.timezone}"
        )

    def describe(self) -> str:
        """The schedule in words: ``At 02:00 every day (Europe/Berlin)``, ``every 60 s``."""
        if self.every is not None:
            return f"every {self.every} s"
        assert self.cron is not None
        words = CronSim(self.cron, datetime.now(tz=self._tz())).explain()
        return words if self.timezone == "UTC" else f"{words} ({self.timezone})"

    def latest_tick(self, now: float) -> float:
        """The latest tick at or before `now` (epoch seconds)."""
        if self.every is not None:
            return math.floor(now / self.every) * self.every
        assert self.cron is not None
        # cronsim's reverse walk starts strictly before the time it is given.
        probe = datetime.fromtimestamp(math.floor(now) + 1, tz=self._tz())
        return next(CronSim(self.cron, probe, reverse=True)).timestamp()

    def next_tick(self, now: float) -> float:
        """The first tick after `now` (epoch seconds)."""
        if self.every is not None:
            return (math.floor(now / self.every) + 1) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(math.floor(now), tz=self._tz())
        return next(CronSim(self.cron, start)).timestamp()

    def _tz(self) -> Any:
        return self._zone or timezone.utc


def parse(name: object, spec: object) -> Schedule:
    """Check one ``BGJOBS_SCHEDULE`` entry (or `bgjobs.schedule` call); `ScheduleError` if bad.

    The allowlist is not consulted here: `BackgroundJobs` does that once the app is set up.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ScheduleError(
            str(name)[:60], "name", "use 1 to 200 of A-Z a-z 0-9 _ . : - (no spaces)"
        )
    if not isinstance(spec, Mapping):
        raise ScheduleError(name, "job", f"expected a dict of options, got {type(spec).__name__}")
    unknown = sorted(set(map(str, spec)) - _OPTIONS)
    if unknown:
        raise ScheduleError(name, unknown[0], f"unknown option; use {', '.join(sorted(_OPTIONS))}")
    class_name, method_name = _target(name, spec.get("job"))
    cron, every = spec.get("cron"), spec.get("every")
    if (cron is None) == (every is None):
        raise ScheduleError(name, "cron", "give exactly one of 'cron' or 'every'")
    zone_name = spec.get("timezone", "UTC")
    if not isinstance(zone_name, str):
        raise ScheduleError(name, "timezone", "expected an IANA time zone name such as 'UTC'")
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            name, "timezone", f"{zone_name!r} is not an IANA time zone (like 'Europe/Berlin')"
        ) from None
    if cron is not None:
        if not isinstance(cron, str) or len(cron.split()) != 5:
            raise ScheduleError(name, "cron", "expected five fields: minute hour day month weekday")
        try:
            CronSim(cron, datetime.now(tz=zone))
        except CronSimError as exc:
            raise ScheduleError(name, "cron", f"{cron!r}: {exc}") from None
    else:
        if isinstance(every, bool) or not isinstance(every, (int, float)) or every < 1:
            raise ScheduleError(name, "every", "expected a whole number of seconds >= 1")
        if every != int(every) or every > 366 * 86400:
            raise ScheduleError(name, "every", "expected whole seconds, at most a year")
        if zone_name != "UTC":
            raise ScheduleError(name, "timezone", "only 'cron' schedules have a time zone")
        every = int(every)
    overlap = spec.get("overlap", OVERLAP_SKIP)
    if overlap not in (OVERLAP_SKIP, OVERLAP_ALLOW):
        raise ScheduleError(name, "overlap", "expected 'skip' (the default) or 'allow'")
    params = spec.get("params")
    if params is not None and not isinstance(params, (list, dict)):
        raise ScheduleError(name, "params", "expected a list or a dict of JSON values")
    return Schedule(
        name=name,
        class_name=class_name,
        method_name=method_name,
        cron=cron,
        every=every,
        timezone=zone_name,
        params=params,
        priority=spec.get("priority"),
        retry_attempts=spec.get("retry_attempts"),
        timeout=spec.get("timeout"),
        queue=spec.get("queue"),
        overlap=str(overlap),
        _zone=zone,
    )


def _target(name: str, job: object) -> tuple[str, str]:
    """``"pkg.mod.Class:method"`` (or a module and its function) as two names."""
    if isinstance(job, (tuple, list)) and len(job) == 2 and all(isinstance(p, str) for p in job):
        return job[0], job[1]
    if not isinstance(job, str) or job.count(":") != 1:
        raise ScheduleError(name, "job", "expected 'pkg.mod.Class:method' or 'pkg.module:function'")
    class_name, method_name = job.split(":")
    return class_name.strip(), method_name.strip()


def iso_minute(ts: float) -> str:
    """``2026-12-06 10:01:00``: a tick as the log line names it (UTC)."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def within(a: float, b: float) -> bool:
    """Two tick times that are the same tick (floating point aside)."""
    return abs(a - b) < 1e-3
