"""The job store: the only module that speaks SQL.

One method per state transition, each stating its rule once:

- **Fence.** Every write that ends or touches an attempt applies only while the row is still
  ``running`` that attempt under that lease owner (`_FENCE`), so a runner that lost its lease
  (paused, partitioned, presumed dead) changes nothing.
- **Claim.** Due jobs by priority, then ``run_at``, then id, read from the head of the partial
  index ``ix_bgjobs_jobs_due``; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock of a
  ``BEGIN IMMEDIATE`` transaction on SQLite.
- **Storable text.** Text that comes from a job (errors, tracebacks, progress) goes through
  `storable` first, so both backends store the same characters and no job can make a write fail.

Two backends and nothing else (`backend_of` refuses the rest). SQLite: WAL,
``synchronous=NORMAL``, foreign keys on, every write opened with ``BEGIN IMMEDIATE`` — a plain
``BEGIN`` that reads then writes fails at once with "database is locked" whatever the busy
timeout, while ``IMMEDIATE`` queues on the busy handler. PostgreSQL: every enqueue and cancel
sends ``NOTIFY bgjobs`` so idle runners on other hosts wake at once (`listen`).

The runner's per-job statements (enqueue, claim, finish, progress, leases) are written once as
plain SQL with named parameters and run on a raw DBAPI connection (`_hot_write`): SQLAlchemy's
per-statement machinery costs more than the work itself there. Everything else uses SQLAlchemy
Core.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import operator
import os
import re
import select
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from flask_bgjobs import models
from flask_bgjobs.errors import (
    ConfigError,
    DatabaseBusy,
    InvalidTransition,
    JobNotFound,
    SchemaError,
)
from flask_bgjobs.models import Event, Job, events, jobs

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

_ENQUEUE_COLUMNS = (
    "class_name", "method_name", "params", "status", "priority", "attempts", "max_attempts",
    "delay", "timeout", "run_at", "created_at", "log_incomplete", "queue", "unique_key",
    "concurrency_key", "concurrency_limit", "expires_at", "schedule", "scheduled_for",
    "memory_limit", "cpu_limit",
)  # fmt: skip
_INSERT_JOB = (
    f"INSERT INTO bgjobs_jobs ({', '.join(_ENQUEUE_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _ENQUEUE_COLUMNS)}) RETURNING id"
)
# With a unique key (or a schedule tick) the database decides: a second active job with the
# key, or a second job for the tick, is not inserted (ux_bgjobs_jobs_unique_key,
# ux_bgjobs_jobs_schedule_tick), whatever the number of processes racing.
_INSERT_JOB_ONCE = _INSERT_JOB.replace(" RETURNING id", " ON CONFLICT DO NOTHING RETURNING id")
_ACTIVE_WITH_KEY = (
    "SELECT * FROM bgjobs_jobs WHERE unique_key = :unique_key "
    "AND status IN ('pending', 'retrying', 'running')"
)
_NOTIFY = f"SELECT pg_notify('{NOTIFY_CHANNEL}', :payload)"
# PostgreSQL: insert and notify in one autocommitted statement, one round trip.
_INSERT_JOB_NOTIFY = (
    f"WITH j AS ({_INSERT_JOB}) SELECT j.id, pg_notify('{NOTIFY_CHANNEL}', :payload) FROM j"
)
_INSERT_JOB_ONCE_NOTIFY = (
    f"WITH j AS ({_INSERT_JOB_ONCE}) SELECT j.id, pg_notify('{NOTIFY_CHANNEL}', :payload) FROM j"
)
# The claim, in two statements. First the candidates, read from the head of the partial index
# ix_bgjobs_jobs_due in claim order; a paused queue's jobs, and jobs whose concurrency key is
# at its limit, are not candidates, so they never take the place of a job that may run.
# {queues} and {queue_limits} are filled per runner (`_claim_sql`).
_CANDIDATES = """
SELECT id, queue, concurrency_key, concurrency_limit, expires_at, started_at
FROM bgjobs_jobs j {due_index}
WHERE status IN ('pending', 'retrying') AND run_at <= :now{queues}
  AND NOT EXISTS (SELECT 1 FROM bgjobs_queues q WHERE q.name = j.queue AND q.paused)
  AND (concurrency_key IS NULL OR concurrency_limit > (
      SELECT count(*) FROM bgjobs_jobs r {key_index}
      WHERE r.status = 'running' AND r.concurrency_key = j.concurrency_key)){queue_limits}
ORDER BY priority DESC, run_at, id
LIMIT :limit {lock}"""
_TAKE = """
UPDATE bgjobs_jobs SET status = 'running', attempts = attempts + 1, started_at = :now,
    lease_owner = :owner, lease_expires_at = :expires, runner_id = :runner_id, pid = NULL,
    progress = NULL, progress_message = NULL
WHERE id IN ({ids}) AND status IN ('pending', 'retrying')
RETURNING *"""
# The "started" event of every job just taken, read from the rows themselves: it needs no
# answer from the take, so both travel with the COMMIT.
_STARTED_EVENTS = """
INSERT INTO bgjobs_events (job_id, at, kind, message, attempt)
SELECT id, CAST(:now AS DOUBLE PRECISION), 'started', CAST(:message AS TEXT), attempts
FROM bgjobs_jobs
WHERE id IN ({ids}) AND status = 'running' AND lease_owner = :owner AND started_at = :now"""
# Running jobs per concurrency key and per queue (ix_bgjobs_jobs_running_key, _queue).
_RUNNING_PER_KEY = """
SELECT concurrency_key AS name, count(*) AS n FROM bgjobs_jobs
WHERE status = 'running' AND concurrency_key IN ({names}) GROUP BY concurrency_key"""
_RUNNING_PER_QUEUE = """
SELECT queue AS name, count(*) AS n FROM bgjobs_jobs
WHERE status = 'running' AND queue IN ({names}) GROUP BY queue"""
# A job that never started within expires_in of falling due ends cancelled, never run.
_EXPIRE = """
UPDATE bgjobs_jobs SET status = 'cancelled', end_reason = 'expired', finished_at = :now
WHERE status IN ('pending', 'retrying') AND started_at IS NULL AND expires_at <= :now{ids}
RETURNING id, class_name, method_name"""
_SET_QUEUE = """
INSERT INTO bgjobs_queues (name, paused, updated_at) VALUES (:name, :paused, :now)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at"""
# A schedule new to the database, or whose timing changed (a new cron line), starts as if its
# latest tick were taken: it waits for its next tick instead of running at once for the
# "missed" latest tick of a timing it never had.
_ADD_SCHEDULE = """
INSERT INTO bgjobs_schedules (name, paused, last_tick, spec, updated_at)
VALUES (:name, false, :tick, :spec, :now)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at,
    last_tick = CASE
        WHEN COALESCE(bgjobs_schedules.spec, '') <> excluded.spec THEN excluded.last_tick
        ELSE bgjobs_schedules.last_tick END"""
# The compare-and-set that makes a tick this runner's: only one runner moves last_tick forward.
_TAKE_TICK = """
UPDATE bgjobs_schedules SET last_tick = :tick, updated_at = :now
WHERE name = :name AND NOT paused AND (last_tick IS NULL OR last_tick < :tick)
RETURNING last_job_id"""
_STATUS_OF = "SELECT status FROM bgjobs_jobs WHERE id = :id"
_SET_LAST_JOB = "UPDATE bgjobs_schedules SET last_job_id = :id WHERE name = :name"
_PAUSE_SCHEDULE = """
INSERT INTO bgjobs_schedules (name, paused, last_tick, spec, updated_at)
VALUES (:name, :paused, :tick, :spec, :now)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at,
    last_tick = CASE
        WHEN excluded.paused THEN bgjobs_schedules.last_tick
        WHEN bgjobs_schedules.last_tick IS NULL OR bgjobs_schedules.last_tick < excluded.last_tick
            THEN excluded.last_tick
        ELSE bgjobs_schedules.last_tick END"""
# Serialises the claims that involve a limit across PostgreSQL runners (SQLite's write lock
# does it there): an arbitrary constant, like _DDL_LOCK_KEY.
_LIMIT_LOCK_KEY = 0x62676A6C696D
_INSERT_EVENT = """
INSERT INTO bgjobs_events (job_id, at, kind, message, attempt)
VALUES (:job_id, :at, :kind, :message, :attempt)"""
# The event that ends an attempt also says what the attempt used and wrote.
_INSERT_END_EVENT = """
INSERT INTO bgjobs_events (job_id, at, kind, message, attempt, max_rss_kb, cpu_s, output)
VALUES (:job_id, :at, :kind, :message, :attempt, :max_rss_kb, :cpu_s, :output)"""
#: The fence: the row is still running this attempt under this lease owner.
_FENCE = "id = :id AND status = 'running' AND attempts = :attempt AND lease_owner = :owner"
_FINISH = (
    "UPDATE bgjobs_jobs SET {changes}, end_reason = :reason, lease_owner = NULL, "
    "lease_expires_at = NULL, pid = :pid WHERE " + _FENCE
)
_FINISH_SUCCEEDED = _FINISH.format(
    changes="status = 'succeeded', finished_at = :now, result = :result, error = NULL, "
    "traceback = NULL"
)
# Interrupted by the runner's own shutdown: the attempt is given back.
_FINISH_SHUTDOWN = _FINISH.format(
    changes="status = 'pending', attempts = attempts - 1, progress = NULL, progress_message = NULL"
)
_FINISH_RETRYING = _FINISH.format(
    changes="status = 'retrying', run_at = :run_at, error = :error, traceback = :traceback"
)
_FINISH_FAILED = _FINISH.format(
    changes="status = 'failed', finished_at = :now, error = :error, traceback = :traceback"
)
_SET_PID = "UPDATE bgjobs_jobs SET pid = :pid WHERE " + _FENCE


def _with_end_event(update: str) -> str:
    """PostgreSQL: a fenced outcome and, only if it applied, the event that ends the attempt.

    The same update (the rule is written once, above), in one statement with its event: what
    a batch of outcomes sends with its COMMIT, in one round trip. SQLite, which has no round
    trips to save, runs the two statements.
    """
    return (
        f"WITH u AS ({update} RETURNING id) "
        "INSERT INTO bgjobs_events (job_id, at, kind, message, attempt, max_rss_kb, cpu_s, output) "
        "SELECT id, CAST(:now AS DOUBLE PRECISION), CAST(:reason AS VARCHAR), "
        "CAST(:message AS TEXT), CAST(:attempt AS INTEGER), CAST(:max_rss_kb AS BIGINT), "
        "CAST(:cpu_s AS DOUBLE PRECISION), CAST(:output AS TEXT) FROM u RETURNING job_id"
    )


_PROGRESS = (
    "UPDATE bgjobs_jobs SET progress = :percent, progress_message = :message, pid = :pid "
    "WHERE " + _FENCE
)
_RENEW = """
UPDATE bgjobs_jobs SET lease_expires_at = :expires
WHERE status = 'running' AND lease_owner = :owner
RETURNING id"""
_OWNED = "SELECT id FROM bgjobs_jobs WHERE status = 'running' AND lease_owner = :owner"
# Reads the partial index ix_bgjobs_jobs_lease.
_EXPIRED = """
SELECT * FROM bgjobs_jobs
WHERE status = 'running' AND lease_expires_at < :now AND lease_owner <> :except_owner
{lock}"""
_RECLAIM = (
    "UPDATE bgjobs_jobs SET status = :status, run_at = :run_at, finished_at = :finished_at, "
    "end_reason = 'lease_expired', lease_owner = NULL, lease_expires_at = NULL, "
    "error = :error, traceback = NULL WHERE " + _FENCE
)
# Attempts that ended since :since, per job; each with its duration (from the latest started
# event of its number before it: numbers start again after an operator's retry) and its peak
# RSS; then the nearest-rank 50th and 95th percentiles of both. NULLs sort last on both
# backends ("x IS NULL" first) and are not counted.
_ATTEMPT_STATS = """
WITH ended AS (
    SELECT j.class_name AS class_name, j.method_name AS method_name, e.kind AS kind,
        e.max_rss_kb AS rss,
        e.at - (
            SELECT s.at FROM bgjobs_events s
            WHERE s.job_id = e.job_id AND s.kind = 'started' AND s.attempt = e.attempt
                AND s.id < e.id
            ORDER BY s.id DESC LIMIT 1
        ) AS took
    FROM bgjobs_events e JOIN bgjobs_jobs j ON j.id = e.job_id
    WHERE e.at >= :since AND e.attempt IS NOT NULL AND e.kind IN :kinds
),
ranked AS (
    SELECT class_name, method_name, kind, took, rss,
        ROW_NUMBER() OVER (
            PARTITION BY class_name, method_name ORDER BY took IS NULL, took
        ) AS took_rank,
        COUNT(took) OVER (PARTITION BY class_name, method_name) AS took_n,
        ROW_NUMBER() OVER (
            PARTITION BY class_name, method_name ORDER BY rss IS NULL, rss
        ) AS rss_rank,
        COUNT(rss) OVER (PARTITION BY class_name, method_name) AS rss_n
    FROM ended
)
SELECT class_name, method_name, COUNT(*) AS attempts,
    SUM(CASE WHEN kind = :ok THEN 0 ELSE 1 END) AS failed,
    MAX(CASE WHEN took_rank = (took_n * 50 + 99) / 100 THEN took END) AS p50_s,
    MAX(CASE WHEN took_rank = (took_n * 95 + 99) / 100 THEN took END) AS p95_s,
    MAX(CASE WHEN rss_rank = (rss_n * 50 + 99) / 100 THEN rss END) AS p50_rss_kb,
    MAX(CASE WHEN rss_rank = (rss_n * 95 + 99) / 100 THEN rss END) AS p95_rss_kb
