"""What the store takes and gives: checked new jobs, outcomes, progress, ticks, and the text
rules (`storable`) and backends (`backend_of`) every statement obeys."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from flask_bgjobs import models
from flask_bgjobs.errors import ConfigError
from flask_bgjobs.models import Job, jobs

#: PostgreSQL LISTEN/NOTIFY channel that wakes runners when a job is enqueued or cancelled.
NOTIFY_CHANNEL = "bgjobs"
#: How long a write waits for SQLite's lock before `DatabaseBusy` (seconds).
SQLITE_BUSY_TIMEOUT = 5.0
SQLITE = "sqlite"
POSTGRESQL = "postgresql"
# An arbitrary constant: serialises CREATE TABLE across processes on PostgreSQL.
_DDL_LOCK_KEY = 0x62676A6F6273


def backend_of(uri: str) -> tuple[str, str]:
    """Return ``(backend, uri)`` for a database URL the store supports; `ConfigError` otherwise.

    SQLite through the standard library, PostgreSQL through psycopg 3: a ``postgresql://`` or
    ``postgresql+psycopg2://`` URL is used with psycopg 3, which ``LISTEN`` needs. Anything
    else (MySQL, an async driver …) is refused instead of half working.
    """
    try:
        url = sa.engine.make_url(uri)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError("BGJOBS_DATABASE_URI", "not a database URL") from None
    backend, _, driver = url.drivername.partition("+")
    if backend == SQLITE and driver in ("", "pysqlite"):
        return SQLITE, uri
    if backend in (POSTGRESQL, "postgres") and driver in ("", "psycopg", "psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
        return POSTGRESQL, url.render_as_string(hide_password=False)
    raise ConfigError(
        "BGJOBS_DATABASE_URI",
        f"{url.drivername!r} is not supported: use SQLite ('sqlite:///path/to/jobs.db') or "
        "PostgreSQL with psycopg 3 ('postgresql+psycopg://user:password@host/dbname')",
    )


# Characters neither backend can hold as text: NUL (PostgreSQL) and lone surrogates (UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str | None, limit: int | None = None, *, tail: bool = False) -> str | None:
    """Return `text` as both backends store it: NUL and lone surrogates become U+FFFD.

    With `limit`, a longer text is cut and says by how much: its head is kept (an error line,
    a message), or with `tail` its end (a traceback, where the useful part is). Job processes
    cut their texts to the same limits first; the slack here leaves room for their notes.
    """
    if text is None:
        return None
    if limit is not None and len(text) > limit + _SLACK:
        cut = len(text) - limit
        text = (
            f"[{cut} characters cut] …{text[-limit:]}"
            if tail
            else f"{text[:limit]}… [{cut} characters cut]"
        )
    return _UNSTORABLE.sub("\ufffd", text)


# Room for "… [N characters cut]" that a job process or the runner appended already.
_SLACK = 100


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as the runner reports it to `Store.finish`."""

    job_id: int
    attempt: int
    #: One of ``models.END_*``.
    reason: str
    #: Event text: the error line, "killed by signal 9", "timeout after 5 s" …
    message: str = ""
    result_json: str | None = None
    error: str | None = None
    traceback: str | None = None
    #: Seconds until the retry; ``None`` when no attempt is left (the job fails for good).
    retry_in: float | None = None
    pid: int | None = None
    #: Peak RSS (KiB) and user + system CPU (seconds) of the attempt's process, if known.
    max_rss_kb: int | None = None
    cpu_s: float | None = None
    #: What the attempt wrote to its stdout and stderr (its last 64 KiB), if anything.
    output: str | None = None


@dataclass(frozen=True)
class Progress:
    """A progress report of a running attempt, as the runner passes it to `Store.progress`."""

    job_id: int
    attempt: int
    percent: float
    message: str
    pid: int | None = None


@dataclass(frozen=True)
class Tick:
    """A schedule tick this runner took: its job, or why it enqueued none."""

    at: float
    job: Job | None
    #: The previous job, still waiting or running, for which the tick was skipped.
    skipped_for: int | None


