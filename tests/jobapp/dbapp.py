"""A test app whose jobs use the app's own Flask-SQLAlchemy database (``db=`` shared).

Run by runners as ``jobapp.dbapp:create_app()``; configured by the environment like
`jobapp.create_app`.
"""

from __future__ import annotations

import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from flask_bgjobs import BackgroundJobs

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


def create_app() -> Flask:
    app = Flask("jobapp.dbapp", instance_path=os.environ["JOBAPP_INSTANCE"])
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["BGJOBS_DATABASE_URI"]
    db.init_app(app)
    bgjobs.init_app(app)
    with app.app_context():
        db.create_all()
    return app
