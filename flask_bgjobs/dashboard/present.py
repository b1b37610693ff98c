"""How job data reads on a page: times, durations, JSON, the chart, the attempts table.

Pure functions of plain data (plus :func:`error_response`, which renders the error page), so
the views stay short and the JSON API shows exactly the extension's data, untouched.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from flask import jsonify, render_template, request
from werkzeug.wrappers import Response

from flask_bgjobs import limits, models, recurring, security
from flask_bgjobs.models import Event, Job, Shown

#: Why an attempt ended (`models.END_REASONS`), as the attempts table says it.
END_REASON_TEXT: dict[str, str] = {
    models.END_SUCCEEDED: "succeeded",
    models.END_EXCEPTION: "raised an exception",
    models.END_EXIT: "exited without a result",
    models.END_SIGNAL: "killed by a signal",
    models.END_TIMEOUT: "timed out",
    models.END_LEASE_EXPIRED: "lease expired (runner lost)",
    models.END_SHUTDOWN: "runner shut down (given back)",
    models.END_CANCELLED: "cancelled",
    models.END_REJECTED: "refused at run time",
    models.END_MEMORY: "ran out of memory",
    models.END_CPU: "CPU limit exceeded",
    models.END_EXPIRED: "expired: not started within its expires_in, never run",
    models.END_DISCARDED: "discarded by the job (DiscardJob): failed, never retried",
}

#: One-line meaning of each status, shown as a tooltip next to the label.
STATUS_TEXT: dict[str, str] = {
    models.PENDING: "waiting for its first run",
    models.RUNNING: "an attempt is under way",
    models.RETRYING: "an attempt failed; waiting to run again",
    models.SUCCEEDED: "an attempt returned normally",
    models.FAILED: "every attempt failed",
    models.CANCELLED: "cancelled by an operator, or expired before it started",
}


# -- times ------------------------------------------------------------------------------------


def _gmtime(ts: float | None) -> time.struct_time | None:
    # An edited row may hold NaN, infinity or a year no calendar shows: no time, not a 500.
    try:
        return None if ts is None else time.gmtime(ts)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def when(ts: float | None) -> str:
    """``2026-11-21 12:30:05`` (UTC), or an em dash for ``None`` (or a time that is no time)."""
    tm = _gmtime(ts)
    return "—" if tm is None else time.strftime("%Y-%m-%d %H:%M:%S", tm)


def clock(ts: float | None) -> str:
    """``12:30:05`` (UTC) for today's events, else the full date and time."""
    tm = _gmtime(ts)
    if tm is None:
        return "—"
    if tm[:3] == time.gmtime()[:3]:
        return time.strftime("%H:%M:%S", tm)
    return when(ts)


def duration(seconds: float | None) -> str:
    """A short human duration: ``0.4 s``, ``12 s``, ``3 min 20 s``, ``2 h 05 min``, ``3 d 4 h``."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def rss(kb: int | None) -> str:
    """A peak RSS in KiB as ``44.6 MiB``, or an em dash when unknown."""
    if kb is None or not isinstance(kb, int) or kb < 0:
        return "—"
    return limits.size_text(kb * 1024)


def cpu(seconds: float | None) -> str:
    """CPU seconds as ``0.02 s`` or ``12.4 s``, or an em dash when unknown."""
    value = models.finite(seconds)
    if value is None or value < 0:
        return "—"
    return f"{value:.2f} s" if value < 10 else duration(value)


def percent(part: int, whole: int) -> str:
    """``12 %``, ``0.4 %``; an em dash for nothing out of nothing."""
    if whole <= 0:
        return "—"
    share = 100 * part / whole
    return f"{share:.0f} %" if share >= 10 or share == 0 else f"{share:.1f} %"


def waited(seconds: float | None) -> str:
    """How long a queue's oldest job has waited, coarsely: ``3 s``, ``2 min``, ``1 h 05 min``.

    Coarser than `duration`: on the Queues page the order of magnitude is what matters, and a
    number that ticks every second would only distract.
    """
    if seconds is None or not math.isfinite(seconds):
        return "—"
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def size(n: int | None) -> str:
    """Bytes in binary units, as memory limits are usually given: ``512 MiB``, ``1.5 GiB``."""
    return "—" if n is None else limits.size_text(n)


def ago(ts: float | None, now: float | None = None) -> str:
    """``12 s ago``, ``in 3 min 00 s`` for a future time, or an em dash."""
    if ts is None or _gmtime(ts) is None:
        return "—"
    delta = (time.time() if now is None else now) - ts
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def iso(ts: float | None) -> str:
    """ISO 8601 UTC for a ``<time datetime=…>`` attribute ("" for ``None``)."""
    return models.iso(ts) or ""


# -- values -----------------------------------------------------------------------------------


def shown(value: object) -> str:
    """Stored text for one line of a page: control, bidi and line-breaking characters become
    visible escapes (``\\x1b``, ``\\u2028``), as in the logs and the CLI. Jinja escapes the rest.
    """
    return security.printable(models.text_of(value) or "")


def shown_lines(value: object) -> str:
    """Like `shown`, but line feeds stay line feeds: for tracebacks and JSON in a ``<pre>``."""
    return "\n".join(shown(line) for line in (models.text_of(value) or "").split("\n"))


def _shown_if_text(value: object) -> object:
    return shown(value) if isinstance(value, str) else value


def pretty_json(value: Any) -> str:
    """Indented JSON for a ``<pre>``, escaped like `shown_lines`; the template escapes HTML."""
    return shown_lines(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))


def short_json(value: Any, limit: int = 120) -> str:
    """One-line JSON (strings as they are), cut at `limit` characters; escaped like `shown`."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = shown(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_block(stored: Shown) -> str:
    """Params or a result for a ``<pre>``: indented JSON, or the stored text when it is not
    strict JSON (the page says so); escaped like `shown_lines` either way."""
    return pretty_json(stored.value) if stored.decoded else shown_lines(stored.value)


