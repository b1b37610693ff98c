"""`BackgroundJobs`: the composition root, and the only module that touches the Flask app."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from flask import Flask, Response, current_app

from flask_bgjobs import config, recurring, security, service, typed
from flask_bgjobs.cli import bgjobs_cli
from flask_bgjobs.errors import BgJobsError, ConfigError, DatabaseBusy
from flask_bgjobs.joblog import JobLog
from flask_bgjobs.launcher import Launcher
from flask_bgjobs.models import Job, QueueInfo, ScheduleInfo
from flask_bgjobs.state import EXTENSION_KEY, AppState, Registry, get_state
from flask_bgjobs.store import Reclaimed, Store

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11 on

__all__ = ["EXTENSION_KEY", "BackgroundJobs", "run_background_job"]

P = ParamSpec("P")
R = TypeVar("R")


class BackgroundJobs:
    """The flask-bgjobs extension.

    ``BackgroundJobs(app)`` or, with an application factory, ``bgjobs = BackgroundJobs()``
    then ``bgjobs.init_app(app)``. Pass ``db=`` (a Flask-SQLAlchemy object) to keep the job
    tables in the app's own database.
    """

    def __init__(self, app: Flask | None = None, *, db: SQLAlchemy | None = None) -> None:
        self.db = db
        #: What is registered in code (allowed jobs, the dashboard's auth callback), shared by
        #: every app of this object and read live.
        self.registry = Registry()
        if app is not None:
            self.init_app(app, db=db)

    def init_app(self, app: Flask, *, db: SQLAlchemy | None = None) -> None:
        """Read the configuration, build the store and register the CLI (and the dashboard).

        Reads every ``BGJOBS_*`` key (docs/configuration.md) from ``app.config``, the
        environment and ``.env``; a malformed value raises `ConfigError` naming the key.
        Changes to the configuration after this call are not seen; jobs allowed with `allow`
        and the `dashboard_auth` callback are, whenever they are registered.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A 'BackgroundJobs' instance has already been registered on this Flask app. "
                "Import and use that instance instead."
            )
        db = db if db is not None else self.db
        settings = config.load_settings(app, db_uri=_database_uri_of(app, db))
        app.extensions[EXTENSION_KEY] = AppState(
            registry=self.registry,
            settings=settings,
            store=Store(settings.database_uri, create_tables=settings.create_tables),
            joblog=JobLog(settings.log_file, settings.error_log_file),
            allowlist=security.Allowlist(settings.allowed_jobs, self.registry.allowed),
            launcher=Launcher(app.instance_path, settings.database_uri),
            app_import=settings.app_import or _import_string(app),
        )
        state = app.extensions[EXTENSION_KEY]
        _check_schedules(state)
        app.cli.add_command(bgjobs_cli)
        # A request that enqueues while SQLite stays locked gets "try again", not a 500.
        app.register_error_handler(DatabaseBusy, _busy_response)
        # Recurring jobs need a runner even when nobody enqueues: the first request starts one.
        app.before_request(_RunnerForSchedules(state))
        if settings.dashboard:
            from flask_bgjobs import dashboard  # only when enabled: it loads templates, forms

            dashboard.register(app, settings)

    # -- configuration in code ---------------------------------------------------------------

    @property
    def allowed(self) -> dict[str, object]:
        """Jobs allowed in code with `allow`: class path → ``"*"`` or method names."""
        return self.registry.allowed

    def allow(self, class_name: str, *methods: str) -> None:
        """Allow ``class_name.method`` (or every public method: no methods, or ``"*"``)."""
        security.Allowlist().add(class_name, *methods)  # checks the names: InvalidJob if bad
        allowed = self.registry.allowed
        before = allowed.get(class_name)
        if not methods or "*" in methods or before == "*":
            allowed[class_name] = "*"
        else:
            named = tuple(before) if isinstance(before, (tuple, list, set, frozenset)) else ()
            allowed[class_name] = tuple(dict.fromkeys((*named, *methods)))

    def schedule(
        self,
        name: str,
        class_name: str,
        method_name: str,
        *,
        cron: str | None = None,
        every: int | None = None,
        timezone: str = "UTC",
        params: list[Any] | dict[str, Any] | None = None,
        priority: int | None = None,
        retry_attempts: int | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        overlap: str = "skip",
    ) -> None:
        """Run ``class_name.method_name`` on a schedule: ``cron`` (five fields, in `timezone`)
        or ``every`` N seconds; exactly one job per tick however many runners there are.

        Takes the options of a ``BGJOBS_SCHEDULE`` entry. Call it before ``init_app``, like
        `allow` (the target must be allowed): `ConfigError` names the schedule and the field.
        """
        spec: dict[str, Any] = {"job": (class_name, method_name), "timezone": timezone}
        spec |= {"cron": cron, "every": every, "params": params, "priority": priority}
        spec |= {"retry_attempts": retry_attempts, "timeout": timeout, "queue": queue}
        spec |= {"overlap": overlap}
        spec = {k: v for k, v in spec.items() if v is not None}
        try:
            self.registry.schedules[name] = recurring.parse(name, spec)
        except recurring.ScheduleError as exc:
            raise ConfigError("BGJOBS_SCHEDULE", str(exc)) from None

    def dashboard_auth(self, func: Callable[[], object]) -> Callable[[], object]:
        """Register a callable (no arguments, reads `flask.request`) that admits a request."""
        self.registry.dashboard_auth = func
        return func

    @property
    def dashboard_auth_callback(self) -> Callable[[], object] | None:
        """The callable registered with `dashboard_auth`, if any."""
        return self.registry.dashboard_auth

    # -- enqueue -----------------------------------------------------------------------------

    def run(
        self,
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

        Takes the arguments of `run_background_job`, which describes them.
        """
        return service.enqueue(
            self.state(), class_name, method_name, params, retry_attempts, delay, priority,
            timeout=timeout, queue=queue, run_at=run_at, expires_in=expires_in,
            unique_key=unique_key, concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit, memory_limit=memory_limit, cpu_limit=cpu_limit,
            session=session,
        )  # fmt: skip

    def enqueue_many(
        self, specs: Iterable[Mapping[str, Any]], *, session: object | None = None
    ) -> list[Job]:
        """Store many jobs in one transaction, all or none; return their `Job` objects in order.

        Each spec is a dict of `run_background_job`'s arguments: ``{"class_name": …,
        "method_name": …, "params": …, "queue": …}``. Every spec is checked before anything is
        stored; one bad spec stores none and raises `InvalidJob` (or `JobNotAllowed`) naming its
        index. A ``unique_key`` held by a waiting or running job, or by an earlier spec, gives
        that job back (``job.duplicate``). `session` joins a SQLAlchemy session's transaction,
        for the whole batch, as in `run_background_job`.
        """
        return service.enqueue_many(self.state(), specs, session=session)

    def job(
        self, **options: Unpack[typed.JobOptions]
    ) -> Callable[[Callable[P, R]], typed.JobFunction[P, R]]:
        """Make a module-level function a job: ``@bgjobs.job(queue="mail")``.

        The function is allowed (as with `allow`) and stays callable as it was; its
        ``.enqueue(*args, **kwargs)`` stores a job that calls it, checked by a type checker
        against the function's own parameters, and returns the `Job`. `options` are
        `run_background_job`'s keywords (``queue``, ``priority``, ``retry_attempts`` …);
        ``.with_options(...)`` adds some for one enqueue (``session=db.session``).
        """
        typed.check_options(options)

        def decorate(func: Callable[P, R]) -> typed.JobFunction[P, R]:
            job = typed.JobFunction(func, self.run, options)
            self.allow(job.class_name, job.method_name)
            return job

        return decorate

    def log_rejected(self, class_name: object, method_name: object, exc: BaseException) -> None:
        """Write the one ``Job rejected for …`` line a refused request leaves in the error log."""
        service.log_rejected(self.state(), class_name, method_name, exc)

    # -- operations shared by the CLI and the dashboard --------------------------------------

    def state(self, app: Flask | None = None) -> AppState:
        """This extension's state for `app` (default: the current app)."""
        return get_state(app)

    def get_job(self, job_id: int, *, with_events: bool = True) -> Job:
        """The job with this id (with its history); `JobNotFound` if none."""
        return self.state().store.get(job_id, with_events=with_events)

    def list_jobs(
        self,
        *,
        status: str | None = None,
        q: str | None = None,
        page: int = 1,
        per_page: int = 50,
        queue: str | None = None,
    ) -> tuple[list[Job], int]:
        """Jobs newest first (one page) and the total that match (of one `queue` if given)."""
        return service.list_jobs(
            self.state(), status=status, q=q, page=page, per_page=per_page, queue=queue
        )

    def queues(self) -> list[QueueInfo]:
        """Every queue with jobs waiting or running, a limit or a pause (and the default one)."""
        return service.queues(self.state())

    def pause(self, queue: str) -> None:
        """Stop every runner claiming jobs of `queue` (running ones finish); survives restarts."""
        service.pause(self.state(), queue)

    def resume(self, queue: str) -> None:
        """Let runners claim jobs of `queue` again, now."""
        service.resume(self.state(), queue)

    def schedules(self) -> list[ScheduleInfo]:
        """Every recurring job, with its next run, its last job and whether it is paused."""
        return service.schedules(self.state())

    def pause_schedule(self, name: str) -> None:
        """Stop enqueueing the recurring job `name` on every runner until resumed."""
        service.pause_schedule(self.state(), name)

    def resume_schedule(self, name: str) -> None:
        """Enqueue the recurring job `name` again from its next tick (missed ticks never run)."""
        service.resume_schedule(self.state(), name)

    def retry(self, job_id: int) -> Job:
        """Make a failed or cancelled job pending with fresh attempts (re-checks the allowlist)."""
        return service.retry(self.state(), job_id)

    def retry_all_failed(self) -> int:
        """Retry every failed job still allowed; return how many."""
        return service.retry_all_failed(self.state())

    def cancel(self, job_id: int) -> Job:
        """Cancel a pending, retrying or running job (a running one's process group is killed)."""
        return service.cancel(self.state(), job_id)

    def prune(self, older_than_days: float) -> int:
        """Delete finished jobs older than this many days; return how many."""
        return service.prune(self.state(), older_than_days)

    def counts(self) -> dict[str, int]:
        """Number of jobs in each status (every status present)."""
        return self.state().store.counts()

    def stats(self, *, window: float = 3600.0, bucket: float = 60.0) -> dict[str, Any]:
        """Counts per status and finished attempts per minute over the last hour."""
        return service.stats(self.state(), window=window, bucket=bucket)

    def sweep(self) -> list[Reclaimed]:
        """Take back running jobs whose lease expired, now."""
        return service.sweep(self.state())

    def init_db(self) -> None:
        """Create the job tables (idempotent)."""
        self.state().store.ensure_tables()

    def worker(
        self, *, concurrency: int | None = None, burst: bool = False, reuse: int | None = None
    ) -> int:
        """Run a runner in this process until SIGTERM (or, with `burst`, until drained)."""
        from flask_bgjobs.runner import Runner  # the web process never needs it

        app = current_app._get_current_object()  # type: ignore[attr-defined]
        runner = Runner.for_app(
            app, self.state(), concurrency=concurrency, burst=burst, reuse=reuse
        )
        return runner.run(app)


