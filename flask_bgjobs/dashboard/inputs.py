"""Query-string parsing shared by the pages and the API: one rule per parameter, with errors
that say what is allowed (400) and defaults that never fail (a bad page number is page 1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from werkzeug.exceptions import BadRequest, NotFound

from flask_bgjobs import models, recurring, security, service

if TYPE_CHECKING:
    from flask_bgjobs.models import Job
    from flask_bgjobs.state import AppState

PER_PAGE = 50
MAX_PER_PAGE = 200
MAX_QUERY = 200
#: Levels a log line may have (SPEC §6 writes INFO, WARNING and ERROR).
LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LINES = 300
MAX_LOG_LINES = 5000


class InvalidStatus(BadRequest):
    """Raised for a ``status`` filter that is not one of `models.STATUSES`."""

    def __init__(self, status: str) -> None:
        super().__init__(
            f"Unknown status {status[:40]!r}; use one of: {', '.join(models.STATUSES)} "
            "(or leave it empty for all)."
        )
        self.allowed = models.STATUSES


def status(args: Mapping[str, str]) -> str | None:
    """The ``status`` filter, ``None`` for all; `InvalidStatus` (400) for anything else."""
    value = args.get("status", "").strip()
    if not value or value == "all":
        return None
    if value not in models.STATUSES:
        raise InvalidStatus(value)
    return value


def queue(args: Mapping[str, str]) -> str | None:
    """The ``queue`` filter, ``None`` for all; 400 for a name no queue can have (SPEC §10)."""
    value = args.get("queue", "").strip()
    if not value:
        return None
    if not models.QUEUE_RE.fullmatch(value):
        raise BadRequest(
            f"Unknown queue {security.printable(value[:40])!r}: queue names are 1 to 64 of "
            "A-Z a-z 0-9 _ . - (or leave it empty for all)."
        )
    return value


def queue_name(name: str) -> str:
    """A queue named in a URL path; 404 unless it follows the rule of SPEC §10.

    Any name that follows the rule is accepted, known or not: as with ``flask bgjobs pause``,
    a queue may be paused before its first job arrives.
    """
    if not models.QUEUE_RE.fullmatch(name):
        raise NotFound("No such queue: queue names are 1 to 64 of A-Z a-z 0-9 _ . -")
    return name


def schedule_name(state: AppState, name: str) -> str:
    """A recurring job named in a URL path; 404 unless it follows the name rule and exists."""
    if not recurring.NAME_RE.fullmatch(name) or name not in state.schedules():
        raise NotFound(f"No recurring job named {security.printable(name[:80])!r}.")
    return name


def query(args: Mapping[str, str]) -> str | None:
    """The search text (class, method or id), trimmed; ``None`` when empty."""
    value = args.get("q", "").strip()[:MAX_QUERY]
    return value or None


def positive_int(args: Mapping[str, str], name: str, default: int, upper: int) -> int:
    """An integer parameter clamped to 1..`upper`; `default` when missing or not a number."""
    raw = args.get(name, "").strip()
    if not (raw.isascii() and raw.isdigit()):
        return default
    # A huge number is simply "the most": no int() of a 100 000-digit string.
    value = int(raw) if len(raw) <= 12 else upper
    return min(max(1, value), upper)


def page(args: Mapping[str, str]) -> int:
    """The requested page (1-based); the caller clamps it to the last page."""
    return positive_int(args, "page", 1, 10**9)


def per_page(args: Mapping[str, str]) -> int:
    """Rows per page, 1..`MAX_PER_PAGE` (default `PER_PAGE`)."""
    return positive_int(args, "per_page", PER_PAGE, MAX_PER_PAGE)


def last_page(total: int, size: int) -> int:
    """The number of the last page (1 when there are no rows)."""
    return max(1, -(-total // size))


def log_key(args: Mapping[str, str]) -> str:
    """``main`` or ``errors``; anything else is a 404 (SPEC §9), never a path."""
    value = args.get("log", "main")
    if value not in ("main", "errors"):
        raise NotFound("Unknown log: choose 'main' or 'errors'.")
    return value


def level(args: Mapping[str, str]) -> str | None:
    """The ``level`` filter (case-insensitive), ``None`` for all; 400 for an unknown one."""
    value = args.get("level", "").strip().upper()
    if not value or value == "ALL":
        return None
    if value not in LEVELS:
        raise BadRequest(
            f"Unknown level {value[:20]!r}; use one of: {', '.join(LEVELS)} "
            "(or leave it empty for all)."
        )
    return value


def log_lines(args: Mapping[str, str]) -> int:
    """How many log entries to show, 1..`MAX_LOG_LINES`."""
    return positive_int(args, "lines", LOG_LINES, MAX_LOG_LINES)


class JobPage(NamedTuple):
    """One page of the job list, as the query string asked for it."""

    jobs: list[Job]
    total: int
    status: str | None
    q: str | None
    page: int
    last: int
    per_page: int
    queue: str | None


def job_page(state: AppState, args: Mapping[str, str]) -> JobPage:
    """The page of jobs `args` asks for; a page past the end gives the last page."""
    status_, q, queue_ = status(args), query(args), queue(args)
    size, number = per_page(args), page(args)

    def fetch(number: int) -> tuple[list[Job], int]:
        return service.list_jobs(
            state, status=status_, q=q, page=number, per_page=size, queue=queue_
        )

    jobs, total = fetch(number)
    last = last_page(total, size)
    if number > last:  # past the end: the last page rather than an empty one
        number = last
        jobs, total = fetch(number)
    return JobPage(jobs, total, status_, q, number, last, size, queue_)