FROM ranked
GROUP BY class_name, method_name
ORDER BY COUNT(*) DESC, class_name, method_name"""
_PARAMS = {
    sql: frozenset(re.findall(r":(\w+)", sql))
    for sql in (_FINISH_SUCCEEDED, _FINISH_SHUTDOWN, _FINISH_RETRYING, _FINISH_FAILED)
}
_FINISH_WITH_EVENT = {sql: _with_end_event(sql) for sql in _PARAMS}
# What each backend makes of the placeholders in the statements above. {lock}: SQLite's
# IMMEDIATE transaction already holds the write lock. The index hints: without statistics
# SQLite's planner reads the claim's candidates through ix_bgjobs_jobs_status_id and sorts them
# all (1.3 ms with 3,000 waiting jobs, growing with the queue), where the partial index in claim
# order gives the head at once (6 µs); PostgreSQL's planner finds it alone (tests check).
_FRAGMENTS = {
    SQLITE: {
        "{lock}": "",
        "{due_index}": "INDEXED BY ix_bgjobs_jobs_due",
        "{key_index}": "INDEXED BY ix_bgjobs_jobs_running_key",
    },
    POSTGRESQL: {"{lock}": "FOR UPDATE SKIP LOCKED", "{due_index}": "", "{key_index}": ""},
}
_BACKEND_SQL: dict[tuple[str, str], str] = {}


def _sql_for(backend: str, sql: str) -> str:
    """`sql` with its placeholders filled for `backend` (and psycopg's parameter style)."""
    converted = _BACKEND_SQL.get((backend, sql))
    if converted is None:
        converted = sql
        for mark, text in _FRAGMENTS[backend].items():
            converted = converted.replace(mark, text)
        if backend == POSTGRESQL:  # sqlite3 takes :name as it is; psycopg wants %(name)s
            converted = re.sub(r"(?<!:):(\w+)", r"%(\1)s", converted)
        _BACKEND_SQL[(backend, sql)] = converted
    return converted


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


def _busy(exc: BaseException) -> DatabaseBusy | None:
    """The `DatabaseBusy` that an SQLite "locked" error means, or ``None`` for anything else."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, sqlite3.OperationalError) and (
        "locked" in str(orig) or "busy" in str(orig)
    ):
        return DatabaseBusy(
            f"the job database stayed locked for {SQLITE_BUSY_TIMEOUT:g} s; nothing was "
            "written, try again"
        )
    return None


def _create_private(path: str) -> None:
    """Create a missing SQLite file 0600: job data is nobody else's to read.

    SQLite gives its -wal and -shm files the mode of the database file. ``O_EXCL`` never
    follows a planted symlink and never changes an existing file.
    """
    if not path or path == ":memory:":
        return
    if path.startswith("file:"):  # sqlite:///file:…?uri=true, as config allows
        path = path[len("file:") :].split("?", 1)[0]
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # sqlite3 reports a folder that cannot be written to better than we would
    os.close(fd)


def _sqlite_setup(conn: sqlite3.Connection) -> None:
    """Per-connection SQLite settings, for SQLAlchemy's connections and the raw one alike."""
    # Transactions are ours to open (BEGIN or BEGIN IMMEDIATE), never the sqlite3 module's.
    conn.isolation_level = None
    _use_wal(conn)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL (it stays so: a property of the file), if it is not yet.

    The switch needs the file to itself. A host app's transaction may hold it (a first
    ``session=`` enqueue into a database only Flask-SQLAlchemy touched so far): then go on
    in its present mode at once, rather than wait out the busy timeout; the next connection
    tries again, and every connection follows once one has switched.
    """
    if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout=0")
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        if _busy(exc) is None:
            raise
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(timeout)}")


Run = Callable[[str, Any], Any]


class Pending:
    """The result of a statement run with ``defer``: there after the transaction commits."""

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def result(self) -> Any:
        """Rows (dicts) for a statement with RETURNING, else the row count."""
        return self.value


class _RawSqlite:
    """A raw sqlite3 connection for the hot statements."""

    def __init__(self, uri: str) -> None:
        path = sa.engine.make_url(uri).database or ""
        _create_private(path)
        self.conn = sqlite3.connect(
            path, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        _sqlite_setup(self.conn)

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    def run(self, sql: str, params: Any) -> Any:
        sql = _sql_for(SQLITE, sql)
        if isinstance(params, list):
            return self.conn.executemany(sql, params).rowcount
        cur = self.conn.execute(sql, params)
        if cur.description is None:
            return cur.rowcount
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def defer(self, sql: str, params: Any) -> Pending:
        # In process: nothing to gain by waiting.
        return Pending(self.run(sql, params))

    def run_alone(self, sql: str, params: Any) -> Any:
        # Still BEGIN IMMEDIATE: only then does SQLite queue on its busy handler.
        self.begin()
        result = self.run(sql, params)
        self.commit()
        return result

    def healthy(self) -> bool:
        return not self.conn.in_transaction

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


class _PgPending(Pending):
    def __init__(self, cursor: Any, many: bool) -> None:
        super().__init__()
        self.cursor, self.many = cursor, many

    def result(self) -> Any:
        if self.many:
            return self.cursor.rowcount
        return _pg_rows(self.cursor)


def _pg_rows(cur: Any) -> Any:
    if cur.pgresult is None or cur.pgresult.nfields == 0:
        return cur.rowcount
    res = cur.pgresult
    # From the result's own field names: cursor.description builds a Column object for every
    # field of every result, which cost more than the statement with RETURNING *.
    names = [res.fname(i).decode() for i in range(res.nfields)]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class _RawPostgres:
    """A raw psycopg connection in autocommit mode: a lone statement is one round trip.

    A transaction runs in pipeline mode: ``BEGIN`` goes with its first statement, and the
    statements whose results can wait (``defer``) go with the ``COMMIT``, so a claim costs two
    round trips and recording a batch of outcomes one, however many rows they touch.
    """

    def __init__(self, uri: str) -> None:
        import psycopg

        url = sa.engine.make_url(uri).set(drivername="postgresql")
        self.conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        self.cur = self.conn.cursor()
        self._context: Any = None
        self._pipeline: Any = None

    def begin(self) -> None:
        self._context = self.conn.pipeline()
        self._pipeline = self._context.__enter__()
        self.cur.execute("BEGIN")

    def commit(self) -> None:
        self.cur.execute("COMMIT")
        self._end_pipeline(None)

    def _end_pipeline(self, exc: BaseException | None) -> None:
        context, self._context, self._pipeline = self._context, None, None
        if context is not None:
            context.__exit__(type(exc) if exc else None, exc, None)

    def rollback(self) -> None:
        with contextlib.suppress(Exception):
            self._end_pipeline(RuntimeError("rollback"))
        with contextlib.suppress(Exception):
            if self.conn.info.transaction_status != 0:  # not IDLE
                self.cur.execute("ROLLBACK")

    def run(self, sql: str, params: Any) -> Any:
        if isinstance(params, list):
            self.cur.executemany(_sql_for(POSTGRESQL, sql), params)
            if self._pipeline is not None:
                self._pipeline.sync()
            return self.cur.rowcount
        self.cur.execute(_sql_for(POSTGRESQL, sql), params)
        if self._pipeline is not None:
            self._pipeline.sync()
        return _pg_rows(self.cur)

    def defer(self, sql: str, params: Any) -> Pending:
        if self._pipeline is None:
            return Pending(self.run(sql, params))
        cur = self.conn.cursor()
        if isinstance(params, list):
            cur.executemany(_sql_for(POSTGRESQL, sql), params)
            return _PgPending(cur, True)
        cur.execute(_sql_for(POSTGRESQL, sql), params)
        return _PgPending(cur, False)

    def run_alone(self, sql: str, params: Any) -> Any:
        self.cur.execute(_sql_for(POSTGRESQL, sql), params)
        return _pg_rows(self.cur)

    def healthy(self) -> bool:
        """Open, idle, and nothing waiting on the socket.

        A connection that the server closed (restart, ``pg_terminate_backend``) has its last
        words waiting to be read: a zero-timeout poll finds it without a round trip, so a
        dead pooled connection is never used (what SQLAlchemy's pre-ping does with a query).
        """
        try:
            if self.conn.closed or self.conn.pgconn.status != 0:
                return False
            if self.conn.info.transaction_status != 0:
                return False
            readable, _, _ = select.select([self.conn.fileno()], [], [], 0)
            return not readable
        except Exception:  # noqa: BLE001
            return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class _RawPool:
    """A few idle raw connections per process, checked before reuse, never across a fork."""

    def __init__(self, factory: Callable[[], Any], max_idle: int = 8) -> None:
        self._factory = factory
        self._max_idle = max_idle
        self._idle: list[Any] = []
        self._pid = os.getpid()
        self._mutex = threading.Lock()

    def get(self) -> Any:
        with self._mutex:
            if self._pid != os.getpid():
                # Inherited over a fork (gunicorn --preload): the parent's, never ours to use
                # or to close.
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                raw = self._idle.pop()
                if raw.healthy():
                    return raw
                raw.close()
        return self._factory()

    def put(self, raw: Any) -> None:
        with self._mutex:
            if self._pid == os.getpid() and len(self._idle) < self._max_idle and raw.healthy():
                self._idle.append(raw)
                return
        raw.close()

    def close(self) -> None:
        with self._mutex:
            idle, self._idle = self._idle, []
            mine = self._pid == os.getpid()
        for raw in idle if mine else ():
            raw.close()


class Listener:
    """A PostgreSQL connection that ``LISTEN``s on `NOTIFY_CHANNEL`; the runner selects on it."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        # Remember the number: once libpq closed a dead socket, fileno() raises, and a stale
        # selector registration would collide with the next pipe that reuses the number.
        self.fd: int = conn.fileno()

    def fileno(self) -> int:
        """The socket to wait on."""
        return self.fd

    def payloads(self) -> list[str]:
        """Notifications received since the last call; `ConnectionError` once it is lost."""
        pgconn = self._conn.pgconn
        pgconn.consume_input()
        if pgconn.status != 0:  # CONNECTION_OK
            raise ConnectionError("notification connection lost")
        found = []
        while (note := pgconn.notifies()) is not None:
            found.append(note.extra.decode("utf-8", "replace"))
        return found

    def close(self) -> None:
        """Close the connection (a lost one too)."""
        with contextlib.suppress(Exception):
            self._conn.close()


def _version_of(conn: Connection) -> str | None:
    names = set(sa.inspect(conn).get_table_names())
    if models.jobs.name not in names:
        return None  # a version row left behind by dropped tables counts for nothing
    if models.VERSION_TABLE in names:
        found = conn.execute(sa.select(models.version.c.version_num)).scalar()
        return None if found is None else str(found)
    return "0001" if models.jobs.name in names else None


def _check_known(version: str | None) -> None:
    if version is not None and version > models.SCHEMA_VERSION:
        raise SchemaError(
            f"the job tables are at schema {version}, newer than this flask-bgjobs knows "
            f"({models.SCHEMA_VERSION}): upgrade flask-bgjobs"
        )


class _Migrations:
    """The migrations shipped in ``flask_bgjobs/migrations``, run through Alembic's API."""

    def __init__(self, *, conn: Connection | None = None, dialect: str | None = None) -> None:
        import io

        from alembic.config import Config  # only when a schema changes: ~0.3 s to import

        self.buffer = io.StringIO()
        self.config = Config(output_buffer=self.buffer)
        self.config.set_main_option("script_location", "flask_bgjobs:migrations")
        self.config.attributes["connection"] = conn
        self.config.attributes["dialect"] = dialect

    def upgrade(self) -> None:
        from alembic import command

        command.upgrade(self.config, "head")

    def upgrade_sql(self, current: str | None) -> str:
        from alembic import command

        command.upgrade(self.config, f"{current}:head" if current else "head", sql=True)
        return self.buffer.getvalue()


def _migrations(**kwargs: Any) -> _Migrations:
    return _Migrations(**kwargs)


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


def _expired(candidate: Mapping[str, Any], now: float) -> bool:
    expires = candidate["expires_at"]
    return expires is not None and candidate["started_at"] is None and expires <= now


_CANDIDATE_SQL: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}