def _check_schedules(state: AppState) -> None:
    """Every recurring job must be one that may run: refuse to start otherwise.

    Each option is checked on its own, so the error names the field that is wrong.
    """
    s = state.settings
    for name, spec in state.schedules().items():
        field_name = "job"
        try:
            security.check_target(spec.class_name, spec.method_name, state.allowlist)
            field_name = "params"
            security.encode_params(spec.params, s.max_params_bytes)
            field_name = "queue"
            service.queue_name(spec.queue, s.default_queue)
            field_name = "priority"
            service.integer("priority", spec.priority, 0)
            field_name = "retry_attempts"
            service.count("retry_attempts", spec.retry_attempts, 0)
            field_name = "timeout"
            service.seconds("timeout", spec.timeout, 0.0)
        except BgJobsError as exc:
            raise ConfigError(
                "BGJOBS_SCHEDULE", f"schedule {name!r}, field {field_name!r}: {exc}"
            ) from None


class _RunnerForSchedules:
    """Before a request: while recurring jobs exist, make sure a runner is alive on this host.

    Checks at most every `EVERY` seconds per process; the check itself is a lock probe.
    """

    EVERY = 10.0

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.next_check = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self.next_check or not self.state.settings.autostart:
            return
        self.next_check = now + self.EVERY
        if self.state.schedules():
            service.ensure_runner(self.state)


