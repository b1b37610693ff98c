"""`BackgroundJobs`: the composition root, and the only module that touches the Flask app."""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, current_app, has_app_context
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc

from flask_bgjobs import config, joblog, launcher, models, retry, runner, security
from flask_bgjobs.errors import BgJobsError, DatabaseBusy, InvalidJob
from flask_bgjobs.joblog import JobLog
from flask_bgjobs.models import Job
from flask_bgjobs.store import Reclaimed, Store

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

EXTENSION_KEY = "bgjobs"


@dataclass
class State:
    """What `init_app` builds for one app, kept in ``app.extensions["bgjobs"]``."""

    ext: BackgroundJobs
    settings: config.Settings
    store: Store
    joblog: JobLog
    allowlist: security.Allowlist
    launcher: launcher.Launcher
    app_import: str

    def runner_id(self) -> str:
        """How this process names itself in leases and events."""
        return self.settings.runner_id or f"{socket.gethostname()}:{os.getpid()}"

    def retry_in(self, job: Job) -> float | None:
        """The retry policy of this app, applied to a job whose attempt just failed."""
        return retry.retry_in(
            job, retry_delay=self.settings.retry_delay, kind=self.settings.retry_backoff
        )

    def reclaim_expired(self, *, except_owner: str | None = None) -> list[Reclaimed]:
        """Take back running jobs whose lease expired (as failed attempts) and log them."""
        reclaimed = self.store.reclaim_expired(self.retry_in, except_owner=except_owner)
        unlogged = runner.log_reclaimed(self.joblog, reclaimed)
        if unlogged:
            self.store.mark_log_incomplete(unlogged)
        return reclaimed

    def guard_app_engines(self, app: Flask) -> None:
        """In the runner, before forking: keep jobs off the runner's pooled connections.

        Each of the app's Flask-SQLAlchemy engines gets SQLAlchemy's documented pid guard:
        a connection made in another process is discarded at checkout. A forked child that
        uses the app's database so opens its own, and a child that doesn't pays nothing
        (disposing the pools in every child cost ~1.7 ms per attempt).
        """
        ext = app.extensions.get("sqlalchemy")
        if ext is None:
            return
        try:
            with app.app_context():
                engines = list(ext.engines.values())
        except Exception:  # noqa: BLE001 - an unconfigured db has no pools to guard
            return
        for engine in engines:
            guard_engine(engine)


def guard_engine(engine: Any) -> None:
    """Make `engine` discard, at checkout, pooled connections another process opened."""
    if getattr(engine, "_bgjobs_guarded", False):
        return

    @sa_event.listens_for(engine, "connect")
    def _connect(_dbapi: Any, record: Any) -> None:
        record.info["bgjobs_pid"] = os.getpid()

    @sa_event.listens_for(engine, "checkout")
    def _checkout(_dbapi: Any, record: Any, proxy: Any) -> None:
        if record.info.get("bgjobs_pid") != os.getpid():
            # Never close it here: it belongs to the parent, which may still be using it.
            record.dbapi_connection = proxy.dbapi_connection = None
            raise sa_exc.DisconnectionError("connection opened by another process")

    engine.dispose()  # connections made before the guard have no pid: drop them now
    engine._bgjobs_guarded = True


