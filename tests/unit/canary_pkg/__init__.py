"""Canary package for the security tests: importing it leaves a file behind."""

from __future__ import annotations

import os
from pathlib import Path

# The test points BGJOBS_CANARY_DIR at a temporary folder; a file there means "imported".
if os.environ.get("BGJOBS_CANARY_DIR"):
    Path(os.environ["BGJOBS_CANARY_DIR"], f"{__name__}.imported").touch()
