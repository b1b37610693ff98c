"""Jobs the dashboard tests drive from outside: progress that moves only when the test says so,
and a failure that turns into a success once the test creates a file."""

from __future__ import annotations

import os
import time

from flask_bgjobs import current_job


class Stepper:
    """Methods called on a fresh instance, as users' job classes are."""

    def gated(self, gate: str, steps: int = 4) -> dict[str, int]:
        """Report step i of `steps` once the file ``<gate>.<i>`` exists (at most 60 s each)."""
        for i in range(1, steps + 1):
            deadline = time.monotonic() + 60
            while not os.path.exists(f"{gate}.{i}"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{gate}.{i}")
                time.sleep(0.02)
            current_job.progress(100 * i / steps, f"step {i} of {steps}")
        return {"steps": steps}

    def fail_until(self, path: str) -> str:
        """Fail while `path` does not exist; succeed once it does."""
        if not os.path.exists(path):
            raise ConnectionError(f"upstream not ready: {os.path.basename(path)} is missing")
        return "recovered"

    def paced(self, seconds: float = 30.0, steps: int = 10) -> dict[str, float]:
        """Report progress evenly over `seconds` (screenshots of a job in flight)."""
        for i in range(1, steps + 1):
            time.sleep(seconds / steps)
            current_job.progress(100 * i / steps, f"processed {i * 120} of {steps * 120} rows")
        return {"rows": steps * 120.0, "seconds": seconds}
