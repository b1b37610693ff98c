"""Joining a host app's SQLAlchemy session: its connection, and what to do once it commits.

``run_background_job(..., session=db.session)`` inserts the job through the session's own
connection, inside the session's transaction, so the job and the host's rows commit or roll
back together. What follows an enqueue (the ``job_enqueued`` signal, waking runners, an inline
run) must wait for that commit, and must never happen for a rollback: `on_commit` holds it on
the session until then.

SQLAlchemy sends ``after_commit`` and ``after_rollback`` for savepoints too, so each held action
remembers the (sub)transaction it was added in: rolling back a savepoint drops what was added
inside it, and only the end of the outermost transaction, committed, lets the rest run. A
session closed without a commit drops everything it held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction, scoped_session

from flask_bgjobs.errors import BgJobsError

# Where a session keeps what it holds for us (Session.info lives as long as the session).
_INFO_KEY = "flask_bgjobs.on_commit"


def session_of(session: object) -> Session:
    """The `Session` behind `session` (Flask-SQLAlchemy's ``db.session`` is a scoped session).

    `BgJobsError` for anything else, before anything is stored.
    """
    if isinstance(session, scoped_session):
        session = session()  # this thread's (Flask-SQLAlchemy: this app context's) session
    if not isinstance(session, Session):
        raise BgJobsError(
            f"session= takes a SQLAlchemy session such as db.session, got {type(session).__name__}"
        )
    return session


def connection_of(session: Session) -> Connection:
    """The connection of the session's transaction (begun now if none is under way)."""
    return session.connection()


def on_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once the session's outermost transaction commits; drop it otherwise.

    It runs after the transaction has ended (the session is usable again, so an action may
    open its own), in the order actions were added.
    """
    held = session.info.get(_INFO_KEY)
    if held is None:
        held = session.info[_INFO_KEY] = _Held()
        sa_event.listen(session, "after_commit", held.after_commit)
        sa_event.listen(session, "after_soft_rollback", held.after_soft_rollback)
        sa_event.listen(session, "after_transaction_end", held.after_transaction_end)
    where = session.get_nested_transaction() or session.get_transaction()
    held.waiting.append((where, action))


@dataclass
class _Held:
    """The actions one session holds until its outermost transaction ends."""

    #: Added in a transaction not yet committed: (the (sub)transaction, the action).
    waiting: list[tuple[SessionTransaction | None, Callable[[], None]]] = field(
        default_factory=list
    )
    #: The outermost transaction committed: these run when it has ended.
    ready: list[Callable[[], None]] = field(default_factory=list)

    def after_commit(self, session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint released: its actions now share their parent's fate
        self.ready += [action for _, action in self.waiting]
        self.waiting = []

    def after_soft_rollback(self, session: Session, previous: SessionTransaction) -> None:
        self.waiting = [(t, a) for t, a in self.waiting if not _within(t, previous)]

    def after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is not None:
            return
        ready, self.ready, self.waiting = self.ready, [], []
        for action in ready:
            action()


def _within(transaction: SessionTransaction | None, ancestor: Any) -> bool:
    """True when `transaction` is `ancestor` or was begun inside it."""
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False
