"""An order, and its confirmation: a model of the demo's own database and a typed job.

The "Place an order" button adds an `Order` and enqueues `confirm_order` in one transaction
(``session=db.session``): both commit, or, with "then roll back", neither exists.
"""

from __future__ import annotations

import time

from sqlalchemy.orm import Mapped, mapped_column

from demo_app.extensions import bgjobs, db


class Order(db.Model):  # type: ignore[name-defined,misc]
    """A row of the demo's own table ``orders``, next to the job tables."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: A random reference, never reused (unlike an id after a rollback).
    reference: Mapped[str] = mapped_column(unique=True)
    item: Mapped[str]
    status: Mapped[str] = mapped_column(default="new")
    created_at: Mapped[float] = mapped_column(default=time.time)


@bgjobs.job(retry_attempts=3)
def confirm_order(order_id: int) -> str:
    """Mark the order confirmed (and, in a real shop, mail the customer).

    Typed: ``confirm_order.enqueue("7")`` is a mypy error. Allowed by the decorator.
    """
    order = db.session.get(Order, order_id)  # this job process's own session
    if order is None:
        raise LookupError(f"order {order_id} not found")
    order.status = "confirmed"
    db.session.commit()
    return f"order {order.reference} confirmed"
