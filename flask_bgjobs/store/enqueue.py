"""Enqueueing: one job, many in one transaction, or jobs in a host's own transaction."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from flask_bgjobs import models
from flask_bgjobs.errors import (
    DatabaseBusy,
    InvalidTransition,
)
from flask_bgjobs.models import Job
from flask_bgjobs.store.connections import _busy, _connection_run
from flask_bgjobs.store.reads import Reads
from flask_bgjobs.store.schema import _version_of
from flask_bgjobs.store.sql import (
    _ACTIVE_WITH_KEY,
    _IN_COLUMN_ORDER,
    _INSERT_JOB,
    _INSERT_JOB_NOTIFY,
    _INSERT_JOB_ONCE,
    _INSERT_JOB_ONCE_NOTIFY,
    _NOTIFY,
    _PG_IDENTITY,
    _SQLITE_FILE,
    _batches,
    _pg_rows_sql,
    _rows_sql,
)
from flask_bgjobs.store.values import _NEW_ROW, NewJob, Run


class Enqueue(Reads):
    """Inserting jobs."""

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
