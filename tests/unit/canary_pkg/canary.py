"""Canary module: the security tests prove that rejected names never import it."""

from __future__ import annotations

import os
from pathlib import Path

# The test points BGJOBS_CANARY_DIR at a temporary folder; a file there means "imported".
if os.environ.get("BGJOBS_CANARY_DIR"):
    Path(os.environ["BGJOBS_CANARY_DIR"], f"{__name__}.imported").touch()

import subprocess  # noqa: F401 - reachable as canary_pkg.canary.subprocess
from os import system  # noqa: F401 - a re-export that must never be callable as a job
from subprocess import run as run_command  # noqa: F401


class Canary:
    """An allowed class whose other attributes jobs must not reach."""

    def run(self) -> str:
        return "ran"

    def _private(self) -> str:
        return "private"


def ping() -> str:
    return "pong"
