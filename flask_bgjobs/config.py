"""Every ``BGJOBS_*`` configuration key, declared once, and the loader that reads them.

A key is looked up in four places, highest first: ``app.config``, the process environment,
the ``.env`` file, then the built-in default. The five seed names (``DEFAULT_PRIORITY`` and
friends) are accepted as aliases in the environment and ``.env`` only. :func:`load_settings`
parses and checks every value once, so the rest of the package reads a frozen
:class:`Settings` and never sees a malformed value.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from dotenv import dotenv_values
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from flask_bgjobs import models, recurring
from flask_bgjobs.errors import ConfigError

if TYPE_CHECKING:
    import flask

__all__ = ["KEYS", "KEY_NAMES", "Computed", "Context", "Key", "Settings", "load_settings"]

# BGJOBS_EXECUTION: who runs jobs.
#: Runners do, one job process per attempt (the default; SPEC §5).
PROCESS = "process"
#: The enqueuing process does, before run_background_job returns (tests).
INLINE = "inline"
#: Nobody, until flask_bgjobs.testing.run_jobs() runs the due ones in the calling process.
MANUAL = "manual"


@dataclass(frozen=True)
class Settings:
    """The parsed configuration of one app; built by :func:`load_settings`, never mutated."""

    #: ``BGJOBS_DATABASE_URI``: where the job tables live.
    database_uri: str
    #: ``BGJOBS_LOG_FILE``: absolute path of the main log.
    log_file: str
    #: ``BGJOBS_ERROR_LOG_FILE``: absolute path of the error log.
    error_log_file: str
    #: ``BGJOBS_DEFAULT_RETRY_ATTEMPTS``: re-runs after the first failure, ``>= 0``.
    default_retry_attempts: int
    #: ``BGJOBS_DEFAULT_DELAY``: seconds before the first run, ``>= 0``.
    default_delay: float
    #: ``BGJOBS_DEFAULT_PRIORITY``: any integer, higher runs first.
    default_priority: int
    #: ``BGJOBS_RETRY_BACKOFF``: ``"fixed"`` or ``"exponential"``.
    retry_backoff: str
    #: ``BGJOBS_RETRY_DELAY``: seconds ``>= 0`` (0 retries at once), or ``None`` to use the
    #: job's own delay.
    retry_delay: float | None
    #: ``BGJOBS_ALLOWED_JOBS``: class (or module) path → ``"*"`` or a tuple of method names.
    allowed_jobs: Mapping[str, tuple[str, ...] | str]
    #: ``BGJOBS_MAX_CONCURRENCY``: jobs running at once per runner, ``>= 1``.
    max_concurrency: int
    #: ``BGJOBS_JOB_TIMEOUT``: seconds per attempt, ``0`` for none.
    job_timeout: float
    #: ``BGJOBS_LEASE_SECONDS``: length of a running job's lease, ``>= 1``.
    lease_seconds: float
    #: ``BGJOBS_SHUTDOWN_GRACE``: seconds SIGTERM waits for running jobs, ``>= 0``.
    shutdown_grace: float
    #: ``BGJOBS_RUNNER_ID``: ``None`` means the runner names itself ``<hostname>:<pid>``.
    runner_id: str | None
    #: ``BGJOBS_AUTOSTART``: whether enqueuing starts a runner when none is alive.
    autostart: bool
    #: ``BGJOBS_APP``: import string the runner rebuilds the app from; ``None`` means the
    #: caller falls back to ``app.import_name``.
    app_import: str | None
    #: ``BGJOBS_DASHBOARD``: whether ``init_app`` registers the dashboard blueprint.
    dashboard: bool
    #: ``BGJOBS_DASHBOARD_URL_PREFIX``: starts with ``/``, no trailing ``/`` (except ``"/"``).
    dashboard_url_prefix: str
    #: ``BGJOBS_DASHBOARD_USERNAME``: HTTP Basic user, or ``None``.
    dashboard_username: str | None
    #: ``BGJOBS_DASHBOARD_PASSWORD``: HTTP Basic password, or ``None``.
    dashboard_password: str | None
    #: ``BGJOBS_MAX_PARAMS_BYTES``: largest accepted params encoding, ``> 0``.
    max_params_bytes: int
    #: ``BGJOBS_DOTENV_PATH``: absolute path of the ``.env`` file that was read, or ``None``.
    dotenv_path: str | None
    #: ``BGJOBS_CREATE_TABLES``: whether missing tables are created on first use.
    create_tables: bool
    #: ``BGJOBS_IDLE_TIMEOUT``: seconds an auto-started runner waits with no work before it exits.
    idle_timeout: float
    #: ``BGJOBS_PROCESS_REUSE``: attempts one job process runs one after another, ``>= 1``.
    process_reuse: int
    #: ``BGJOBS_START_METHOD``: ``"fork"`` or ``"spawn"``.
    start_method: str
    #: ``BGJOBS_DEFAULT_QUEUE``: the queue of a job enqueued without one.
    default_queue: str
    #: ``BGJOBS_QUEUES``: the queues an auto-started runner serves; ``None`` for all.
    queues: tuple[str, ...] | None
    #: ``BGJOBS_QUEUE_LIMITS``: queue → most jobs of it running at once, across all runners.
    queue_limits: Mapping[str, int]
    #: ``BGJOBS_RETENTION_DAYS``: finished jobs are deleted after this many days; 0 keeps all.
    retention_days: float
    #: ``BGJOBS_SCHEDULE``: recurring jobs by name.
    schedule: Mapping[str, recurring.Schedule]
    #: ``BGJOBS_MEMORY_LIMIT``: bytes of memory per attempt of a job that sets none, 0 for none.
    memory_limit: int
    #: ``BGJOBS_CPU_LIMIT``: CPU seconds per attempt of a job that sets none, 0 for none.
    cpu_limit: float
    #: ``BGJOBS_EXECUTION``: ``"process"``, ``"inline"`` (tests) or ``"manual"`` (tests).
    execution: str
    #: ``BGJOBS_METRICS_TOKEN``: the bearer token that opens ``<prefix>/metrics``, or ``None``.
    metrics_token: str | None


@dataclass(frozen=True)
class Context:
    """What a computed default or a parser may need to know about the app being configured."""

    #: ``app.instance_path``: relative file paths are resolved against it.
    instance_path: str
    #: The URI of the Flask-SQLAlchemy ``db`` passed to ``BackgroundJobs``, if any.
    db_uri: str | None
    #: ``FLASK_APP`` from the environment, else from ``.env``, else ``None``.
    flask_app: str | None


@dataclass(frozen=True)
class Computed:
    """A default worked out from the app when no source sets the key."""

    #: How the default is found, for error messages and the docs.
    description: str
    #: Returns the default value (before parsing).
    compute: Callable[[Context], object]

    def __str__(self) -> str:
        return self.description


#: A parser turns a raw value (a string from the environment or ``.env``, or anything from
#: ``app.config``) into the value :class:`Settings` holds; it raises :class:`_Invalid`.
Parser = Callable[[object, Context], object]


@dataclass(frozen=True)
class Key:
    """One configuration key: its name, default, seed alias, parser and documentation."""

    #: The canonical name, ``BGJOBS_…``.
    name: str
    #: The value used when no source sets the key: a plain value or a :class:`Computed`.
    default: object
    #: The seed name accepted in the environment and ``.env``, or ``None``.
    alias: str | None
    #: Turns a raw value into the :class:`Settings` value, or raises :class:`_Invalid`.
    parse: Parser
    #: One or two sentences for the docs.
    doc: str
    #: The :class:`Settings` attribute; defaults to the name without ``BGJOBS_``, lowercased.
    attr: str = ""

    def __post_init__(self) -> None:
        if not self.attr:
            object.__setattr__(self, "attr", self.name.removeprefix("BGJOBS_").lower())


class _Invalid(Exception):
    """Raised by a parser with a message saying what was expected; becomes a ConfigError."""


# --- parsers -------------------------------------------------------------------------------

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_INT_RE = re.compile(r"[+-]?[0-9]+")
# ASCII only, on purpose: \w would admit non-ASCII letters.
_CLASS_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_METHOD_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_MAX_CLASS_LEN = 255
_MAX_METHOD_LEN = 100
_MAX_SHOWN = 60


def _show(value: object, limit: int = _MAX_SHOWN) -> str:
    """Return ``repr(value)``, cut short so a huge value cannot flood the message."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _integer(minimum: int | None = None, *, above: int | None = None) -> Parser:
    def parse(value: object, ctx: Context) -> int:
        if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            number = int(value.strip())
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise _Invalid(f"expected an integer, got {_show(value)}")
        if minimum is not None and number < minimum:
            raise _Invalid(f"expected an integer >= {minimum}, got {number}")
        if above is not None and number <= above:
            raise _Invalid(f"expected an integer > {above}, got {number}")
        return number

    return parse


