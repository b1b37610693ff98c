"""Celery's app and no-op task: Redis broker, no result backend (nothing reads results)."""

from __future__ import annotations

import os
import time

from _record import record
from celery import Celery

app = Celery("celery_jobs", broker=os.environ["BGPEERS_REDIS_URL"])
app.conf.task_default_queue = os.environ["BGPEERS_QUEUE"]
app.conf.task_ignore_result = True
# Without this Celery 5 warns at every start; the broker is up before the worker starts.
app.conf.broker_connection_retry_on_startup = True


@app.task
def noop(tag: str, enqueued_at: float) -> None:
    started_at = time.time()
    record(tag, enqueued_at, started_at)
