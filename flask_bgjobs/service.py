"""The operations every front end shares: enqueue, retry, cancel, prune, stats, sweep.

Enqueue comes in three forms (one job, many in one transaction, either inside a host app's
SQLAlchemy session), all followed by the same steps once stored (`_stored`): the
``job_enqueued`` signal, then a runner woken, or with ``BGJOBS_EXECUTION`` ``inline`` the job
run here.

`BackgroundJobs` (the Python API), the CLI and the dashboard all call these with the app's
`AppState`, so a rule such as "retry re-checks the allowlist" or "a cancel wakes the runner"
is written once. No SQL here: that is the store's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flask_bgjobs import (
    config,
    joblog,
    models,
    recurring,
    security,
    signals,
    transaction,
    typed,
)
from flask_bgjobs.errors import BgJobsError, InvalidJob, JobNotAllowed
from flask_bgjobs.models import Job
from flask_bgjobs.state import AppState
from flask_bgjobs.store import NewJob, Reclaimed

if TYPE_CHECKING:
    from flask import Flask

#: Priorities and attempt counts are stored as 32-bit integers on every backend.
INT_RANGE = (-(2**31), 2**31 - 1)
#: The longest delay or timeout accepted (ten years): anything longer is a mistake, and a time
#: past year 9999 could not even be shown.
MAX_SECONDS = 10 * 365 * 86400.0


# -- enqueue ---------------------------------------------------------------------------------


def enqueue(
    state: AppState,
    class_name: str,
    method_name: str,
    params: list[Any] | dict[str, Any] | None = None,
    retry_attempts: int | None = None,
    delay: float | None = None,
    priority: int | None = None,
    *,
    timeout: float | None = None,
    queue: str | None = None,
    run_at: datetime | None = None,
    expires_in: float | None = None,
    unique_key: str | None = None,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
    memory_limit: int | None = None,
    cpu_limit: float | None = None,
    session: object | None = None,
) -> Job:
    """Validate, store and hand a job to a runner; return the persisted `Job`.

    Raises `InvalidJob` or `JobNotAllowed` (nothing stored, nothing imported, one line in the
    error log), or `DatabaseBusy` when SQLite stayed locked (nothing stored). With a
    ``unique_key`` already held by a waiting or running job, returns that job
    (``job.duplicate`` is true) and stores nothing. With a `session`, the job joins that
    SQLAlchemy session's transaction (`enqueue_many` says how). With ``BGJOBS_EXECUTION``
    ``inline`` the job has run when this returns, and comes back in its final state.
    """
    try:
        new = build(
            state, class_name, method_name, params, retry_attempts, delay, priority,
            timeout=timeout, queue=queue, run_at=run_at, expires_in=expires_in,
            unique_key=unique_key, concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit, memory_limit=memory_limit, cpu_limit=cpu_limit,
        )  # fmt: skip
    except BgJobsError as exc:
        log_rejected(state, class_name, method_name, exc)
        raise
    if session is not None:
        return _enqueue_in(state, session, [new])[0]
    return _stored(state, _app(), [state.store.enqueue(new)])[0]


#: What an `enqueue_many` spec may hold: the arguments of `run_background_job` but `session`.
SPEC_KEYS = frozenset({"class_name", "method_name", "params"}) | (typed.OPTIONS - {"session"})


def enqueue_many(
    state: AppState, specs: Iterable[Mapping[str, Any]], *, session: object | None = None
) -> list[Job]:
    """Validate every spec, then store them all in one transaction; return the `Job` of each.

    A spec is a dict of `run_background_job`'s arguments (``class_name``, ``method_name``,
    ``params`` and any keyword). One bad spec stores none: `InvalidJob` (or `JobNotAllowed`)
    naming its index, ``specs[3]: …``. A ``unique_key`` held by a waiting or running job, or by
    an earlier spec of the batch, gives that job back (``job.duplicate``), as one enqueue does.

    With a `session` (``db.session``) the jobs are inserted through the session's connection,
    in its transaction: they exist, and runners are woken, only once it commits, and never if
    it rolls back. The session must use the job database, else `BgJobsError`, nothing stored.
    """
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Iterable):
        raise InvalidJob(f"enqueue_many takes a list of dicts, got {type(specs).__name__}")
    now = time.time()
    news = []
    checked: set[tuple[str, str]] = set()
    for i, spec in enumerate(specs):
        try:
            news.append(_build_spec(state, spec, now, checked))
        except BgJobsError as exc:
            names = spec if isinstance(spec, Mapping) else {}
            log_rejected(state, names.get("class_name"), names.get("method_name"), exc)
            raise (JobNotAllowed if isinstance(exc, JobNotAllowed) else InvalidJob)(
                f"specs[{i}]: {exc}"
            ) from exc
    if session is not None:
        return _enqueue_in(state, session, news)
    return _stored(state, _app(), state.store.enqueue_many(news))


def _build_spec(state: AppState, spec: object, now: float, checked: set[tuple[str, str]]) -> NewJob:
    if not isinstance(spec, Mapping):
        raise InvalidJob(f"a spec must be a dict, got {type(spec).__name__}")
    if not spec.keys() <= SPEC_KEYS:
        unknown = sorted(str(k) for k in spec if k not in SPEC_KEYS)
        hint = " (give session= to enqueue_many itself)" if "session" in unknown else ""
        raise InvalidJob(f"unknown keys {security.printable(', '.join(unknown))[:200]}{hint}")
    if "class_name" not in spec or "method_name" not in spec:
        missing = [k for k in ("class_name", "method_name") if k not in spec]
        raise InvalidJob(f"missing {' and '.join(missing)}")
    return build(state, **spec, now=now, checked=checked)


def _app() -> Flask | None:
    """The app enqueuing: the sender of `signals.job_enqueued`."""
    from flask import current_app, has_app_context

    return current_app._get_current_object() if has_app_context() else None  # type: ignore[attr-defined]


def _enqueue_in(state: AppState, session: object, news: list[NewJob]) -> list[Job]:
    """Insert through a host session's connection; act on the jobs once it commits."""
    if not news:
        return []
    try:
        real = transaction.session_of(session)
        conn = transaction.connection_of(real)
        if not state.store.reaches_us(conn):
            raise BgJobsError(
                "session= must use the job database (BGJOBS_DATABASE_URI), and this session's "
                "database is another: pass db to BackgroundJobs(db=db) to keep the jobs in the "
                "app's database, or enqueue without session=; nothing was stored"
            )
    except BgJobsError as exc:
        first = news[0]
        more = f" (and {len(news) - 1} more)" if len(news) > 1 else ""
        log_rejected(state, first.class_name, first.method_name + more, exc)
        raise
    jobs = state.store.enqueue_in(conn, news)
    app = _app()

    def committed() -> None:
        _stored(state, app, jobs)

    transaction.on_commit(real, committed)
    return jobs


