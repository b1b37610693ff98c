"""The JSON API (SPEC §8, shapes of §9) that the pages' scripts poll, and its actions.

``GET /api/jobs`` → ``{"jobs": [...], "total": N, "page": P, "per_page": K}``;
``GET /api/jobs/<id>`` → the job with its ``events``; ``GET /api/stats`` →
``{"counts": {...}, "throughput": [...]}``; ``GET /api/logs`` → the log viewer's entries;
``GET /api/queues`` → ``{"queues": [...]}``; ``GET /api/schedules`` → ``{"schedules": [...]}``;
``GET /metrics`` → the Prometheus text format (`flask_bgjobs.metrics`).
The actions answer like the pages' buttons do, but with status codes: 404 for an unknown
job (or a queue name no queue can have, or an unknown recurring job), 409 when the job's
status forbids the action (or the allowlist refuses a retry). They need the CSRF token of a
dashboard session in the ``X-BgJobs-CSRF`` header.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from werkzeug.wrappers import Response

from flask_bgjobs import metrics, service
from flask_bgjobs.dashboard import inputs, logs, present
from flask_bgjobs.dashboard.views import JOB_ID, state
from flask_bgjobs.errors import InvalidJob, InvalidTransition, JobNotAllowed, JobNotFound
from flask_bgjobs.state import AppState


def add_routes(bp: Blueprint) -> None:
    """Register the API on `bp` (endpoints named ``api_*``: errors there answer JSON)."""
    bp.add_url_rule("/api/jobs", "api_jobs", jobs)
    bp.add_url_rule(f"/api/jobs/<{JOB_ID}:job_id>", "api_job", job)
    bp.add_url_rule("/api/stats", "api_stats", stats)
    bp.add_url_rule("/api/logs", "api_logs", log_tail)
    bp.add_url_rule(f"/api/jobs/<{JOB_ID}:job_id>/retry", "api_retry", retry, methods=["POST"])
    bp.add_url_rule(f"/api/jobs/<{JOB_ID}:job_id>/cancel", "api_cancel", cancel, methods=["POST"])
    bp.add_url_rule("/api/jobs/retry-failed", "api_retry_failed", retry_failed, methods=["POST"])
    bp.add_url_rule("/api/queues", "api_queues", queues)
    bp.add_url_rule("/api/queues/<queue>/pause", "api_queue_pause", pause_queue, methods=["POST"])
    bp.add_url_rule(
        "/api/queues/<queue>/resume", "api_queue_resume", resume_queue, methods=["POST"]
    )
    bp.add_url_rule("/api/schedules", "api_schedules", schedules)
    bp.add_url_rule("/metrics", "metrics", prometheus)
    bp.add_url_rule(
        "/api/schedules/<name>/pause", "api_schedule_pause", pause_schedule, methods=["POST"]
    )
    bp.add_url_rule(
        "/api/schedules/<name>/resume", "api_schedule_resume", resume_schedule, methods=["POST"]
    )


def jobs() -> Response:
    """One page of jobs, newest first; a page past the end gives the last page."""
    p = inputs.job_page(state(), request.args)
    return jsonify(
        {
            "jobs": [j.to_dict() for j in p.jobs],
            "total": p.total,
            "page": p.page,
            "per_page": p.per_page,
        }
    )


def job(job_id: int) -> Response:
    """One job with its events; 404 JSON for an unknown id."""
    try:
        return jsonify(state().store.get(job_id, with_events=True).to_dict())
    except JobNotFound:
        return _error(404, f"No job with id {job_id}.")


def prometheus() -> Response:
    """Every metric in the Prometheus text format; 501 saying what to install without
    ``prometheus_client``."""
    try:
        body, content_type = metrics.exposition(state(), request.headers.get("Accept", ""))
    except metrics.MetricsUnavailable as exc:
        return Response(f"{exc}\n", status=501, mimetype="text/plain")
    return Response(body, content_type=content_type)


def stats() -> Response:
    """Counts per status and the last hour's throughput, as the extension gives them."""
    return jsonify(service.stats(state()))


def log_tail() -> Response:
    """The log viewer's entries as JSON (text only: the page inserts it as text)."""
    args = request.args
    key = inputs.log_key(args)
    view = logs.read(
        state().settings,
        key,
        level=inputs.level(args),
        q=inputs.query(args),
        limit=inputs.log_lines(args),
    )
    return jsonify(view.to_dict())


def retry(job_id: int) -> Response:
    """Retry a failed or cancelled job: the job, or 404 / 409 with the reason."""
    try:
        return jsonify(service.retry(state(), job_id).to_dict())
    except JobNotFound:
        return _error(404, f"No job with id {job_id}.")
    except InvalidTransition as exc:
        return _error(409, str(exc))
    except (JobNotAllowed, InvalidJob) as exc:
        return _error(409, f"{type(exc).__name__}: {exc}")


def cancel(job_id: int) -> Response:
    """Cancel a pending, retrying or running job: the job, or 404 / 409 with the reason."""
    try:
        return jsonify(service.cancel(state(), job_id).to_dict())
    except JobNotFound:
        return _error(404, f"No job with id {job_id}.")
    except InvalidTransition as exc:
        return _error(409, str(exc))


def retry_failed() -> Response:
    """Retry every failed job still allowed: ``{"retried": n}``."""
    return jsonify({"retried": service.retry_all_failed(state())})


def queues() -> Response:
    """Every queue as ``flask bgjobs queues --json`` gives it: ``{"queues": [...]}``."""
    return jsonify({"queues": [q.to_dict() for q in service.queues(state())]})


def pause_queue(queue: str) -> Response:
    """Pause a queue (any name that follows the rule, known or not): the queue, paused."""
    st = state()
    service.pause(st, inputs.queue_name(queue))
    return _queue(st, queue)


def resume_queue(queue: str) -> Response:
    """Resume a queue: the queue, active again."""
    st = state()
    service.resume(st, inputs.queue_name(queue))
    return _queue(st, queue)


def schedules() -> Response:
    """Every recurring job as ``flask bgjobs schedules --json`` gives it."""
    return jsonify({"schedules": [s.to_dict() for s in service.schedules(state())]})


def pause_schedule(name: str) -> Response:
    """Pause a recurring job: the recurring job, paused; 404 for an unknown name."""
    st = state()
    service.pause_schedule(st, inputs.schedule_name(st, name))
    return _schedule(st, name)


def resume_schedule(name: str) -> Response:
    """Resume a recurring job from its next tick: the recurring job, active again."""
    st = state()
    service.resume_schedule(st, inputs.schedule_name(st, name))
    return _schedule(st, name)


def _queue(st: AppState, name: str) -> Response:
    # A queue with a stored setting is always listed, and the action has just stored one.
    [found] = [q for q in service.queues(st) if q.name == name]
    return jsonify(found.to_dict())


def _schedule(st: AppState, name: str) -> Response:
    [found] = [s for s in service.schedules(st) if s.name == name]
    return jsonify(found.to_dict())


def _error(code: int, message: str, **extra: Any) -> Response:
    return present.error_response(code, message, **extra)
