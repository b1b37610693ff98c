"""A test app whose jobs use the app's own Flask-SQLAlchemy database (``db=`` shared).

Run by runners as ``jobapp.dbapp:create_app()``; configured by the environment like
`jobapp.create_app`. Its orders and their confirmation job are the transactional-enqueue
example of docs/transactions.md.
"""

from __future__ import annotations

import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from flask_bgjobs import BackgroundJobs, DiscardJob
from jobapp.jobs import _mark

db = SQLAlchemy()
bgjobs = BackgroundJobs(db=db)


class Note(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]
    pid: Mapped[int]


class Notes:
    """A job that writes through the app's session, in its own process."""

    def add(self, text: str) -> int:
        db.session.add(Note(text=text, pid=os.getpid()))
        db.session.commit()
        return int(db.session.query(Note).count())


class Order(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str]


@bgjobs.job(retry_attempts=0)
def send_confirmation(order_id: int) -> str:
    """The job enqueued in the order's own transaction: it finds the order, or gives up."""
    order = db.session.get(Order, order_id)
    if order is None:
        raise DiscardJob(f"order {order_id} does not exist")
    _mark("confirmations", f"{order_id} {order.item} {os.getpid()}")
    return f"confirmed {order.item}"


def create_app() -> Flask:
    app = Flask("jobapp.dbapp", instance_path=os.environ["JOBAPP_INSTANCE"])
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["BGJOBS_DATABASE_URI"]
    db.init_app(app)
    bgjobs.init_app(app)
    with app.app_context():
        db.create_all()
    return app