def _stored(state: AppState, app: Flask | None, jobs: list[Job]) -> list[Job]:
    """What follows a committed enqueue: `job_enqueued`, then a runner (or an inline run).

    Returns the jobs, in their final state for ``BGJOBS_EXECUTION=inline``.
    """
    new = [job for job in jobs if not job.duplicate]
    for job in new:
        signals.send(signals.job_enqueued, app, on_error=state.joblog.write_error, job=job)
    mode = state.settings.execution
    if not new or mode == config.MANUAL:
        return jobs
    if mode == config.PROCESS:
        wake(state)
        return jobs
    # The job process's code, and the runner's outcome code: imported only when jobs run here.
    from flask_bgjobs.inline import run_job

    ran = {job.id: run_job(state, job.id) for job in new}
    return [job if job.duplicate else ran[job.id] for job in jobs]


def build(
    state: AppState,
    class_name: str,
    method_name: str,
    params: list[Any] | dict[str, Any] | None = None,
    retry_attempts: int | None = None,
    delay: float | None = None,
    priority: int | None = None,
    *,
    timeout: float | None = None,
    queue: str | None = None,
    run_at: datetime | None = None,
    expires_in: float | None = None,
    unique_key: str | None = None,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
    memory_limit: int | None = None,
    cpu_limit: float | None = None,
    schedule: str | None = None,
    scheduled_for: float | None = None,
    now: float | None = None,
    checked: set[tuple[str, str]] | None = None,
) -> NewJob:
    """Check every argument of an enqueue and return the row to insert; `InvalidJob` if bad.

    Nothing is stored or imported here (a ``"*"`` grant looks the target up in its already
    allowed module). `checked` holds the targets already checked by this caller (a batch):
    each is checked once.
    """
    s = state.settings
    now = time.time() if now is None else now
    # Names and allowlist; for a "*" grant, the runner's own lookup (security.resolve).
    target = (class_name, method_name)
    hashable = isinstance(class_name, str) and isinstance(method_name, str)
    if checked is None or not hashable or target not in checked:
        security.check_target(class_name, method_name, state.allowlist)
        if checked is not None and hashable:
            checked.add(target)
    params_json = security.encode_params(params, s.max_params_bytes)
    retries = count("retry_attempts", retry_attempts, s.default_retry_attempts)
    prio = integer("priority", priority, s.default_priority)
    limit = seconds("timeout", timeout, s.job_timeout)
    if run_at is not None:
        if delay is not None:
            raise InvalidJob("give run_at or delay, not both")
        due = _epoch("run_at", run_at, now)
        wait = 0.0
    else:
        wait = seconds("delay", delay, s.default_delay)
        due = now + wait
    expires_at = None
    if expires_in is not None:
        expires_at = due + positive_seconds("expires_in", expires_in)
    if concurrency_limit is not None and concurrency_key is None:
        raise InvalidJob("concurrency_limit needs a concurrency_key")
    return NewJob(
        class_name=class_name,
        method_name=method_name,
        params_json=params_json,
        priority=prio,
        max_attempts=retries + 1,
        delay=wait,
        timeout=limit,
        run_at=due,
        created_at=now,
        queue=queue_name(queue, s.default_queue),
        unique_key=key_text("unique_key", unique_key),
        concurrency_key=key_text("concurrency_key", concurrency_key),
        concurrency_limit=(
            None
            if concurrency_key is None
            else count("concurrency_limit", concurrency_limit, 1, minimum=1)
        ),
        expires_at=expires_at,
        schedule=schedule,
        scheduled_for=scheduled_for,
        memory_limit=None
        if memory_limit is None
        else count("memory_limit", memory_limit, 0, big=True),
        cpu_limit=None if cpu_limit is None else positive_seconds("cpu_limit", cpu_limit),
    )


