"""What every peer's no-op job does: append one line saying when it ran, and in which process.

The peers store their bookkeeping in different places (Redis hashes, PostgreSQL rows, a
SQLite file), so the benchmark does not read any of it: each job appends
``tag pid enqueued_at started_at finished_at`` (wall-clock seconds) to the file named by
``BGPEERS_RECORD`` with one ``O_APPEND`` write, which is atomic for lines this short.
"""

from __future__ import annotations

import os
import time

_PATH = os.environ["BGPEERS_RECORD"]


def record(tag: str, enqueued_at: float, started_at: float) -> None:
    line = f"{tag} {os.getpid()} {enqueued_at!r} {started_at!r} {time.time()!r}\n"
    fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("ascii"))
    finally:
        os.close(fd)
