"""RQ's no-op job (a plain function; RQ pickles a reference to it)."""

from __future__ import annotations

import time

from _record import record


def noop(tag: str, enqueued_at: float) -> None:
    started_at = time.time()
    record(tag, enqueued_at, started_at)
