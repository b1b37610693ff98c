"""Prometheus metrics, computed from the job database: ``GET <prefix>/metrics``.

Every value is read from the database when scraped (no counter lives in a process), so every
web process on every host answers the same, and a restart loses nothing:

- ``bgjobs_jobs{status,queue}`` (gauge): jobs in the database;
- ``bgjobs_oldest_pending_seconds{queue}`` (gauge): how long the longest-waiting due job
  (``pending`` or ``retrying``, ``run_at`` passed) has waited since it fell due; 0 when none;
- ``bgjobs_queue_paused{queue}`` (gauge): 1 while the queue is paused;
- ``bgjobs_attempts_total{reason}`` (counter): attempts that ended, by end reason;
- ``bgjobs_attempt_duration_seconds`` (histogram): how long those attempts ran, from their
  started event to their ending event.

The counter and the histogram count the events still stored: pruning and retention delete old
ones, which Prometheus reads as a counter reset (``rate()`` and ``increase()`` handle that).

Needs ``prometheus_client`` (``pip install 'flask-bgjobs[metrics]'``), imported only here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask_bgjobs import models, service
from flask_bgjobs.errors import BgJobsError
from flask_bgjobs.state import AppState

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

#: Upper bounds (seconds) of the duration histogram's buckets: jobs take milliseconds to hours.
BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600)
#: End reasons of attempts that ran (a cancel only counts for a running attempt).
ENDED: tuple[str, ...] = (
    models.END_SUCCEEDED,
    *models.ATTEMPT_FAILURES,
    models.END_SHUTDOWN,
    models.END_CANCELLED,
)
#: Attempts whose duration is measured: those that ran to an end of their own (a cancelled
#: attempt's event is written by whoever cancelled it, not when it stopped).
TIMED: tuple[str, ...] = (models.END_SUCCEEDED, *models.ATTEMPT_FAILURES, models.END_SHUTDOWN)

MISSING = "GET /metrics needs the prometheus_client package: pip install 'flask-bgjobs[metrics]'"


class MetricsUnavailable(BgJobsError):
    """Raised when ``prometheus_client`` is not installed."""


def exposition(state: AppState, accept: str = "") -> tuple[bytes, str]:
    """The metrics and their content type: the Prometheus text format, or OpenMetrics when
    the scraper's `accept` header asks for it (as prometheus_client's own server does)."""
    try:
        from prometheus_client.exposition import choose_encoder
        from prometheus_client.registry import CollectorRegistry
    except ImportError:
        raise MetricsUnavailable(MISSING) from None
    # A registry per scrape, never the global one: several apps (or tests) in one process
    # must not share, or collide on, collectors.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(state))
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


class _Collector:
    """Reads every metric from the database when the registry collects."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        store = self.state.store
        counted = store.counts_by_queue()
        queues = service.queues(self.state)
        names = sorted({q for q, _, _ in counted} | {q.name for q in queues})

        jobs = GaugeMetricFamily(
            "bgjobs_jobs", "Jobs in the database, by status and queue.", labels=["status", "queue"]
        )
        per = {(q, s): n for q, s, n in counted}
        for queue in names:
            for status in models.STATUSES:
                jobs.add_metric([status, queue], per.get((queue, status), 0))
        yield jobs

        oldest = GaugeMetricFamily(
            "bgjobs_oldest_pending_seconds",
            "Seconds the longest-waiting due job of the queue has waited since it fell due "
            "(pending or retrying); 0 when none is due.",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            "bgjobs_queue_paused", "1 while the queue is paused for every runner.", labels=["queue"]
        )
        by_name = {q.name: q for q in queues}
        for queue in names:
            info = by_name.get(queue)
            oldest.add_metric([queue], max(0.0, (info.oldest_waiting if info else None) or 0.0))
            paused.add_metric([queue], 1.0 if info is not None and info.paused else 0.0)
        yield oldest
        yield paused

        attempts = CounterMetricFamily(
            "bgjobs_attempts",
            "Attempts that ended, by end reason (as stored: pruned jobs no longer count).",
            labels=["reason"],
        )
        ends = store.attempt_ends(ENDED)
        for reason in ENDED:
            attempts.add_metric([reason], ends.get(reason, 0))
        yield attempts

        counts, total, n = store.attempt_durations(TIMED, BUCKETS)
        buckets: list[tuple[str, Any]] = [
            (_bound(b), c) for b, c in zip(BUCKETS, counts, strict=True)
        ]
        buckets.append(("+Inf", n))
        yield HistogramMetricFamily(
            "bgjobs_attempt_duration_seconds",
            "How long attempts ran, from their start to their end (as stored).",
            buckets=buckets,
            sum_value=total,
        )


def _bound(value: float) -> str:
    """A bucket bound as Prometheus writes it (``0.5``, ``1.0``)."""
    return repr(float(value))
