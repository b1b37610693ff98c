"""A module whose own import of a dependency fails."""

from __future__ import annotations

import os
from pathlib import Path

# The test points BGJOBS_CANARY_DIR at a temporary folder; a file there means "imported".
if os.environ.get("BGJOBS_CANARY_DIR"):
    Path(os.environ["BGJOBS_CANARY_DIR"], f"{__name__}.imported").touch()

import canary_pkg_dependency_that_does_not_exist  # noqa: F401
