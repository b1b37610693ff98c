"""The log viewer's data: the tail of one of the two configured log files, chosen by key.

Nothing from the request ever becomes part of a path: the key picks ``BGJOBS_LOG_FILE`` or
``BGJOBS_ERROR_LOG_FILE`` from the settings, and only those two paths are opened. A log file
that has been replaced by a symbolic link, a FIFO or a device is refused rather than followed
(a job runs as the same user as the app and could plant one).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

from werkzeug.exceptions import Forbidden

from flask_bgjobs import config, joblog

#: The log keys, in the order of the viewer's tabs, with their labels.
LOGS: dict[str, str] = {"main": "Main log", "errors": "Error log"}

# Enough for a few thousand entries with tracebacks, and still a quick read.
_TAIL_LINES = 50_000
_TAIL_BYTES = 4 * 1024 * 1024


@dataclass
class Entry:
    """One log entry: its first line, split, and the lines that follow it (a traceback)."""

    at: str | None
    level: str | None
    message: str
    more: list[str] = field(default_factory=list)

    def matches(self, level: str | None, q: str | None) -> bool:
        """True when the entry has this level (if given) and contains `q` (case-insensitive)."""
        if level is not None and self.level != level:
            return False
        if q:
            needle = q.casefold()
            return needle in self.message.casefold() or any(
                needle in line.casefold() for line in self.more
            )
        return True

    def to_dict(self) -> dict[str, Any]:
        """``{at, level, message, lines}`` for the API (text only; the page builds the DOM)."""
        return {"at": self.at, "level": self.level, "message": self.message, "lines": self.more}


@dataclass
class LogView:
    """What the viewer shows for one key."""

    key: str
    path: str
    entries: list[Entry]
    #: Entries that matched before the list was cut to the requested number.
    matched: int
    exists: bool
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``/api/logs`` answer."""
        return {
            "log": self.key,
            "path": self.path,
            "exists": self.exists,
            "problem": self.problem,
            "matched": self.matched,
            "entries": [e.to_dict() for e in self.entries],
        }


def path_of(settings: config.Settings, key: str) -> str:
    """The configured path for a key that `inputs.log_key` already checked."""
    return settings.log_file if key == "main" else settings.error_log_file


def read(
    settings: config.Settings,
    key: str,
    *,
    level: str | None = None,
    q: str | None = None,
    limit: int = 300,
) -> LogView:
    """The last `limit` entries of log `key` that match `level` and `q`.

    Raises `Forbidden` when the configured path is a symbolic link or not a regular file.
    """
    path = path_of(settings, key)
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return LogView(key, path, [], 0, exists=False)
    except OSError as exc:
        return LogView(key, path, [], 0, exists=True, problem=_reason(exc))
    if stat.S_ISLNK(info.st_mode):
        raise Forbidden(
            f"The {LOGS[key].lower()} is a symbolic link; the dashboard reads only a regular "
            "file at the configured path."
        )
    if not stat.S_ISREG(info.st_mode):
        raise Forbidden(
            f"The {LOGS[key].lower()} is not a regular file; the dashboard does not read it."
        )
    try:
        lines = joblog.tail(path, max_lines=_TAIL_LINES, max_bytes=_TAIL_BYTES)
    except OSError as exc:
        return LogView(key, path, [], 0, exists=True, problem=_reason(exc))
    entries = [e for e in group(lines) if e.matches(level, q)]
    return LogView(key, path, entries[-limit:], len(entries), exists=True)


def group(lines: list[str]) -> list[Entry]:
    """Entries from raw lines: a line that is not ``[time] LEVEL: …`` joins the one before."""
    entries: list[Entry] = []
    for line in lines:
        at, level, message = joblog.parse_line(line)
        if at is None and entries:
            entries[-1].more.append(line)
        else:
            entries.append(Entry(at, level, message))
    return entries


def _reason(exc: OSError) -> str:
    return f"cannot read it: {exc.strerror or type(exc).__name__}"
