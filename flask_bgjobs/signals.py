"""Signals (blinker, as Flask's own): hooks for error reporters, metrics and audit trails.

Connect a receiver with ``signal.connect(func)`` (or ``@signal.connect``); ``sender`` is the
Flask app. Each signal is sent in the process where the event happens:

- `job_enqueued` in the process that enqueued the job (a web worker, a CLI command, a job that
  enqueues another), once the job is stored: with ``session=``, after that session commits,
  and never for a transaction rolled back; never for a ``unique_key`` duplicate, which stores
  nothing.
- `job_started`, `job_succeeded` and `job_failed` in the attempt's own process (the job
  process; the calling process with ``BGJOBS_EXECUTION`` ``inline`` or ``manual``), around the
  call of the job's target, where the job's return value and exception objects exist.

A receiver that raises does not change what happens to the job: its exception is written to
the error log (`job_enqueued`) or to the attempt's output (the others), and the job goes on.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

from blinker import NamedSignal, Namespace

__all__ = ["job_enqueued", "job_failed", "job_started", "job_succeeded"]

_signals = Namespace()

#: Sent when a job was stored, in the enqueuing process: ``job=`` the `Job` as stored.
job_enqueued = _signals.signal(
    "job-enqueued", doc="A job was stored (sender: the app; job=the Job)."
)
#: Sent in the attempt's process just before the job's target is called: ``job=`` the `Job`
#: as claimed (``status`` running, ``attempts`` the number of this attempt).
job_started = _signals.signal(
    "job-started", doc="An attempt is about to call the job (sender: the app; job=the Job)."
)
#: Sent in the attempt's process after the target returned: ``job=``, ``result=`` the value
#: it returned (the object itself, before it is stored as JSON).
job_succeeded = _signals.signal(
    "job-succeeded",
    doc="The job's target returned (sender: the app; job=the Job, result=its return value).",
)
#: Sent in the attempt's process after the target raised: ``job=``, ``exception=`` the
#: exception object, traceback attached (``DiscardJob`` and ``RetryJob`` included, so a
#: reporter may skip them). Whether the job is retried is decided after this, by the runner.
job_failed = _signals.signal(
    "job-failed",
    doc="The job's target raised (sender: the app; job=the Job, exception=the exception).",
)


def send(
    signal: NamedSignal,
    sender: object,
    *,
    on_error: Callable[[str, str], object] | None = None,
    **kwargs: Any,
) -> None:
    """Send `signal`, keeping a receiver's exception away from the job.

    With no receiver this costs one dict lookup. A receiver that raises is reported through
    `on_error` (given a line and the traceback), or on stderr, and the other receivers still run.
    """
    if not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:  # noqa: BLE001 - a hook must never change the job's outcome
            line = f"A receiver of the {signal.name} signal raised (ignored)."
            if on_error is not None:
                on_error(line, traceback.format_exc())
            else:
                sys.stderr.write(f"flask-bgjobs: {line}\n{traceback.format_exc()}")