def _busy_response(exc: DatabaseBusy) -> Response:
    """503 with Retry-After: the enqueue wrote nothing and may simply be repeated."""
    response = Response(f"{exc}\n", status=503, mimetype="text/plain")
    response.headers["Retry-After"] = "1"
    return response


def _database_uri_of(app: Flask, db: SQLAlchemy | None) -> str | None:
    if db is None:
        return None
    try:
        with app.app_context():
            return db.engine.url.render_as_string(hide_password=False)
    except Exception:  # noqa: BLE001 - db not initialised on this app yet: use its config
        uri = app.config.get("SQLALCHEMY_DATABASE_URI")
        return str(uri) if uri else None


def _import_string(app: Flask) -> str:
    """How a fresh runner process can import this app when ``BGJOBS_APP`` is not set."""
    flask_app = os.environ.get("FLASK_APP")
    if flask_app:
        return flask_app
    if app.import_name == "__main__":
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        if isinstance(path, str):
            return os.path.abspath(path)
    return app.import_name


def run_background_job(
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
    """Run ``class_name.method_name(*params)`` in the background; return the stored `Job`.

    Needs an application context with flask-bgjobs initialised (`RuntimeError` otherwise).
    ``None`` arguments take the configured defaults.

    - `queue`: the job's queue (``BGJOBS_DEFAULT_QUEUE``); runners may serve only some.
    - `run_at`: a timezone-aware `datetime` to run at, instead of a `delay` in seconds.
    - `expires_in`: seconds; a job not started that long after it fell due is cancelled
      (end reason ``expired``) and never runs.
    - `unique_key`: while a job with this key waits or runs, return that job
      (``job.duplicate``) instead of storing another.
    - `concurrency_key` with `concurrency_limit` (default 1): at most that many jobs with the
      key run at once, across every runner; the others wait without spending attempts.
    - `memory_limit` (bytes) and `cpu_limit` (CPU seconds) for each attempt's process.
    - `session`: a SQLAlchemy session (``db.session``) whose transaction the job joins: it
      exists, and runs, only if that transaction commits; runners are woken after the commit.
      The session must use the job database (`BgJobsError` otherwise, nothing stored).

    With ``BGJOBS_EXECUTION = "inline"`` (tests) the job has run, here, when this returns, and
    the `Job` comes back in its final state; with ``"manual"`` it waits for
    `flask_bgjobs.testing.run_jobs`.
    """
    return service.enqueue(
        get_state(), class_name, method_name, params, retry_attempts, delay, priority,
        timeout=timeout, queue=queue, run_at=run_at, expires_in=expires_in,
        unique_key=unique_key, concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit, memory_limit=memory_limit, cpu_limit=cpu_limit,
        session=session,
    )  # fmt: skip
