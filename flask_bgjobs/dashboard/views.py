"""The dashboard's pages (server-rendered) and its form actions (POST, then redirect)."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from flask_bgjobs import models, service
from flask_bgjobs.dashboard import inputs, logs, present
from flask_bgjobs.errors import (
    InvalidJob,
    InvalidTransition,
    JobNotAllowed,
)
from flask_bgjobs.state import AppState, get_state

#: Job ids in URLs: digits only, and no larger than a BIGINT (a longer number is a 404, not a
#: database error).
JOB_ID = "int(max=9223372036854775807)"


def add_routes(bp: Blueprint) -> None:
    """Register the pages and the form actions on `bp`."""
    bp.add_url_rule("/", "overview", overview)
    bp.add_url_rule("/jobs", "jobs", job_list)
    bp.add_url_rule(f"/jobs/<{JOB_ID}:job_id>", "job", job_detail)
    bp.add_url_rule(f"/jobs/<{JOB_ID}:job_id>/retry", "retry", retry, methods=["POST"])
    bp.add_url_rule(f"/jobs/<{JOB_ID}:job_id>/cancel", "cancel", cancel, methods=["POST"])
    bp.add_url_rule("/jobs/retry-failed", "retry_failed", retry_failed, methods=["POST"])
    bp.add_url_rule("/logs", "logs", log_viewer)
    bp.add_url_rule("/queues", "queues", queue_list)
    # Names are plain strings here and checked by the views (404 unless they follow the rule):
    # a custom converter would have to be added to the host app's url_map.
    bp.add_url_rule("/queues/<queue>/pause", "queue_pause", pause_queue, methods=["POST"])
    bp.add_url_rule("/queues/<queue>/resume", "queue_resume", resume_queue, methods=["POST"])
    bp.add_url_rule("/schedules", "schedules", schedule_list)
    bp.add_url_rule("/schedules/<name>/pause", "schedule_pause", pause_schedule, methods=["POST"])
    bp.add_url_rule(
        "/schedules/<name>/resume", "schedule_resume", resume_schedule, methods=["POST"]
    )


def state() -> AppState:
    """The extension's state for the current app: every read and action goes through it."""
    return get_state()


def job_url_base() -> str:
    """``/bgjobs/jobs/``: scripts append a job id to it."""
    return url_for("bgjobs.job", job_id=0)[:-1]


# -- pages ------------------------------------------------------------------------------------


#: The overview's table of attempts per job covers this many seconds.
FIGURES_SPAN = 24 * 3600.0


def overview() -> str:
    """Counts per status, running jobs, the last hour's chart, the latest failures, and per
    job the last day's attempts: failure rate, duration and peak RSS."""
    st = state()
    stats = service.stats(st)
    figures = st.store.attempt_stats(time.time() - FIGURES_SPAN)
    running, n_running = service.list_jobs(st, status=models.RUNNING, per_page=50)
    failures, _ = service.list_jobs(st, status=models.FAILED, per_page=6)
    return render_template(
        "bgjobs/overview.html",
        counts=stats["counts"],
        total=sum(stats["counts"].values()),
        chart=present.chart(stats["throughput"]),
        running=[present.job_view(j) for j in running],
        n_running=n_running,
        failures=[present.job_view(j) for j in failures],
        figures=present.job_figures(figures),
        job_url=job_url_base(),
    )


def job_list() -> str:
    """Jobs newest first, filtered by status, queue and a search text, one page at a time."""
    st = state()
    p = inputs.job_page(st, request.args)
    counts = st.store.counts()
    tab_counts = counts if p.queue is None else _counts_in(st, p.queue)
    return render_template(
        "bgjobs/jobs.html",
        jobs=[present.job_view(j) for j in p.jobs],
        total=p.total,
        status=p.status,
        q=p.q,
        queue=p.queue,
        queues=_known_queues(st, p.queue),
        page=p.page,
        last=p.last,
        per_page=p.per_page,
        first_row=(p.page - 1) * p.per_page + 1 if p.total else 0,
        last_row=min(p.total, p.page * p.per_page),
        # "Retry all failed" acts on every queue, so its count stays the global one.
        counts=counts,
        tab_counts=tab_counts,
        all_count=sum(tab_counts.values()),
        page_args=_page_args(p.status, p.q, p.per_page, p.queue),
    )


def job_detail(job_id: int) -> str:
    """One job: details, params, result, error and traceback, attempts and timeline."""
    st = state()
    job = st.store.get(job_id, with_events=True)
    events = job.events or ()
    created = present.TimelineRow(
        job.created_at,
        "created",
        present.shown(
            f"enqueued with priority {job.priority}, at most {job.max_attempts} attempt(s)"
        ),
        None,
    )
    return render_template(
        "bgjobs/job.html",
        job=present.job_view(job),
        attempts=present.attempts(events),
        timeline=[created, *present.timeline(events)],
        end_reasons=present.END_REASON_TEXT,
        finished=job.is_finished,
        # Why a waiting job does not start: its queue may be paused (on every host).
        queue_paused=not job.is_finished and job.queue in _paused_queues(st),
    )