def split_name(class_name: str) -> tuple[str, str]:
    """``("pkg.mod.", "Class")``: the module part (shown dimmed) and the last name."""
    head, dot, tail = class_name.rpartition(".")
    return (head + dot, tail) if dot else ("", class_name)


def job_view(job: Job) -> dict[str, Any]:
    """The job's §9 JSON plus what only pages show (traceback, end reason, timeout...).

    Every text in it is already passed through `shown` (or `shown_lines`), so a template can
    print any of it: the row may have been edited to hold anything.
    """
    data = {key: _shown_if_text(value) for key, value in job.to_dict().items()}
    end_reason = _shown_if_text(job.end_reason)
    data.update(
        name=shown(job.name),
        module=split_name(shown(job.class_name))[0],
        short_class=split_name(shown(job.class_name))[1],
        traceback=None if job.traceback is None else shown_lines(job.traceback),
        end_reason=end_reason,
        end_reason_text=END_REASON_TEXT.get(job.end_reason or "", end_reason),
        timeout=job.timeout,
        delay=job.delay,
        # A queue name an edited row made invalid gets no link (its filter would be a 400).
        queue_key=job.queue if addressable(job.queue, models.QUEUE_RE) else None,
        concurrency_limit=job.concurrency_limit,
        memory_limit=job.memory_limit,
        cpu_limit=job.cpu_limit,
        log_incomplete=job.log_incomplete,
        lease_expires_at=job.lease_expires_at,
        can_retry=job.status in (models.FAILED, models.CANCELLED),
        can_cancel=job.status in (models.PENDING, models.RETRYING, models.RUNNING),
        ts={
            "run_at": job.run_at,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "expires_at": job.expires_at,
            "scheduled_for": job.scheduled_for,
        },
        took=(
            job.finished_at - job.started_at
            if job.finished_at is not None and job.started_at is not None
            else None
        ),
        has_result=job.result_json is not None,
        params_text=json_block(job.shown_params),
        params_decoded=job.shown_params.decoded,
        result_text=json_block(job.shown_result),
        result_decoded=job.shown_result.decoded,
        result_short=short_json(job.shown_result.value, 60),
    )
    return data


def addressable(name: object, rule: re.Pattern[str]) -> bool:
    """True when `name` follows `rule` and can stand as one segment of a URL path.

    ``.`` and ``..`` follow the queue and schedule rules, but a browser resolves them as path
    steps (``%2e`` too), so no page can post to ``/queues/../pause``: such a queue or schedule
    gets no button (the CLI and the JSON API through a client that keeps paths as they are
    still reach it).
    """
    return isinstance(name, str) and rule.fullmatch(name) is not None and name not in (".", "..")


