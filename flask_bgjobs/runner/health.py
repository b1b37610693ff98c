"""Database errors in the runner: each part backs off on its own, the error log hears little.

A locked SQLite file or a PostgreSQL restart is weather, not a crisis: the part that met the
error tries again after `RETRY` seconds while the others carry on (an outcome that cannot be
written must not hold up claims, and a bad progress write must not hold up leases). The error
log gets one line per `REPORT_EVERY` seconds, not one per failed statement.
"""

from __future__ import annotations

from flask_bgjobs import joblog, security

#: After a database error, a part waits this long before touching the database again (seconds).
RETRY = 0.5
#: At most one error-log line per this many seconds.
REPORT_EVERY = 30.0


class Health:
    """Counts the runner's database errors and reports them sparingly."""

    def __init__(self, log: joblog.JobLog, runner_id: str) -> None:
        self._log = log
        self._runner_id = runner_id
        self._last_report: float | None = None
        #: When the current run of failures began (monotonic); ``None`` while all is well.
        self.failing_since: float | None = None

    def failed(self, what: str, exc: BaseException, now: float) -> float:
        """Note a failed database call; return when the caller may try again (monotonic)."""
        if self.failing_since is None:
            self.failing_since = now
        if self._last_report is None or now - self._last_report >= REPORT_EVERY:
            self._last_report = now
            self._log.write_error(
                f"Runner {security.printable(self._runner_id)}: database error during {what}; "
                f"will retry. Error: {_first_line(joblog.error_text(exc))}"
            )
        return now + RETRY

    def ok(self) -> None:
        """Note a database call that worked."""
        self.failing_since = None


def _first_line(text: str) -> str:
    # A driver's DETAIL lines may quote row values (job text): the first line says enough.
    return text.strip().split("\n", 1)[0][:500]
