"""The schema version of a database, and running the migrations shipped in the package."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from flask_bgjobs import models
from flask_bgjobs.errors import SchemaError


def _version_of(conn: Connection) -> str | None:
    names = set(sa.inspect(conn).get_table_names())
    if models.jobs.name not in names:
        return None  # a version row left behind by dropped tables counts for nothing
    if models.VERSION_TABLE in names:
        found = conn.execute(sa.select(models.version.c.version_num)).scalar()
        return None if found is None else str(found)
    return "0001" if models.jobs.name in names else None


def _check_known(version: str | None) -> None:
    if version is not None and version > models.SCHEMA_VERSION:
        raise SchemaError(
            f"the job tables are at schema {version}, newer than this flask-bgjobs knows "
            f"({models.SCHEMA_VERSION}): upgrade flask-bgjobs"
        )


class _Migrations:
    """The migrations shipped in ``flask_bgjobs/migrations``, run through Alembic's API."""

    def __init__(self, *, conn: Connection | None = None, dialect: str | None = None) -> None:
        import io

        from alembic.config import Config  # only when a schema changes: ~0.3 s to import

        self.buffer = io.StringIO()
        self.config = Config(output_buffer=self.buffer)
        self.config.set_main_option("script_location", "flask_bgjobs:migrations")
        self.config.attributes["connection"] = conn
        self.config.attributes["dialect"] = dialect

    def upgrade(self) -> None:
        from alembic import command

        command.upgrade(self.config, "head")

    def upgrade_sql(self, current: str | None) -> str:
        from alembic import command

        command.upgrade(self.config, f"{current}:head" if current else "head", sql=True)
        return self.buffer.getvalue()


def _migrations(**kwargs: Any) -> _Migrations:
    return _Migrations(**kwargs)