def log_rejected(
    state: AppState, class_name: object, method_name: object, exc: BaseException
) -> None:
    """Write the one ``Job rejected for …`` line a refused request leaves in the error log."""
    name = (
        security.display_name(class_name, method_name)
        if isinstance(class_name, str) and isinstance(method_name, str)
        else f"{class_name!r}::{method_name!r}"
    )
    state.joblog.write_error(joblog.rejected(name[:400], joblog.error_text(exc)))


def wake(state: AppState, reason: str = models.WAKE_ENQUEUED) -> None:
    """Nudge this host's runners; after an enqueue, start one if none is alive.

    The job is committed already: a runner that cannot be woken or started must not turn a
    stored job into an error (the caller would enqueue it again). With ``BGJOBS_EXECUTION``
    ``inline`` or ``manual`` no runner is woken or started.
    """
    if state.settings.execution != config.PROCESS:
        return
    try:
        state.launcher.nudge(reason.encode())
        if state.settings.autostart and reason == models.WAKE_ENQUEUED:
            state.launcher.ensure_runner(lambda: runner_env(state))
    except OSError as exc:
        state.joblog.write_error(
            "Could not wake or start a runner (the job is stored and waits for one). "
            f"Error: {joblog.error_text(exc)}"
        )


def ensure_runner(state: AppState) -> None:
    """Start a runner on this host unless one is alive (with ``BGJOBS_AUTOSTART``)."""
    if not state.settings.autostart or state.settings.execution != config.PROCESS:
        return
    try:
        state.launcher.ensure_runner(lambda: runner_env(state))
    except OSError as exc:
        state.joblog.write_error(
            f"Could not start a runner for the recurring jobs. Error: {joblog.error_text(exc)}"
        )


def runner_env(state: AppState) -> dict[str, str]:
    """The environment of an auto-started runner: ours, plus how to find the app."""
    import os

    from flask_bgjobs import launcher

    env = dict(os.environ)  # the runner keeps the starting process's environment
    env["BGJOBS_APP"] = state.app_import
    env[launcher.ERROR_LOG_ENV] = state.settings.error_log_file
    return env


def count(name: str, value: object, default: int, *, minimum: int = 0, big: bool = False) -> int:
    """A count such as ``retry_attempts``: an integer ``>= minimum``, `default` for ``None``.

    32-bit unless `big` (bytes of memory: 64-bit).
    """
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidJob(f"{name} must be an integer >= {minimum}, got {value!r}"[:200])
    top = 2**63 - 1 if big else INT_RANGE[1]
    if value >= top:
        raise InvalidJob(f"{name} must be below {top}")
    return value


