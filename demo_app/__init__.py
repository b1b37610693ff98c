"""The flask-bgjobs demo: a tiny app that enqueues the sample jobs of `demo_app.jobs`.

Run it with ``./scripts/demo`` (sets everything up), or by hand from the repository root::

    cp demo_app/.env.example demo_app/.env
    gunicorn -w 2 --threads 4 'demo_app:create_app()'
    flask --app demo_app bgjobs list

Configuration comes from ``app.config`` (``test_config``), the environment, then ``.env``
(read by flask-bgjobs itself: ``.env`` in the current directory, else ``demo_app/.env``).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import (
    Flask,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from flask_bgjobs import BackgroundJobs, BgJobsError, Job, run_background_job

#: One extension object for every app this factory builds (application-factory pattern).
bgjobs = BackgroundJobs()


@dataclass(frozen=True)
class Sample:
    """One button on the index page: a form field and the job it enqueues."""

    title: str
    class_name: str
    method_name: str
    field: str
    label: str
    default: str
    parse: Callable[[str], Any]
    note: str


def _bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text.strip())
        except ValueError:
            raise ValueError(
                f"{text[:20]!r} is not a {'whole ' if kind is int else ''}number"
            ) from None
        if not low <= value <= high:
            raise ValueError(f"must be from {low:g} to {high:g}")
        return value

    return parse


def _text(text: str) -> str:
    if not text.strip() or len(text) > 10_000:
        raise ValueError("must be 1 to 10000 characters")
    return text


#: The sample jobs, by the key the form posts. Each must be in BGJOBS_ALLOWED_JOBS.
SAMPLES: dict[str, Sample] = {
    "report": Sample(
        "Process a report",
        "demo_app.jobs.Reports",
        "process_data",
        "rows",
        "rows",
        "100",
        _bounded(int, 1, 1_000_000),
        "Takes ~3 s and reports progress five times.",
    ),
    "flaky": Sample(
        "Call a flaky service",
        "demo_app.jobs.Flaky",
        "call",
        "failures",
        "failures before success",
        "2",
        _bounded(int, 0, 20),
        "Fails on its first attempts, is retried, then succeeds (3 retries by default).",
    ),
    "slow": Sample(
        "Crunch numbers",
        "demo_app.jobs.Slow",
        "crunch",
        "seconds",
        "seconds",
        "5",
        _bounded(float, 0.1, 600),
        "CPU work in its own process: the web server stays responsive.",
    ),
    "words": Sample(
        "Count words",
        "demo_app.jobs",
        "word_count",
        "text",
        "text",
        "the quick brown fox jumps over the lazy dog and the end",
        _text,
        "A module function rather than a class method.",
    ),
}


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the demo app; ``test_config`` overrides everything else (as in the Flask tutorial)."""
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY and friends
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        # Flask sends no SameSite by default; the dashboard's CSRF check does not rely on it,
        # but Lax keeps the session cookie off cross-site posts in every browser.
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if test_config is not None:
        app.config.from_mapping(test_config)
    if not app.config.get("SECRET_KEY"):
        # Stable across gunicorn workers and restarts, so sessions (and CSRF tokens) survive.
        app.config["SECRET_KEY"] = _instance_secret(os.path.join(app.instance_path, "secret_key"))

    bgjobs.init_app(app)

    app.before_request(_check_csrf)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.add_url_rule("/", view_func=index)
    app.add_url_rule("/jobs", view_func=enqueue, methods=["POST"])
    return app


# -- views -------------------------------------------------------------------------------------


def index() -> str:
    """The sample-job forms and the latest jobs."""
    jobs, total = bgjobs.list_jobs(per_page=25)
    counts = bgjobs.stats()["counts"]
    refresh = request.args.get("refresh", type=int)
    if refresh is not None:
        refresh = min(max(refresh, 1), 60)
    return render_template(
        "index.html",
        samples=SAMPLES,
        jobs=[_row(job) for job in jobs],
        total=total,
        counts=counts,
        refresh=refresh,
        # The dashboard blueprint ships separately: link to it only once it is registered.
        dashboard=(
            bgjobs.state().settings.dashboard_url_prefix.rstrip("/") + "/"
            if "bgjobs" in current_app.blueprints
            else None
        ),
    )


def enqueue() -> Response:
    """Enqueue the sample named by the form, then go back to the list (POST/redirect/GET)."""
    back = redirect(url_for("index", refresh=request.args.get("refresh")), code=303)
    sample = SAMPLES.get(request.form.get("sample", ""))
    if sample is None:
        flash("Unknown sample job.", "error")
        return back
    try:
        options = {
            "delay": _bounded(float, 0, 86_400)(request.form.get("delay") or "0"),
            "priority": _bounded(int, -1000, 1000)(request.form.get("priority") or "1"),
        }
        value = sample.parse(request.form.get(sample.field, sample.default))
    except ValueError as exc:
        flash(f"{sample.title}: {exc}.", "error")
        return back
    try:
        job = run_background_job(
            sample.class_name,
            sample.method_name,
            {sample.field: value},
            delay=options["delay"],
            priority=options["priority"],
        )
    except BgJobsError as exc:  # e.g. JobNotAllowed after an edit of BGJOBS_ALLOWED_JOBS
        flash(f"{sample.title}: {type(exc).__name__}: {exc}", "error")
        return back
    flash(f"Enqueued job {job.id}: {job.name}", "ok")
    return back


def _row(job: Job) -> dict[str, Any]:
    data = job.to_dict()
    outcome = data["error"] if data["error"] else data["result"]
    if outcome is not None and not isinstance(outcome, str):
        outcome = json.dumps(outcome, ensure_ascii=False)
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "priority": job.priority,
        "attempts": f"{job.attempts}/{job.max_attempts}",
        # A job put back to pending keeps its last attempt's progress: not worth a bar.
        "progress": None
        if job.progress is None or job.status == "pending"
        else round(job.progress),
        "progress_message": job.progress_message or "",
        "outcome": (outcome or "")[:200],
        "created_at": (data["created_at"] or "")[:19].replace("T", " "),
    }


# -- CSRF: a random token in the session, echoed by every form -----------------------------------


def csrf_token() -> str:
    """The session's CSRF token (made on first use); forms send it back as ``csrf_token``."""
    token = session.get("csrf_token")
    if not isinstance(token, str):
        token = session["csrf_token"] = secrets.token_urlsafe(32)
    return token


def _check_csrf() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if request.blueprint == "bgjobs":
        return  # the dashboard checks its own (signed) token
    expected = session.get("csrf_token")
    sent = request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not hmac.compare_digest(
        sent.encode("utf-8"), expected.encode("utf-8")
    ):
        abort(400, "The CSRF token is missing or does not match; reload the page and try again.")


# -- dashboard access ----------------------------------------------------------------------------


@bgjobs.dashboard_auth
def _local_requests_only() -> bool:
    """Admit dashboard requests from this machine only (the demo binds to 127.0.0.1).

    On top of the login in ``.env`` (``BGJOBS_DASHBOARD_USERNAME``/``_PASSWORD``): when both
    are configured, a request needs both.
    """
    return request.remote_addr in ("127.0.0.1", "::1")


# -- helpers -------------------------------------------------------------------------------------


def _instance_secret(path: str) -> str:
    """Read the secret key kept in the instance folder, creating it once (race-free)."""
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # fails if another worker won: then use its key
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path, encoding="ascii") as fh:
        return fh.read().strip()
