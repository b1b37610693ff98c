"""Log lines: the exact text of every event (SPEC §6), appending it safely, reading it back.

Two files: the main log (one line per event) and the error log (one entry per failed attempt
or rejected request, with the traceback indented by two spaces on the following lines). Every
line written to either also goes to the standard logger ``flask_bgjobs`` at its level (`LOGGER`),
so a host app's logging configuration (JSON, shipping, Sentry's logging integration) sees it.

Every piece of text that could come from a user or a job (names, messages, errors, traceback
lines) goes through :func:`_printable`, so it can never start a fake log line or carry a
terminal escape. Writing never raises: a full disk or a file-size limit costs log lines, never a
job outcome (FAULTS case 15). The caller decides what "log incomplete" means.

The runner ignores ``SIGXFSZ`` so that exceeding ``RLIMIT_FSIZE`` (``prlimit --fsize``) shows up
here as ``EFBIG`` instead of killing the process; this module leaves signal handling alone.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import time
from collections.abc import Iterable, Sequence

__all__ = [
    "LOGGER",
    "JobLog",
    "cancelled",
    "completed",
    "error_text",
    "expired",
    "failed",
    "interrupted",
    "parse_line",
    "progress",
    "rejected",
    "retrying",
    "skipped",
    "started",
    "tail",
    "timestamp",
]

# C0 controls, DEL, C1 controls (incl. NEL), Arabic letter mark, LRM/RLM, LINE/PARAGRAPH
# SEPARATOR, the bidi embeddings/overrides and isolates, and lone surrogates. Together these
# cover every character str.splitlines() breaks on, so escaped text stays on one line.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_LINE = re.compile(r"\[([0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2})\] ([A-Z]+): ?(.*)")

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
# Log lines carry job names, errors and tracebacks: a file we create is for the app's user
# alone (the umask can only narrow it). An existing file keeps its mode: logrotate's `create`
# line or an operator's chmod (a log shipper's group, say) is a choice to respect.
_FILE_MODE = 0o600


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _printable(text: object) -> str:
    """Return ``text`` with control, bidi and line-breaking characters as visible escapes.

    Idempotent: the result contains none of the escaped characters.
    """
    return _UNPRINTABLE.sub(_escape, str(text))


def _number(value: float) -> str:
    """Format ``value`` rounded to one decimal, without a trailing ``.0`` (``10``, ``1.5``)."""
    if not math.isfinite(value):
        return str(value)
    rounded = round(float(value), 1)
    if rounded == int(rounded):
        return str(int(rounded))
    return f"{rounded:.1f}"


# --- timestamps and messages ---------------------------------------------------------------


class JobText(str):
    """A message about one job: the text itself, and the job's id for the logger's record."""

    __slots__ = ("job_id",)
    job_id: int | None

    def __new__(cls, text: str, job_id: object) -> JobText:
        made = super().__new__(cls, text)
        made.job_id = job_id if isinstance(job_id, int) and not isinstance(job_id, bool) else None
        return made


def timestamp(now: float | None = None) -> str:
    """Return ``[YYYY-MM-DD HH:MM:SS]`` in UTC for ``now`` (epoch seconds, default: now)."""
    moment = time.time() if now is None else now
    return time.strftime("[%Y-%m-%d %H:%M:%S]", time.gmtime(moment))


def started(name: str, job_id: int, attempt: int, max_attempts: int) -> str:
    """Message for an attempt that has started."""
    return JobText(
        f"Job started for {_printable(name)} "
        f"(job {_printable(job_id)}, attempt {attempt}/{max_attempts}).",
        job_id,
    )


def progress(name: str, job_id: int, percent: float, message: str = "") -> str:
    """Message for a progress report; without a message it ends with a full stop."""
    head = f"Job progress {_number(percent)}% for {_printable(name)} (job {_printable(job_id)})"
    return JobText(f"{head}: {_printable(message)}" if message else f"{head}.", job_id)


def completed(name: str, job_id: int, seconds: float) -> str:
    """Message for a job that finished successfully after ``seconds``."""
    return JobText(
        f"Job completed successfully for {_printable(name)} "
        f"(job {_printable(job_id)}, {seconds:.1f} s).",
        job_id,
    )


def retrying(
    name: str, job_id: int, attempt: int, max_attempts: int, wait: float, error: str
) -> str:
    """Message for a failed attempt that will be retried after ``wait`` seconds."""
    return JobText(
        f"Job failed for {_printable(name)} (job {_printable(job_id)}, "
        f"attempt {attempt}/{max_attempts}); retrying in {_number(wait)} s. "
        f"Error: {_printable(error)}",
        job_id,
    )


def failed(name: str, job_id: int, attempt: int, max_attempts: int, error: str) -> str:
    """Message for a failed attempt that will not be retried."""
    return JobText(
        f"Job failed for {_printable(name)} (job {_printable(job_id)}, "
        f"attempt {attempt}/{max_attempts}). Error: {_printable(error)}",
        job_id,
    )


def rejected(name: str, error: str) -> str:
    """Message for a request refused before anything was stored."""
    return f"Job rejected for {_printable(name)}. Error: {_printable(error)}"


def interrupted(name: str, job_id: int, attempt: int, max_attempts: int) -> str:
    """Message for an attempt stopped by runner shutdown without spending it."""
    return JobText(
        f"Job interrupted by shutdown for {_printable(name)} "
        f"(job {_printable(job_id)}, attempt {attempt}/{max_attempts}); returned to pending.",
        job_id,
    )


def expired(name: str, job_id: int) -> str:
    """Message for a job cancelled because it did not start within its ``expires_in``."""
    return JobText(
        f"Job expired for {_printable(name)} (job {_printable(job_id)}): not started within "
        "its expires_in of falling due; cancelled, never run.",
        job_id,
    )


def skipped(schedule: str, tick: str, job_id: int) -> str:
    """Message for a schedule tick skipped because the previous job has not finished."""
    return JobText(
        f"Schedule {_printable(schedule)} skipped for {tick}: job {job_id} has not finished.",
        job_id,
    )


def cancelled(name: str, job_id: int) -> str:
    """Message for a cancelled job."""
    return JobText(f"Job cancelled for {_printable(name)} (job {_printable(job_id)}).", job_id)


def error_text(exc: BaseException) -> str:
    """Return ``"ValueError: bad row"`` for ``exc``, or just the type name when it has no text.

    The text is not escaped here (formatters do that); an exception whose ``__str__`` itself
    fails is described instead of raising again.
    """
    kind = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the original failure
        text = "<exception str() failed>"
    return f"{kind}: {text}" if text else kind


# --- writing ------------------------------------------------------------------------------


def _append(path: str, data: bytes) -> bool:
    """Append ``data`` with a single ``os.write``; return False on any OS error or short write.

    The file is opened per call so that a rotated file (renamed away by logrotate) is replaced
    by a fresh one on the next write, and ``O_APPEND`` makes each call one atomic append even
    when several processes share the file. A new file is created ``0600``.
    """
    try:
        try:
            fd = os.open(path, _OPEN_FLAGS, _FILE_MODE)
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if not parent:
                return False
            os.makedirs(parent, exist_ok=True)
            fd = os.open(path, _OPEN_FLAGS, _FILE_MODE)
        try:
            # No retry of a short write: a second write could interleave with another process.
            return os.write(fd, data) == len(data)
        finally:
            os.close(fd)
    except OSError:
        return False


#: The standard logger every log-file line also goes to, at its level. Records carry
#: ``job_id`` (the job the line is about, or ``None``) and ``bgjobs_file`` (``"main"`` or
#: ``"errors"``); an error-log entry's traceback is the record's ``exc_text``. The message is
#: the line's text without the file's timestamp and level: the host's formatter adds its own.
LOGGER = logging.getLogger("flask_bgjobs")
# A library adds no handler of its own (the logging HOWTO): without the host's configuration
# the records go nowhere, rather than to Python's last-resort stderr handler.
LOGGER.addHandler(logging.NullHandler())
_LEVELS = {"INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


def _emit(
    entries: Iterable[tuple[str, str]], file: str, traceback_lines: Sequence[str] = ()
) -> None:
    """Hand log-file lines to `LOGGER` (escaped as in the file); never raises."""
    try:
        for level_name, message in entries:
            level = _LEVELS.get(level_name, logging.INFO)
            if not LOGGER.isEnabledFor(level):
                continue
            extra = {"job_id": getattr(message, "job_id", None), "bgjobs_file": file}
            record = LOGGER.makeRecord(
                LOGGER.name, level, __file__, 0, _printable(message), (), None, extra=extra
            )
            if traceback_lines:
                record.exc_text = "\n".join(traceback_lines)
            LOGGER.handle(record)
    except Exception:  # noqa: BLE001 - a host's broken handler must cost a record, not a job
        pass


class JobLog:
    """Appends formatted lines to the main log and entries to the error log.

    Every method returns True when the whole text reached the file and False otherwise
    (disk full, file too large, permission denied...); none of them raises ``OSError``.
    Every line also goes to `LOGGER`, whether or not the file took it.
    """

    def __init__(self, main_path: str, error_path: str) -> None:
        self.main_path = main_path
        self.error_path = error_path

    def write(self, entries: Sequence[tuple[str, str]], now: float | None = None) -> bool:
        """Append ``(level, message)`` entries to the main log, one line each, in one write."""
        if not entries:
            return True
        stamp = timestamp(now)
        text = "".join(
            f"{stamp} {_printable(level)}: {_printable(message)}\n" for level, message in entries
        )
        written = _append(self.main_path, text.encode("utf-8"))
        _emit(entries, "main")
        return written

    def info(self, message: str, now: float | None = None) -> bool:
        """Append one INFO line to the main log."""
        return self.write([("INFO", message)], now)

    def warning(self, message: str, now: float | None = None) -> bool:
        """Append one WARNING line to the main log."""
        return self.write([("WARNING", message)], now)

    def error(self, message: str, now: float | None = None) -> bool:
        """Append one ERROR line to the main log."""
        return self.write([("ERROR", message)], now)

    def write_error(
        self, message: str, traceback: str | None = None, now: float | None = None
    ) -> bool:
        """Append one ERROR entry to the error log, the traceback indented below it."""
        below = (
            [_printable(line.removesuffix("\r")) for line in traceback.rstrip("\r\n").split("\n")]
            if traceback
            else []
        )
        lines = [f"{timestamp(now)} ERROR: {_printable(message)}", *("  " + x for x in below)]
        text = "\n".join(lines) + "\n"
        written = _append(self.error_path, text.encode("utf-8"))
        _emit([("ERROR", message)], "errors", below)
        return written


# --- reading ------------------------------------------------------------------------------


def tail(path: str, max_lines: int = 500, max_bytes: int = 1_048_576) -> list[str]:
    """Return the last ``max_lines`` lines of ``path``, reading at most ``max_bytes`` from its end.

    Lines come without their line ending, decoded as UTF-8 (bad bytes replaced) and escaped
    with the same rules as written text, so a file written by something else cannot put control
    characters on a page. When the read starts mid-file the cut first line is dropped. A missing
    file gives ``[]``; other OS errors (permission denied...) propagate.
    """
    if max_lines <= 0 or max_bytes <= 0:
        return []
    try:
        # Never follow a symlink planted where a log should be, never block on a FIFO.
        fd = os.open(
            path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        )
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PermissionError(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    try:
        with os.fdopen(fd, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            cut = False
            if start > 0:
                handle.seek(start - 1)
                cut = handle.read(1) != b"\n"
            else:
                handle.seek(0)
            data = handle.read(max_bytes)
    except (FileNotFoundError, NotADirectoryError):
        return []
    chunks = data.split(b"\n")
    if cut:
        chunks = chunks[1:]
    if chunks and chunks[-1] == b"":
        chunks.pop()
    return [
        _printable(chunk.decode("utf-8", errors="replace").removesuffix("\r"))
        for chunk in chunks[-max_lines:]
    ]


def parse_line(line: str) -> tuple[str | None, str | None, str]:
    """Split ``[YYYY-MM-DD HH:MM:SS] LEVEL: message`` into (timestamp, level, message).

    Any other line (a traceback continuation, say) gives ``(None, None, line)``.
    """
    match = _LINE.fullmatch(line)
    if match is None:
        return None, None, line
    return match.group(1), match.group(2), match.group(3)
