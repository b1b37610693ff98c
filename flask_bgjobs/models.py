"""The two tables and the `Job` value object read from them.

Times are stored as epoch seconds (``float``) so that SQLite and PostgreSQL compare them the
same way and tests can age a lease with one ``UPDATE``; they are shown as ISO 8601 UTC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

#: Waiting for its first run (new, manually retried, or returned by a shutdown).
PENDING = "pending"
#: Claimed by a runner; an attempt is under way in a child process.
RUNNING = "running"
#: A failed attempt left attempts over; waiting for ``run_at``.
RETRYING = "retrying"
#: An attempt returned normally.
SUCCEEDED = "succeeded"
#: The last allowed attempt failed, or the job was refused at run time.
FAILED = "failed"
#: Cancelled by an operator before it finished.
CANCELLED = "cancelled"

STATUSES: tuple[str, ...] = (PENDING, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)
DUE_STATUSES: tuple[str, ...] = (PENDING, RETRYING)
FINISHED_STATUSES: tuple[str, ...] = (SUCCEEDED, FAILED, CANCELLED)
#: What `cancel` accepts.
CANCELLABLE_STATUSES: tuple[str, ...] = (PENDING, RETRYING, RUNNING)
#: What `retry` accepts.
RETRYABLE_STATUSES: tuple[str, ...] = (FAILED, CANCELLED)

# Why a runner is woken (a datagram on this host, a NOTIFY payload on PostgreSQL): a job was
# enqueued (claim now), or one was cancelled (check leases now: kill the attempt if it runs).
# Any other payload counts as an enqueue.
WAKE_ENQUEUED = "e"
WAKE_CANCELLED = "c"

# Why an attempt ended; stored as the event kind and the job's ``end_reason``.
END_SUCCEEDED = "succeeded"
END_EXCEPTION = "exception"
END_EXIT = "exit"
END_SIGNAL = "signal"
END_TIMEOUT = "timeout"
END_LEASE_EXPIRED = "lease_expired"
END_SHUTDOWN = "shutdown"
END_CANCELLED = "cancelled"
END_REJECTED = "rejected"
END_REASONS: tuple[str, ...] = (
    END_SUCCEEDED,
    END_EXCEPTION,
    END_EXIT,
    END_SIGNAL,
    END_TIMEOUT,
    END_LEASE_EXPIRED,
    END_SHUTDOWN,
    END_CANCELLED,
    END_REJECTED,
)

#: Reasons that count as a failed attempt (not cancels or shutdowns, which operators chose).
ATTEMPT_FAILURES: tuple[str, ...] = (
    END_EXCEPTION,
    END_EXIT,
    END_SIGNAL,
    END_TIMEOUT,
    END_LEASE_EXPIRED,
    END_REJECTED,
)

metadata = sa.MetaData()

# BIGINT on PostgreSQL, but INTEGER on SQLite, where only INTEGER PRIMARY KEY is the rowid.
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

jobs = sa.Table(
    "bgjobs_jobs",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("class_name", sa.String(255), nullable=False),
    sa.Column("method_name", sa.String(100), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("delay", sa.Double, nullable=False, default=0.0),
    sa.Column("timeout", sa.Double, nullable=False, default=0.0),
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
    sa.Column("log_incomplete", sa.Boolean, nullable=False, default=False),
)

_due = jobs.c.status.in_(DUE_STATUSES)
# The claim's ORDER BY, restricted to due rows: the claim reads only the head of this index.
sa.Index(
    "ix_bgjobs_jobs_due",
    jobs.c.priority.desc(),
    jobs.c.run_at,
    jobs.c.id,
    sqlite_where=_due,
    postgresql_where=_due,
)
_running = jobs.c.status == RUNNING
sa.Index(
    "ix_bgjobs_jobs_lease",
    jobs.c.lease_expires_at,
    sqlite_where=_running,
    postgresql_where=_running,
)
sa.Index("ix_bgjobs_jobs_status_id", jobs.c.status, jobs.c.id)
sa.Index("ix_bgjobs_jobs_finished", jobs.c.finished_at)

events = sa.Table(
    "bgjobs_events",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column(
        "job_id",
        _Id,
        sa.ForeignKey("bgjobs_jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("attempt", sa.Integer),
)
sa.Index("ix_bgjobs_events_job", events.c.job_id, events.c.id)


def iso(ts: float | None) -> str | None:
    """Format epoch seconds as ISO 8601 UTC, or pass ``None`` through."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """One entry in a job's history."""

    at: float
    kind: str
    message: str
    attempt: int | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of SPEC §9: ``{at, kind, message, attempt}``."""
        return {
            "at": iso(self.at),
            "kind": self.kind,
            "message": self.message,
            "attempt": self.attempt,
        }


@dataclass(frozen=True)
class Job:
    """A snapshot of one job row; plain data, so it outlives the app context that loaded it."""

    id: int
    class_name: str
    method_name: str
    params_json: str
    status: str
    priority: int
    attempts: int
    max_attempts: int
    delay: float
    timeout: float
    run_at: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: float | None = None
    progress_message: str | None = None
    result_json: str | None = None
    error: str | None = None
    traceback: str | None = None
    end_reason: str | None = None
    runner_id: str | None = None
    pid: int | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    log_incomplete: bool = False
    events: tuple[Event, ...] | None = field(default=None, compare=False)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], events: tuple[Event, ...] | None = None) -> Job:
        """Build a `Job` from a mapping of column values."""
        return cls(
            id=row["id"],
            class_name=row["class_name"],
            method_name=row["method_name"],
            params_json=row["params"],
            status=row["status"],
            priority=row["priority"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            delay=row["delay"],
            timeout=row["timeout"],
            run_at=row["run_at"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            progress=row["progress"],
            progress_message=row["progress_message"],
            result_json=row["result"],
            error=row["error"],
            traceback=row["traceback"],
            end_reason=row["end_reason"],
            runner_id=row["runner_id"],
            pid=row["pid"],
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
            log_incomplete=bool(row["log_incomplete"]),
            events=events,
        )

    @property
    def name(self) -> str:
        """The display name used in logs: ``pkg.mod.Class::method``."""
        return f"{self.class_name}::{self.method_name}"

    @property
    def params(self) -> Any:
        """The decoded params: a list (positional) or a dict (keyword arguments)."""
        return json.loads(self.params_json)

    @property
    def result(self) -> Any:
        """The decoded return value of the successful attempt, or ``None``."""
        return None if self.result_json is None else json.loads(self.result_json)

    @property
    def is_finished(self) -> bool:
        """True once the job reached a final status."""
        return self.status in FINISHED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of SPEC §9, exactly (``events`` only when they were loaded).

        The traceback, timeout and end reason stay off it: the contract fixes the keys. Pages
        and ``flask bgjobs show`` read them from the `Job` itself.
        """
        try:
            params: Any = self.params
        except ValueError:  # an edited row: show it, don't crash the view
            params = self.params_json
        try:
            result: Any = self.result
        except ValueError:
            result = self.result_json
        data: dict[str, Any] = {
            "id": self.id,
            "class_name": self.class_name,
            "method_name": self.method_name,
            "params": params,
            "status": self.status,
            "priority": self.priority,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "run_at": iso(self.run_at),
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "progress": self.progress,
            "progress_message": self.progress_message,
            "result": result,
            "error": self.error,
            "runner_id": self.runner_id,
            "pid": self.pid,
        }
        if self.events is not None:
            data["events"] = [e.to_dict() for e in self.events]
        return data
