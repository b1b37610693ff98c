"""Operators' actions (cancel, retry, prune, purge) and the settings every runner shares:
paused queues, recurring jobs' last ticks."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from flask_bgjobs import models
from flask_bgjobs.errors import (
    InvalidTransition,
    JobNotFound,
)
from flask_bgjobs.models import Job, events, jobs
from flask_bgjobs.store.attempts import Attempts
from flask_bgjobs.store.sql import (
    _ADD_SCHEDULE,
    _INSERT_JOB_ONCE,
    _NOTIFY,
    _PAUSE_SCHEDULE,
    _SET_LAST_JOB,
    _SET_QUEUE,
    _STATUS_OF,
    _TAKE_TICK,
)
from flask_bgjobs.store.values import _NEW_ROW, NewJob, Tick


class Actions(Attempts):
    """Operators' actions, queues and schedules."""

    # -- operator actions --------------------------------------------------------------------

    def _locked_row(self, conn: Connection, job_id: int) -> Job:
        row = conn.execute(self._for_update(sa.select(jobs).where(jobs.c.id == job_id))).mappings()
        found = row.first()
        if found is None:
            raise JobNotFound(f"no job with id {job_id}")
        return Job.from_row(found)

    def cancel(self, job_id: int, now: float | None = None) -> Job:
        """Cancel a pending, retrying or running job; return it as it was before.

        A running job's runner notices the lost lease and kills the attempt's process group.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            job = self._locked_row(conn, job_id)
            if job.status not in models.CANCELLABLE_STATUSES:
                raise InvalidTransition(
                    f"job {job_id} is {job.status}; only pending, retrying or running jobs "
                    "can be cancelled"
                )
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(
                    status=models.CANCELLED,
                    finished_at=now,
                    end_reason=models.END_CANCELLED,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            self._event(
                conn,
                job_id,
                models.END_CANCELLED,
                f"cancelled while {job.status}",
                job.attempts or None,
                now,
            )
            self._notify(conn, models.WAKE_CANCELLED)
        return job

    def retry(self, job_id: int, check: Callable[[Job], None], now: float | None = None) -> Job:
        """Make a failed or cancelled job `pending` again with a fresh set of attempts.

        `check(job)` runs inside the transaction (the allowlist re-check) and may raise.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            job = self._locked_row(conn, job_id)
            if job.status not in models.RETRYABLE_STATUSES:
                raise InvalidTransition(
                    f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried"
                )
            check(job)
            holder = self._key_holder(conn, job)
            if holder is not None:
                raise InvalidTransition(
                    f"job {job_id}'s unique_key is held by job {holder}, which waits or runs; "
                    "retry it once that one has ended"
                )
            self._reset(conn, job, now)
            self._notify(conn)
        return self.get(job_id)

    @staticmethod
    def _key_holder(conn: Connection, job: Job) -> int | None:
        """The other job holding `job`'s unique key (pending, retrying or running), if any."""
        if job.unique_key is None:
            return None
        holder = conn.execute(
            sa.select(jobs.c.id).where(
                jobs.c.unique_key == job.unique_key,
                jobs.c.status.in_(models.UNIQUE_STATUSES),
                jobs.c.id != job.id,
            )
        ).scalar()
        return None if holder is None else int(holder)

    def retry_all_failed(self, check: Callable[[Job], None], now: float | None = None) -> int:
        """Retry every `failed` job that passes `check`; return how many."""
        now = time.time() if now is None else now
        count = 0
        with self._write() as conn:
            rows = conn.execute(
                self._for_update(sa.select(jobs).where(jobs.c.status == models.FAILED))
            ).mappings()
            for row in rows.all():
                job = Job.from_row(row)
                try:
                    check(job)
                except Exception:  # noqa: BLE001 - a refused job simply stays failed
                    continue
                if self._key_holder(conn, job) is not None:
                    continue  # its unique key is taken again: it stays failed, like a refusal
                self._reset(conn, job, now)
                count += 1
            if count:
                self._notify(conn)
        return count

    def _reset(self, conn: Connection, job: Job, now: float) -> None:
        conn.execute(
            jobs.update()
            .where(jobs.c.id == job.id)
            .values(
                status=models.PENDING,
                attempts=0,
                run_at=now,
                finished_at=None,
                progress=None,
                progress_message=None,
                end_reason=None,
                # An operator asked for it to run now: a deadline it missed no longer applies.
                expires_at=None,
            )
        )
        self._event(conn, job.id, "retry", f"retried by an operator (was {job.status})", None, now)

    def prune(self, before: float) -> int:
        """Delete finished jobs (and their events) whose ``finished_at`` is before `before`."""
        old = sa.select(jobs.c.id).where(
            jobs.c.status.in_(models.FINISHED_STATUSES), jobs.c.finished_at < before
        )
        with self._write() as conn:
            conn.execute(events.delete().where(events.c.job_id.in_(old.scalar_subquery())))
            return conn.execute(jobs.delete().where(jobs.c.id.in_(old.scalar_subquery()))).rowcount

    def purge(self, *, done_before: float, failed_before: float, limit: int = 500) -> int:
        """Delete up to `limit` old finished jobs and their events; return how many.

        ``succeeded`` and ``cancelled`` jobs that finished before `done_before`, ``failed``
        ones before `failed_before` (`BGJOBS_RETENTION_DAYS`). A bounded batch: on SQLite
        the write lock is held for one batch only.
        """
        old = (
            sa.select(jobs.c.id)
            .where(
                sa.or_(
                    jobs.c.status.in_((models.SUCCEEDED, models.CANCELLED))
                    & (jobs.c.finished_at < done_before),
                    (jobs.c.status == models.FAILED) & (jobs.c.finished_at < failed_before),
                )
            )
            .limit(limit)
        )
        with self._write() as conn:
            ids = list(conn.execute(old).scalars())
            if not ids:
                return 0
            conn.execute(events.delete().where(events.c.job_id.in_(ids)))
            return int(conn.execute(jobs.delete().where(jobs.c.id.in_(ids))).rowcount)

    # -- queues ------------------------------------------------------------------------------

    def set_queue_paused(self, name: str, paused: bool, now: float | None = None) -> None:
        """Pause or resume a queue for every runner (a resume wakes them on PostgreSQL)."""
        now = time.time() if now is None else now
        with self._hot_write() as db:
            db.run(_SET_QUEUE, {"name": name, "paused": paused, "now": now})
            if self.is_postgres and not paused:
                db.run(_NOTIFY, {"payload": models.WAKE_ENQUEUED})

    def queues(
        self, limits: Mapping[str, int], *, also: Sequence[str] = (), now: float | None = None
    ) -> list[models.QueueInfo]:
        """Every queue with waiting or running jobs, a stored setting, a limit, or in `also`."""
        now = time.time() if now is None else now
        active = (*models.DUE_STATUSES, models.RUNNING)
        due = jobs.c.status.in_(models.DUE_STATUSES) & (jobs.c.run_at <= now)
        oldest = sa.func.min(sa.case((due, jobs.c.run_at), else_=None))
        with self._read() as conn:
            counted = conn.execute(
                sa.select(jobs.c.queue, jobs.c.status, sa.func.count(), oldest)
                .where(jobs.c.status.in_(active))
                .group_by(jobs.c.queue, jobs.c.status)
            ).all()
            paused = {r.name: bool(r.paused) for r in conn.execute(sa.select(models.queues))}
        names = {*paused, *limits, *also} | {row[0] for row in counted}
        found = []
        for name in sorted(names):
            rows = [r for r in counted if r[0] == name]
            firsts = [r[3] for r in rows if r[3] is not None]
            found.append(
                models.QueueInfo(
                    name=name,
                    pending=sum(int(r[2]) for r in rows if r[1] in models.DUE_STATUSES),
                    running=sum(int(r[2]) for r in rows if r[1] == models.RUNNING),
                    paused=paused.get(name, False),
                    limit=limits.get(name),
                    oldest_waiting=now - min(firsts) if firsts else None,
                )
            )
        return found

    # -- schedules ---------------------------------------------------------------------------

    def add_schedules(
        self, latest: Mapping[str, tuple[float, str]], now: float | None = None
    ) -> None:
        """Record schedules (name → (latest tick, timing)). One not seen before, or whose
        timing changed, counts its latest tick as taken: it waits for its next tick instead of
        running at once for a past one. One known already keeps its last tick."""
        if not latest:
            return
        now = time.time() if now is None else now
        with self._hot_write() as db:
            db.run(
                _ADD_SCHEDULE,
                [
                    {"name": n, "tick": t, "spec": spec, "now": now}
                    for n, (t, spec) in sorted(latest.items())
                ],
            )

    def take_tick(
        self,
        name: str,
        tick: float,
        new: NewJob | None,
        *,
        skip_if_running: bool,
        now: float | None = None,
    ) -> Tick | None:
        """Take one tick of a schedule for this runner, and enqueue its job; exactly once.

        ``None`` when another runner took the tick first, or the schedule is paused: the
        compare-and-set on ``last_tick`` and the unique (schedule, tick) index both say so, in
        one transaction, however many runners try at once. With `skip_if_running`, a tick whose
        previous job still waits or runs is taken but enqueues nothing (`Tick.skipped_for`).
        `new` ``None`` takes the tick without a job (its job could not be built).
        """
        now = time.time() if now is None else now
        with self._hot_write() as db:
            won = db.run(_TAKE_TICK, {"name": name, "tick": tick, "now": now})
            if not won:
                return None
            previous = won[0]["last_job_id"]
            if skip_if_running and previous is not None:
                status = db.run(_STATUS_OF, {"id": previous})
                if status and status[0]["status"] in models.UNIQUE_STATUSES:
                    return Tick(tick, None, previous)
            if new is None:
                return Tick(tick, None, None)
            values = new.values()
            rows = db.run(_INSERT_JOB_ONCE, values)
            if not rows:  # the index disagrees with last_tick (an edited row): trust the index
                return None
            job_id = rows[0]["id"]
            db.run(_SET_LAST_JOB, {"name": name, "id": job_id})
            if self.is_postgres:
                db.run(_NOTIFY, {"payload": models.WAKE_ENQUEUED})
        return Tick(tick, Job.from_row(_NEW_ROW | values | {"id": job_id}), None)

    def set_schedule_paused(
        self, name: str, paused: bool, latest_tick: float, spec: str, now: float | None = None
    ) -> None:
        """Pause or resume a schedule for every runner. A resume starts from `latest_tick`:
        ticks missed while paused never run."""
        now = time.time() if now is None else now
        params = {"name": name, "paused": paused, "tick": latest_tick, "spec": spec, "now": now}
        with self._hot_write() as db:
            db.run(_PAUSE_SCHEDULE, params)

    def schedule_rows(self) -> dict[str, models.ScheduleRow]:
        """Every stored schedule, with the status of its last job."""
        last = sa.select(jobs.c.status).where(jobs.c.id == models.schedules.c.last_job_id)
        with self._read() as conn:
            rows = conn.execute(
                sa.select(models.schedules, last.scalar_subquery().label("last_status"))
            ).mappings()
            return {
                r["name"]: models.ScheduleRow(
                    r["name"], bool(r["paused"]), r["last_tick"], r["last_job_id"], r["last_status"]
                )
                for r in rows
            }