class BackgroundJobs:
    """The flask-bgjobs extension.

    ``BackgroundJobs(app)`` or, with an application factory, ``bgjobs = BackgroundJobs()``
    then ``bgjobs.init_app(app)``. Pass ``db=`` (a Flask-SQLAlchemy object) to keep the job
    tables in the app's own database.
    """

    def __init__(self, app: Flask | None = None, *, db: SQLAlchemy | None = None) -> None:
        self.db = db
        #: Jobs allowed in code with `allow`, shared by every app of this object.
        self.allowed: dict[str, object] = {}
        self._allowlist = security.Allowlist(self.allowed)
        self.dashboard_auth_callback: Callable[[], object] | None = None
        if app is not None:
            self.init_app(app, db=db)

    def init_app(self, app: Flask, *, db: SQLAlchemy | None = None) -> None:
        """Read the configuration, build the store and register the CLI (and dashboard)."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A 'BackgroundJobs' instance has already been registered on this Flask app. "
                "Import and use that instance instead."
            )
        db = db if db is not None else self.db
        settings = config.load_settings(app, db_uri=_database_uri_of(app, db))
        store = Store(settings.database_uri, create_tables=settings.create_tables)
        app.extensions[EXTENSION_KEY] = State(
            ext=self,
            settings=settings,
            store=store,
            joblog=JobLog(settings.log_file, settings.error_log_file),
            allowlist=security.Allowlist(settings.allowed_jobs, self.allowed),
            launcher=launcher.Launcher(app.instance_path, settings.database_uri),
            app_import=settings.app_import or _import_string(app),
        )
        from flask_bgjobs.cli import bgjobs_cli

        app.cli.add_command(bgjobs_cli)
        # A request that enqueues while SQLite stays locked gets "try again", not a 500.
        app.register_error_handler(DatabaseBusy, _busy_response)
        if settings.dashboard:
            _register_dashboard(app, settings)

    # -- configuration in code ---------------------------------------------------------------

    def allow(self, class_name: str, *methods: str) -> None:
        """Allow ``class_name.method`` (or every public method: no methods, or ``"*"``)."""
        self._allowlist.add(class_name, *methods)  # checks the names: InvalidJob if malformed
        # `allowed` is the mapping every app's allowlist reads live; `_allowlist` only checks.
        before = self.allowed.get(class_name)
        if not methods or "*" in methods or before == "*":
            self.allowed[class_name] = "*"
        else:
            named = tuple(before) if isinstance(before, (tuple, list, set, frozenset)) else ()
            self.allowed[class_name] = tuple(dict.fromkeys((*named, *methods)))

    def dashboard_auth(self, func: Callable[[], object]) -> Callable[[], object]:
        """Register a callable (no arguments, reads `flask.request`) that admits a request."""
        self.dashboard_auth_callback = func
        return func

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
    ) -> Job:
        """Validate, store and hand a job to a runner; return the persisted `Job`.

        Raises `InvalidJob` or `JobNotAllowed` (nothing stored, nothing imported, one line in
        the error log), or `DatabaseBusy` when SQLite stayed locked (nothing stored).
        """
        state = self.state()
        s = state.settings
        try:
            state.allowlist.check(class_name, method_name)
            params_json = security.encode_params(params, s.max_params_bytes)
            retries = _count("retry_attempts", retry_attempts, s.default_retry_attempts)
            wait = _seconds("delay", delay, s.default_delay)
            prio = _integer("priority", priority, s.default_priority)
            limit = _seconds("timeout", timeout, s.job_timeout)
        except BgJobsError as exc:
            self.log_rejected(class_name, method_name, exc)
            raise
        job = state.store.enqueue(
            class_name=class_name,
            method_name=method_name,
            params_json=params_json,
            priority=prio,
            max_attempts=retries + 1,
            delay=wait,
            timeout=limit,
        )
        self._wake(state)
        return job

    def log_rejected(self, class_name: object, method_name: object, exc: BaseException) -> None:
        """Write the one ``Job rejected for …`` line a refused request leaves in the error log."""
        name = (
            security.display_name(class_name, method_name)
            if isinstance(class_name, str) and isinstance(method_name, str)
            else f"{class_name!r}::{method_name!r}"
        )
        self.state().joblog.write_error(joblog.rejected(name[:400], joblog.error_text(exc)))

    def _wake(self, state: State, payload: bytes = launcher.WAKE_ENQUEUED) -> None:
        # The job is committed already: a runner that cannot be woken or started must not
        # turn a stored job into an error (the caller would enqueue it again).
        try:
            state.launcher.nudge(payload)
            if state.settings.autostart and payload == launcher.WAKE_ENQUEUED:
                state.launcher.ensure_runner(lambda: self._runner_env(state))
        except OSError as exc:
            state.joblog.write_error(
                f"Could not wake or start a runner (the job is stored and waits for one). "
                f"Error: {joblog.error_text(exc)}"
            )

    @staticmethod
    def _runner_env(state: State) -> dict[str, str]:
        env = dict(os.environ)  # the runner keeps the starting process's environment
        env["BGJOBS_APP"] = state.app_import
        env[launcher.ERROR_LOG_ENV] = state.settings.error_log_file
        return env

    # -- operations shared by the CLI and the dashboard --------------------------------------

    def state(self, app: Flask | None = None) -> State:
        """This extension's state for `app` (default: the current app)."""
        if app is None:
            if not has_app_context():
                raise RuntimeError(
                    "Working outside of application context: flask-bgjobs needs an app "
                    "context (use 'with app.app_context():')."
                )
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
        except KeyError:
            raise RuntimeError(
                "flask-bgjobs is not initialised on this app: call BackgroundJobs(app) or "
                "bgjobs.init_app(app) first."
            ) from None

    def get_job(self, job_id: int, *, with_events: bool = True) -> Job:
        """The job with this id (with its history); `JobNotFound` if none."""
        return self.state().store.get(job_id, with_events=with_events)

    def list_jobs(
        self, *, status: str | None = None, q: str | None = None, page: int = 1, per_page: int = 50
    ) -> tuple[list[Job], int]:
        """Jobs newest first (one page) and the total that match."""
        if status is not None and status not in models.STATUSES:
            raise InvalidJob(f"unknown status {status!r}; use one of {', '.join(models.STATUSES)}")
        page = max(1, page)
        return self.state().store.list_jobs(
            status=status, q=q, limit=per_page, offset=(page - 1) * per_page
        )

    def retry(self, job_id: int) -> Job:
        """Make a failed or cancelled job pending with fresh attempts (re-checks the allowlist)."""
        state = self.state()
        job = state.store.retry(job_id, self._recheck(state))
        self._wake(state)
        return job

    def retry_all_failed(self) -> int:
        """Retry every failed job still allowed; return how many."""
        state = self.state()
        count = state.store.retry_all_failed(self._recheck(state))
        if count:
            self._wake(state)
        return count

    @staticmethod
    def _recheck(state: State) -> Callable[[Job], None]:
        def check(job: Job) -> None:
            state.allowlist.check(job.class_name, job.method_name)
            security.decode_params(job.params_json, state.settings.max_params_bytes)

        return check

    def cancel(self, job_id: int) -> Job:
        """Cancel a pending, retrying or running job (a running one's process group is killed)."""
        state = self.state()
        before = state.store.cancel(job_id)
        state.joblog.info(joblog.cancelled(before.name, job_id))
        if before.status == models.RUNNING:
            state.launcher.nudge(launcher.WAKE_CANCELLED)
        return state.store.get(job_id)

    def prune(self, older_than_days: float) -> int:
        """Delete finished jobs older than this many days; return how many."""
        if not math.isfinite(older_than_days) or older_than_days < 0:
            raise InvalidJob("--older-than must be a number of days >= 0")
        return self.state().store.prune(time.time() - older_than_days * 86400)

    def counts(self) -> dict[str, int]:
        """Number of jobs in each status (every status present)."""
        return self.state().store.counts()

    def stats(self, *, window: float = 3600.0, bucket: float = 60.0) -> dict[str, Any]:
        """Counts per status and finished attempts per minute over the last hour."""
        store = self.state().store
        return {
            "counts": store.counts(),
            "throughput": store.throughput(time.time() - window, bucket),
        }

    def sweep(self) -> list[Reclaimed]:
        """Take back running jobs whose lease expired, now."""
        return self.state().reclaim_expired()

    def init_db(self) -> None:
        """Create the job tables (idempotent)."""
        self.state().store.ensure_tables()

    def worker(self, *, concurrency: int | None = None, burst: bool = False) -> int:
        """Run a runner in this process until SIGTERM (or, with `burst`, until drained)."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        return runner.Runner(app, self.state(), concurrency=concurrency, burst=burst).run()


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


def _register_dashboard(app: Flask, settings: config.Settings) -> None:
    import importlib

    try:
        dashboard = importlib.import_module("flask_bgjobs.dashboard")
    except ModuleNotFoundError:  # the dashboard ships in its own change
        return
    dashboard.register(app, settings)


def _count(name: str, value: object, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidJob(f"{name} must be an integer >= 0, got {value!r}"[:200])
    if value >= INT_RANGE[1]:
        raise InvalidJob(f"{name} must be below {INT_RANGE[1]}")
    return value


#: Priorities and attempt counts are stored as 32-bit integers on every backend.
INT_RANGE = (-(2**31), 2**31 - 1)


def _integer(name: str, value: object, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob(f"{name} must be an integer, got {value!r}"[:200])
    if not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise InvalidJob(f"{name} must be between {INT_RANGE[0]} and {INT_RANGE[1]}")
    return value


def _seconds(name: str, value: object, default: float) -> float:
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidJob(f"{name} must be a number of seconds >= 0, got {value!r}"[:200])
    return float(value)


def run_background_job(
    class_name: str,
    method_name: str,
    params: list[Any] | dict[str, Any] | None = None,
    retry_attempts: int | None = None,
    delay: float | None = None,
    priority: int | None = None,
    *,
    timeout: float | None = None,
) -> Job:
    """Run ``class_name.method_name(*params)`` in the background; return the stored `Job`.

    Needs an application context with flask-bgjobs initialised (`RuntimeError` otherwise).
    ``None`` arguments take the configured defaults.
    """
    if not has_app_context():
        raise RuntimeError(
            "Working outside of application context: run_background_job() needs an app "
            "context (inside a request, a CLI command, or 'with app.app_context():')."
        )
    state: State | None = current_app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise RuntimeError(
            "flask-bgjobs is not initialised on this app: call BackgroundJobs(app) or "
            "bgjobs.init_app(app) first."
        )
    return state.ext.run(
        class_name, method_name, params, retry_attempts, delay, priority, timeout=timeout
    )
