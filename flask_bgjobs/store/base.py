"""`Base`: the store's connections and transactions, and its schema on first use."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from flask_bgjobs import models
from flask_bgjobs.errors import (
    DatabaseBusy,
    SchemaError,
)
from flask_bgjobs.models import events, jobs
from flask_bgjobs.store.connections import (
    Listener,
    _busy,
    _create_private,
    _RawPool,
    _RawPostgres,
    _RawSqlite,
    _sqlite_setup,
)
from flask_bgjobs.store.schema import _check_known, _migrations, _version_of
from flask_bgjobs.store.sql import _NOTIFY
from flask_bgjobs.store.values import (
    _DDL_LOCK_KEY,
    NOTIFY_CHANNEL,
    POSTGRESQL,
    SQLITE_BUSY_TIMEOUT,
    backend_of,
)


class Base:
    """Connections, transactions and the schema of one database (SQLite or PostgreSQL)."""

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
