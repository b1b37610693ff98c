"""The two tables and the `Job` value object read from them.

Times are stored as epoch seconds (``float``) so that SQLite and PostgreSQL compare them the
same way and tests can age a lease with one ``UPDATE``; they are shown as ISO 8601 UTC.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from flask_bgjobs import security
from flask_bgjobs.errors import InvalidJob

#: Waiting for its first run (new, manually retried, or returned by a shutdown).
PENDING = "pending"
#: Claimed by a runner; an attempt is under way in a child process.
RUNNING = "running"
#: A failed attempt left attempts over; waiting for ``run_at``.
RETRYING = "retrying"
#: An attempt returned normally.
SUCCEEDED = "succeeded"
#: The last allowed attempt failed, or the job was refused at run time.
FAILED = "failed"
#: Cancelled by an operator before it finished.
CANCELLED = "cancelled"

STATUSES: tuple[str, ...] = (PENDING, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)
DUE_STATUSES: tuple[str, ...] = (PENDING, RETRYING)
FINISHED_STATUSES: tuple[str, ...] = (SUCCEEDED, FAILED, CANCELLED)
#: What `cancel` accepts.
CANCELLABLE_STATUSES: tuple[str, ...] = (PENDING, RETRYING, RUNNING)
#: What `retry` accepts.
RETRYABLE_STATUSES: tuple[str, ...] = (FAILED, CANCELLED)

# Why a runner is woken (a datagram on this host, a NOTIFY payload on PostgreSQL): a job was
# enqueued (claim now), or one was cancelled (check leases now: kill the attempt if it runs).
# Any other payload counts as an enqueue.
WAKE_ENQUEUED = "e"
WAKE_CANCELLED = "c"

# Why an attempt ended; stored as the event kind and the job's ``end_reason``.
END_SUCCEEDED = "succeeded"
END_EXCEPTION = "exception"
END_EXIT = "exit"
END_SIGNAL = "signal"
END_TIMEOUT = "timeout"
END_LEASE_EXPIRED = "lease_expired"
END_SHUTDOWN = "shutdown"
END_CANCELLED = "cancelled"
END_REJECTED = "rejected"
#: Never started within ``expires_in`` of falling due: cancelled, never run (not an attempt).
END_EXPIRED = "expired"
#: Past its memory limit: a MemoryError raised in the job, or its process gave up for memory.
END_MEMORY = "memory"
#: Past its CPU limit: its process was killed by SIGXCPU (or SIGKILL) from RLIMIT_CPU.
END_CPU = "cpu"
#: The job raised `DiscardJob`: a failed attempt, and the job fails for good (never retried).
END_DISCARDED = "discarded"
END_REASONS: tuple[str, ...] = (
    END_SUCCEEDED,
    END_EXCEPTION,
    END_EXIT,
    END_SIGNAL,
    END_TIMEOUT,
    END_LEASE_EXPIRED,
    END_SHUTDOWN,
    END_CANCELLED,
    END_REJECTED,
    END_EXPIRED,
    END_MEMORY,
    END_CPU,
    END_DISCARDED,
)

#: Reasons that count as a failed attempt (not cancels or shutdowns, which operators chose).
ATTEMPT_FAILURES: tuple[str, ...] = (
    END_EXCEPTION,
    END_EXIT,
    END_SIGNAL,
    END_TIMEOUT,
    END_LEASE_EXPIRED,
    END_REJECTED,
    END_MEMORY,
    END_CPU,
    END_DISCARDED,
)

#: The schema these tables describe: the head of the migrations in ``flask_bgjobs/migrations``
#: (0001 is the schema of 0.1.0). `Store` compares it with the database's own before use.
SCHEMA_VERSION = "0002"
#: The queue of a job enqueued without one, unless ``BGJOBS_DEFAULT_QUEUE`` says otherwise.
DEFAULT_QUEUE = "default"
#: What a queue may be called (SPEC §10).
QUEUE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
#: Statuses during which a ``unique_key`` stays taken.
UNIQUE_STATUSES: tuple[str, ...] = (PENDING, RETRYING, RUNNING)

metadata = sa.MetaData()

# BIGINT on PostgreSQL, but INTEGER on SQLite, where only INTEGER PRIMARY KEY is the rowid.
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

jobs = sa.Table(
    "bgjobs_jobs",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("class_name", sa.String(255), nullable=False),
    sa.Column("method_name", sa.String(100), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("delay", sa.Double, nullable=False, default=0.0),
    sa.Column("timeout", sa.Double, nullable=False, default=0.0),
    sa.Column("run_at", sa.Double, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("started_at", sa.Double),
    sa.Column("finished_at", sa.Double),
    sa.Column("progress", sa.Double),
    sa.Column("progress_message", sa.Text),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("traceback", sa.Text),
    sa.Column("end_reason", sa.String(32)),
    sa.Column("runner_id", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("lease_owner", sa.String(255)),
    sa.Column("lease_expires_at", sa.Double),
    sa.Column("log_incomplete", sa.Boolean, nullable=False, default=False),
    # Schema 0002 (0.2.0): queues, uniqueness, concurrency, time, schedules, limits.
    sa.Column("queue", sa.String(64), nullable=False, server_default=DEFAULT_QUEUE),
    sa.Column("unique_key", sa.String(255)),
    sa.Column("concurrency_key", sa.String(255)),
    sa.Column("concurrency_limit", sa.Integer),
    sa.Column("expires_at", sa.Double),
    sa.Column("schedule", sa.String(200)),
    sa.Column("scheduled_for", sa.Double),
    sa.Column("memory_limit", sa.BigInteger),
    sa.Column("cpu_limit", sa.Double),
)

_due = jobs.c.status.in_(DUE_STATUSES)
# The claim's ORDER BY, restricted to due rows: the claim reads only the head of this index.
sa.Index(
    "ix_bgjobs_jobs_due",
    jobs.c.priority.desc(),
    jobs.c.run_at,
    jobs.c.id,
    sqlite_where=_due,
    postgresql_where=_due,
)
_running = jobs.c.status == RUNNING
sa.Index(
    "ix_bgjobs_jobs_lease",
    jobs.c.lease_expires_at,
    sqlite_where=_running,
    postgresql_where=_running,
)
sa.Index("ix_bgjobs_jobs_status_id", jobs.c.status, jobs.c.id)
# The three indexes below leave out the rows they have nothing to say about (NULL): every index
# entry is one more page an enqueue writes, and most jobs have no key, schedule or end yet
# (measured: a SQLite insert + commit 13k/s with full indexes, 25k/s with these partial).
_finished = jobs.c.finished_at.is_not(None)
sa.Index(
    "ix_bgjobs_jobs_finished",
    jobs.c.finished_at,
    sqlite_where=_finished,
    postgresql_where=_finished,
)
# While a job with a unique_key waits or runs, no other job may take the key: the database
# refuses the second insert, so the rule holds across processes and hosts.
_unique_active = jobs.c.unique_key.is_not(None) & jobs.c.status.in_(UNIQUE_STATUSES)
sa.Index(
    "ux_bgjobs_jobs_unique_key",
    jobs.c.unique_key,
    unique=True,
    sqlite_where=_unique_active,
    postgresql_where=_unique_active,
)
# One job per schedule and tick, whatever the number of runners.
_scheduled = jobs.c.schedule.is_not(None)
sa.Index(
    "ux_bgjobs_jobs_schedule_tick",
    jobs.c.schedule,
    jobs.c.scheduled_for,
    unique=True,
    sqlite_where=_scheduled,
    postgresql_where=_scheduled,
)
# Running jobs per concurrency key and per queue: what a claim counts against the limits.
sa.Index(
    "ix_bgjobs_jobs_running_key",
    jobs.c.concurrency_key,
    sqlite_where=_running,
    postgresql_where=_running,
)
sa.Index(
    "ix_bgjobs_jobs_running_queue",
    jobs.c.queue,
    sqlite_where=_running,
    postgresql_where=_running,
)

events = sa.Table(
    "bgjobs_events",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column(
        "job_id",
        _Id,
        sa.ForeignKey("bgjobs_jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("attempt", sa.Integer),
    # Schema 0002: what the attempt that this event ends used, and what it printed.
    sa.Column("max_rss_kb", sa.BigInteger),
    sa.Column("cpu_s", sa.Double),
    sa.Column("output", sa.Text),
)
sa.Index("ix_bgjobs_events_job", events.c.job_id, events.c.id)

#: Settings of a queue that must hold for every runner on every host: paused or not.
queues = sa.Table(
    "bgjobs_queues",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("updated_at", sa.Double),
)

#: What runners share about each recurring job: the last tick taken, and whether it is paused.
schedules = sa.Table(
    "bgjobs_schedules",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    #: The latest tick (epoch seconds) some runner took: enqueued it, or skipped it.
    sa.Column("last_tick", sa.Double),
    #: When the ticks fall ("cron 0 2 * * * UTC", "every 60"): a changed one starts afresh.
    sa.Column("spec", sa.String(300)),
    sa.Column("last_job_id", _Id),
    sa.Column("updated_at", sa.Double),
)

#: Alembic's version table, under a name of ours so a host app's own migrations never see it.
VERSION_TABLE = "bgjobs_alembic_version"
version = sa.Table(
    VERSION_TABLE,
    metadata,
    sa.Column("version_num", sa.String(32), primary_key=True),
)


#: How much of a stored params or result text that is not strict JSON readers show: enough to
#: recognise it, never megabytes (the row may have been edited to anything).
RAW_SHOWN_CHARS = 4096


def iso(ts: float | None) -> str | None:
    """Format epoch seconds as ISO 8601 UTC; ``None`` for ``None`` or a time no date can show.

    An edited row may hold NaN, infinity or a year past 9999 (PostgreSQL stores them all):
    readers show "no time" rather than failing.
    """
    if ts is None:
        return None
    try:
        when = datetime.fromtimestamp(ts, tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return when.isoformat().replace("+00:00", "Z")


def finite(value: float | None) -> float | None:
    """``value`` when it is a finite number, else ``None`` (JSON has no NaN or Infinity)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def text_of(value: object) -> str | None:
    """A stored text column as ``str`` (``None`` stays ``None``).

    SQLite keeps whatever type an edit wrote, so a text column may hand back bytes or a
    number; readers show it as text rather than failing on it.
    """
    if value is None or type(value) is str:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def raw_text(value: object) -> str:
    """Stored text as it is, cut to `RAW_SHOWN_CHARS` (with a note saying how long it was)."""
    text = text_of(value) or ""
    if len(text) <= RAW_SHOWN_CHARS:
        return text
    return f"{text[:RAW_SHOWN_CHARS]}… (cut: {len(text)} characters in all)"


