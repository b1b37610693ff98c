"""The runner's transitions: claim, progress, leases, outcomes (each fenced), sweeps; and
attempts run in the calling process (inline and manual execution)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from flask_bgjobs import models
from flask_bgjobs.models import Job, jobs
from flask_bgjobs.store.enqueue import Enqueue
from flask_bgjobs.store.sql import (
    _EXPIRE,
    _EXPIRED,
    _FINISH_FAILED,
    _FINISH_RETRYING,
    _FINISH_SHUTDOWN,
    _FINISH_SUCCEEDED,
    _FINISH_WITH_EVENT,
    _INSERT_END_EVENT,
    _INSERT_EVENT,
    _LIMIT_LOCK_KEY,
    _OWNED,
    _PARAMS,
    _PROGRESS,
    _RECLAIM,
    _RENEW,
    _RUNNING_PER_KEY,
    _RUNNING_PER_QUEUE,
    _SET_PID,
    _STARTED_EVENTS,
    _TAKE,
    _candidates_sql,
    _counts,
    _expired,
)
from flask_bgjobs.store.values import (
    _NEW_ROW,
    MAX_ERROR,
    MAX_MESSAGE,
    MAX_OUTPUT,
    MAX_PROGRESS_MESSAGE,
    MAX_TRACEBACK,
    Outcome,
    Progress,
    Reclaimed,
    Run,
    storable,
)


class Attempts(Enqueue):
    """The transitions of attempts, as runners (and inline execution) make them."""

    # -- the runner's transitions ------------------------------------------------------------

    def claim(
        self,
        *,
        owner: str,
        runner_id: str,
        limit: int,
        lease_seconds: float,
        now: float | None = None,
        queues: Sequence[str] | None = None,
        queue_limits: Mapping[str, int] | None = None,
        on_expired: Callable[[list[Job]], None] | None = None,
    ) -> list[Job]:
        """Atomically take up to `limit` due jobs: priority desc, then run_at, then id.

        Only from `queues` (``None``: all), never from a paused queue, and never more running
        at once than a queue's limit (`queue_limits`) or a job's ``concurrency_limit`` allows
        across every runner: a job held back stays ``pending`` and spends no attempt. A job
        past its ``expires_at`` that never started is cancelled instead (end reason
        ``expired``) and handed to `on_expired` after the commit.

        The attempt counter rises here, when the attempt starts, so a job that kills its
        runner every time still runs out of attempts.
        """
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        limits = dict(queue_limits or {})
        sql, params = _candidates_sql(tuple(queues) if queues else None, limits)
        expired: list[Job] = []
        with self._hot_write() as db:
            candidates = db.run(sql, params | {"now": now, "limit": limit})
            stale = [c["id"] for c in candidates if _expired(c, now)]
            if stale:
                marks = ", ".join(f":x{i}" for i in range(len(stale)))
                gone = db.run(
                    _EXPIRE.format(ids=f" AND id IN ({marks})"),
                    {"now": now} | {f"x{i}": v for i, v in enumerate(stale)},
                )
                expired = self._expired_events(db.run, gone, now)
                candidates = [c for c in candidates if c["id"] not in stale]
            if any(c["concurrency_key"] is not None or c["queue"] in limits for c in candidates):
                candidates = self._within_limits(db.run, candidates, limits)
            took = None
            if candidates:
                # Both travel with the COMMIT: nothing here waits for an answer.
                ids = {f"i{i}": c["id"] for i, c in enumerate(candidates)}
                marks = ", ".join(f":{name}" for name in ids)
                took = db.defer(
                    _TAKE.format(ids=marks),
                    {"now": now, "owner": owner, "expires": now + lease_seconds}
                    | {"runner_id": runner_id}
                    | ids,
                )
                db.defer(
                    _STARTED_EVENTS.format(ids=marks),
                    {
                        "now": now,
                        "owner": owner,
                        "message": storable(f"started on {runner_id}", MAX_MESSAGE),
                    }
                    | ids,
                )
        rows = took.result() if took is not None else []
        if expired and on_expired is not None:
            on_expired(expired)
        claimed = [Job.from_row(r) for r in rows]
        claimed.sort(key=lambda j: (-j.priority, j.run_at, j.id))
        return claimed

    def _within_limits(
        self, run: Run, candidates: list[dict[str, Any]], limits: Mapping[str, int]
    ) -> list[dict[str, Any]]:
        """The candidates that fit under every limit, counting running jobs across runners."""
        if self.is_postgres:
            # Claims that involve a limit take turns: a claim that committed meanwhile is
            # counted below (each statement sees what committed before it).
            run("SELECT pg_advisory_xact_lock(:key)", {"key": _LIMIT_LOCK_KEY})
        keys = sorted({c["concurrency_key"] for c in candidates if c["concurrency_key"]})
        names = sorted({c["queue"] for c in candidates if c["queue"] in limits})
        per_key = _counts(run, _RUNNING_PER_KEY, keys)
        per_queue = _counts(run, _RUNNING_PER_QUEUE, names)
        chosen = []
        for c in candidates:  # in claim order: the first ones take the free places
            key, queue = c["concurrency_key"], c["queue"]
            if key is not None and per_key.get(key, 0) >= (c["concurrency_limit"] or 1):
                continue
            if queue in limits and per_queue.get(queue, 0) >= limits[queue]:
                continue
            if key is not None:
                per_key[key] = per_key.get(key, 0) + 1
            if queue in limits:
                per_queue[queue] = per_queue.get(queue, 0) + 1
            chosen.append(c)
        return chosen

    @staticmethod
    def _expired_events(run: Run, gone: list[dict[str, Any]], now: float) -> list[Job]:
        if gone:
            run(
                _INSERT_EVENT,
                [
                    {
                        "job_id": g["id"],
                        "at": now,
                        "kind": models.END_EXPIRED,
                        "message": "not started within expires_in of falling due",
                        "attempt": None,
                    }
                    for g in gone
                ],
            )
        return [
            Job.from_row(
                _NEW_ROW
                | {"id": g["id"], "class_name": g["class_name"]}
                | {"method_name": g["method_name"], "status": models.CANCELLED}
            )
            for g in gone
        ]

    def expire(self, now: float | None = None) -> list[Job]:
        """Cancel every waiting job past its ``expires_at`` that never started (end reason
        ``expired``); return them. Runners call it with their sweeps."""
        now = time.time() if now is None else now
        with self._hot_write() as db:
            return self._expired_events(db.run, db.run(_EXPIRE.format(ids=""), {"now": now}), now)

    def explain_claim(
        self,
        *,
        limit: int = 4,
        now: float | None = None,
        seqscan: bool = True,
        queues: tuple[str, ...] | None = None,
    ) -> str:
        """The query plan of the claim's candidates statement, as `claim` would send it now.

        PostgreSQL's ``EXPLAIN``, or SQLite's ``EXPLAIN QUERY PLAN``; ``seqscan=False`` tells
        PostgreSQL to avoid sequential scans, to show which index the claim can use.
        Nothing is changed.
        """
        now = time.time() if now is None else now
        sql, params = _candidates_sql(queues, {})
        params = params | {"now": now, "limit": limit}
        raw = self._raw.get()
        try:
            raw.begin()
            if self.is_postgres:
                if not seqscan:
                    raw.run("SET LOCAL enable_seqscan = off", {})
                rows = raw.run("EXPLAIN " + sql, params)
                plan = [next(iter(r.values())) for r in rows]
            else:
                rows = raw.run("EXPLAIN QUERY PLAN " + sql, params)
                plan = [str(r["detail"]) for r in rows]
        finally:
            raw.rollback()
            self._raw.put(raw)
        return "\n".join(plan)

    def set_pids(self, owner: str, started: Sequence[tuple[int, int, int]]) -> None:
        """Record the process id of each ``(job_id, attempt, pid)`` just started, fenced."""
        if started:
            with self._hot_write() as db:
                db.run(
                    _SET_PID,
                    [{"id": i, "attempt": a, "pid": p, "owner": owner} for i, a, p in started],
                )

    def renew(self, owner: str, lease_seconds: float, now: float | None = None) -> set[int]:
        """Extend every lease `owner` holds; return the ids it still owns."""
        now = time.time() if now is None else now
        with self._hot_write() as db:
            rows = db.run(_RENEW, {"owner": owner, "expires": now + lease_seconds})
        return {r["id"] for r in rows}

    def owned(self, owner: str) -> set[int]:
        """Ids of the jobs `owner` still holds (a cancelled or reclaimed job drops out)."""
        with self._read() as conn:
            return set(conn.execute(sa.text(_OWNED), {"owner": owner}).scalars())

    def progress(
        self, owner: str, reports: Sequence[Progress], now: float | None = None
    ) -> list[bool]:
        """Record progress reports (the latest per attempt), fenced; return which applied."""
        now = time.time() if now is None else now
        applied = []
        with self._hot_write() as db:
            for p in reports:
                message = storable(p.message, MAX_PROGRESS_MESSAGE) or ""
                ok = (
                    db.run(
                        _PROGRESS,
                        {
                            "id": p.job_id,
                            "attempt": p.attempt,
                            "owner": owner,
                            "percent": p.percent,
                            "message": message,
                            "pid": p.pid,
                        },
                    )
                    == 1
                )
                if ok:
                    text = f"{p.percent:g}%" + (f": {message}" if message else "")
                    db.run(
                        _INSERT_EVENT,
                        {
                            "job_id": p.job_id,
                            "at": now,
                            "kind": "progress",
                            "message": text,
                            "attempt": p.attempt,
                        },
                    )
                applied.append(ok)
        return applied

    def finish(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        now: float | None = None,
        *,
        pids: Sequence[tuple[int, int, int]] = (),
    ) -> list[bool]:
        """Record how attempts ended, in one transaction; each write fenced.

        `pids` (``(job_id, attempt, pid)`` of attempts started since) ride along, as in
        `set_pids`. Returns, per outcome, whether it applied (False: the lease was lost).
        """
        now = time.time() if now is None else now
        applied: list[bool] = []
        pending: list[Any] = []
        with self._hot_write() as db:
            if pids:
                db.defer(
                    _SET_PID,
                    [{"id": i, "attempt": a, "pid": p, "owner": owner} for i, a, p in pids],
                )
            for o in outcomes:
                if o.reason == models.END_SUCCEEDED:
                    stmt = _FINISH_SUCCEEDED
                elif o.reason == models.END_SHUTDOWN:
                    stmt = _FINISH_SHUTDOWN
                elif o.retry_in is not None:
                    stmt = _FINISH_RETRYING
                else:
                    stmt = _FINISH_FAILED
                params = {
                    "id": o.job_id,
                    "attempt": o.attempt,
                    "owner": owner,
                    "reason": o.reason,
                    "pid": o.pid,
                    "now": now,
                    "result": o.result_json,
                    "error": storable(o.error, MAX_ERROR),
                    "traceback": storable(o.traceback, MAX_TRACEBACK, tail=True),
                    "run_at": now + (o.retry_in or 0.0),
                }
                event = {
                    "job_id": o.job_id,
                    "at": now,
                    "kind": o.reason,
                    "message": storable(o.message, MAX_MESSAGE),
                    "attempt": o.attempt,
                    "max_rss_kb": o.max_rss_kb,
                    "cpu_s": o.cpu_s,
                    "output": storable(o.output, MAX_OUTPUT, tail=True),
                }
                if self.is_postgres:
                    # The update and its event in one statement, sent with the COMMIT.
                    pending.append(db.defer(_FINISH_WITH_EVENT[stmt], params | event))
                    continue
                ok = db.run(stmt, {k: params[k] for k in _PARAMS[stmt]}) == 1
                if ok:
                    db.run(_INSERT_END_EVENT, event)
                applied.append(ok)
        if pending:
            applied = [bool(p.result()) for p in pending]
        return applied

    def reclaim_expired(
        self,
        retry_in: Callable[[Job], float | None],
        now: float | None = None,
        *,
        except_owner: str | None = None,
    ) -> list[Reclaimed]:
        """Take back running jobs whose lease expired, each as a failed attempt.

        `retry_in(job)` gives the wait before the retry, or ``None`` when no attempt is left.
        A live runner passes itself as `except_owner`: its own attempts are still running
        (its renewals only failed, e.g. while the database was locked), so they are not lost.
        """
        now = time.time() if now is None else now
        reclaimed: list[Reclaimed] = []
        with self._hot_write() as db:
            rows = db.run(_EXPIRED, {"now": now, "except_owner": except_owner or ""})
            for row in rows:
                job = Job.from_row(row)
                wait = retry_in(job)
                message = storable(
                    f"lease of {job.runner_id or job.lease_owner} expired (runner lost)",
                    MAX_MESSAGE,
                )
                applied = db.run(
                    _RECLAIM,
                    {
                        "id": job.id,
                        "attempt": job.attempts,
                        "owner": job.lease_owner or "",
                        "status": models.FAILED if wait is None else models.RETRYING,
                        "run_at": job.run_at if wait is None else now + wait,
                        "finished_at": now if wait is None else None,
                        "error": f"LeaseExpired: {message}",
                    },
                )
                if applied:
                    db.run(
                        _INSERT_EVENT,
                        {
                            "job_id": job.id,
                            "at": now,
                            "kind": models.END_LEASE_EXPIRED,
                            "message": message,
                            "attempt": job.attempts,
                        },
                    )
                    reclaimed.append(Reclaimed(job, wait))
        return reclaimed

    def mark_log_incomplete(self, job_ids: Sequence[int]) -> None:
        """Flag jobs whose log lines could not all be written (disk full …)."""
        if not job_ids:
            return
        with self._write() as conn:
            conn.execute(
                jobs.update().where(jobs.c.id.in_(list(job_ids))).values(log_incomplete=True)
            )

    # -- attempts in the calling process (BGJOBS_EXECUTION inline or manual) ----------------

    def claim_job(
        self,
        job_id: int,
        *,
        owner: str,
        runner_id: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> Job | None:
        """Take this one waiting job now, due or not, as `claim` takes jobs; ``None`` when it
        is not waiting (finished, cancelled, running elsewhere)."""
        now = time.time() if now is None else now
        with self._hot_write() as db:
            rows = db.run(
                _TAKE.format(ids=":i0"),
                {"now": now, "owner": owner, "expires": now + lease_seconds}
                | {"runner_id": runner_id, "i0": job_id},
            )
            if rows:
                db.run(
                    _INSERT_EVENT,
                    {
                        "job_id": job_id,
                        "at": now,
                        "kind": "started",
                        "message": storable(f"started on {runner_id}", MAX_MESSAGE),
                        "attempt": rows[0]["attempts"],
                    },
                )
        return Job.from_row(rows[0]) if rows else None

    def pending_jobs(
        self, class_name: str | None = None, method_name: str | None = None
    ) -> list[Job]:
        """Jobs in status ``pending``, oldest first, of this class (or module) and method."""
        where = [jobs.c.status == models.PENDING]
        if class_name is not None:
            where.append(jobs.c.class_name == class_name)
        if method_name is not None:
            where.append(jobs.c.method_name == method_name)
        with self._read() as conn:
            rows = conn.execute(sa.select(jobs).where(*where).order_by(jobs.c.id)).mappings()
            return [Job.from_row(r) for r in rows]