def positive_seconds(name: str, value: object) -> float:
    """A number of seconds above 0 and at most `MAX_SECONDS`."""
    number = seconds(name, value, 0.0)
    if number <= 0:
        raise InvalidJob(f"{name} must be a number of seconds > 0, got {value!r}"[:200])
    return number


def queue_name(value: object, default: str) -> str:
    """A queue name (SPEC §10), or `default` for ``None``."""
    if value is None:
        return default
    if type(value) is not str or not models.QUEUE_RE.fullmatch(value):
        raise InvalidJob(
            f"queue must be 1 to 64 of A-Z a-z 0-9 _ . -, got {security.printable(repr(value))[:80]}"
        )
    return value


def key_text(name: str, value: object) -> str | None:
    """A ``unique_key`` or ``concurrency_key``: 1 to 255 printable characters, or ``None``."""
    if value is None:
        return None
    if type(value) is not str or not 1 <= len(value) <= 255:
        raise InvalidJob(f"{name} must be a str of 1 to 255 characters")
    if security.printable(value) != value:
        raise InvalidJob(
            f"{name} must not contain control characters: {security.printable(value)[:80]}"
        )
    return value


def _epoch(name: str, when: object, now: float) -> float:
    if not isinstance(when, datetime):
        raise InvalidJob(f"{name} must be a datetime, got {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidJob(
            f"{name} must be timezone-aware (a naive datetime is ambiguous): use "
            "datetime(..., tzinfo=timezone.utc)"
        )
    ts = when.timestamp()
    if ts > now + MAX_SECONDS:
        raise InvalidJob(f"{name} must be at most ten years from now, got {when.isoformat()}")
    return ts


