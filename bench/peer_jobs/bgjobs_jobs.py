"""flask-bgjobs's job for the peer harness: the same record as the peers' jobs.

The app is ``bench/benchapp.py`` (``BGJOBS_APP=benchapp:create_app()``), with this class
allow-listed instead of ``benchapp.Noop``, so that our engine is timed by the same clock as
the peers (the job's own start and finish), not by the rows it writes.
"""

from __future__ import annotations

import time

from _record import record


class Record:
    def run(self, tag: str, enqueued_at: float) -> None:
        started_at = time.time()
        record(tag, enqueued_at, started_at)
