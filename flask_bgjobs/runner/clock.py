"""Time, as the runner's parts are told it: read once per turn of the loop."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Now:
    """One reading of the clocks."""

    #: Monotonic seconds: every timer and deadline of the runner.
    mono: float
    #: Epoch seconds: what the database stores (``run_at``, leases).
    wall: float


class Clock(Protocol):
    """Where the loop reads the time (a fake one in unit tests)."""

    def now(self) -> Now:
        """The current time on both clocks."""
        ...


class SystemClock:
    """The real clocks."""

    def now(self) -> Now:
        """``time.monotonic()`` and ``time.time()``."""
        return Now(time.monotonic(), time.time())
