"""Canary for the enqueue security tests: importing this module leaves a trace.

Each import appends the importing process's pid to ``$JOBAPP_MARKS/canary_mod.imported``, so a
test can prove that a rejected request imported nothing, and that an allowed job imported it
in a job process, never in the web process.
"""

from __future__ import annotations

import os
from pathlib import Path

_marks = os.environ.get("JOBAPP_MARKS")
if _marks:
    Path(_marks).mkdir(parents=True, exist_ok=True)
    with open(Path(_marks, "canary_mod.imported"), "a", encoding="utf-8") as _fh:
        _fh.write(f"{os.getpid()}\n")

import subprocess  # noqa: E402, F401 - reachable as jobapp.canary_mod.subprocess: must stay out of reach
from os import system  # noqa: E402, F401 - a re-export that must never be callable as a job


class Allowed:
    """The one class of this module the tests allow, and only its `ok` method."""

    def ok(self) -> str:
        return "ok"

    def other(self) -> str:
        return "not allowed by name"

    def _private(self) -> str:
        return "private"


class Canary:
    """Never allowed."""

    def run(self) -> str:
        return "ran"


def ping() -> str:
    """Never allowed."""
    return "pong"
