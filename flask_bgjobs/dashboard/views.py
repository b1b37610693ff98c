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
    """Jobs newest first, filtered by status and a search text, one page at a time."""
    st = state()
    jobs, total, status, q, page, last, size = inputs.job_page(st, request.args)
    counts = st.store.counts()
    return render_template(
        "bgjobs/jobs.html",
        jobs=[present.job_view(j) for j in jobs],
        total=total,
        status=status,
        q=q,
        page=page,
        last=last,
        per_page=size,
        first_row=(page - 1) * size + 1 if total else 0,
        last_row=min(total, page * size),
        counts=counts,
        all_count=sum(counts.values()),
        page_args=_page_args(status, q, size),
    )


def job_detail(job_id: int) -> str:
    """One job: details, params, result, error and traceback, attempts and timeline."""
    job = state().store.get(job_id, with_events=True)
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


def _page_args(status: str | None, q: str | None, size: int) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if status:
        args["status"] = status
    if q:
        args["q"] = q
    if size != inputs.PER_PAGE:
        args["per_page"] = size
    return args
