"""The schema of flask-bgjobs 0.1.0: jobs and their events.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# BIGINT on PostgreSQL, but INTEGER on SQLite, where only INTEGER PRIMARY KEY is the rowid.
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_DUE = sa.text("status IN ('pending', 'retrying')")
_RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    op.create_table(
        "bgjobs_jobs",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("class_name", sa.String(255), nullable=False),
        sa.Column("method_name", sa.String(100), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("delay", sa.Double, nullable=False),
        sa.Column("timeout", sa.Double, nullable=False),
        sa.Column("run_at", sa.Double, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.Column("progress", sa.Double),
        sa.Column("progress_message", sa.Text),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("traceback", sa.Text),
        sa.Column("end_reason", sa.String(32)),
        sa.Column("runner_id", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("lease_owner", sa.String(255)),
        sa.Column("lease_expires_at", sa.Double),
        sa.Column("log_incomplete", sa.Boolean, nullable=False),
    )
    op.create_index(
        "ix_bgjobs_jobs_due",
        "bgjobs_jobs",
        [sa.text("priority DESC"), "run_at", "id"],
        sqlite_where=_DUE,
        postgresql_where=_DUE,
    )
    op.create_index(
        "ix_bgjobs_jobs_lease",
        "bgjobs_jobs",
        ["lease_expires_at"],
        sqlite_where=_RUNNING,
        postgresql_where=_RUNNING,
    )
    op.create_index("ix_bgjobs_jobs_status_id", "bgjobs_jobs", ["status", "id"])
    op.create_index("ix_bgjobs_jobs_finished", "bgjobs_jobs", ["finished_at"])
    op.create_table(
        "bgjobs_events",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            _Id,
            sa.ForeignKey("bgjobs_jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer),
    )
    op.create_index("ix_bgjobs_events_job", "bgjobs_events", ["job_id", "id"])


def downgrade() -> None:
    op.drop_table("bgjobs_events")
    op.drop_table("bgjobs_jobs")
