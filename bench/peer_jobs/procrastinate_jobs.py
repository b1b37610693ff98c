"""procrastinate's app and no-op task: PostgreSQL through psycopg 3, an async task.

Async because that is procrastinate's model (one worker process runs up to ``--concurrency``
jobs as asyncio tasks); a sync task would run in a thread instead.
"""

from __future__ import annotations

import os
import time

import procrastinate
from _record import record

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ["BGPEERS_PG_DSN"])
)


@app.task(name="noop")
async def noop(tag: str, enqueued_at: float) -> None:
    started_at = time.time()
    record(tag, enqueued_at, started_at)
