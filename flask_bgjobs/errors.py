"""Every error flask-bgjobs raises, under one base class."""

from __future__ import annotations

import click


class BgJobsError(Exception):
    """Base class of every error raised by flask-bgjobs."""


class ConfigError(BgJobsError, ValueError, click.ClickException):
    """Raised by ``init_app`` when a configuration value is malformed; names the key.

    It is also a `click.ClickException`: when ``flask …`` fails to build the app because of
    it, the command line shows one ``Error: …`` line instead of a traceback.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")
        click.ClickException.__init__(self, f"{key}: {message}")


class InvalidJob(BgJobsError, ValueError):
    """Raised when a job's names or params are malformed; nothing is stored or imported."""


class JobNotAllowed(BgJobsError):
    """Raised when a ``Class.method`` pair is not in the allowlist; nothing is stored or imported."""


class JobNotFound(BgJobsError, LookupError):
    """Raised when no job has the given id."""


class InvalidTransition(BgJobsError):
    """Raised when an action (retry, cancel) is not allowed in the job's current status."""


class DatabaseBusy(BgJobsError):
    """Raised when the job store stayed locked past its busy timeout; nothing was written."""


class SchemaError(BgJobsError):
    """Raised when the job tables are not at the schema this release uses and it may not
    upgrade them (``BGJOBS_CREATE_TABLES`` is false: run ``flask bgjobs upgrade-db``), or
    cannot (a newer release wrote them)."""