def _candidates_sql(
    queues: tuple[str, ...] | None, limits: Mapping[str, int]
) -> tuple[str, dict[str, Any]]:
    """The candidates statement for a runner's queues and queue limits, and its parameters."""
    cache_key = (queues, tuple(sorted(limits.items())))
    found = _CANDIDATE_SQL.get(cache_key)
    if found is not None:
        return found
    params: dict[str, Any] = {}
    served = ""
    if queues:
        params |= {f"q{i}": q for i, q in enumerate(queues)}
        served = f"\n  AND queue IN ({', '.join(f':q{i}' for i in range(len(queues)))})"
    limited = ""
    if limits:
        names = sorted(limits)
        params |= {f"l{i}": n for i, n in enumerate(names)}
        params |= {f"n{i}": limits[n] for i, n in enumerate(names)}
        cases = " ".join(f"WHEN :l{i} THEN :n{i}" for i in range(len(names)))
        limited = (
            f"\n  AND (queue NOT IN ({', '.join(f':l{i}' for i in range(len(names)))}) OR "
            "(SELECT count(*) FROM bgjobs_jobs r WHERE r.status = 'running' AND r.queue = j.queue)"
            f" < CASE queue {cases} END)"
        )
    sql = _CANDIDATES.format(
        queues=served, queue_limits=limited, lock="{lock}", due_index="{due_index}",
        key_index="{key_index}",
    )  # fmt: skip
    found = (sql, params)
    _CANDIDATE_SQL[cache_key] = found
    return found


def _counts(run: Run, sql: str, names: Sequence[str]) -> dict[str, int]:
    if not names:
        return {}
    marks = ", ".join(f":c{i}" for i in range(len(names)))
    rows = run(sql.format(names=marks), {f"c{i}": n for i, n in enumerate(names)})
    return {r["name"]: int(r["n"]) for r in rows}


# -- enqueue in bulk, and in a host's transaction -------------------------------------------
# One multi-row INSERT per batch of rows (RETURNING id and unique_key): the rows of a batch get
# ascending ids in the order of the VALUES list (SQLite: one more than the largest rowid;
# PostgreSQL: the identity sequence, called row by row), whatever order RETURNING lists them in,
# so sorting them by id lines them up with the rows that went in.

#: Most rows in one INSERT: 512 × 21 parameters, far below SQLite's and psycopg's limits.
_BATCH_ROWS = 512
# Batches are powers of two, so at most 10 statement texts exist per flavour (cached, and
# converted for psycopg once each). Positional parameters: SQLite looks a named one up among
# those already seen, which makes a statement of 10,000 names take a quadratic 0.2 s to parse.
_ROWS_SQL: dict[tuple[int, bool], str] = {}


#: A row's values in the order of `_ENQUEUE_COLUMNS`, as positional parameters need them.
_IN_COLUMN_ORDER = operator.itemgetter(*_ENQUEUE_COLUMNS)


def _rows_sql(n: int, once: bool) -> str:
    """SQLite: the INSERT of `n` job rows (ON CONFLICT DO NOTHING when one has a unique key)."""
    found = _ROWS_SQL.get((n, once))
    if found is None:
        row = "(" + ", ".join(["?"] * len(_ENQUEUE_COLUMNS)) + ")"
        found = (
            f"INSERT INTO bgjobs_jobs ({', '.join(_ENQUEUE_COLUMNS)}) VALUES "
            f"{', '.join([row] * n)}{' ON CONFLICT DO NOTHING' if once else ''} "
            "RETURNING id, unique_key"
        )
        _ROWS_SQL[(n, once)] = found
    return found


# PostgreSQL: one statement for any number of rows, each column an array parameter, unnested in
# order (WITH ORDINALITY … ORDER BY: the identity sequence is called in that order). psycopg
# converts a statement's placeholders in Python, uncached past 4 KiB: 10,000 rows of VALUES
# cost more to convert than to insert. Text columns travel as text[]: an over-long value is
# then an error, where a cast to varchar(n)[] would cut it.
_PG_ROWS_SQL: dict[bool, str] = {}


