"""A module that fails while being imported."""

from __future__ import annotations

import os
from pathlib import Path

# The test points BGJOBS_CANARY_DIR at a temporary folder; a file there means "imported".
if os.environ.get("BGJOBS_CANARY_DIR"):
    Path(os.environ["BGJOBS_CANARY_DIR"], f"{__name__}.imported").touch()

raise RuntimeError("broken module refuses to import")
