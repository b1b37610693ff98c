"""The benchmark's app: a plain Flask + Flask-SQLAlchemy app with one no-op job.

Configured entirely by the environment (``bench/run.py`` sets it for every process):
``BENCHAPP_INSTANCE`` (instance folder), ``BGJOBS_DATABASE_URI`` (also the app's own
``SQLALCHEMY_DATABASE_URI``, so the job tables live in the app's database as in a real app)
and the other ``BGJOBS_*`` keys. Runners rebuild it from ``BGJOBS_APP=benchapp:create_app()``.
"""

from __future__ import annotations

import os
import time

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_bgjobs import BackgroundJobs

db = SQLAlchemy()
bgjobs = BackgroundJobs()


class Noop:
    """The benchmark's job: does nothing, so every figure is the engine's own cost."""

    def run(self) -> None:
        return None

    def stamp(self, seq: int) -> None:
        """The latency job: its first line appends ``seq time`` to ``$BENCHAPP_STAMPS``, so the
        latency ends where the job's own code starts (as in ``bench/peers.py``)."""
        now = time.time()
        fd = os.open(os.environ["BENCHAPP_STAMPS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{seq} {now!r}\n".encode())
        finally:
            os.close(fd)


def create_app() -> Flask:
    """Build the app; instance folder and database come from the environment."""
    app = Flask("benchapp", instance_path=os.environ["BENCHAPP_INSTANCE"])
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["BGJOBS_DATABASE_URI"]
    db.init_app(app)
    bgjobs.init_app(app, db=db)
    return app
