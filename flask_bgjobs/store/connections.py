"""Connections for the per-job statements: raw sqlite3 and psycopg connections from a small
per-process pool, the SQLite setup, the "database is locked" translation, and LISTEN."""

from __future__ import annotations

import contextlib
import os
import select
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from flask_bgjobs.errors import DatabaseBusy
from flask_bgjobs.store.sql import _sql_for
from flask_bgjobs.store.values import POSTGRESQL, SQLITE, SQLITE_BUSY_TIMEOUT, Run


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