@dataclass(frozen=True)
class Event:
    """One entry in a job's history."""

    at: float
    kind: str
    message: str
    attempt: int | None
    #: Peak resident memory of the attempt's process (KiB), on an event that ends an attempt.
    max_rss_kb: int | None = None
    #: User + system CPU seconds of the attempt, on an event that ends an attempt.
    cpu_s: float | None = None
    #: The last 64 KiB the attempt wrote to its stdout and stderr, on an event that ends it.
    output: str | None = field(default=None, repr=False)

    @property
    def ends_attempt(self) -> bool:
        """True for the event that says how an attempt ended."""
        return self.attempt is not None and self.kind in END_REASONS

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of SPEC §9: ``{at, kind, message, attempt}``; an event that ends an
        attempt also carries ``max_rss_kb`` and ``cpu_s`` (SPEC §13)."""
        data: dict[str, Any] = {
            "at": iso(self.at),
            "kind": text_of(self.kind),
            "message": text_of(self.message),
            "attempt": self.attempt,
        }
        if self.ends_attempt:
            data["max_rss_kb"] = self.max_rss_kb
            data["cpu_s"] = finite(self.cpu_s)
        return data


def attempts_of(events: Sequence[Event]) -> list[tuple[Event | None, Event]]:
    """Each attempt that ended, in order: ``(its started event or None, its ending event)``.

    Attempt numbers start again at 1 after an operator's retry, so an ending event belongs to
    the latest started attempt of its number that has not ended yet.
    """
    open_: dict[int, Event] = {}
    pairs: list[tuple[Event | None, Event]] = []
    for event in events:
        if event.kind == "started" and event.attempt is not None:
            open_[event.attempt] = event
        elif event.ends_attempt:
            assert event.attempt is not None
            pairs.append((open_.pop(event.attempt, None), event))
    return pairs


@dataclass(frozen=True)
class Shown:
    """A stored JSON text as readers show it (decoded once per `Job`, then shared)."""

    #: The decoded value when `decoded`, else the stored text cut to `RAW_SHOWN_CHARS`.
    value: Any
    #: False when the stored text is not strict JSON within the limits (an edited row).
    decoded: bool


@dataclass(frozen=True)
class Job:
    """A snapshot of one job row; plain data, so it outlives the app context that loaded it."""

    id: int
    class_name: str
    method_name: str
    params_json: str
    status: str
    priority: int
    attempts: int
    max_attempts: int
    delay: float
    timeout: float
    run_at: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: float | None = None
    progress_message: str | None = None
    result_json: str | None = None
    error: str | None = None
    traceback: str | None = None
    end_reason: str | None = None
    runner_id: str | None = None
    pid: int | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    log_incomplete: bool = False
    queue: str = DEFAULT_QUEUE
    unique_key: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    expires_at: float | None = None
    schedule: str | None = None
    scheduled_for: float | None = None
    memory_limit: int | None = None
    cpu_limit: float | None = None
    events: tuple[Event, ...] | None = field(default=None, compare=False)
    #: True when an enqueue with a ``unique_key`` found this job already waiting or running,
    #: and returned it instead of storing a new one.
    duplicate: bool = field(default=False, compare=False)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], events: tuple[Event, ...] | None = None) -> Job:
        """Build a `Job` from a mapping of column values."""
        return cls(
            id=row["id"],
            class_name=row["class_name"],
            method_name=row["method_name"],
            params_json=row["params"],
            status=row["status"],
            priority=row["priority"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            delay=row["delay"],
            timeout=row["timeout"],
            run_at=row["run_at"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            progress=row["progress"],
            progress_message=row["progress_message"],
            result_json=row["result"],
            error=row["error"],
            traceback=row["traceback"],
            end_reason=row["end_reason"],
            runner_id=row["runner_id"],
            pid=row["pid"],
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
            log_incomplete=bool(row["log_incomplete"]),
            queue=row["queue"],
            unique_key=row["unique_key"],
            concurrency_key=row["concurrency_key"],
            concurrency_limit=row["concurrency_limit"],
            expires_at=row["expires_at"],
            schedule=row["schedule"],
            scheduled_for=row["scheduled_for"],
            memory_limit=row["memory_limit"],
            cpu_limit=row["cpu_limit"],
            events=events,
        )

    @property
    def name(self) -> str:
        """The display name used in logs: ``pkg.mod.Class::method``."""
        return f"{self.class_name}::{self.method_name}"

    @property
    def params(self) -> Any:
        """The decoded params: a list (positional) or a dict (keyword arguments).

        Raises `InvalidJob` when the stored text is not strict JSON (an edited row), with the
        checks the runner applies before a call, size aside.
        """
        return security.decode_params(self.params_json, None)

    @property
    def result(self) -> Any:
        """The decoded return value of the successful attempt, or ``None``.

        Raises `InvalidJob` when the stored text is not strict JSON within the limits params
        have (an edited row: ``[NaN]``, 100,000 levels of nesting...).
        """
        return None if self.result_json is None else security.decode_result(self.result_json)

    @cached_property
    def shown_params(self) -> Shown:
        """The params as readers show them: decoded, or the stored text when that fails."""
        try:
            return Shown(self.params, True)
        except InvalidJob:
            return Shown(raw_text(self.params_json), False)

    @cached_property
    def shown_result(self) -> Shown:
        """The result as readers show it: decoded (``None`` when there is none), or raw text."""
        try:
            return Shown(self.result, True)
        except InvalidJob:
            return Shown(raw_text(self.result_json), False)

    @property
    def is_finished(self) -> bool:
        """True once the job reached a final status."""
        return self.status in FINISHED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of SPEC §9, exactly (``events`` and, SPEC §13, ``output`` only when
        the events were loaded: the single-job view).

        The traceback, timeout and end reason stay off it: the contract fixes the keys. Pages
        and ``flask bgjobs show`` read them from the `Job` itself.
        """
        # Whatever the row holds, this is JSON (no NaN) that every reader can print: params or
        # a result that is not strict JSON come as their stored text, cut.
        data: dict[str, Any] = {
            "id": self.id,
            "class_name": text_of(self.class_name),
            "method_name": text_of(self.method_name),
            "params": self.shown_params.value,
            "status": text_of(self.status),
            "priority": self.priority,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "run_at": iso(self.run_at),
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "progress": finite(self.progress),
            "progress_message": text_of(self.progress_message),
            "result": self.shown_result.value,
            "error": text_of(self.error),
            "runner_id": text_of(self.runner_id),
            "pid": self.pid,
            "queue": text_of(self.queue),
            "unique_key": text_of(self.unique_key),
            "concurrency_key": text_of(self.concurrency_key),
            "expires_at": iso(self.expires_at),
            "schedule": text_of(self.schedule),
            "scheduled_for": iso(self.scheduled_for),
        }
        if self.events is not None:
            data["events"] = [e.to_dict() for e in self.events]
            data["output"] = self.output
        return data

    @property
    def output(self) -> str | None:
        """What the latest attempt that ended wrote to its stdout and stderr (SPEC §13).

        Its last 64 KiB, with a first line saying how much came before; ``None`` when it wrote
        nothing, or when the events were not loaded.
        """
        for event in reversed(self.events or ()):
            if event.ends_attempt:
                return text_of(event.output)
        return None


