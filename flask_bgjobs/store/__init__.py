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

The package, in the order a reader meets it: `values` (what goes in and out), `sql` (every
statement), `connections`, `schema` (versions, migrations); then `Store` itself, one class
built from a chain of parts by concern: `base` (connections, transactions) → `reads` →
`enqueue` → `attempts` (the runner's transitions) → `actions` (operators, queues, schedules).
"""

from __future__ import annotations

from flask_bgjobs.store.actions import Actions
from flask_bgjobs.store.connections import Listener, Pending
from flask_bgjobs.store.schema import _migrations
from flask_bgjobs.store.values import (
    MAX_ERROR,
    MAX_MESSAGE,
    MAX_OUTPUT,
    MAX_PROGRESS_MESSAGE,
    MAX_TRACEBACK,
    NOTIFY_CHANNEL,
    POSTGRESQL,
    SQLITE,
    SQLITE_BUSY_TIMEOUT,
    NewJob,
    Outcome,
    Progress,
    Reclaimed,
    Tick,
    backend_of,
    storable,
)

__all__ = [
    "MAX_ERROR",
    "MAX_MESSAGE",
    "MAX_OUTPUT",
    "MAX_PROGRESS_MESSAGE",
    "MAX_TRACEBACK",
    "NOTIFY_CHANNEL",
    "POSTGRESQL",
    "SQLITE",
    "SQLITE_BUSY_TIMEOUT",
    "Listener",
    "NewJob",
    "Outcome",
    "Pending",
    "Progress",
    "Reclaimed",
    "Store",
    "Tick",
    "_migrations",
    "backend_of",
    "storable",
]


class Store(Actions):
    """Jobs and their events in one SQL database (SQLite or PostgreSQL).

    One method per state transition; see the package's docstring for the rules they keep.
    """
