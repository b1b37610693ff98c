"""Jobs of the fault suite (tests/faults): process trees, and the like."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from jobapp.jobs import _mark

_IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
# Starts a sleeper, prints its pid and exits at once: the sleeper is orphaned (reparented),
# yet stays in the job's process group. Its output goes nowhere, or `run` would wait for it.
_ORPHAN_MAKER = (
    "import subprocess, sys\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],\n"
    "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(p.pid, flush=True)\n"
)


class FaultJobs:
    """Allowed by the fault suite as ``jobapp.faultjobs.FaultJobs:*``."""

    def spawn_tree(self, tag: str) -> None:
        """Start a child that ignores SIGTERM and an orphaned grandchild, record the pids, hang.

        Marks ``<own pid> <child pid> <grandchild pid>`` under `tag`.
        """
        child = subprocess.Popen([sys.executable, "-c", _IGNORE_TERM])
        maker = subprocess.run(
            [sys.executable, "-c", _ORPHAN_MAKER], capture_output=True, text=True, check=True
        )
        _mark(tag, f"{os.getpid()} {child.pid} {int(maker.stdout)}")
        time.sleep(120)
