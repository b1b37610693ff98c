"""0.2.0: queues, unique jobs, concurrency keys, expiry, schedules, limits, usage and output.

Adds columns with defaults (every 0.1.0 job lands in the ``default`` queue, with no key, limit
or schedule), the indexes that let the database enforce uniqueness and one job per tick, and
two small tables of shared settings. Nothing is rewritten: a 0.1.0 row keeps every value.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_RUNNING = sa.text("status = 'running'")
_UNIQUE_ACTIVE = sa.text("unique_key IS NOT NULL AND status IN ('pending', 'retrying', 'running')")
_SCHEDULED = sa.text("schedule IS NOT NULL")
_FINISHED = sa.text("finished_at IS NOT NULL")


def upgrade() -> None:
    for column in (
        sa.Column("queue", sa.String(64), nullable=False, server_default="default"),
        sa.Column("unique_key", sa.String(255)),
        sa.Column("concurrency_key", sa.String(255)),
        sa.Column("concurrency_limit", sa.Integer),
        sa.Column("expires_at", sa.Double),
        sa.Column("schedule", sa.String(200)),
        sa.Column("scheduled_for", sa.Double),
        sa.Column("memory_limit", sa.BigInteger),
        sa.Column("cpu_limit", sa.Double),
    ):
        op.add_column("bgjobs_jobs", column)
    op.create_index(
        "ux_bgjobs_jobs_unique_key",
        "bgjobs_jobs",
        ["unique_key"],
        unique=True,
        sqlite_where=_UNIQUE_ACTIVE,
        postgresql_where=_UNIQUE_ACTIVE,
    )
    op.create_index(
        "ux_bgjobs_jobs_schedule_tick",
        "bgjobs_jobs",
        ["schedule", "scheduled_for"],
        unique=True,
        sqlite_where=_SCHEDULED,
        postgresql_where=_SCHEDULED,
    )
    # Jobs that have not finished need no entry: fewer pages for every enqueue to write.
    op.drop_index("ix_bgjobs_jobs_finished", table_name="bgjobs_jobs")
    op.create_index(
        "ix_bgjobs_jobs_finished",
        "bgjobs_jobs",
        ["finished_at"],
        sqlite_where=_FINISHED,
        postgresql_where=_FINISHED,
    )
    op.create_index(
        "ix_bgjobs_jobs_running_key",
        "bgjobs_jobs",
        ["concurrency_key"],
        sqlite_where=_RUNNING,
        postgresql_where=_RUNNING,
    )
    op.create_index(
        "ix_bgjobs_jobs_running_queue",
        "bgjobs_jobs",
        ["queue"],
        sqlite_where=_RUNNING,
        postgresql_where=_RUNNING,
    )
    for column in (
        sa.Column("max_rss_kb", sa.BigInteger),
        sa.Column("cpu_s", sa.Double),
        sa.Column("output", sa.Text),
    ):
        op.add_column("bgjobs_events", column)
    op.create_table(
        "bgjobs_queues",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.Double),
    )
    op.create_table(
        "bgjobs_schedules",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("last_tick", sa.Double),
        sa.Column("spec", sa.String(300)),
        sa.Column("last_job_id", _Id),
        sa.Column("updated_at", sa.Double),
    )


def downgrade() -> None:
    op.drop_table("bgjobs_schedules")
    op.drop_table("bgjobs_queues")
    for name in ("output", "cpu_s", "max_rss_kb"):
        op.drop_column("bgjobs_events", name)
    for name in (
        "ix_bgjobs_jobs_running_queue",
        "ix_bgjobs_jobs_running_key",
        "ux_bgjobs_jobs_schedule_tick",
        "ux_bgjobs_jobs_unique_key",
    ):
        op.drop_index(name, table_name="bgjobs_jobs")
    op.drop_index("ix_bgjobs_jobs_finished", table_name="bgjobs_jobs")
    op.create_index("ix_bgjobs_jobs_finished", "bgjobs_jobs", ["finished_at"])
    for name in (
        "cpu_limit", "memory_limit", "scheduled_for", "schedule", "expires_at",
        "concurrency_limit", "concurrency_key", "unique_key", "queue",
    ):  # fmt: skip
        op.drop_column("bgjobs_jobs", name)