def integer(name: str, value: object, default: int) -> int:
    """Any 32-bit integer (a priority), or `default` for ``None``."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob(f"{name} must be an integer, got {value!r}"[:200])
    if not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise InvalidJob(f"{name} must be between {INT_RANGE[0]} and {INT_RANGE[1]}")
    return value


def seconds(name: str, value: object, default: float) -> float:
    """A number of seconds from 0 to `MAX_SECONDS`, or `default` for ``None``."""
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidJob(f"{name} must be a number of seconds >= 0, got {value!r}"[:200])
    if value > MAX_SECONDS:
        raise InvalidJob(
            f"{name} must be at most {MAX_SECONDS:.0f} seconds (ten years), got {value:g}"
        )
    return float(value)


# -- operator actions ------------------------------------------------------------------------


def _recheck(state: AppState) -> Callable[[Job], None]:
    def check(job: Job) -> None:
        security.check_target(job.class_name, job.method_name, state.allowlist)
        security.decode_params(job.params_json, state.settings.max_params_bytes)

    return check


def retry(state: AppState, job_id: int) -> Job:
    """Make a failed or cancelled job pending with fresh attempts (re-checks the allowlist)."""
    job = state.store.retry(job_id, _recheck(state))
    wake(state)
    return job


def retry_all_failed(state: AppState) -> int:
    """Retry every failed job still allowed; return how many."""
    n = state.store.retry_all_failed(_recheck(state))
    if n:
        wake(state)
    return n


def cancel(state: AppState, job_id: int) -> Job:
    """Cancel a pending, retrying or running job (a running one's process group is killed)."""
    before = state.store.cancel(job_id)
    state.joblog.info(joblog.cancelled(before.name, job_id))
    if before.status == models.RUNNING:
        wake(state, models.WAKE_CANCELLED)
    return state.store.get(job_id)


def prune(state: AppState, older_than_days: float) -> int:
    """Delete finished jobs older than this many days; return how many."""
    if not math.isfinite(older_than_days) or older_than_days < 0:
        raise InvalidJob("--older-than must be a number of days >= 0")
    return state.store.prune(time.time() - older_than_days * 86400)


def list_jobs(
    state: AppState,
    *,
    status: str | None = None,
    q: str | None = None,
    page: int = 1,
    per_page: int = 50,
    queue: str | None = None,
) -> tuple[list[Job], int]:
    """Jobs newest first (one page) and the total that match."""
    if status is not None and status not in models.STATUSES:
        raise InvalidJob(f"unknown status {status!r}; use one of {', '.join(models.STATUSES)}")
    if queue is not None:
        queue_name(queue, "")
    page = max(1, page)
    return state.store.list_jobs(
        status=status, q=q, limit=per_page, offset=(page - 1) * per_page, queue=queue
    )


# -- queues -----------------------------------------------------------------------------------


def queues(state: AppState) -> list[models.QueueInfo]:
    """Every queue with jobs waiting or running, a setting, or a limit (and the default one)."""
    s = state.settings
    return state.store.queues(s.queue_limits, also=(s.default_queue,))


def pause(state: AppState, queue: str) -> None:
    """Stop every runner claiming jobs of `queue` (running ones finish); survives restarts."""
    state.store.set_queue_paused(queue_name(queue, ""), True)


def resume(state: AppState, queue: str) -> None:
    """Let runners claim jobs of `queue` again, now."""
    state.store.set_queue_paused(queue_name(queue, ""), False)
    wake(state)


# -- recurring jobs ---------------------------------------------------------------------------


def schedules(state: AppState, now: float | None = None) -> list[models.ScheduleInfo]:
    """Every recurring job, with its next run and its last job."""
    now = time.time() if now is None else now
    rows = state.store.schedule_rows()
    found = []
    for name, spec in sorted(state.schedules().items()):
        row = rows.get(name)
        paused = row.paused if row else False
        found.append(
            models.ScheduleInfo(
                name=name,
                job=spec.job_name,
                cron=spec.cron,
                every=spec.every,
                timezone=spec.timezone,
                words=spec.describe(),
                next_run=None if paused else spec.next_tick(now),
                last_job_id=row.last_job_id if row else None,
                last_status=row.last_status if row else None,
                paused=paused,
                queue=spec.queue or state.settings.default_queue,
                overlap=spec.overlap,
            )
        )
    return found


def pause_schedule(state: AppState, name: str) -> None:
    """Stop enqueueing a recurring job's ticks, on every runner, until resumed."""
    spec = _schedule(state, name)
    state.store.set_schedule_paused(name, True, spec.latest_tick(time.time()), spec.timing)


def resume_schedule(state: AppState, name: str) -> None:
    """Enqueue a recurring job's ticks again, from its next one (missed ticks never run)."""
    spec = _schedule(state, name)
    state.store.set_schedule_paused(name, False, spec.latest_tick(time.time()), spec.timing)


def _schedule(state: AppState, name: str) -> recurring.Schedule:
    found = state.schedules().get(name)
    if found is None:
        known = ", ".join(sorted(state.schedules())) or "none"
        raise InvalidJob(f"no schedule named {security.printable(name)[:80]!r} (known: {known})")
    return found


def stats(state: AppState, *, window: float = 3600.0, bucket: float = 60.0) -> dict[str, Any]:
    """Counts per status and finished attempts per minute over the last hour."""
    return {
        "counts": state.store.counts(),
        "throughput": state.store.throughput(time.time() - window, bucket),
    }


def sweep(state: AppState, *, except_owner: str | None = None) -> list[Reclaimed]:
    """Take back running jobs whose lease expired (as failed attempts) and log them; cancel
    waiting jobs past their ``expires_in`` (end reason ``expired``).

    A live runner passes itself as `except_owner`: its own attempts are still running.
    """
    reclaimed = state.store.reclaim_expired(state.retry_in, except_owner=except_owner)
    unlogged = log_reclaimed(state.joblog, reclaimed)
    expired = state.store.expire()
    lines = [("WARNING", joblog.expired(j.name, j.id)) for j in expired]
    if lines and not state.joblog.write(lines):
        unlogged += [j.id for j in expired]
    if unlogged:
        state.store.mark_log_incomplete(unlogged)
    return reclaimed


def log_reclaimed(log: joblog.JobLog, reclaimed: list[Reclaimed]) -> list[int]:
    """Write the log lines for jobs taken back after their lease expired.

    Returns the ids of the jobs whose lines could not all be written.
    """
    unlogged = []
    for r in reclaimed:
        job = r.job
        a, m = job.attempts, job.max_attempts
        error = f"LeaseExpired: lease of {job.runner_id} expired (runner lost)"
        ok = log.write_error(joblog.failed(job.name, job.id, a, m, error))
        if r.retry_in is None:
            ok = log.error(joblog.failed(job.name, job.id, a, m, error)) and ok
        else:
            ok = log.warning(joblog.retrying(job.name, job.id, a, m, r.retry_in, error)) and ok
        if not ok:
            unlogged.append(job.id)
    return unlogged
