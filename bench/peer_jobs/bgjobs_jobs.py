"""flask-bgjobs's job for the peer harness: the same record as the peers' jobs.

The app is ``bench/benchapp.py``, built through ``create_app`` below
(``BGJOBS_APP=bgjobs_jobs:create_app()``) so that the runner imports this module before it
forks, as a real app's runner has its job classes imported by the app: a forked child then
finds the class in ``sys.modules`` instead of importing it once per job. Our engine is so
timed by the same clock as the peers (the job's own start and finish), not by its rows.
"""

from __future__ import annotations

import time

import benchapp
from _record import record
from flask import Flask


class Record:
    def run(self, tag: str, enqueued_at: float) -> None:
        started_at = time.time()
        record(tag, enqueued_at, started_at)


def create_app() -> Flask:
    return benchapp.create_app()
