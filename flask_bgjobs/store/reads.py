"""Reading jobs, counts and figures: the job list, the dashboard, the CLI, metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from flask_bgjobs import models
from flask_bgjobs.errors import JobNotFound
from flask_bgjobs.models import Event, Job, events, jobs
from flask_bgjobs.store.base import Base
from flask_bgjobs.store.sql import _ATTEMPT_DURATIONS, _ATTEMPT_ENDS, _ATTEMPT_STATS
from flask_bgjobs.store.values import _UNSTORABLE


class Reads(Base):
    """Reads: jobs, counts, throughput, attempts figures."""

    # -- reads -------------------------------------------------------------------------------

    def get(self, job_id: int, *, with_events: bool = False) -> Job:
        """The job with this id (and its history); `JobNotFound` if there is none."""
        with self._read() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first()
            if row is None:
                raise JobNotFound(f"no job with id {job_id}")
            evs: tuple[Event, ...] | None = None
            if with_events:
                evs = tuple(
                    Event(r.at, r.kind, r.message, r.attempt, r.max_rss_kb, r.cpu_s, r.output)
                    for r in conn.execute(
                        sa.select(events).where(events.c.job_id == job_id).order_by(events.c.id)
                    )
                )
        return Job.from_row(row, evs)

    def list_jobs(
        self,
        *,
        status: str | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
        queue: str | None = None,
    ) -> tuple[list[Job], int]:
        """Jobs newest first, filtered by status and a search text; and the total count.

        The search is case-insensitive and literal (``%`` and ``_`` are plain characters) on
        every backend. A text no database can store (NUL, which PostgreSQL refuses, or a lone
        surrogate) can be in no job's name, so it matches nothing rather than failing.
        """
        # NUL: PostgreSQL refuses it in text, SQLite's LIKE stops at it and matches everything.
        if q and _UNSTORABLE.search(q):
            return [], 0
        where: list[sa.ColumnElement[bool]] = []
        if status:
            where.append(jobs.c.status == status)
        if queue:
            where.append(jobs.c.queue == queue)
        if q and "::" in q:  # the display form, "pkg.mod.Class::method"
            cls, _, method = q.partition("::")
            where.append(jobs.c.class_name.iendswith(cls, autoescape=True))
            where.append(jobs.c.method_name.istartswith(method, autoescape=True))
        elif q:
            match: list[sa.ColumnElement[bool]] = [
                jobs.c.class_name.icontains(q, autoescape=True),
                jobs.c.method_name.icontains(q, autoescape=True),
            ]
            # ASCII digits only: "²".isdigit() is true, but int() refuses it.
            number = q.strip()
            if number.isascii() and number.isdigit() and len(number) < 18:
                match.append(jobs.c.id == int(number))
            where.append(sa.or_(*match))
        with self._read() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(jobs).where(*where)
            ).scalar_one()
            rows = conn.execute(
                sa.select(jobs).where(*where).order_by(jobs.c.id.desc()).limit(limit).offset(offset)
            ).mappings()
            return [Job.from_row(r) for r in rows], int(total)

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zero included)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
            ).all()
        counts = dict.fromkeys(models.STATUSES, 0)
        counts.update({status: int(n) for status, n in rows})
        return counts

    def throughput(self, since: float, bucket: float = 60.0) -> list[dict[str, Any]]:
        """Finished attempts per time bucket since `since`: ``[{at, succeeded, failed}]``.

        "failed" counts attempts that failed (exception, exit, signal, timeout, lost lease,
        refused); a cancel or a shutdown is an operator's decision, not a failure. Counted per
        bucket in SQL, so a busy hour costs one small result.
        """
        index = sa.cast(sa.func.floor((events.c.at - since) / bucket), sa.Integer).label("i")
        with self._read() as conn:
            rows = conn.execute(
                sa.select(index, events.c.kind, sa.func.count())
                .where(
                    events.c.at >= since,
                    events.c.kind.in_((*models.ATTEMPT_FAILURES, models.END_SUCCEEDED)),
                )
                .group_by(index, events.c.kind)
            ).all()
        now = time.time()
        n = max(1, int((now - since) // bucket) + 1)
        succeeded, failed = [0] * n, [0] * n
        for i, kind, count in rows:
            i = min(n - 1, max(0, int(i)))
            (succeeded if kind == models.END_SUCCEEDED else failed)[i] += int(count)
        return [
            {"at": models.iso(since + i * bucket), "succeeded": succeeded[i], "failed": failed[i]}
            for i in range(n)
        ]

    def attempt_stats(self, since: float) -> list[dict[str, Any]]:
        """Per job (class and method), the attempts that ended since `since`, in figures.

        ``[{class_name, method_name, attempts, failed, p50_s, p95_s, p50_rss_kb, p95_rss_kb}]``,
        the busiest job first. Failed attempts are those of `models.ATTEMPT_FAILURES` (cancels
        and shutdowns are neither). Durations run from an attempt's started event to its
        ending event; percentiles are nearest-rank, computed in SQL (window functions, which
        both backends have), so a busy day costs a result of one row per job.
        """
        kinds = (models.END_SUCCEEDED, *models.ATTEMPT_FAILURES)
        stmt = sa.text(_ATTEMPT_STATS).bindparams(
            sa.bindparam("kinds", expanding=True), sa.bindparam("ok")
        )
        with self._read() as conn:
            rows = conn.execute(
                stmt, {"since": since, "kinds": list(kinds), "ok": models.END_SUCCEEDED}
            ).mappings()
            return [
                {
                    "class_name": r["class_name"],
                    "method_name": r["method_name"],
                    "attempts": int(r["attempts"]),
                    "failed": int(r["failed"]),
                    "p50_s": models.finite(r["p50_s"]),
                    "p95_s": models.finite(r["p95_s"]),
                    "p50_rss_kb": None if r["p50_rss_kb"] is None else int(r["p50_rss_kb"]),
                    "p95_rss_kb": None if r["p95_rss_kb"] is None else int(r["p95_rss_kb"]),
                }
                for r in rows
            ]

    def next_due_at(self, queues: Sequence[str] | None = None) -> float | None:
        """When the earliest waiting job a runner of `queues` may claim falls due (``None``:
        nothing waits). Jobs of paused queues do not count."""
        paused = sa.select(models.queues.c.name).where(models.queues.c.paused)
        where = [jobs.c.status.in_(models.DUE_STATUSES), jobs.c.queue.not_in(paused)]
        if queues:
            where.append(jobs.c.queue.in_(list(queues)))
        with self._read() as conn:
            value = conn.execute(sa.select(sa.func.min(jobs.c.run_at)).where(*where)).scalar()
        return None if value is None else float(value)

    def has_work(self) -> bool:
        """True while any job is waiting or running (an idle runner must not exit then)."""
        active = (*models.DUE_STATUSES, models.RUNNING)
        with self._read() as conn:
            return (
                conn.execute(sa.select(jobs.c.id).where(jobs.c.status.in_(active)).limit(1)).first()
                is not None
            )

    # -- metrics ------------------------------------------------------------------------------

    def counts_by_queue(self) -> list[tuple[str, str, int]]:
        """``(queue, status, jobs)`` for every pair that has jobs."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(jobs.c.queue, jobs.c.status, sa.func.count()).group_by(
                    jobs.c.queue, jobs.c.status
                )
            ).all()
        return [(str(q), str(s), int(n)) for q, s, n in rows]

    def attempt_ends(self, kinds: Sequence[str]) -> dict[str, int]:
        """Attempts that ended, by reason (of `kinds`, and cancels of running attempts)."""
        stmt = sa.text(_ATTEMPT_ENDS).bindparams(sa.bindparam("kinds", expanding=True))
        with self._read() as conn:
            rows = conn.execute(stmt, {"kinds": list(kinds)}).all()
        return {str(kind): int(n) for kind, n in rows}

    def attempt_durations(
        self, kinds: Sequence[str], bounds: Sequence[float]
    ) -> tuple[list[int], float, int]:
        """How long the attempts that ended (one of `kinds`) ran: per upper bound of
        `bounds` the number that took at most that long, their total seconds, and their number.
        """
        sums = "".join(
            f", SUM(CASE WHEN took <= :b{i} THEN 1 ELSE 0 END) AS le{i}" for i in range(len(bounds))
        )
        stmt = sa.text(_ATTEMPT_DURATIONS.format(buckets=sums)).bindparams(
            sa.bindparam("kinds", expanding=True)
        )
        params: dict[str, Any] = {"kinds": list(kinds)} | {
            f"b{i}": float(b) for i, b in enumerate(bounds)
        }
        with self._read() as conn:
            row = conn.execute(stmt, params).mappings().one()
        counts = [int(row[f"le{i}"] or 0) for i in range(len(bounds))]
        return counts, float(row["total"] or 0.0), int(row["n"] or 0)