def _pg_rows_sql(once: bool) -> str:
    found = _PG_ROWS_SQL.get(once)
    if found is None:
        from sqlalchemy.dialects import postgresql

        def sql_type(name: str) -> str:
            column_type = jobs.c[name].type
            if isinstance(column_type, (sa.String, sa.Text)):
                return "TEXT"
            return str(column_type.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]

        names = ", ".join(_ENQUEUE_COLUMNS)
        arrays = ", ".join(f"%s::{sql_type(c)}[]" for c in _ENQUEUE_COLUMNS)
        found = (
            f"INSERT INTO bgjobs_jobs ({names}) SELECT {names} FROM unnest({arrays}) "
            f"WITH ORDINALITY AS t({names}, n) ORDER BY n"
            f"{' ON CONFLICT DO NOTHING' if once else ''} RETURNING id, unique_key"
        )
        _PG_ROWS_SQL[once] = found
    return found


def _batches(indexes: list[int]) -> Iterator[list[int]]:
    """`indexes` cut into runs of `_BATCH_ROWS`, the rest into powers of two."""
    start = 0
    while start < len(indexes):
        left = len(indexes) - start
        size = _BATCH_ROWS if left >= _BATCH_ROWS else 1 << (left.bit_length() - 1)
        yield indexes[start : start + size]
        start += size


def _connection_run(conn: Connection, postgres: bool) -> Run:
    """`run(statement, params)` over a SQLAlchemy connection (a host session's), as the raw
    connections run the per-job statements: rows as dicts, else the row count."""

    def run(sql: str, params: Any) -> Any:
        text = _sql_for(POSTGRESQL if postgres else SQLITE, sql)
        result = conn.exec_driver_sql(text, params)
        if not result.returns_rows:
            return result.rowcount
        return [dict(row) for row in result.mappings()]

    return run


_SQLITE_FILE = "PRAGMA database_list"
# Which PostgreSQL database a connection reaches: the same name on a server that started at the
# same moment on the same port is the same database, whatever host name or address led there.
_PG_IDENTITY = (
    "SELECT current_database() AS db, current_setting('port') AS port, "
    "CAST(pg_postmaster_start_time() AS text) AS started"
)
# Attempts that ended, by reason, for the metrics (cancels only of a running attempt: a job
# cancelled while it waited ended no attempt, whatever its event's number says).
_ATTEMPT_ENDS = """
SELECT kind, count(*) AS n FROM bgjobs_events
WHERE attempt IS NOT NULL
  AND (kind IN :kinds OR (kind = 'cancelled' AND message = 'cancelled while running'))
GROUP BY kind"""
# Each ended attempt's duration, from its started event (as in _ATTEMPT_STATS), counted into
# histogram buckets in SQL: one row whatever the number of events. {buckets} is one SUM per
# upper bound; a negative duration (two hosts' clocks) counts as 0.
_ATTEMPT_DURATIONS = """
WITH ended AS (
    SELECT e.at - (
        SELECT s.at FROM bgjobs_events s
        WHERE s.job_id = e.job_id AND s.kind = 'started' AND s.attempt = e.attempt
            AND s.id < e.id
        ORDER BY s.id DESC LIMIT 1
    ) AS took
    FROM bgjobs_events e
    WHERE e.attempt IS NOT NULL AND e.kind IN :kinds
),
timed AS (SELECT CASE WHEN took < 0 THEN 0 ELSE took END AS took FROM ended WHERE took IS NOT NULL)
SELECT COUNT(*) AS n, COALESCE(SUM(took), 0) AS total{buckets} FROM timed"""