def queue_view(info: models.QueueInfo) -> dict[str, Any]:
    """One row of the Queues page: the name shown, the one URLs use, counts, wait, limit."""
    return {
        "name": shown(info.name),
        "key": info.name if addressable(info.name, models.QUEUE_RE) else None,
        "pending": info.pending,
        "running": info.running,
        "paused": info.paused,
        "limit": info.limit,
        "oldest_waiting": info.oldest_waiting,
        "waited": waited(info.oldest_waiting),
    }


def schedule_view(info: models.ScheduleInfo) -> dict[str, Any]:
    """One row of the Schedules page; every text passed through `shown`."""
    # The spec as configured. A time zone only applies to cron: the ticks of ``every`` fall on
    # multiples of it since the Unix epoch, the same instant everywhere.
    if info.cron is not None:
        spec = f"cron: {info.cron} · timezone: {info.timezone}"
    else:
        spec = f"every: {info.every}"
    return {
        "name": shown(info.name),
        "key": info.name if addressable(info.name, recurring.NAME_RE) else None,
        "job": shown(info.job),
        "words": shown(info.words),
        "spec": shown(spec),
        "timezone": shown(info.timezone),
        "queue": shown(info.queue),
        "queue_key": info.queue if addressable(info.queue, models.QUEUE_RE) else None,
        "overlap": shown(info.overlap),
        "next_run": info.next_run,
        "last_job_id": info.last_job_id,
        "last_status": None if info.last_status is None else shown(info.last_status),
        "paused": info.paused,
    }


# -- the attempts table and the timeline ------------------------------------------------------


@dataclass
class AttemptRow:
    """One attempt: when it started, on which runner, when and why it ended."""

    number: int
    started_at: float
    runner: str
    ended_at: float | None = None
    reason: str | None = None
    message: str = ""
    progress_events: int = 0
    #: When an operator's retry came just before this attempt (numbers start again at 1).
    retried_at: float | None = None
    #: Peak RSS (KiB) and CPU (seconds) of its process, once it ended.
    max_rss_kb: int | None = None
    cpu_s: float | None = None
    #: What it wrote to stdout and stderr, escaped like `shown_lines` (``None``: nothing).
    output: str | None = None

    @property
    def reason_text(self) -> str:
        """The end reason in words (``running`` while it has none)."""
        if self.reason is None:
            return "no outcome recorded"
        return END_REASON_TEXT.get(self.reason, self.reason)

    @property
    def took(self) -> float | None:
        """Seconds from start to end, or ``None`` while open."""
        return None if self.ended_at is None else self.ended_at - self.started_at


@dataclass
class TimelineRow:
    """One line of the timeline; consecutive progress reports fold into one."""

    at: float
    kind: str
    message: str
    attempt: int | None
    folded: int = 0
    first_at: float | None = None
    tags: list[str] = field(default_factory=list)


def attempts(events: Sequence[Event]) -> list[AttemptRow]:
    """The attempts in the order they started, each with the reason it ended.

    Attempt numbers start again at 1 after an operator's retry, so an end event belongs to the
    latest started attempt with its number that has no end yet.
    """
    rows: list[AttemptRow] = []
    retried_at: float | None = None
    for ev in events:
        if ev.kind == "retry":
            retried_at = ev.at if rows else None
        elif ev.kind == "started" and ev.attempt is not None:
            runner = shown(ev.message).removeprefix("started on ")
            rows.append(AttemptRow(ev.attempt, ev.at, runner, retried_at=retried_at))
            retried_at = None
        elif ev.kind == "progress":
            for row in reversed(rows):
                if row.number == ev.attempt and row.reason is None:
                    row.progress_events += 1
                    break
        elif ev.kind in models.END_REASONS:
            for row in reversed(rows):
                if row.number == ev.attempt and row.reason is None:
                    row.ended_at, row.reason, row.message = ev.at, ev.kind, shown(ev.message)
                    row.max_rss_kb, row.cpu_s = ev.max_rss_kb, models.finite(ev.cpu_s)
                    row.output = None if ev.output is None else shown_lines(ev.output)
                    break
    return rows


def timeline(events: Iterable[Event]) -> list[TimelineRow]:
    """Events oldest first; a run of progress reports of one attempt becomes one row."""
    rows: list[TimelineRow] = []
    for ev in events:
        last = rows[-1] if rows else None
        if (
            ev.kind == "progress"
            and last is not None
            and last.kind == "progress"
            and last.attempt == ev.attempt
        ):
            last.folded += 1
            last.first_at = last.first_at if last.first_at is not None else last.at
            last.at, last.message = ev.at, shown(ev.message)
            continue
        rows.append(TimelineRow(ev.at, shown(ev.kind), shown(ev.message), ev.attempt))
    return rows