@dataclass(frozen=True)
class QueueInfo:
    """One queue as `flask bgjobs queues` and the Queues page show it."""

    name: str
    #: Jobs waiting: ``pending`` or ``retrying``, due or not.
    pending: int
    running: int
    paused: bool
    #: ``BGJOBS_QUEUE_LIMITS`` for it, or ``None``.
    limit: int | None
    #: Seconds the longest-waiting due job has waited since it fell due (``None``: none due).
    oldest_waiting: float | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``flask bgjobs queues --json``."""
        return {
            "name": self.name,
            "pending": self.pending,
            "running": self.running,
            "paused": self.paused,
            "limit": self.limit,
            "oldest_waiting_seconds": finite(self.oldest_waiting),
        }


@dataclass(frozen=True)
class ScheduleRow:
    """What the database holds for one schedule (shared by every runner)."""

    name: str
    paused: bool
    last_tick: float | None
    last_job_id: int | None
    #: The status of that last job, if it still exists.
    last_status: str | None


@dataclass(frozen=True)
class ScheduleInfo:
    """One recurring job as `flask bgjobs schedules` and the Schedules page show it."""

    name: str
    #: ``pkg.mod.Class::method``.
    job: str
    cron: str | None
    every: int | None
    timezone: str
    #: The schedule in words: "At 02:00 every day", "every 60 s".
    words: str
    next_run: float | None
    last_job_id: int | None
    last_status: str | None
    paused: bool
    queue: str
    overlap: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``flask bgjobs schedules --json``."""
        return {
            "name": self.name,
            "job": self.job,
            "cron": self.cron,
            "every": self.every,
            "timezone": self.timezone,
            "words": self.words,
            "next_run": iso(self.next_run),
            "last_job_id": self.last_job_id,
            "last_status": self.last_status,
            "paused": self.paused,
            "queue": self.queue,
            "overlap": self.overlap,
        }