class Store:
    """Jobs and their events in one SQL database (SQLite or PostgreSQL)."""

    def __init__(self, uri: str, *, create_tables: bool = True) -> None:
        self.backend, self.uri = backend_of(uri)
        self.create_tables = create_tables
        self._engine: Engine | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._raw = _RawPool(
            (lambda: _RawPostgres(self.uri)) if self.is_postgres else (lambda: _RawSqlite(self.uri))
        )
        # Engines of host sessions known to reach our database (checked once per engine).
        self._same_database: weakref.WeakSet[Engine] = weakref.WeakSet()

    @property
    def is_postgres(self) -> bool:
        """True on PostgreSQL (several hosts, NOTIFY), False on SQLite."""
        return self.backend == POSTGRESQL

    # -- connections -------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, created on first use (cheap to construct a `Store`)."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> Engine:
        if self.is_postgres:
            # hide_parameters: a database error must never copy job text into a log.
            return sa.create_engine(self.uri, pool_pre_ping=True, hide_parameters=True)
        path = sa.engine.make_url(self.uri).database
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            _create_private(path)
        engine = sa.create_engine(
            self.uri,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
            hide_parameters=True,
        )

        @sa_event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            _sqlite_setup(dbapi_conn)

        @sa_event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("bgjobs_write")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def close(self) -> None:
        """Close every pooled connection, raw ones included."""
        self._raw.close()
        if self._engine is not None:
            self._engine.dispose()

    def ping(self) -> None:
        """Read from the database once: raises if it cannot be reached (a locked SQLite is fine)."""
        try:
            with self._read() as conn:
                conn.execute(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.id < 0))
        except DatabaseBusy:
            pass

    # -- schema ------------------------------------------------------------------------------

    def schema_version(self) -> str | None:
        """The schema the database is at: ``None`` without job tables, ``"0001"`` for 0.1.0.

        A read only, so a new process's first look never queues on SQLite's write lock.
        """
        try:
            with self.engine.connect() as conn:
                return _version_of(conn)
        except OperationalError as exc:
            raise _busy(exc) or exc from exc

    def ensure_tables(self) -> None:
        """Create the tables, or upgrade them to `models.SCHEMA_VERSION`, keeping every row.

        Idempotent and safe across processes: the version is read again under the write lock
        (and a PostgreSQL advisory lock), so of several processes one does the work.
        """
        with self._write(create=False) as conn:
            if self.is_postgres:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_DDL_LOCK_KEY)))
            current = _version_of(conn)
            if current is None:
                models.metadata.create_all(conn, checkfirst=True)
                conn.execute(models.version.delete())
                conn.execute(models.version.insert(), {"version_num": models.SCHEMA_VERSION})
            elif current != models.SCHEMA_VERSION:
                _check_known(current)
                if not sa.inspect(conn).has_table(models.VERSION_TABLE):
                    # 0.1.0 kept no version: stamp it, then walk the steps from there.
                    models.version.create(conn)
                    conn.execute(models.version.insert(), {"version_num": current})
                _migrations(conn=conn).upgrade()
        self._ready = True

    def upgrade_sql(self) -> str:
        """The SQL `ensure_tables` would run on this database now, for a DBA to review."""
        current = self.schema_version()
        if current == models.SCHEMA_VERSION:
            return f"-- the job tables are at schema {current} already: nothing to do\n"
        stamp = ""
        if current is not None:
            _check_known(current)
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(models.VERSION_TABLE):
                    # 0.1.0 kept no version: the steps start by recording it.
                    create = sa.schema.CreateTable(models.version).compile(dialect=conn.dialect)
                    stamp = (
                        f"-- 0.1.0 kept no schema version: record it first\n{str(create).strip()};"
                        f"\n\nINSERT INTO {models.VERSION_TABLE} (version_num) VALUES "
                        f"('{current}');\n\n"
                    )
        return stamp + _migrations(dialect=self.backend).upgrade_sql(current)

    def _prepare(self) -> None:
        if self._ready:
            return
        current = self.schema_version()
        if current != models.SCHEMA_VERSION:
            if not self.create_tables:
                _check_known(current)
                if current is None:
                    raise SchemaError(
                        f"there are no job tables ({models.jobs.name}) in this database; create "
                        "them with 'flask bgjobs init-db' (BGJOBS_CREATE_TABLES is false)"
                    )
                raise SchemaError(
                    f"the job tables are at schema {current}, this flask-bgjobs needs "
                    f"{models.SCHEMA_VERSION}; run 'flask bgjobs upgrade-db' (BGJOBS_CREATE_TABLES "
                    "is false)"
                )
            self.ensure_tables()
        self._ready = True

    @contextmanager
    def _write(self, *, create: bool = True) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite); `DatabaseBusy` when locked."""
        if create:
            self._prepare()
        try:
            with self.engine.connect() as conn:
                conn.execution_options(bgjobs_write=True)
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise _busy(exc) or exc from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self._prepare()
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            busy = _busy(exc)
            if busy is not None:
                raise DatabaseBusy("the job database is locked; try again") from exc
            raise

    def _for_update(self, stmt: sa.Select[Any], *, skip_locked: bool = False) -> sa.Select[Any]:
        # SQLite has no row locks: its IMMEDIATE transaction already holds the write lock.
        return stmt.with_for_update(skip_locked=skip_locked) if self.is_postgres else stmt

    def _notify(self, conn: Connection, payload: str = models.WAKE_ENQUEUED) -> None:
        # Sent at commit.
        if self.is_postgres:
            conn.execute(sa.text(_NOTIFY), {"payload": payload})

    @staticmethod
    def _event(
        conn: Connection, job_id: int, kind: str, message: str, attempt: int | None, at: float
    ) -> None:
        conn.execute(
            events.insert(),
            {"job_id": job_id, "at": at, "kind": kind, "message": message, "attempt": attempt},
        )

    @contextmanager
    def _hot_write(self) -> Iterator[Any]:
        """A write transaction on a raw connection, for the per-job statements.

        Yields the connection: ``db.run(statement, params)`` gives rows (dicts) for a statement
        with RETURNING or a SELECT, else the row count (``params`` a list: executemany);
        ``db.defer(...)`` the same once the transaction committed (on PostgreSQL it travels
        with the COMMIT).
        """
        self._prepare()
        raw = self._raw.get()
        try:
            raw.begin()
            yield raw
            raw.commit()
        except BaseException as exc:
            raw.rollback()
            self._raw.put(raw)
            busy = _busy(exc)
            if busy is not None:
                raise busy from exc
            raise
        self._raw.put(raw)

    def _hot_statement(self, sql: str, params: Any) -> Any:
        """One statement in a transaction of its own (autocommit on PostgreSQL: one round trip)."""
        self._prepare()
        raw = self._raw.get()
        try:
            result = raw.run_alone(sql, params)
        except BaseException as exc:
            raw.rollback()
            self._raw.put(raw)
            busy = _busy(exc)
            if busy is not None:
                raise busy from exc
            raise
        self._raw.put(raw)
        return result

    def listen(self) -> Listener | None:
        """A new ``LISTEN`` connection on PostgreSQL (``None`` on SQLite, which has none)."""
        if not self.is_postgres:
            return None
        import psycopg

        url = sa.engine.make_url(self.uri).set(drivername="postgresql")
        conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            return Listener(conn)
        except BaseException:
            conn.close()
            raise

    # -- enqueue -----------------------------------------------------------------------------

    def enqueue(self, new: NewJob) -> Job:
        """Insert a `pending` job and commit; return it as stored.

        With a ``unique_key`` held by a job still pending, retrying or running, nothing is
        inserted: that job comes back, with `Job.duplicate` set. The database decides
        (a unique index), so two processes racing with one key store one row.
        """
        values = new.values()
        once = new.unique_key is not None or new.schedule is not None
        for _ in range(10):  # the holder of a key may end between our insert and our read
            if self.is_postgres:
                stmt = _INSERT_JOB_ONCE_NOTIFY if once else _INSERT_JOB_NOTIFY
                rows = self._hot_statement(stmt, values | {"payload": models.WAKE_ENQUEUED})
            else:
                rows = self._hot_statement(_INSERT_JOB_ONCE if once else _INSERT_JOB, values)
            if rows:
                return Job.from_row(_NEW_ROW | values | {"id": rows[0]["id"]})
            if new.unique_key is None:
                raise InvalidTransition(
                    f"schedule {new.schedule!r} has a job for {models.iso(new.scheduled_for)} "
                    "already"
                )
            held = self._hot_statement(_ACTIVE_WITH_KEY, {"unique_key": new.unique_key})
            if held:
                return dataclasses.replace(Job.from_row(held[0]), duplicate=True)
        raise DatabaseBusy(f"unique_key {new.unique_key!r} kept changing hands; try again")

    # -- the runner's transitions ------------------------------------------------------------

    def claim(
        self,
        *,
        owner: str,
        runner_id: str,
        limit: int,
        lease_seconds: float,
        now: float | None = None,
        queues: Sequence[str] | None = None,
        queue_limits: Mapping[str, int] | None = None,
        on_expired: Callable[[list[Job]], None] | None = None,
    ) -> list[Job]:
        """Atomically take up to `limit` due jobs: priority desc, then run_at, then id.

        Only from `queues` (``None``: all), never from a paused queue, and never more running
        at once than a queue's limit (`queue_limits`) or a job's ``concurrency_limit`` allows
        across every runner: a job held back stays ``pending`` and spends no attempt. A job
        past its ``expires_at`` that never started is cancelled instead (end reason
        ``expired``) and handed to `on_expired` after the commit.

        The attempt counter rises here, when the attempt starts, so a job that kills its
        runner every time still runs out of attempts.
        """
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        limits = dict(queue_limits or {})
        sql, params = _candidates_sql(tuple(queues) if queues else None, limits)
        expired: list[Job] = []
        with self._hot_write() as db:
            candidates = db.run(sql, params | {"now": now, "limit": limit})
            stale = [c["id"] for c in candidates if _expired(c, now)]
            if stale:
                marks = ", ".join(f":x{i}" for i in range(len(stale)))
                gone = db.run(
                    _EXPIRE.format(ids=f" AND id IN ({marks})"),
                    {"now": now} | {f"x{i}": v for i, v in enumerate(stale)},
                )
                expired = self._expired_events(db.run, gone, now)
                candidates = [c for c in candidates if c["id"] not in stale]
            if any(c["concurrency_key"] is not None or c["queue"] in limits for c in candidates):
                candidates = self._within_limits(db.run, candidates, limits)
            took = None
            if candidates:
                # Both travel with the COMMIT: nothing here waits for an answer.
                ids = {f"i{i}": c["id"] for i, c in enumerate(candidates)}
                marks = ", ".join(f":{name}" for name in ids)
                took = db.defer(
                    _TAKE.format(ids=marks),
                    {"now": now, "owner": owner, "expires": now + lease_seconds}
                    | {"runner_id": runner_id}
                    | ids,
                )
                db.defer(
                    _STARTED_EVENTS.format(ids=marks),
                    {
                        "now": now,
                        "owner": owner,
                        "message": storable(f"started on {runner_id}", MAX_MESSAGE),
                    }
                    | ids,
                )
        rows = took.result() if took is not None else []
        if expired and on_expired is not None:
            on_expired(expired)
        claimed = [Job.from_row(r) for r in rows]
        claimed.sort(key=lambda j: (-j.priority, j.run_at, j.id))
        return claimed

    def _within_limits(
        self, run: Run, candidates: list[dict[str, Any]], limits: Mapping[str, int]
    ) -> list[dict[str, Any]]:
        """The candidates that fit under every limit, counting running jobs across runners."""
        if self.is_postgres:
            # Claims that involve a limit take turns: a claim that committed meanwhile is
            # counted below (each statement sees what committed before it).
            run("SELECT pg_advisory_xact_lock(:key)", {"key": _LIMIT_LOCK_KEY})
        keys = sorted({c["concurrency_key"] for c in candidates if c["concurrency_key"]})
        names = sorted({c["queue"] for c in candidates if c["queue"] in limits})
        per_key = _counts(run, _RUNNING_PER_KEY, keys)
        per_queue = _counts(run, _RUNNING_PER_QUEUE, names)
        chosen = []
        for c in candidates:  # in claim order: the first ones take the free places
            key, queue = c["concurrency_key"], c["queue"]
            if key is not None and per_key.get(key, 0) >= (c["concurrency_limit"] or 1):
                continue
            if queue in limits and per_queue.get(queue, 0) >= limits[queue]:
                continue
            if key is not None:
                per_key[key] = per_key.get(key, 0) + 1
            if queue in limits:
                per_queue[queue] = per_queue.get(queue, 0) + 1
            chosen.append(c)
        return chosen

    @staticmethod
    def _expired_events(run: Run, gone: list[dict[str, Any]], now: float) -> list[Job]:
        if gone:
            run(
                _INSERT_EVENT,
                [
                    {
                        "job_id": g["id"],
                        "at": now,
                        "kind": models.END_EXPIRED,
                        "message": "not started within expires_in of falling due",
                        "attempt": None,
                    }
                    for g in gone
                ],
            )
        return [
            Job.from_row(
                _NEW_ROW
                | {"id": g["id"], "class_name": g["class_name"]}
                | {"method_name": g["method_name"], "status": models.CANCELLED}
            )
            for g in gone
        ]

    def expire(self, now: float | None = None) -> list[Job]:
        """Cancel every waiting job past its ``expires_at`` that never started (end reason
        ``expired``); return them. Runners call it with their sweeps."""
        now = time.time() if now is None else now
        with self._hot_write() as db:
            return self._expired_events(db.run, db.run(_EXPIRE.format(ids=""), {"now": now}), now)

    def explain_claim(
        self,
        *,
        limit: int = 4,
        now: float | None = None,
        seqscan: bool = True,
        queues: tuple[str, ...] | None = None,
    ) -> str:
        """The query plan of the claim's candidates statement, as `claim` would send it now.

        PostgreSQL's ``EXPLAIN``, or SQLite's ``EXPLAIN QUERY PLAN``; ``seqscan=False`` tells
        PostgreSQL to avoid sequential scans, to show which index the claim can use.
        Nothing is changed.
        """
        now = time.time() if now is None else now
        sql, params = _candidates_sql(queues, {})
        params = params | {"now": now, "limit": limit}
        raw = self._raw.get()
        try:
            raw.begin()
            if self.is_postgres:
                if not seqscan:
                    raw.run("SET LOCAL enable_seqscan = off", {})
                rows = raw.run("EXPLAIN " + sql, params)
                plan = [next(iter(r.values())) for r in rows]
            else:
                rows = raw.run("EXPLAIN QUERY PLAN " + sql, params)
                plan = [str(r["detail"]) for r in rows]
        finally:
            raw.rollback()
            self._raw.put(raw)
        return "\n".join(plan)

    def set_pids(self, owner: str, started: Sequence[tuple[int, int, int]]) -> None:
        """Record the process id of each ``(job_id, attempt, pid)`` just started, fenced."""
        if started:
            with self._hot_write() as db:
                db.run(
                    _SET_PID,
                    [{"id": i, "attempt": a, "pid": p, "owner": owner} for i, a, p in started],
                )

    def renew(self, owner: str, lease_seconds: float, now: float | None = None) -> set[int]:
        """Extend every lease `owner` holds; return the ids it still owns."""
        now = time.time() if now is None else now
        with self._hot_write() as db:
            rows = db.run(_RENEW, {"owner": owner, "expires": now + lease_seconds})
        return {r["id"] for r in rows}

    def owned(self, owner: str) -> set[int]:
        """Ids of the jobs `owner` still holds (a cancelled or reclaimed job drops out)."""
        with self._read() as conn:
            return set(conn.execute(sa.text(_OWNED), {"owner": owner}).scalars())

    def progress(
        self, owner: str, reports: Sequence[Progress], now: float | None = None
    ) -> list[bool]:
        """Record progress reports (the latest per attempt), fenced; return which applied."""
        now = time.time() if now is None else now
        applied = []
        with self._hot_write() as db:
            for p in reports:
                message = storable(p.message, MAX_PROGRESS_MESSAGE) or ""
                ok = (
                    db.run(
                        _PROGRESS,
                        {
                            "id": p.job_id,
                            "attempt": p.attempt,
                            "owner": owner,
                            "percent": p.percent,
                            "message": message,
                            "pid": p.pid,
                        },
                    )
                    == 1
                )
                if ok:
                    text = f"{p.percent:g}%" + (f": {message}" if message else "")
                    db.run(
                        _INSERT_EVENT,
                        {
                            "job_id": p.job_id,
                            "at": now,
                            "kind": "progress",
                            "message": text,
                            "attempt": p.attempt,
                        },
                    )
                applied.append(ok)
        return applied

    def finish(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        now: float | None = None,
        *,
        pids: Sequence[tuple[int, int, int]] = (),
    ) -> list[bool]:
        """Record how attempts ended, in one transaction; each write fenced.

        `pids` (``(job_id, attempt, pid)`` of attempts started since) ride along, as in
        `set_pids`. Returns, per outcome, whether it applied (False: the lease was lost).
        """
        now = time.time() if now is None else now
        applied: list[bool] = []
        pending: list[Any] = []
        with self._hot_write() as db:
            if pids:
                db.defer(
                    _SET_PID,
                    [{"id": i, "attempt": a, "pid": p, "owner": owner} for i, a, p in pids],
                )
            for o in outcomes:
                if o.reason == models.END_SUCCEEDED:
                    stmt = _FINISH_SUCCEEDED
                elif o.reason == models.END_SHUTDOWN:
                    stmt = _FINISH_SHUTDOWN
                elif o.retry_in is not None:
                    stmt = _FINISH_RETRYING
                else:
                    stmt = _FINISH_FAILED
                params = {
                    "id": o.job_id,
                    "attempt": o.attempt,
                    "owner": owner,
                    "reason": o.reason,
                    "pid": o.pid,
                    "now": now,
                    "result": o.result_json,
                    "error": storable(o.error, MAX_ERROR),
                    "traceback": storable(o.traceback, MAX_TRACEBACK, tail=True),
                    "run_at": now + (o.retry_in or 0.0),
                }
                event = {
                    "job_id": o.job_id,
                    "at": now,
                    "kind": o.reason,
                    "message": storable(o.message, MAX_MESSAGE),
                    "attempt": o.attempt,
                    "max_rss_kb": o.max_rss_kb,
                    "cpu_s": o.cpu_s,
                    "output": storable(o.output, MAX_OUTPUT, tail=True),
                }
                if self.is_postgres:
                    # The update and its event in one statement, sent with the COMMIT.
                    pending.append(db.defer(_FINISH_WITH_EVENT[stmt], params | event))
                    continue
                ok = db.run(stmt, {k: params[k] for k in _PARAMS[stmt]}) == 1
                if ok:
                    db.run(_INSERT_END_EVENT, event)
                applied.append(ok)
        if pending:
            applied = [bool(p.result()) for p in pending]
        return applied

    def reclaim_expired(
        self,
        retry_in: Callable[[Job], float | None],
        now: float | None = None,
        *,
        except_owner: str | None = None,
    ) -> list[Reclaimed]:
        """Take back running jobs whose lease expired, each as a failed attempt.

        `retry_in(job)` gives the wait before the retry, or ``None`` when no attempt is left.
        A live runner passes itself as `except_owner`: its own attempts are still running
        (its renewals only failed, e.g. while the database was locked), so they are not lost.
        """
        now = time.time() if now is None else now
        reclaimed: list[Reclaimed] = []
        with self._hot_write() as db:
            rows = db.run(_EXPIRED, {"now": now, "except_owner": except_owner or ""})
            for row in rows:
                job = Job.from_row(row)
                wait = retry_in(job)
                message = storable(
                    f"lease of {job.runner_id or job.lease_owner} expired (runner lost)",
                    MAX_MESSAGE,
                )
                applied = db.run(
                    _RECLAIM,
                    {
                        "id": job.id,
                        "attempt": job.attempts,
                        "owner": job.lease_owner or "",
                        "status": models.FAILED if wait is None else models.RETRYING,
                        "run_at": job.run_at if wait is None else now + wait,
                        "finished_at": now if wait is None else None,
                        "error": f"LeaseExpired: {message}",
                    },
                )
                if applied:
                    db.run(
                        _INSERT_EVENT,
                        {
                            "job_id": job.id,
                            "at": now,
                            "kind": models.END_LEASE_EXPIRED,
                            "message": message,
                            "attempt": job.attempts,
                        },
                    )
                    reclaimed.append(Reclaimed(job, wait))
        return reclaimed

    def mark_log_incomplete(self, job_ids: Sequence[int]) -> None:
        """Flag jobs whose log lines could not all be written (disk full …)."""
        if not job_ids:
            return
        with self._write() as conn:
            conn.execute(
                jobs.update().where(jobs.c.id.in_(list(job_ids))).values(log_incomplete=True)
            )

    # -- operator actions --------------------------------------------------------------------

    def _locked_row(self, conn: Connection, job_id: int) -> Job:
        row = conn.execute(self._for_update(sa.select(jobs).where(jobs.c.id == job_id))).mappings()
        found = row.first()
        if found is None:
            raise JobNotFound(f"no job with id {job_id}")
        return Job.from_row(found)

    def cancel(self, job_id: int, now: float | None = None) -> Job:
        """Cancel a pending, retrying or running job; return it as it was before.

        A running job's runner notices the lost lease and kills the attempt's process group.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            job = self._locked_row(conn, job_id)
            if job.status not in models.CANCELLABLE_STATUSES:
                raise InvalidTransition(
                    f"job {job_id} is {job.status}; only pending, retrying or running jobs "
                    "can be cancelled"
                )
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(
                    status=models.CANCELLED,
                    finished_at=now,
                    end_reason=models.END_CANCELLED,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            self._event(
                conn,
                job_id,
                models.END_CANCELLED,
                f"cancelled while {job.status}",
                job.attempts or None,
                now,
            )
            self._notify(conn, models.WAKE_CANCELLED)
        return job

    def retry(self, job_id: int, check: Callable[[Job], None], now: float | None = None) -> Job:
        """Make a failed or cancelled job `pending` again with a fresh set of attempts.

        `check(job)` runs inside the transaction (the allowlist re-check) and may raise.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            job = self._locked_row(conn, job_id)
            if job.status not in models.RETRYABLE_STATUSES:
                raise InvalidTransition(
                    f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried"
                )
            check(job)
            holder = self._key_holder(conn, job)
            if holder is not None:
                raise InvalidTransition(
                    f"job {job_id}'s unique_key is held by job {holder}, which waits or runs; "
                    "retry it once that one has ended"
                )
            self._reset(conn, job, now)
            self._notify(conn)
        return self.get(job_id)

    @staticmethod
    def _key_holder(conn: Connection, job: Job) -> int | None:
        """The other job holding `job`'s unique key (pending, retrying or running), if any."""
        if job.unique_key is None:
            return None
        holder = conn.execute(
            sa.select(jobs.c.id).where(
                jobs.c.unique_key == job.unique_key,
                jobs.c.status.in_(models.UNIQUE_STATUSES),
                jobs.c.id != job.id,
            )
        ).scalar()
        return None if holder is None else int(holder)

    def retry_all_failed(self, check: Callable[[Job], None], now: float | None = None) -> int:
        """Retry every `failed` job that passes `check`; return how many."""
        now = time.time() if now is None else now
        count = 0
        with self._write() as conn:
            rows = conn.execute(
                self._for_update(sa.select(jobs).where(jobs.c.status == models.FAILED))
            ).mappings()
            for row in rows.all():
                job = Job.from_row(row)
                try:
                    check(job)
                except Exception:  # noqa: BLE001 - a refused job simply stays failed
                    continue
                if self._key_holder(conn, job) is not None:
                    continue  # its unique key is taken again: it stays failed, like a refusal
                self._reset(conn, job, now)
                count += 1
            if count:
                self._notify(conn)
        return count

    def _reset(self, conn: Connection, job: Job, now: float) -> None:
        conn.execute(
            jobs.update()
            .where(jobs.c.id == job.id)
            .values(
                status=models.PENDING,
                attempts=0,
                run_at=now,
                finished_at=None,
                progress=None,
                progress_message=None,
                end_reason=None,
                # An operator asked for it to run now: a deadline it missed no longer applies.
                expires_at=None,
            )
        )
        self._event(conn, job.id, "retry", f"retried by an operator (was {job.status})", None, now)

    def prune(self, before: float) -> int:
        """Delete finished jobs (and their events) whose ``finished_at`` is before `before`."""
        old = sa.select(jobs.c.id).where(
            jobs.c.status.in_(models.FINISHED_STATUSES), jobs.c.finished_at < before
        )
        with self._write() as conn:
            conn.execute(events.delete().where(events.c.job_id.in_(old.scalar_subquery())))
            return conn.execute(jobs.delete().where(jobs.c.id.in_(old.scalar_subquery()))).rowcount

    def purge(self, *, done_before: float, failed_before: float, limit: int = 500) -> int:
        """Delete up to `limit` old finished jobs and their events; return how many.

        ``succeeded`` and ``cancelled`` jobs that finished before `done_before`, ``failed``
        ones before `failed_before` (`BGJOBS_RETENTION_DAYS`). A bounded batch: on SQLite
        the write lock is held for one batch only.
        """
        old = (
            sa.select(jobs.c.id)
            .where(
                sa.or_(
                    jobs.c.status.in_((models.SUCCEEDED, models.CANCELLED))
                    & (jobs.c.finished_at < done_before),
                    (jobs.c.status == models.FAILED) & (jobs.c.finished_at < failed_before),
                )
            )
            .limit(limit)
        )
        with self._write() as conn:
            ids = list(conn.execute(old).scalars())
            if not ids:
                return 0
            conn.execute(events.delete().where(events.c.job_id.in_(ids)))
            return int(conn.execute(jobs.delete().where(jobs.c.id.in_(ids))).rowcount)

    # -- queues ------------------------------------------------------------------------------

    def set_queue_paused(self, name: str, paused: bool, now: float | None = None) -> None:
        """Pause or resume a queue for every runner (a resume wakes them on PostgreSQL)."""
        now = time.time() if now is None else now
        with self._hot_write() as db:
            db.run(_SET_QUEUE, {"name": name, "paused": paused, "now": now})
            if self.is_postgres and not paused:
                db.run(_NOTIFY, {"payload": models.WAKE_ENQUEUED})

    def queues(
        self, limits: Mapping[str, int], *, also: Sequence[str] = (), now: float | None = None
    ) -> list[models.QueueInfo]:
        """Every queue with waiting or running jobs, a stored setting, a limit, or in `also`."""
        now = time.time() if now is None else now
        active = (*models.DUE_STATUSES, models.RUNNING)
        due = jobs.c.status.in_(models.DUE_STATUSES) & (jobs.c.run_at <= now)
        oldest = sa.func.min(sa.case((due, jobs.c.run_at), else_=None))
        with self._read() as conn:
            counted = conn.execute(
                sa.select(jobs.c.queue, jobs.c.status, sa.func.count(), oldest)
                .where(jobs.c.status.in_(active))
                .group_by(jobs.c.queue, jobs.c.status)
            ).all()
            paused = {r.name: bool(r.paused) for r in conn.execute(sa.select(models.queues))}
        names = {*paused, *limits, *also} | {row[0] for row in counted}
        found = []
        for name in sorted(names):
            rows = [r for r in counted if r[0] == name]
            firsts = [r[3] for r in rows if r[3] is not None]
            found.append(
                models.QueueInfo(
                    name=name,
                    pending=sum(int(r[2]) for r in rows if r[1] in models.DUE_STATUSES),
                    running=sum(int(r[2]) for r in rows if r[1] == models.RUNNING),
                    paused=paused.get(name, False),
                    limit=limits.get(name),
                    oldest_waiting=now - min(firsts) if firsts else None,
                )
            )
        return found

    # -- schedules ---------------------------------------------------------------------------

    def add_schedules(
        self, latest: Mapping[str, tuple[float, str]], now: float | None = None
    ) -> None:
        """Record schedules (name → (latest tick, timing)). One not seen before, or whose
        timing changed, counts its latest tick as taken: it waits for its next tick instead of
        running at once for a past one. One known already keeps its last tick."""
        if not latest:
            return
        now = time.time() if now is None else now
        with self._hot_write() as db:
            db.run(
                _ADD_SCHEDULE,
                [
                    {"name": n, "tick": t, "spec": spec, "now": now}
                    for n, (t, spec) in sorted(latest.items())
                ],
            )

    def take_tick(
        self,
        name: str,
        tick: float,
        new: NewJob | None,
        *,
        skip_if_running: bool,
        now: float | None = None,
    ) -> Tick | None:
        """Take one tick of a schedule for this runner, and enqueue its job; exactly once.

        ``None`` when another runner took the tick first, or the schedule is paused: the
        compare-and-set on ``last_tick`` and the unique (schedule, tick) index both say so, in
        one transaction, however many runners try at once. With `skip_if_running`, a tick whose
        previous job still waits or runs is taken but enqueues nothing (`Tick.skipped_for`).
        `new` ``None`` takes the tick without a job (its job could not be built).
        """
        now = time.time() if now is None else now
        with self._hot_write() as db:
            won = db.run(_TAKE_TICK, {"name": name, "tick": tick, "now": now})
            if not won:
                return None
            previous = won[0]["last_job_id"]
            if skip_if_running and previous is not None:
                status = db.run(_STATUS_OF, {"id": previous})
                if status and status[0]["status"] in models.UNIQUE_STATUSES:
                    return Tick(tick, None, previous)
            if new is None:
                return Tick(tick, None, None)
            values = new.values()
            rows = db.run(_INSERT_JOB_ONCE, values)
            if not rows:  # the index disagrees with last_tick (an edited row): trust the index
                return None
            job_id = rows[0]["id"]
            db.run(_SET_LAST_JOB, {"name": name, "id": job_id})
            if self.is_postgres:
                db.run(_NOTIFY, {"payload": models.WAKE_ENQUEUED})
        return Tick(tick, Job.from_row(_NEW_ROW | values | {"id": job_id}), None)

    def set_schedule_paused(
        self, name: str, paused: bool, latest_tick: float, spec: str, now: float | None = None
    ) -> None:
        """Pause or resume a schedule for every runner. A resume starts from `latest_tick`:
        ticks missed while paused never run."""
        now = time.time() if now is None else now
        params = {"name": name, "paused": paused, "tick": latest_tick, "spec": spec, "now": now}
        with self._hot_write() as db:
            db.run(_PAUSE_SCHEDULE, params)

    def schedule_rows(self) -> dict[str, models.ScheduleRow]:
        """Every stored schedule, with the status of its last job."""
        last = sa.select(jobs.c.status).where(jobs.c.id == models.schedules.c.last_job_id)
        with self._read() as conn:
            rows = conn.execute(
                sa.select(models.schedules, last.scalar_subquery().label("last_status"))
            ).mappings()
            return {
                r["name"]: models.ScheduleRow(
                    r["name"], bool(r["paused"]), r["last_tick"], r["last_job_id"], r["last_status"]
                )
                for r in rows
            }

    # -- reads -------------------------------------------------------------------------------

    def get(self, job_id: int, *, with_events: bool = False) -> Job:
        """The job with this id (and its history); `JobNotFound` if there is none."""
        with self._read() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first()
            if row is None:
                raise JobNotFound(f"no job with id {job_id}")
            evs: tuple[Event, ...] | None = None
            if with_events:
                evs = tuple(
                    Event(r.at, r.kind, r.message, r.attempt, r.max_rss_kb, r.cpu_s, r.output)
                    for r in conn.execute(
                        sa.select(events).where(events.c.job_id == job_id).order_by(events.c.id)
                    )
                )
        return Job.from_row(row, evs)

    def list_jobs(
        self,
        *,
        status: str | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
        queue: str | None = None,
    ) -> tuple[list[Job], int]:
        """Jobs newest first, filtered by status and a search text; and the total count.

        The search is case-insensitive and literal (``%`` and ``_`` are plain characters) on
        every backend. A text no database can store (NUL, which PostgreSQL refuses, or a lone
        surrogate) can be in no job's name, so it matches nothing rather than failing.
        """
        # NUL: PostgreSQL refuses it in text, SQLite's LIKE stops at it and matches everything.
        if q and _UNSTORABLE.search(q):
            return [], 0
        where: list[sa.ColumnElement[bool]] = []
        if status:
            where.append(jobs.c.status == status)
        if queue:
            where.append(jobs.c.queue == queue)
        if q and "::" in q:  # the display form, "pkg.mod.Class::method"
            cls, _, method = q.partition("::")
            where.append(jobs.c.class_name.iendswith(cls, autoescape=True))
            where.append(jobs.c.method_name.istartswith(method, autoescape=True))
        elif q:
            match: list[sa.ColumnElement[bool]] = [
                jobs.c.class_name.icontains(q, autoescape=True),
                jobs.c.method_name.icontains(q, autoescape=True),
            ]
            # ASCII digits only: "²".isdigit() is true, but int() refuses it.
            number = q.strip()
            if number.isascii() and number.isdigit() and len(number) < 18:
                match.append(jobs.c.id == int(number))
            where.append(sa.or_(*match))
        with self._read() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(jobs).where(*where)
            ).scalar_one()
            rows = conn.execute(
                sa.select(jobs).where(*where).order_by(jobs.c.id.desc()).limit(limit).offset(offset)
            ).mappings()
            return [Job.from_row(r) for r in rows], int(total)

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zero included)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
            ).all()
        counts = dict.fromkeys(models.STATUSES, 0)
        counts.update({status: int(n) for status, n in rows})
        return counts

    def throughput(self, since: float, bucket: float = 60.0) -> list[dict[str, Any]]:
        """Finished attempts per time bucket since `since`: ``[{at, succeeded, failed}]``.

        "failed" counts attempts that failed (exception, exit, signal, timeout, lost lease,
        refused); a cancel or a shutdown is an operator's decision, not a failure. Counted per
        bucket in SQL, so a busy hour costs one small result.
        """
        index = sa.cast(sa.func.floor((events.c.at - since) / bucket), sa.Integer).label("i")
        with self._read() as conn:
            rows = conn.execute(
                sa.select(index, events.c.kind, sa.func.count())
                .where(
                    events.c.at >= since,
                    events.c.kind.in_((*models.ATTEMPT_FAILURES, models.END_SUCCEEDED)),
                )
                .group_by(index, events.c.kind)
            ).all()
        now = time.time()
        n = max(1, int((now - since) // bucket) + 1)
        succeeded, failed = [0] * n, [0] * n
        for i, kind, count in rows:
            i = min(n - 1, max(0, int(i)))
            (succeeded if kind == models.END_SUCCEEDED else failed)[i] += int(count)
        return [
            {"at": models.iso(since + i * bucket), "succeeded": succeeded[i], "failed": failed[i]}
            for i in range(n)
        ]

    def attempt_stats(self, since: float) -> list[dict[str, Any]]:
        """Per job (class and method), the attempts that ended since `since`, in figures.

        ``[{class_name, method_name, attempts, failed, p50_s, p95_s, p50_rss_kb, p95_rss_kb}]``,
        the busiest job first. Failed attempts are those of `models.ATTEMPT_FAILURES` (cancels
        and shutdowns are neither). Durations run from an attempt's started event to its
        ending event; percentiles are nearest-rank, computed in SQL (window functions, which
        both backends have), so a busy day costs a result of one row per job.
        """
        kinds = (models.END_SUCCEEDED, *models.ATTEMPT_FAILURES)
        stmt = sa.text(_ATTEMPT_STATS).bindparams(
            sa.bindparam("kinds", expanding=True), sa.bindparam("ok")
        )
        with self._read() as conn:
            rows = conn.execute(
                stmt, {"since": since, "kinds": list(kinds), "ok": models.END_SUCCEEDED}
            ).mappings()
            return [
                {
                    "class_name": r["class_name"],
                    "method_name": r["method_name"],
                    "attempts": int(r["attempts"]),
                    "failed": int(r["failed"]),
                    "p50_s": models.finite(r["p50_s"]),
                    "p95_s": models.finite(r["p95_s"]),
                    "p50_rss_kb": None if r["p50_rss_kb"] is None else int(r["p50_rss_kb"]),
                    "p95_rss_kb": None if r["p95_rss_kb"] is None else int(r["p95_rss_kb"]),
                }
                for r in rows
            ]

    def next_due_at(self, queues: Sequence[str] | None = None) -> float | None:
        """When the earliest waiting job a runner of `queues` may claim falls due (``None``:
        nothing waits). Jobs of paused queues do not count."""
        paused = sa.select(models.queues.c.name).where(models.queues.c.paused)
        where = [jobs.c.status.in_(models.DUE_STATUSES), jobs.c.queue.not_in(paused)]
        if queues:
            where.append(jobs.c.queue.in_(list(queues)))
        with self._read() as conn:
            value = conn.execute(sa.select(sa.func.min(jobs.c.run_at)).where(*where)).scalar()
        return None if value is None else float(value)

    def has_work(self) -> bool:
        """True while any job is waiting or running (an idle runner must not exit then)."""
        active = (*models.DUE_STATUSES, models.RUNNING)
        with self._read() as conn:
            return (
                conn.execute(sa.select(jobs.c.id).where(jobs.c.status.in_(active)).limit(1)).first()
                is not None
            )

    # -- enqueue in bulk, and in a host's transaction ----------------------------------------

    def enqueue_many(self, news: Sequence[NewJob]) -> list[Job]:
        """Insert `pending` jobs in one transaction, all or none; return them in order.

        A ``unique_key`` held by a waiting or running job, or by an earlier row of the same
        batch, stores nothing: that job comes back, with `Job.duplicate` set (as `enqueue`).
        """
        if not news:
            return []
        with self._hot_write() as db:
            return self._insert_jobs(db.run, news)

    def enqueue_in(self, conn: Connection, news: Sequence[NewJob]) -> list[Job]:
        """Insert jobs through `conn`, a host session's connection, inside its transaction.

        They exist once that transaction commits, and never if it rolls back (on PostgreSQL
        the ``NOTIFY`` is delivered at the commit too). `conn` must reach the job database
        (`reaches_us`). On SQLite the insert takes the write lock for the rest of the host's
        transaction; a lock held elsewhere past the busy timeout raises `DatabaseBusy`.
        """
        if not news:
            return []
        try:
            self._prepare_in(conn)
            return self._insert_jobs(_connection_run(conn, self.is_postgres), news)
        except OperationalError as exc:
            raise _busy(exc) or exc from exc

    def _prepare_in(self, conn: Connection) -> None:
        """`_prepare`, for a host's transaction: missing tables are created inside it.

        On SQLite our own connection would wait for the write lock the host's transaction may
        hold already; through its connection the tables commit (or roll back) with the host's
        rows. Not remembered as ready: that transaction may still roll back.
        """
        if self._ready:
            return
        current = _version_of(conn)
        if current is None and self.create_tables:
            models.metadata.create_all(conn, checkfirst=True)
            conn.execute(models.version.delete())
            conn.execute(models.version.insert(), {"version_num": models.SCHEMA_VERSION})
        elif current != models.SCHEMA_VERSION:
            self._prepare()  # an upgrade, or the error saying why not: the usual way

    def reaches_us(self, conn: Connection) -> bool:
        """True when `conn` (a host session's connection) is connected to the job database.

        Asked of the database itself (SQLite: the file, PostgreSQL: the database on that
        server), so two URLs for one database agree; once per engine while the answer is yes.
        Our side never waits for a lock: the host's transaction may hold SQLite's.
        """
        if conn.engine in self._same_database:
            return True
        if conn.dialect.name != self.backend:
            return False
        try:
            if self.is_postgres:
                theirs = tuple(conn.exec_driver_sql(_PG_IDENTITY).one())
                with self.engine.connect() as ours:
                    same = theirs == tuple(ours.exec_driver_sql(_PG_IDENTITY).one())
            else:
                files = {row[1]: row[2] for row in conn.exec_driver_sql(_SQLITE_FILE)}
                mine = sa.engine.make_url(self.uri).database or ""
                same = bool(files.get("main")) and os.path.realpath(
                    files["main"]
                ) == os.path.realpath(mine)
        except OperationalError as exc:
            raise _busy(exc) or exc from exc
        if same:
            self._same_database.add(conn.engine)
        return same

    def _insert_jobs(self, run: Run, news: Sequence[NewJob]) -> list[Job]:
        """The rows of `news` inserted (or their unique keys' holders found) through `run`."""
        found: list[Job | None] = [None] * len(news)
        first_with_key: dict[str, int] = {}
        todo: list[int] = []
        repeats: list[tuple[int, int]] = []  # (index, the earlier index with the same key)
        for i, new in enumerate(news):
            if new.unique_key is not None:
                if new.unique_key in first_with_key:
                    repeats.append((i, first_with_key[new.unique_key]))
                    continue
                first_with_key[new.unique_key] = i
            todo.append(i)
        refused: list[int] = []  # the index said no: some other job holds the key
        for batch in [todo] if self.is_postgres and todo else _batches(todo):
            rows = [news[i] for i in batch]
            once = any(r.unique_key is not None or r.schedule is not None for r in rows)
            # A tuple: positional parameters (a list would mean executemany).
            values = [_IN_COLUMN_ORDER(r.values()) for r in rows]
            if self.is_postgres:
                sql = _pg_rows_sql(once)
                params = tuple(list(column) for column in zip(*values, strict=True))
            else:
                sql = _rows_sql(len(batch), once)
                params = tuple(itertools.chain.from_iterable(values))
            returned = sorted(run(sql, params), key=lambda r: r["id"])
            n = 0
            for i, row in zip(batch, rows, strict=True):
                key = row.unique_key
                if n < len(returned) and (key is None or returned[n]["unique_key"] == key):
                    found[i] = row.inserted(returned[n]["id"])
                    n += 1
                else:
                    refused.append(i)
        for i in refused:
            found[i] = self._held_or_inserted(run, news[i])
        for i, first in repeats:
            earlier = found[first]
            assert earlier is not None
            found[i] = dataclasses.replace(earlier, duplicate=True)
        if self.is_postgres and any(j is not None and not j.duplicate for j in found):
            run(_NOTIFY, {"payload": models.WAKE_ENQUEUED})
        return [j for j in found if j is not None]

    @staticmethod
    def _held_or_inserted(run: Run, new: NewJob) -> Job:
        """The job holding `new`'s unique key; or, when it ended meanwhile, `new` inserted."""
        if new.unique_key is None:
            raise InvalidTransition(
                f"schedule {new.schedule!r} has a job for {models.iso(new.scheduled_for)} already"
            )
        values = new.values()
        for _ in range(10):
            held = run(_ACTIVE_WITH_KEY, {"unique_key": new.unique_key})
            if held:
                return dataclasses.replace(Job.from_row(held[0]), duplicate=True)
            rows = run(_INSERT_JOB_ONCE, values)
            if rows:
                return Job.from_row(_NEW_ROW | values | {"id": rows[0]["id"]})
        raise DatabaseBusy(f"unique_key {new.unique_key!r} kept changing hands; try again")

    # -- attempts in the calling process (BGJOBS_EXECUTION inline or manual) ----------------

    def claim_job(
        self,
        job_id: int,
        *,
        owner: str,
        runner_id: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> Job | None:
        """Take this one waiting job now, due or not, as `claim` takes jobs; ``None`` when it
        is not waiting (finished, cancelled, running elsewhere)."""
        now = time.time() if now is None else now
        with self._hot_write() as db:
            rows = db.run(
                _TAKE.format(ids=":i0"),
                {"now": now, "owner": owner, "expires": now + lease_seconds}
                | {"runner_id": runner_id, "i0": job_id},
            )
            if rows:
                db.run(
                    _INSERT_EVENT,
                    {
                        "job_id": job_id,
                        "at": now,
                        "kind": "started",
                        "message": storable(f"started on {runner_id}", MAX_MESSAGE),
                        "attempt": rows[0]["attempts"],
                    },
                )
        return Job.from_row(rows[0]) if rows else None

    def pending_jobs(
        self, class_name: str | None = None, method_name: str | None = None
    ) -> list[Job]:
        """Jobs in status ``pending``, oldest first, of this class (or module) and method."""
        where = [jobs.c.status == models.PENDING]
        if class_name is not None:
            where.append(jobs.c.class_name == class_name)
        if method_name is not None:
            where.append(jobs.c.method_name == method_name)
        with self._read() as conn:
            rows = conn.execute(sa.select(jobs).where(*where).order_by(jobs.c.id)).mappings()
            return [Job.from_row(r) for r in rows]

    # -- metrics ------------------------------------------------------------------------------

    def counts_by_queue(self) -> list[tuple[str, str, int]]:
        """``(queue, status, jobs)`` for every pair that has jobs."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(jobs.c.queue, jobs.c.status, sa.func.count()).group_by(
                    jobs.c.queue, jobs.c.status
                )
            ).all()
        return [(str(q), str(s), int(n)) for q, s, n in rows]

    def attempt_ends(self, kinds: Sequence[str]) -> dict[str, int]:
        """Attempts that ended, by reason (of `kinds`, and cancels of running attempts)."""
        stmt = sa.text(_ATTEMPT_ENDS).bindparams(sa.bindparam("kinds", expanding=True))
        with self._read() as conn:
            rows = conn.execute(stmt, {"kinds": list(kinds)}).all()
        return {str(kind): int(n) for kind, n in rows}

    def attempt_durations(
        self, kinds: Sequence[str], bounds: Sequence[float]
    ) -> tuple[list[int], float, int]:
        """How long the attempts that ended (one of `kinds`) ran: per upper bound of
        `bounds` the number that took at most that long, their total seconds, and their number.
        """
        sums = "".join(
            f", SUM(CASE WHEN took <= :b{i} THEN 1 ELSE 0 END) AS le{i}" for i in range(len(bounds))
        )
        stmt = sa.text(_ATTEMPT_DURATIONS.format(buckets=sums)).bindparams(
            sa.bindparam("kinds", expanding=True)
        )
        params: dict[str, Any] = {"kinds": list(kinds)} | {
            f"b{i}": float(b) for i, b in enumerate(bounds)
        }
        with self._read() as conn:
            row = conn.execute(stmt, params).mappings().one()
        counts = [int(row[f"le{i}"] or 0) for i in range(len(bounds))]
        return counts, float(row["total"] or 0.0), int(row["n"] or 0)
