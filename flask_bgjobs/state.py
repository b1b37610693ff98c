"""What `init_app` builds for one app, and how every part of the package finds it.

`AppState` lives in ``app.extensions["bgjobs"]``. The CLI, the dashboard, the service
functions and the runner all read it through `get_state`, so none of them imports the
extension module (which imports them).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Flask, current_app, has_app_context

from flask_bgjobs import config, recurring, retry, security
from flask_bgjobs.joblog import JobLog
from flask_bgjobs.launcher import Launcher
from flask_bgjobs.models import Job
from flask_bgjobs.store import Store

#: The key of ``app.extensions``.
EXTENSION_KEY = "bgjobs"


@dataclass
class Registry:
    """What is registered in code on one `BackgroundJobs` object, shared by all its apps.

    Read live: a job allowed or a callback registered after ``init_app`` still counts.
    """

    #: Jobs allowed with ``bgjobs.allow()``: class (or module) path → ``"*"`` or method names.
    allowed: dict[str, object] = field(default_factory=dict)
    #: The callable registered with ``@bgjobs.dashboard_auth``.
    dashboard_auth: Callable[[], object] | None = None
    #: Recurring jobs registered with ``bgjobs.schedule()``, by name.
    schedules: dict[str, recurring.Schedule] = field(default_factory=dict)


@dataclass
class AppState:
    """One app's configuration and the objects built from it."""

    registry: Registry
    settings: config.Settings
    store: Store
    joblog: JobLog
    allowlist: security.Allowlist
    launcher: Launcher
    #: How a fresh runner process imports this app (``BGJOBS_APP``, else a guess).
    app_import: str

    def runner_id(self) -> str:
        """How this process names itself in leases and events."""
        return self.settings.runner_id or f"{socket.gethostname()}:{os.getpid()}"

    def schedules(self) -> dict[str, recurring.Schedule]:
        """Every recurring job: ``BGJOBS_SCHEDULE``, then ``bgjobs.schedule()`` (which wins)."""
        return {**self.settings.schedule, **self.registry.schedules}

    def retry_in(self, job: Job) -> float | None:
        """The retry policy of this app, applied to a job whose attempt just failed."""
        return retry.retry_in(
            job, retry_delay=self.settings.retry_delay, kind=self.settings.retry_backoff
        )


def get_state(app: Flask | None = None) -> AppState:
    """The state of `app` (default: the current app); `RuntimeError` with the fix otherwise."""
    if app is None:
        if not has_app_context():
            raise RuntimeError(
                "Working outside of application context: flask-bgjobs needs an app "
                "context (inside a request, a CLI command, or 'with app.app_context():')."
            )
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError(
            "flask-bgjobs is not initialised on this app: call BackgroundJobs(app) or "
            "bgjobs.init_app(app) first."
        ) from None