def _seconds(
    minimum: float, *, exclusive: bool = False, optional: bool = False, unit: str = "seconds"
) -> Parser:
    bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"

    def parse(value: object, ctx: Context) -> float | None:
        if optional and (value is None or (isinstance(value, str) and not value.strip())):
            return None
        number: float | None = None
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        if number is None or not math.isfinite(number):
            raise _Invalid(f"expected a number of {unit}, got {_show(value)}")
        if number < minimum or (exclusive and number == minimum):
            raise _Invalid(f"expected a number of {unit} {bound}, got {number:g}")
        return number

    return parse


_BYTES_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _bytes(value: object, ctx: Context) -> int:
    """A size: an integer of bytes, or a number with K, M, G or T (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (match := _BYTES_RE.fullmatch(value.strip())):
        number = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    else:
        raise _Invalid(f"expected a number of bytes (or with K, M, G), got {_show(value)}")
    if number < 0:
        raise _Invalid(f"expected a number of bytes >= 0, got {number}")
    return number


def _boolean(value: object, ctx: Context) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise _Invalid(f"expected true/false, yes/no, on/off or 1/0, got {_show(value)}")


def _optional_text(value: object, ctx: Context) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        # Only the type: the value may be a password.
        raise _Invalid(f"expected a string, got {type(value).__name__}")
    return value if value.strip() else None


def _choice(*choices: str) -> Parser:
    def parse(value: object, ctx: Context) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise _Invalid(f"expected one of {', '.join(choices)}, got {_show(value)}")

    return parse


def _file_path(value: object, ctx: Context) -> str:
    path = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(path, str) or not path.strip():
        raise _Invalid(f"expected a file path, got {_show(value)}")
    # join() keeps an absolute path as it is.
    return os.path.abspath(os.path.join(ctx.instance_path, path))


def _database_uri(value: object, ctx: Context) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"expected a database URL, got {type(value).__name__}")
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        # Not echoed: a URL may carry a password.
        raise _Invalid(
            "expected a database URL such as 'sqlite:///bgjobs.db' or "
            "'postgresql+psycopg://user:password@host/dbname'"
        ) from None
    if not url.drivername.startswith("sqlite"):
        return value
    database = url.database or ""
    # sqlite:///file:path?uri=true is an SQLite URI filename (as in Flask-SQLAlchemy).
    is_uri = str(url.query.get("uri", "")).lower() in ("true", "1")
    path = database[5:] if is_uri and database.startswith("file:") else database
    if path in ("", ":memory:") or url.query.get("mode") == "memory":
        raise _Invalid(
            "an in-memory SQLite database cannot be shared with the runner process; "
            "use a file such as 'sqlite:///bgjobs.db' (relative to the instance folder)"
        )
    if os.path.isabs(path):
        return value
    # Same rule as Flask-SQLAlchemy: relative SQLite paths live in the instance folder.
    path = os.path.join(ctx.instance_path, path)
    return url.set(database=f"file:{path}" if is_uri else path).render_as_string(
        hide_password=False
    )


def _url_prefix(value: object, ctx: Context) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"/[^\s?#]*", value):
        raise _Invalid(f"expected a URL path starting with '/', got {_show(value)}")
    if len(value) > 1 and value.endswith("/"):
        value = value[:-1]
    return value


def _check_class(name: str) -> str:
    if len(name) > _MAX_CLASS_LEN or not _CLASS_RE.fullmatch(name):
        raise _Invalid(
            f"{_show(name)} is not a dotted path of ASCII identifiers "
            f"(at most {_MAX_CLASS_LEN} characters)"
        )
    return name


def _check_method(cls: str, name: object) -> str:
    if not isinstance(name, str) or len(name) > _MAX_METHOD_LEN or not _METHOD_RE.fullmatch(name):
        raise _Invalid(
            f"method {_show(name)} of {cls} is not an ASCII identifier that does not start "
            f"with '_' (at most {_MAX_METHOD_LEN} characters)"
        )
    return name


def _add_allowed(allowed: dict[str, tuple[str, ...] | str], cls: str, methods: list[str]) -> None:
    """Record ``methods`` for ``cls``; a class listed twice gets the union, ``*`` wins."""
    if not methods:
        raise _Invalid(f"no methods given for {cls}; use '*' to allow all of them")
    before = allowed.get(cls, ())
    if before == "*" or "*" in methods:
        allowed[cls] = "*"
        return
    merged = list(before)
    for method in methods:
        if _check_method(cls, method) not in merged:
            merged.append(method)
    allowed[cls] = tuple(merged)


def _allowed_jobs(value: object, ctx: Context) -> Mapping[str, tuple[str, ...] | str]:
    allowed: dict[str, tuple[str, ...] | str] = {}
    if isinstance(value, str):
        # pkg.mod.Class:method1|method2,pkg.mod.Other:*
        for item in value.split(","):
            if not item.strip():
                continue  # tolerate a trailing comma or an empty value
            cls, colon, methods = item.partition(":")
            if not colon:
                raise _Invalid(f"expected 'pkg.mod.Class:method1|method2', got {_show(item)}")
            names = [m.strip() for m in methods.split("|") if m.strip()]
            _add_allowed(allowed, _check_class(cls.strip()), names)
    elif isinstance(value, Mapping):
        for cls, spec in value.items():
            if not isinstance(cls, str):
                raise _Invalid(f"expected class paths as keys, got {_show(cls)}")
            _check_class(cls)
            if spec == "*":
                names = ["*"]
            elif isinstance(spec, (list, tuple, set, frozenset)):
                # A set has no order; sort it so Settings compare equal run to run.
                names = sorted(spec, key=str) if isinstance(spec, (set, frozenset)) else list(spec)
            else:
                raise _Invalid(
                    f"expected '*' or a list of method names for {cls}, got {_show(spec)}"
                )
            _add_allowed(allowed, cls, names)
    else:
        raise _Invalid(
            "expected a dict {'pkg.mod.Class': ['method', ...] or '*'} or a string "
            f"'pkg.mod.Class:method1|method2,pkg.mod.Other:*', got {type(value).__name__}"
        )
    return MappingProxyType(allowed)


def _queue(value: object, ctx: Context) -> str:
    if not isinstance(value, str) or not models.QUEUE_RE.fullmatch(value.strip()):
        raise _Invalid(f"expected a queue name of 1 to 64 of A-Z a-z 0-9 _ . -, got {_show(value)}")
    return value.strip()


def _queue_list(value: object, ctx: Context) -> tuple[str, ...] | None:
    if value is None or (isinstance(value, str) and value.strip() in ("", "*")):
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise _Invalid(f"expected a list of queue names or 'mail,default', got {_show(value)}")
    names = [
        _queue(item, ctx) for item in items if not (isinstance(item, str) and not item.strip())
    ]
    return tuple(dict.fromkeys(names)) or None


def _queue_limits(value: object, ctx: Context) -> Mapping[str, int]:
    pairs: list[tuple[object, object]]
    if isinstance(value, str):
        pairs = []
        for item in value.split(","):
            if not item.strip():
                continue
            queue_text, colon, count_text = item.partition(":")
            if not colon:
                raise _Invalid(f"expected 'mail:2,reports:1', got {_show(item)}")
            pairs.append((queue_text, count_text))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise _Invalid(f"expected a dict {{'mail': 2}} or 'mail:2,reports:1', got {_show(value)}")
    limits: dict[str, int] = {}
    for queue, number in pairs:
        try:
            limits[_queue(queue, ctx)] = int(_integer(1)(number, ctx))  # type: ignore[call-overload]
        except _Invalid as exc:
            raise _Invalid(f"queue {_show(queue)}: {exc}") from None
    return MappingProxyType(limits)


def _schedule(value: object, ctx: Context) -> Mapping[str, recurring.Schedule]:
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as exc:
            raise _Invalid(f"expected a JSON object of schedules: {exc}") from None
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a dict of schedules by name, got {type(value).__name__}")
    found = {}
    for name, spec in value.items():
        try:
            found[name] = recurring.parse(name, spec)
        except recurring.ScheduleError as exc:
            raise _Invalid(str(exc)) from None
    return MappingProxyType(found)


# --- the keys --------------------------------------------------------------------------------

#: Every key, in the order of the SPEC table (``BGJOBS_IDLE_TIMEOUT`` last).
KEYS: tuple[Key, ...] = (
    Key(
        "BGJOBS_DATABASE_URI",
        Computed(
            "the database of the db passed to BackgroundJobs, "
            "else sqlite:///<instance_path>/bgjobs.db",
            lambda ctx: ctx.db_uri or "sqlite:///" + os.path.join(ctx.instance_path, "bgjobs.db"),
        ),
        None,
        _database_uri,
        "SQLAlchemy URL of the database holding the job tables. A relative SQLite path is "
        "resolved against the instance folder; an in-memory SQLite database is refused.",
    ),
    Key(
        "BGJOBS_LOG_FILE",
        Computed(
            "<instance_path>/logs/background_jobs.log",
            lambda ctx: os.path.join(ctx.instance_path, "logs", "background_jobs.log"),
        ),
        "BACKGROUND_JOB_LOG",
        _file_path,
        "Main log: one line per job event. Relative to the instance folder.",
    ),
    Key(
        "BGJOBS_ERROR_LOG_FILE",
        Computed(
            "<instance_path>/logs/background_jobs_errors.log",
            lambda ctx: os.path.join(ctx.instance_path, "logs", "background_jobs_errors.log"),
        ),
        "ERROR_LOG",
        _file_path,
        "Error log: every failed attempt and rejected request, with tracebacks. "
        "Relative to the instance folder.",
    ),
    Key(
        "BGJOBS_DEFAULT_RETRY_ATTEMPTS",
        3,
        "DEFAULT_RETRY_ATTEMPTS",
        _integer(0),
        "Re-runs after the first failure when the caller gives none: 3 means at most 4 runs.",
    ),
    Key(
        "BGJOBS_DEFAULT_DELAY",
        0.0,
        "DEFAULT_DELAY",
        _seconds(0),
        "Seconds a job waits before its first run when the caller gives no delay.",
    ),
    Key(
        "BGJOBS_DEFAULT_PRIORITY",
        1,
        "DEFAULT_PRIORITY",
        _integer(),
        "Priority when the caller gives none; any integer, higher runs first.",
    ),
    Key(
        "BGJOBS_RETRY_BACKOFF",
        "fixed",
        None,
        _choice("fixed", "exponential"),
        "'fixed': wait the retry delay between attempts; 'exponential': delay * 2^n, "
        "with jitter, capped.",
    ),
    Key(
        "BGJOBS_RETRY_DELAY",
        None,
        None,
        _seconds(0, optional=True),
        "Seconds before a retry; 0 retries at once. Unset: the job's own delay, or 1 s where "
        "that is 0.",
    ),
    Key(
        "BGJOBS_ALLOWED_JOBS",
        {},
        None,
        _allowed_jobs,
        "Jobs that may run: {'pkg.mod.Class': ['method', ...] or '*'} in app.config, or "
        "'pkg.mod.Class:method1|method2,pkg.mod.Other:*' in the environment. Empty: nothing.",
    ),
    Key(
        "BGJOBS_MAX_CONCURRENCY",
        Computed("the number of CPUs", lambda ctx: os.cpu_count() or 1),
        None,
        _integer(1),
        "Jobs running at once per runner.",
    ),
    Key(
        "BGJOBS_JOB_TIMEOUT",
        3600.0,
        None,
        _seconds(0),
        "Seconds an attempt may run before its process group is killed; 0 means no limit.",
    ),
    Key(
        "BGJOBS_LEASE_SECONDS",
        30.0,
        None,
        _seconds(1),
        "Length of a running job's lease, renewed every third of it; at least 1 s.",
    ),
    Key(
        "BGJOBS_SHUTDOWN_GRACE",
        30.0,
        None,
        _seconds(0),
        "Seconds SIGTERM lets running jobs finish before they are killed and re-queued.",
    ),
    Key(
        "BGJOBS_RUNNER_ID",
        None,
        None,
        _optional_text,
        "How a runner names itself in leases and events. Unset: '<hostname>:<pid>'.",
    ),
    Key(
        "BGJOBS_AUTOSTART",
        True,
        None,
        _boolean,
        "Whether enqueuing starts a detached runner when none is alive on this host.",
    ),
    Key(
        "BGJOBS_APP",
        Computed("FLASK_APP (environment, then .env)", lambda ctx: ctx.flask_app),
        None,
        _optional_text,
        "Import string the runner rebuilds the app from ('pkg:create_app()'). Unset: "
        "FLASK_APP, else the app's import name.",
        attr="app_import",
    ),
    Key(
        "BGJOBS_DASHBOARD",
        True,
        None,
        _boolean,
        "Whether init_app registers the dashboard blueprint.",
    ),
    Key(
        "BGJOBS_DASHBOARD_URL_PREFIX",
        "/bgjobs",
        None,
        _url_prefix,
        "Where the dashboard is mounted; starts with '/', a trailing '/' is dropped.",
    ),
    Key(
        "BGJOBS_DASHBOARD_USERNAME",
        None,
        None,
        _optional_text,
        "HTTP Basic user for the dashboard; set together with the password.",
    ),
    Key(
        "BGJOBS_DASHBOARD_PASSWORD",
        None,
        None,
        _optional_text,
        "HTTP Basic password for the dashboard; set together with the username.",
    ),
    Key(
        "BGJOBS_MAX_PARAMS_BYTES",
        1024 * 1024,
        None,
        _integer(above=0),
        "Largest accepted params: UTF-8 bytes of their compact JSON encoding.",
    ),
    Key(
        "BGJOBS_DOTENV_PATH",
        None,
        None,
        _optional_text,
        "The .env file to read (relative to the current directory; read from app.config or "
        "the environment only). Unset: .env in the current directory, else in app.root_path.",
    ),
    Key(
        "BGJOBS_CREATE_TABLES",
        True,
        None,
        _boolean,
        "Whether missing tables are created on first use; false when migrations own them.",
    ),
    Key(
        "BGJOBS_IDLE_TIMEOUT",
        60.0,
        None,
        _seconds(0),
        "Seconds an auto-started runner waits with no work at all before it exits.",
    ),
    Key(
        "BGJOBS_PROCESS_REUSE",
        1,
        None,
        _integer(1),
        "Attempts one job process runs one after another; 1 gives every attempt a fresh "
        "process. A timeout, cancel or crash still ends that process.",
    ),
    Key(
        "BGJOBS_START_METHOD",
        "fork",
        None,
        _choice("fork", "spawn"),
        "'fork': job processes are forked from the runner (fast). 'spawn': each is a fresh "
        "interpreter that loads the app, for apps that are not fork-safe.",
    ),
    Key(
        "BGJOBS_DEFAULT_QUEUE",
        models.DEFAULT_QUEUE,
        None,
        _queue,
        "The queue of a job enqueued without one.",
    ),
    Key(
        "BGJOBS_QUEUES",
        None,
        None,
        _queue_list,
        "The queues an auto-started runner serves ('mail,default'); unset: all of them.",
    ),
    Key(
        "BGJOBS_QUEUE_LIMITS",
        {},
        None,
        _queue_limits,
        "Most jobs of a queue running at once across every runner sharing the database: "
        "{'mail': 2} in app.config, 'mail:2,reports:1' in the environment.",
    ),
    Key(
        "BGJOBS_RETENTION_DAYS",
        0.0,
        None,
        _seconds(0, unit="days"),
        "Runners delete succeeded and cancelled jobs that finished longer ago than this many "
        "days, failed ones after twice that; 0 keeps everything.",
    ),
    Key(
        "BGJOBS_SCHEDULE",
        {},
        None,
        _schedule,
        "Recurring jobs by name: {'nightly': {'job': 'pkg.mod.Class:method', 'cron': "
        "'0 2 * * *'}}; in the environment, the same as a JSON object.",
    ),
    Key(
        "BGJOBS_MEMORY_LIMIT",
        0,
        None,
        _bytes,
        "Memory per attempt (RLIMIT_DATA of its process), for jobs enqueued without "
        "memory_limit: bytes, or a number with K, M or G (powers of 1024); 0 for none.",
    ),
    Key(
        "BGJOBS_CPU_LIMIT",
        0.0,
        None,
        _seconds(0),
        "CPU seconds (user + system) per attempt (RLIMIT_CPU of its process), for jobs "
        "enqueued without cpu_limit; 0 for none.",
    ),
    Key(
        "BGJOBS_EXECUTION",
        PROCESS,
        None,
        _choice(PROCESS, INLINE, MANUAL),
        "'process': runners run jobs, one process per attempt. For tests: 'inline' runs each "
        "job in the enqueuing process before run_background_job returns; 'manual' stores jobs "
        "and runs them when flask_bgjobs.testing.run_jobs() is called. Neither starts a runner.",
    ),
    Key(
        "BGJOBS_METRICS_TOKEN",
        None,
        None,
        _optional_text,
        "A bearer token that opens GET <prefix>/metrics to a scraper (Authorization: Bearer "
        "<token>), beside the dashboard's own access rule. Unset: only that rule.",
    ),
)

#: The canonical name of every key, in :data:`KEYS` order.
KEY_NAMES: tuple[str, ...] = tuple(key.name for key in KEYS)

_BY_NAME = {key.name: key for key in KEYS}


# --- loading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    label: str
    values: Mapping[str, object]
    takes_aliases: bool


@dataclass(frozen=True)
class _Found:
    value: object
    #: Where the value came from, for error messages; ``None`` for the default.
    origin: str | None


def _lookup(key: Key, sources: list[_Source]) -> _Found:
    for source in sources:
        # Within one source the canonical name beats the alias; across sources the higher
        # source wins whichever name it used.
        names = [key.name]
        if key.alias and source.takes_aliases:
            names.append(key.alias)
        for name in names:
            value = source.values.get(name)
            # None in app.config means "not set here", like an absent key.
            if value is not None:
                where = (
                    f"in {source.label}" if name == key.name else f"from {name} in {source.label}"
                )
                return _Found(value, where)
    return _Found(key.default, None)


def _parse(key: Key, found: _Found, ctx: Context) -> object:
    value = found.value
    if isinstance(value, Computed):
        value = value.compute(ctx)
    try:
        return key.parse(value, ctx)
    except _Invalid as exc:
        origin = found.origin or f"from the default: {key.default}"
        raise ConfigError(key.name, f"{exc} ({origin})") from None


def _find_dotenv(app: flask.Flask, sources: list[_Source], ctx: Context) -> str | None:
    """Return the absolute path of the ``.env`` file to read, or ``None``."""
    key = _BY_NAME["BGJOBS_DOTENV_PATH"]
    found = _lookup(key, sources)
    chosen = _parse(key, found, ctx)
    if isinstance(chosen, str):
        path = os.path.abspath(chosen)
        if not os.path.isfile(path):
            raise ConfigError(key.name, f"no such file: {_show(path, 500)} ({found.origin})")
        return path
    for folder in (os.getcwd(), app.root_path):
        path = os.path.abspath(os.path.join(folder, ".env"))
        if os.path.isfile(path):
            return path
    return None


def _read_dotenv(path: str) -> dict[str, str]:
    try:
        # dotenv_values() reads the file without touching os.environ.
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("BGJOBS_DOTENV_PATH", f"cannot read {_show(path, 500)}: {exc}") from None
    # A bare "NAME" line (no "=") gives None: treat it as not set.
    return {name: value for name, value in values.items() if value is not None}


def load_settings(
    app: flask.Flask,
    *,
    db_uri: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read every key for ``app`` and return the parsed, checked :class:`Settings`.

    ``db_uri`` is the URI of the Flask-SQLAlchemy database passed to ``BackgroundJobs``; it
    becomes the default ``BGJOBS_DATABASE_URI``. ``environ`` defaults to ``os.environ``;
    neither it nor ``os.environ`` is modified.

    :raises ConfigError: a value is malformed, or ``BGJOBS_DOTENV_PATH`` names a missing file.
    """
    if environ is None:
        environ = os.environ
    sources = [
        _Source("app.config", app.config, takes_aliases=False),
        _Source("the environment", environ, takes_aliases=True),
    ]
    ctx = Context(instance_path=app.instance_path, db_uri=db_uri, flask_app=None)
    dotenv_path = _find_dotenv(app, sources, ctx)
    dotenv = _read_dotenv(dotenv_path) if dotenv_path else {}
    if dotenv_path:
        sources.append(_Source(f".env file {dotenv_path}", dotenv, takes_aliases=True))
    ctx = Context(
        instance_path=app.instance_path,
        db_uri=db_uri,
        flask_app=environ.get("FLASK_APP") or dotenv.get("FLASK_APP") or None,
    )

    values = {key.attr: _parse(key, _lookup(key, sources), ctx) for key in KEYS}
    values["dotenv_path"] = dotenv_path
    settings = Settings(**values)  # type: ignore[arg-type]  # each parser returns its field's type

    # Half a login would leave the dashboard answering 403 with no clue why.
    if (settings.dashboard_username is None) != (settings.dashboard_password is None):
        missing = "PASSWORD" if settings.dashboard_password is None else "USERNAME"
        present = "USERNAME" if missing == "PASSWORD" else "PASSWORD"
        raise ConfigError(
            f"BGJOBS_DASHBOARD_{missing}",
            f"must be set because BGJOBS_DASHBOARD_{present} is set",
        )
    return settings
