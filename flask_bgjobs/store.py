"""The job store: the only module that speaks SQL.

One method per state transition. Every write that ends an attempt is *fenced*: it applies only
while the row is still ``running`` the same attempt under the same lease owner, so a runner
that lost its lease (paused, partitioned, presumed dead) changes nothing.

SQLite: WAL, ``synchronous=NORMAL`` and every write transaction opened with
``BEGIN IMMEDIATE`` — a plain ``BEGIN`` that reads then writes fails at once with "database is
locked" whatever the busy timeout, while ``IMMEDIATE`` queues on the busy handler.
PostgreSQL: the claim is one ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)``, and
every enqueue sends ``NOTIFY bgjobs`` so idle runners on other hosts wake at once.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from flask_bgjobs import models
from flask_bgjobs.errors import DatabaseBusy, InvalidTransition, JobNotFound
from flask_bgjobs.models import Event, Job, events, jobs

#: PostgreSQL LISTEN/NOTIFY channel that wakes runners when a job is enqueued or cancelled.
NOTIFY_CHANNEL = "bgjobs"
#: How long a write waits for SQLite's lock before `DatabaseBusy` (seconds).
SQLITE_BUSY_TIMEOUT = 5.0
# An arbitrary constant: serialises CREATE TABLE across processes on PostgreSQL.
_DDL_LOCK_KEY = 0x62676A6F6273


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
    log_incomplete: bool = False


@dataclass(frozen=True)
class Reclaimed:
    """A running job whose lease had expired, as `Store.reclaim_expired` left it."""

    job: Job
    retry_in: float | None


_ENQUEUE_COLUMNS = (
    "class_name", "method_name", "params", "status", "priority", "attempts", "max_attempts",
    "delay", "timeout", "run_at", "created_at", "log_incomplete",
)  # fmt: skip
_INSERT_JOB = (
    f"INSERT INTO {jobs.name} ({', '.join(_ENQUEUE_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _ENQUEUE_COLUMNS)}) RETURNING id"
)


# The runner's per-job statements, written once as SQL both backends speak, with named
# parameters that sqlite3 and SQLAlchemy's text() both take. The claim's inner SELECT matches
# the partial index ix_bgjobs_jobs_due; {lock} is FOR UPDATE SKIP LOCKED on PostgreSQL and
# empty on SQLite, whose IMMEDIATE transaction already holds the write lock.
_CLAIM = """
UPDATE bgjobs_jobs SET status = 'running', attempts = attempts + 1, started_at = :now,
    lease_owner = :owner, lease_expires_at = :expires, runner_id = :runner_id, pid = NULL,
    progress = NULL, progress_message = NULL
WHERE id IN (
    SELECT id FROM bgjobs_jobs
    WHERE status IN ('pending', 'retrying') AND run_at <= :now
    ORDER BY priority DESC, run_at, id
    LIMIT :limit {lock}
)
RETURNING *"""
_INSERT_EVENT = """
INSERT INTO bgjobs_events (job_id, at, kind, message, attempt)
VALUES (:job_id, :at, :kind, :message, :attempt)"""
# Every write that ends an attempt is fenced: it applies only while the row is still running
# this attempt under this lease owner.
_FINISH = """
UPDATE bgjobs_jobs SET {changes}, end_reason = :reason, lease_owner = NULL,
    lease_expires_at = NULL, pid = :pid