def log_viewer() -> str:
    """The tail of the main or error log, filtered by level and text; JS can follow it."""
    args = request.args
    key = inputs.log_key(args)
    level = inputs.level(args)
    q = inputs.query(args)
    lines = inputs.log_lines(args)
    view = logs.read(state().settings, key, level=level, q=q, limit=lines)
    return render_template(
        "bgjobs/logs.html",
        view=view,
        logs=logs.LOGS,
        levels=inputs.LEVELS,
        key=key,
        level=level,
        q=q,
        lines=lines,
        follow=args.get("follow") == "1",
    )


def queue_list() -> str:
    """Every queue: jobs waiting and running, the oldest wait, the limit, pause and resume."""
    found = service.queues(state())
    return render_template(
        "bgjobs/queues.html",
        queues=[present.queue_view(q) for q in found],
        n_paused=sum(q.paused for q in found),
    )


def schedule_list() -> str:
    """Every recurring job: its spec in words, next run, last job and its status, paused."""
    found = service.schedules(state())
    return render_template(
        "bgjobs/schedules.html",
        schedules=[present.schedule_view(s) for s in found],
        n_paused=sum(s.paused for s in found),
    )


# -- actions ----------------------------------------------------------------------------------


def retry(job_id: int) -> Response:
    """Make a failed or cancelled job pending again (the allowlist is checked again)."""
    try:
        job = service.retry(state(), job_id)
    except InvalidTransition as exc:  # names the job's stored status, which may be anything
        flash(present.shown(f"Not retried: {exc}."), "error")
    except (JobNotAllowed, InvalidJob) as exc:
        flash(present.shown(f"Not retried: {type(exc).__name__}: {exc}"), "error")
    else:
        flash(f"Job {job.id} is pending again, with {job.max_attempts} fresh attempt(s).", "ok")
    return redirect(url_for("bgjobs.job", job_id=job_id), code=303)


def cancel(job_id: int) -> Response:
    """Cancel a pending, retrying or running job (a running one's process group is killed)."""
    try:
        job = service.cancel(state(), job_id)
    except InvalidTransition as exc:
        flash(present.shown(f"Not cancelled: {exc}."), "error")
    else:
        flash(f"Job {job.id} cancelled.", "ok")
    return redirect(url_for("bgjobs.job", job_id=job_id), code=303)


def retry_failed() -> Response:
    """Retry every failed job that is still allowed; say how many (and how many stayed)."""
    st = state()
    before = st.store.counts()[models.FAILED]
    count = service.retry_all_failed(st)
    if before == 0 and count == 0:
        flash("No failed jobs to retry.", "ok")
    else:
        note = (
            f" {before - count} stayed failed (no longer allowed, or changed meanwhile)."
            if count < before
            else ""
        )
        flash(f"Retried {count} failed job(s).{note}", "ok" if count else "error")
    return redirect(url_for("bgjobs.jobs"), code=303)


def pause_queue(queue: str) -> Response:
    """Pause a queue for every runner on every host: its jobs are not claimed; running ones
    finish."""
    name = inputs.queue_name(queue)
    service.pause(state(), name)
    flash(
        f"Queue {name} paused: no runner claims its jobs until it is resumed. Running jobs finish.",
        "ok",
    )
    return redirect(url_for("bgjobs.queues"), code=303)


def resume_queue(queue: str) -> Response:
    """Resume a queue: runners claim its jobs again at once."""
    name = inputs.queue_name(queue)
    service.resume(state(), name)
    flash(f"Queue {name} resumed.", "ok")
    return redirect(url_for("bgjobs.queues"), code=303)


def pause_schedule(name: str) -> Response:
    """Pause a recurring job: no tick enqueues a job until it is resumed."""
    st = state()
    service.pause_schedule(st, inputs.schedule_name(st, name))
    flash(f"Recurring job {name} paused: its ticks enqueue nothing until it is resumed.", "ok")
    return redirect(url_for("bgjobs.schedules"), code=303)


def resume_schedule(name: str) -> Response:
    """Resume a recurring job from its next tick (ticks missed while paused never run)."""
    st = state()
    service.resume_schedule(st, inputs.schedule_name(st, name))
    flash(
        f"Recurring job {name} resumed: it runs from its next tick; "
        "ticks missed while paused do not run.",
        "ok",
    )
    return redirect(url_for("bgjobs.schedules"), code=303)


def _known_queues(st: AppState, selected: str | None) -> list[str]:
    """The queues the list's filter offers: every queue the Queues page shows, and the one
    selected (a queue whose jobs have all finished is not among those)."""
    names = {q.name for q in service.queues(st) if models.QUEUE_RE.fullmatch(q.name)}
    if selected is not None:
        names.add(selected)
    return sorted(names)


def _counts_in(st: AppState, queue: str) -> dict[str, int]:
    """Jobs per status in one queue (the status tabs while the list is filtered by queue)."""
    return {s: service.list_jobs(st, status=s, queue=queue, per_page=1)[1] for s in models.STATUSES}


def _paused_queues(st: AppState) -> set[str]:
    return {q.name for q in service.queues(st) if q.paused}


def _page_args(
    status: str | None, q: str | None, size: int, queue: str | None = None
) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if status:
        args["status"] = status
    if queue:
        args["queue"] = queue
    if q:
        args["q"] = q
    if size != inputs.PER_PAGE:
        args["per_page"] = size
    return args
