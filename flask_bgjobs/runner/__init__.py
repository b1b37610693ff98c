"""The runner: claims due jobs and runs each attempt in a job process of its own.

Run by the operator as ``flask bgjobs worker``, or auto-started as ``python -m
flask_bgjobs.runner`` with the app import string in ``BGJOBS_APP``. The parts, in the order an
attempt meets them:

=============  ===================================================================
`loop`         the single-threaded loop and its table of parts; shutdown, idle exit
`wakeups`      signals, wake-up datagrams and PostgreSQL notifications → flags
`claims`       when to claim (wake-ups, due times) and the claim with its last check
`children`     job processes: fork or spawn, reuse, the channel, reaping, kills
`outcomes`     one end reason per attempt (`classify`), written fenced, then logged
`leases`       renewal, lost jobs, sweeps of other runners' expired leases
`health`       per-part backoff after database errors, reported sparingly
`clock`        the time each part is told
=============  ===================================================================

Nothing in a web process imports this package: ``import flask_bgjobs`` never loads it.
"""

from __future__ import annotations

from flask_bgjobs.runner.loop import Runner

__all__ = ["Runner"]