@dataclass(frozen=True)
class Reclaimed:
    """A running job whose lease had expired, as `Store.reclaim_expired` left it."""

    job: Job
    retry_in: float | None


# -- the hot statements ---------------------------------------------------------------------
# Written once as SQL both backends speak, with named parameters (`_hot_write` adapts them to
# psycopg's style). {lock} is FOR UPDATE SKIP LOCKED on PostgreSQL and empty on SQLite, whose
# IMMEDIATE transaction already holds the write lock.

#: Longest error line stored per attempt (characters).
MAX_ERROR = 4000
#: Longest traceback stored per attempt (characters); the tail is the useful part.
MAX_TRACEBACK = 64 * 1024
#: Longest progress message (characters).
MAX_PROGRESS_MESSAGE = 1000
#: Longest event message (characters).
MAX_MESSAGE = 4000
#: Longest output kept per attempt (characters; the tail is the useful part). The runner keeps
#: the last 64 KiB already: this only bounds what reaches the database.
MAX_OUTPUT = 64 * 1024


@dataclass(frozen=True)
class NewJob:
    """A job to insert, every value checked already (see `service.enqueue`)."""

    class_name: str
    method_name: str
    params_json: str
    priority: int
    max_attempts: int
    delay: float
    timeout: float
    run_at: float
    created_at: float
    queue: str = models.DEFAULT_QUEUE
    unique_key: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    expires_at: float | None = None
    schedule: str | None = None
    scheduled_for: float | None = None
    memory_limit: int | None = None
    cpu_limit: float | None = None

    def values(self) -> dict[str, Any]:
        """The row's values, by column."""
        return {
            "class_name": self.class_name,
            "method_name": self.method_name,
            "params": self.params_json,
            "status": models.PENDING,
            "priority": self.priority,
            "attempts": 0,
            "max_attempts": self.max_attempts,
            "delay": float(self.delay),
            "timeout": float(self.timeout),
            "run_at": self.run_at,
            "created_at": self.created_at,
            "log_incomplete": False,
            "queue": self.queue,
            "unique_key": self.unique_key,
            "concurrency_key": self.concurrency_key,
            "concurrency_limit": self.concurrency_limit,
            "expires_at": self.expires_at,
            "schedule": self.schedule,
            "scheduled_for": self.scheduled_for,
            "memory_limit": self.memory_limit,
            "cpu_limit": self.cpu_limit,
        }

    def inserted(self, job_id: int) -> Job:
        """The `Job` this row is once inserted as `job_id` (what reading it back would give).

        Built with one dict update rather than `Job`'s ``__init__``: a frozen dataclass sets
        each of its 37 fields through ``object.__setattr__``, which made building the `Job`
        objects a third of what `enqueue_many` costs per job. The object is the same.
        """
        job = object.__new__(Job)
        job.__dict__.update(
            _JOB_BLANK,
            id=job_id,
            class_name=self.class_name,
            method_name=self.method_name,
            params_json=self.params_json,
            status=models.PENDING,
            priority=self.priority,
            attempts=0,
            max_attempts=self.max_attempts,
            delay=float(self.delay),
            timeout=float(self.timeout),
            run_at=self.run_at,
            created_at=self.created_at,
            queue=self.queue,
            unique_key=self.unique_key,
            concurrency_key=self.concurrency_key,
            concurrency_limit=self.concurrency_limit,
            expires_at=self.expires_at,
            schedule=self.schedule,
            scheduled_for=self.scheduled_for,
            memory_limit=self.memory_limit,
            cpu_limit=self.cpu_limit,
        )
        return job


# Every field of a `Job` at its default: what `NewJob.inserted` starts from.
_JOB_BLANK: dict[str, Any] = {
    f.name: None if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(Job)
}


#: Every column, empty: what a row built from values alone starts from.
_NEW_ROW: dict[str, Any] = {c.name: None for c in jobs.c} | {"log_incomplete": False}


#: How the store's helpers run a statement: rows (dicts) or a row count.
Run = Callable[[str, Any], Any]
