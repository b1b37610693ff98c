"""Huey's SqliteHuey instance and no-op task (the SQLite file comes from the environment)."""

from __future__ import annotations

import os
import time

from _record import record
from huey import SqliteHuey

huey = SqliteHuey(os.environ["BGPEERS_QUEUE"], filename=os.environ["BGPEERS_HUEY_DB"])


@huey.task()
def noop(tag: str, enqueued_at: float) -> None:
    started_at = time.time()
    record(tag, enqueued_at, started_at)