WHERE id = :id AND status = 'running' AND attempts = :attempt AND lease_owner = :owner"""
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
_SET_PID = """
UPDATE bgjobs_jobs SET pid = :pid
WHERE id = :id AND status = 'running' AND attempts = :attempt AND lease_owner = :owner"""
_PARAMS = {
    sql: frozenset(re.findall(r":(\w+)", sql))
    for sql in (_FINISH_SUCCEEDED, _FINISH_SHUTDOWN, _FINISH_RETRYING, _FINISH_FAILED)
}


def _is_locked(exc: DBAPIError) -> bool:
    orig = exc.orig
    return isinstance(orig, sqlite3.OperationalError) and (
        "locked" in str(orig) or "busy" in str(orig)
    )


class Store:
    """Jobs and their events in one SQL database (SQLite or PostgreSQL)."""

    def __init__(self, uri: str, *, create_tables: bool = True) -> None:
        self.uri = uri
        self.create_tables = create_tables
        url = sa.engine.make_url(uri)
        self.is_sqlite = url.get_backend_name() == "sqlite"
        self.is_postgres = url.get_backend_name() == "postgresql"
        self._engine: Engine | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._local = threading.local()

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
        if not self.is_sqlite:
            return sa.create_engine(self.uri, pool_pre_ping=True)
        path = sa.engine.make_url(self.uri).database
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = sa.create_engine(
            self.uri,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
        )

        @sa_event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from the sqlite3 module so that `_on_begin`
            # decides between a deferred and an IMMEDIATE transaction.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa_event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("bgjobs_write")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def dispose_after_fork(self) -> None:
        """Forget the parent's pooled connections in a forked child without closing them."""
        if self._engine is not None:
            self._engine.dispose(close=False)

    def close(self) -> None:
        """Close every pooled connection (and this thread's enqueue connection)."""
        if getattr(self._local, "pid", None) == os.getpid():
            self._local.conn.close()
            del self._local.pid, self._local.conn
        if self._engine is not None:
            self._engine.dispose()

    def ensure_tables(self) -> None:
        """Create missing tables and indexes (idempotent, safe across processes)."""
        with self._write(create=False) as conn:
            if self.is_postgres:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_DDL_LOCK_KEY)))
            models.metadata.create_all(conn, checkfirst=True)
        self._ready = True

    def _prepare(self) -> None:
        if not self._ready:
            if self.create_tables:
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
            if self.is_sqlite and _is_locked(exc):
                raise DatabaseBusy(
                    f"the job database stayed locked for {SQLITE_BUSY_TIMEOUT:g} s; nothing was "
                    "written, try again"
                ) from exc
            raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self._prepare()
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            if self.is_sqlite and _is_locked(exc):
                raise DatabaseBusy("the job database is locked; try again") from exc
            raise

    def _for_update(self, stmt: sa.Select[Any], *, skip_locked: bool = False) -> sa.Select[Any]:
        # SQLite has no row locks: its IMMEDIATE transaction already holds the write lock.
        return stmt.with_for_update(skip_locked=skip_locked) if self.is_postgres else stmt

    def _notify(self, conn: Connection, payload: str = "") -> None:
        # Sent at commit; the payload "c" asks runners to re-check their leases (a cancel).
        if self.is_postgres:
            conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, payload)))

    @staticmethod
    def _event(
        conn: Connection, job_id: int, kind: str, message: str, attempt: int | None, at: float
    ) -> None:
        conn.execute(
            events.insert(),
            {"job_id": job_id, "at": at, "kind": kind, "message": message, "attempt": attempt},
        )

    # -- enqueue -----------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        class_name: str,
        method_name: str,
        params_json: str,
        priority: int,
        max_attempts: int,
        delay: float,
        timeout: float,
        now: float | None = None,
    ) -> Job:
        """Insert a `pending` job and commit; return it as stored."""
        now = time.time() if now is None else now
        values: dict[str, Any] = {
            "class_name": class_name,
            "method_name": method_name,
            "params": params_json,
            "status": models.PENDING,
            "priority": priority,
            "attempts": 0,
            "max_attempts": max_attempts,
            "delay": float(delay),
            "timeout": float(timeout),
            "run_at": now + delay,
            "created_at": now,
            "log_incomplete": False,
        }
        # The hot path web requests wait on: see `_hot_write`.
        with self._hot_write() as run:
            job_id = run(_INSERT_JOB, values)[0]["id"]
            if self.is_postgres:
                run(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')", {})
        return Job.from_row(
            {c.name: None for c in jobs.c} | values | {"id": job_id, "params": params_json}
        )

    @contextmanager
    def _hot_write(self) -> Iterator[Callable[[str, Any], Any]]:
        """A write transaction for the runner's per-job statements, built once (see `_CLAIM`).

        Yields ``run(statement, params)``: rows for a statement with RETURNING, else the
        row count (``params`` a list: executemany). On SQLite the statements run on this
        thread's own connection, compiled once; SQLAlchemy's per-statement machinery costs
        more than the work itself there. On PostgreSQL they go through SQLAlchemy.
        """
        if not self.is_sqlite:
            with self._write() as conn:

                def run_sa(sql: str, params: Any) -> Any:
                    stmt = sa.text(sql.replace("{lock}", "FOR UPDATE SKIP LOCKED"))
                    result = conn.execute(stmt, params)
                    return result.mappings().all() if result.returns_rows else result.rowcount

                yield run_sa
            return
        self._prepare()
        raw = self._thread_connection()

        def run_raw(sql: str, params: Any) -> Any:
            sql = sql.replace("{lock}", "")
            if isinstance(params, list):
                return raw.executemany(sql, params).rowcount
            cur = raw.execute(sql, params)
            if cur.description is None:
                return cur.rowcount
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

        try:
            raw.execute("BEGIN IMMEDIATE")
            try:
                yield run_raw
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise DatabaseBusy(
                    f"the job database stayed locked for {SQLITE_BUSY_TIMEOUT:g} s; nothing was "
                    "written, try again"
                ) from exc
            raise

    def _thread_connection(self) -> sqlite3.Connection:
        local = self._local
        # A connection never crosses a fork (gunicorn --preload forks after the app is built).
        if getattr(local, "pid", None) != os.getpid():
            path = sa.engine.make_url(self.uri).database or ""
            conn = sqlite3.connect(
                path, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            local.conn, local.pid = conn, os.getpid()
        return local.conn  # type: ignore[no-any-return]

    # -- the runner's transitions ------------------------------------------------------------

    def claim(
        self,
        *,
        owner: str,
        runner_id: str,
        limit: int,
        lease_seconds: float,
        now: float | None = None,
    ) -> list[Job]:
        """Atomically take up to `limit` due jobs: priority desc, then run_at, then id.

        The attempt counter rises here, when the attempt starts, so a job that kills its
        runner every time still runs out of attempts.
        """
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        params = {
            "now": now,
            "limit": limit,
            "owner": owner,
            "expires": now + lease_seconds,
            "runner_id": runner_id,
        }
        with self._hot_write() as run:
            rows = run(_CLAIM, params)
            if rows:
                run(
                    _INSERT_EVENT,
                    [
                        {
                            "job_id": r["id"],
                            "at": now,
                            "kind": "started",
                            "message": f"started on {runner_id}",
                            "attempt": r["attempts"],
                        }
                        for r in rows
                    ],
                )
        claimed = [Job.from_row(r) for r in rows]
        claimed.sort(key=lambda j: (-j.priority, j.run_at, j.id))
        return claimed

    def set_pids(self, owner: str, started: Sequence[tuple[int, int, int]]) -> None:
        """Record the process id of each ``(job_id, attempt, pid)`` just started, fenced."""
        if started:
            with self._hot_write() as run:
                run(
                    _SET_PID,
                    [{"id": i, "attempt": a, "pid": p, "owner": owner} for i, a, p in started],
                )

    def renew(self, owner: str, lease_seconds: float, now: float | None = None) -> set[int]:
        """Extend every lease `owner` holds; return the ids it still owns."""
        now = time.time() if now is None else now
        stmt = (
            jobs.update()
            .where(jobs.c.status == models.RUNNING, jobs.c.lease_owner == owner)
            .values(lease_expires_at=now + lease_seconds)
            .returning(jobs.c.id)
        )
        with self._write() as conn:
            return set(conn.execute(stmt).scalars())

    def owned(self, owner: str) -> set[int]:
        """Ids of the jobs `owner` still holds (a cancelled or reclaimed job drops out)."""
        stmt = sa.select(jobs.c.id).where(
            jobs.c.status == models.RUNNING, jobs.c.lease_owner == owner
        )
        with self._read() as conn:
            return set(conn.execute(stmt).scalars())

    def _fenced(self, job_id: int, attempt: int, owner: str) -> sa.Update:
        return jobs.update().where(
            jobs.c.id == job_id,
            jobs.c.status == models.RUNNING,
            jobs.c.attempts == attempt,
            jobs.c.lease_owner == owner,
        )

    def progress(
        self,
        owner: str,
        updates: Sequence[tuple[int, int, float, str, int | None]],
        now: float | None = None,
    ) -> None:
        """Record ``(job_id, attempt, percent, message, pid)`` progress reports, fenced."""
        now = time.time() if now is None else now
        with self._write() as conn:
            for job_id, attempt, percent, message, pid in updates:
                res = conn.execute(
                    self._fenced(job_id, attempt, owner).values(
                        progress=percent, progress_message=message, pid=pid
                    )
                )
                if res.rowcount:
                    text = f"{percent:g}%" + (f": {message}" if message else "")
                    self._event(conn, job_id, "progress", text, attempt, now)

    def finish(
        self, owner: str, outcomes: Sequence[Outcome], now: float | None = None
    ) -> list[bool]:
        """Record how attempts ended, in one transaction; each write fenced.

        Returns, per outcome, whether it applied (False: the lease was lost meanwhile).
        """
        now = time.time() if now is None else now
        applied: list[bool] = []
        with self._hot_write() as run:
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
                    "error": o.error,
                    "traceback": o.traceback,
                    "run_at": now + (o.retry_in or 0.0),
                }
                ok = run(stmt, {k: params[k] for k in _PARAMS[stmt]}) == 1
                if ok:
                    run(
                        _INSERT_EVENT,
                        [
                            {
                                "job_id": o.job_id,
                                "at": now,
                                "kind": o.reason,
                                "message": o.message,
                                "attempt": o.attempt,
                            }
                        ],
                    )
                applied.append(ok)
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
        expired = [jobs.c.status == models.RUNNING, jobs.c.lease_expires_at < now]
        if except_owner is not None:
            expired.append(jobs.c.lease_owner != except_owner)
        select = self._for_update(sa.select(jobs).where(*expired), skip_locked=True)
        reclaimed: list[Reclaimed] = []
        with self._write() as conn:
            for row in conn.execute(select).mappings().all():
                job = Job.from_row(row)
                wait = retry_in(job)
                message = f"lease of {job.runner_id or job.lease_owner} expired (runner lost)"
                values: dict[str, Any] = {
                    "end_reason": models.END_LEASE_EXPIRED,
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "error": f"LeaseExpired: {message}",
                    "traceback": None,
                }
                if wait is None:
                    values.update(status=models.FAILED, finished_at=now)
                else:
                    values.update(status=models.RETRYING, run_at=now + wait)
                res = conn.execute(
                    self._fenced(job.id, job.attempts, job.lease_owner or "").values(**values)
                )
                if res.rowcount:
                    self._event(conn, job.id, models.END_LEASE_EXPIRED, message, job.attempts, now)
                    reclaimed.append(Reclaimed(job, wait))
        return reclaimed

    def add_event(
        self, job_id: int, kind: str, message: str, attempt: int | None, now: float | None = None
    ) -> None:
        """Append one event to a job's history."""
        now = time.time() if now is None else now
        with self._write() as conn:
            self._event(conn, job_id, kind, message, attempt, now)

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
            if job.status not in (models.PENDING, models.RETRYING, models.RUNNING):
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
            self._notify(conn, "c")
        return job

    def retry(self, job_id: int, check: Callable[[Job], None], now: float | None = None) -> Job:
        """Make a failed or cancelled job `pending` again with a fresh set of attempts.

        `check(job)` runs inside the transaction (the allowlist re-check) and may raise.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            job = self._locked_row(conn, job_id)
            if job.status not in (models.FAILED, models.CANCELLED):
                raise InvalidTransition(
                    f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried"
                )
            check(job)
            self._reset(conn, job, now)
            self._notify(conn)
        return self.get(job_id)

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
                    Event(r.at, r.kind, r.message, r.attempt)
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
    ) -> tuple[list[Job], int]:
        """Jobs newest first, filtered by status and a search text; and the total count.

        The search is case-insensitive and literal (``%`` and ``_`` are plain characters) on
        every backend. A text no database can store (NUL, which PostgreSQL refuses, or a lone
        surrogate) can be in no job's name, so it matches nothing rather than failing.
        """
        # NUL: PostgreSQL refuses it in text, SQLite's LIKE stops at it and matches everything.
        if q and re.search("[\x00\ud800-\udfff]", q):
            return [], 0
        where: list[sa.ColumnElement[bool]] = []
        if status:
            where.append(jobs.c.status == status)
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

    def next_due_at(self) -> float | None:
        """When the earliest waiting job becomes due (``None`` if nothing waits)."""
        with self._read() as conn:
            value = conn.execute(
                sa.select(sa.func.min(jobs.c.run_at)).where(jobs.c.status.in_(models.DUE_STATUSES))
            ).scalar()
        return None if value is None else float(value)

    def has_work(self) -> bool:
        """True while any job is waiting or running (an idle runner must not exit then)."""
        active = (*models.DUE_STATUSES, models.RUNNING)
        with self._read() as conn:
            return (
                conn.execute(sa.select(jobs.c.id).where(jobs.c.status.in_(active)).limit(1)).first()
                is not None
            )