# -- attempts per job over the last day --------------------------------------------------------


def job_figures(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`Store.attempt_stats` rows as the overview's table shows them, texts escaped."""
    return [
        {
            "module": split_name(shown(r["class_name"]))[0],
            "short_class": split_name(shown(r["class_name"]))[1],
            "method_name": shown(r["method_name"]),
            "name": shown(f"{r['class_name']}::{r['method_name']}"),
            "attempts": r["attempts"],
            "failed": r["failed"],
            "failure_rate": percent(r["failed"], r["attempts"]),
            "p50": duration(r["p50_s"]),
            "p95": duration(r["p95_s"]),
            "p50_rss": rss(r["p50_rss_kb"]),
            "p95_rss": rss(r["p95_rss_kb"]),
        }
        for r in rows
    ]


# -- the throughput chart ---------------------------------------------------------------------

CHART_WIDTH = 720
CHART_HEIGHT = 120


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... that is >= `value` (at least 1)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= value:
                return step * m
        step *= 10


def chart(throughput: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Bar geometry of the last hour's finished attempts (succeeded below, failed stacked)."""
    n = max(1, len(throughput))
    peak = max((int(b["succeeded"]) + int(b["failed"]) for b in throughput), default=0)
    top = _nice_ceiling(peak)
    slot = CHART_WIDTH / n
    width = max(1.0, slot * 0.78)
    bars = []
    for i, bucket in enumerate(throughput):
        ok, bad = int(bucket["succeeded"]), int(bucket["failed"])
        h_ok = CHART_HEIGHT * ok / top
        h_bad = CHART_HEIGHT * bad / top
        stamp = str(bucket["at"])[11:16]
        bars.append(
            {
                "x": round(i * slot + (slot - width) / 2, 2),
                "w": round(width, 2),
                "y_ok": round(CHART_HEIGHT - h_ok, 2),
                "h_ok": round(h_ok, 2),
                "y_bad": round(CHART_HEIGHT - h_ok - h_bad, 2),
                "h_bad": round(h_bad, 2),
                "title": f"{stamp} UTC: {ok} succeeded, {bad} failed",
            }
        )
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "top": top,
        "bars": bars,
        "succeeded": sum(int(b["succeeded"]) for b in throughput),
        "failed": sum(int(b["failed"]) for b in throughput),
    }


# -- shared by every template -----------------------------------------------------------------


def template_helpers() -> dict[str, Any]:
    """Names every dashboard template may use (the blueprint's context processor)."""
    from flask_bgjobs.dashboard import csrf

    return {
        "statuses": models.STATUSES,
        "status_text": STATUS_TEXT,
        "csrf_enabled": csrf.enabled(),
        "csrf_token": csrf.token,
        "csrf_field": csrf.FIELD,
        "when": when,
        "clock": clock,
        "ago": ago,
        "duration": duration,
        "rss": rss,
        "cpu": cpu,
        "percent": percent,
        "waited": waited,
        "size": size,
        "iso": iso,
        "pretty_json": pretty_json,
        "short_json": short_json,
        "split_name": split_name,
        "now": time.time(),
    }


def wants_json() -> bool:
    """True for the JSON API's URLs (and clients that only accept JSON)."""
    rule = request.url_rule
    if rule is not None and (rule.endpoint or "").startswith("bgjobs.api_"):
        return True
    path = request.path
    if "/api/" in path or path.endswith("/api"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def error_response(code: int, message: str, *, plain: bool = False, **extra: Any) -> Response:
    """The error answer of the dashboard: JSON for the API, a small page otherwise.

    `plain` gives text for the access checks (401/403), which run before the page chrome.
    """
    response: Response
    if wants_json():
        response = jsonify({"error": message, **extra})
    elif plain:
        response = Response(message + "\n", mimetype="text/plain")
    else:
        # Helpers passed explicitly: an unrouted 404 under the prefix has no blueprint, so the
        # blueprint's context processor does not run for it.
        page = render_template(
            "bgjobs/error.html", **template_helpers(), code=code, message=message, **extra
        )
        response = Response(page, mimetype="text/html")
    response.status_code = code
    return response


def utc_now_iso() -> str:
    """Now, ISO 8601 UTC (for the pages' "updated at")."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
