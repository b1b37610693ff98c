"""The demo's two extension objects, shared by the app factory, its models and its jobs."""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy

from flask_bgjobs import BackgroundJobs

#: The demo's own database: ``instance/demo.db`` (``SQLALCHEMY_DATABASE_URI``).
db = SQLAlchemy()

#: The jobs live in that same database, so an order and its job can commit together.
bgjobs = BackgroundJobs(db=db)
