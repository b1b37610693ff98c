"""Every error flask-bgjobs raises, under one base class."""

from __future__ import annotations

import math

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


# -- raised by jobs, to steer their own retries ----------------------------------------------
# Not BgJobsError: flask-bgjobs never raises these; a job does, and the attempt that raised one
# ends as it asks.

#: The longest wait `RetryJob` accepts (ten years, as for any delay).
MAX_RETRY_IN = 10 * 365 * 86400.0


class DiscardJob(Exception):
    """Raised inside a job to fail it for good now: no retry, whatever attempts remain.

    The attempt ends with end reason ``discarded`` and the job ``failed``; `message` is its
    error text. For work that can never succeed (the record it needs is gone, the input is
    invalid), where a retry would only fail again.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class RetryJob(Exception):
    """Raised inside a job to end this attempt and run it again in `in_seconds` seconds.

    The attempt counts (it ran); with attempts left the job waits ``in_seconds`` instead of
    the retry policy's delay, else it fails. For a job that knows when to come back (a rate
    limit's ``Retry-After``, a file not there yet).
    """

    def __init__(self, in_seconds: float) -> None:
        if (
            isinstance(in_seconds, bool)
            or not isinstance(in_seconds, (int, float))
            or not math.isfinite(in_seconds)
            or not 0 <= in_seconds <= MAX_RETRY_IN
        ):
            raise ValueError(
                f"RetryJob(in_seconds) takes a number of seconds from 0 to {MAX_RETRY_IN:.0f}, "
                f"got {in_seconds!r}"[:200]
            )
        self.in_seconds = float(in_seconds)
        super().__init__(f"retry in {self.in_seconds:g} s")
