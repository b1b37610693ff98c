"""A small app for the integration tests; configured entirely by environment variables.

Runners the tests start (``flask bgjobs worker`` or auto-started ones) rebuild it from
``BGJOBS_APP=jobapp:create_app()``, so whatever the test sets in the environment applies
to them too. Two switches show what happens inside those processes:

- ``JOBAPP_SIGNALS=1``: every flask-bgjobs signal a process receives is appended to the mark
  ``signals`` (name, job id, attempt, pid, and the result or exception); ``=raise`` also
  connects a receiver that raises.
- ``JOBAPP_LOG=<path>``: the standard logger ``flask_bgjobs`` writes to that file, as a host
  app's logging configuration would.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask

from flask_bgjobs import BackgroundJobs

bgjobs = BackgroundJobs()


def _heard(name: str) -> Any:
    def receiver(sender: Flask, job: Any, **extra: Any) -> None:
        from jobapp.jobs import _mark

        detail = ""
        if "result" in extra:
            detail = repr(extra["result"])
        elif "exception" in extra:
            exc = extra["exception"]
            traced = "traced" if exc.__traceback__ is not None else "untraced"
            detail = f"{type(exc).__name__}:{exc} {traced}"
        _mark("signals", f"{name} {job.id} {job.attempts} {os.getpid()} {sender.name} {detail}")

    receiver.__name__ = f"hear_{name}"
    return receiver


_RECEIVERS = {
    name: _heard(name) for name in ("job_enqueued", "job_started", "job_succeeded", "job_failed")
}


def _broken(sender: Flask, **extra: Any) -> None:
    raise RuntimeError("the error reporter is down")


def _listen() -> None:
    # Imported here: tests/test_schema_upgrade.py loads this app with 0.1.0, which has none.
    from flask_bgjobs import signals

    for name, receiver in _RECEIVERS.items():
        getattr(signals, name).connect(receiver)
    if os.environ.get("JOBAPP_SIGNALS") == "raise":
        signals.job_succeeded.connect(_broken)


def stop_listening() -> None:
    """Disconnect what `create_app` connected in this process (a test's teardown)."""
    from flask_bgjobs import signals

    for name, receiver in _RECEIVERS.items():
        getattr(signals, name).disconnect(receiver)
    signals.job_succeeded.disconnect(_broken)


def _log_to(path: str) -> None:
    logger = logging.getLogger("flask_bgjobs")
    if any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in logger.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("%(levelname)s|%(job_id)s|%(bgjobs_file)s|%(process)d|%(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def create_app() -> Flask:
    """Build the test app; its instance folder comes from ``JOBAPP_INSTANCE``."""
    app = Flask("jobapp", instance_path=os.environ["JOBAPP_INSTANCE"])
    app.config["TESTING"] = True
    bgjobs.init_app(app)
    if os.environ.get("JOBAPP_SIGNALS"):
        _listen()
    if os.environ.get("JOBAPP_LOG"):
        _log_to(os.environ["JOBAPP_LOG"])
    return app
