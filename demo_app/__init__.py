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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

from flask import (
    Flask,
    abort,
    current_app,
    flash,
    get_flashed_messages,
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
class Field:
    """The one input of a sample's form, with its default and how to read it."""

    name: str
    label: str
    default: str
    parse: Callable[[str], Any]


@dataclass(frozen=True)
class Sample:
    """One button on the index page: the feature it shows and the job(s) it enqueues."""

    title: str
    button: str
    #: The call the button makes, shown on the page as it is written in `enqueue`.
    call: str
    #: What to look for once it is enqueued.
    note: str
    enqueue: Callable[[Any], list[Job]]
    field: Field | None = None


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


# -- what each button enqueues ------------------------------------------------------------------


def _report(rows: int) -> list[Job]:
    return [run_background_job("demo_app.jobs.Reports", "process_data", {"rows": rows})]


def _flaky(failures: int) -> list[Job]:
    return [
        run_background_job("demo_app.jobs.Flaky", "call", {"failures": failures}, retry_attempts=3)
    ]


def _priority(due_in: float) -> list[Job]:
    # Five bulk jobs, then the urgent one, all due at the same moment (each delay counts down
    # to the same instant, give or take the microseconds between two calls): when they come
    # due the runner takes the highest priority first, although the urgent job was queued last.
    due_at = time.time() + due_in

    def delay() -> float:
        return max(0.0, due_at - time.time())

    jobs = [
        run_background_job(
            "demo_app.jobs.Mailer", "newsletter", {"batch": n}, priority=0, delay=delay()
        )
        for n in range(1, 6)
    ]
    jobs.append(
        run_background_job(
            "demo_app.jobs.Mailer",
            "password_reset",
            {"user": "ada@example.com"},
            priority=10,
            delay=delay(),
        )
    )
    return jobs


def _reminder(delay: float) -> list[Job]:
    return [
        run_background_job(
            "demo_app.jobs.Reminders", "send", {"message": "stand up and stretch"}, delay=delay
        )
    ]


def _timeout(_: None) -> list[Job]:
    return [
        run_background_job(
            "demo_app.jobs.Stuck", "wait", {"seconds": 10}, retry_attempts=0, timeout=3
        )
    ]


def _fail(_: None) -> list[Job]:
    return [run_background_job("demo_app.jobs.Broken", "run", {"order": 42}, retry_attempts=1)]


def _slow(seconds: float) -> list[Job]:
    return [run_background_job("demo_app.jobs.Slow", "crunch", {"seconds": seconds})]


def _words(text: str) -> list[Job]:
    return [run_background_job("demo_app.jobs", "word_count", {"text": text})]


#: The sample jobs, by the key the form posts. Every job they enqueue must be in
#: BGJOBS_ALLOWED_JOBS (see .env.example).
SAMPLES: dict[str, Sample] = {
    "report": Sample(
        "A report with progress",
        "Process a report",
        'run_background_job("demo_app.jobs.Reports", "process_data", {"rows": rows})',
        "Takes about 3 s and reports progress five times: watch the bar on its job page.",
        _report,
        Field("rows", "rows", "100", _bounded(int, 1, 1_000_000)),
    ),
    "flaky": Sample(
        "A flaky call that succeeds on retry",
        "Call a flaky service",
        'run_background_job("demo_app.jobs.Flaky", "call", {"failures": failures}, '
        "retry_attempts=3)",
        "Raises on its first attempts, waits 2 s (BGJOBS_RETRY_DELAY) between them, then "
        "succeeds. Its job page lists every attempt and why it ended.",
        _flaky,
        Field("failures", "failures before success", "2", _bounded(int, 0, 3)),
    ),
    "priority": Sample(
        "Urgent versus bulk",
        "Queue 5 bulk jobs, then 1 urgent",
        'run_background_job("demo_app.jobs.Mailer", "newsletter", {"batch": n}, priority=0, '
        "delay=...)  # 5 times\n"
        'run_background_job("demo_app.jobs.Mailer", "password_reset", {"user": ...}, '
        "priority=10, delay=...)",
        "All six are due at the same moment. Higher priority runs first: the password reset, "
        "queued last, starts before every newsletter batch (see the start times, or the order "
        "of the 'Job started' lines in the log).",
        _priority,
        Field("due_in", "due in (s)", "3", _bounded(float, 1, 3600)),
    ),
    "reminder": Sample(
        "A delayed reminder",
        "Remind me later",
        'run_background_job("demo_app.jobs.Reminders", "send", {"message": ...}, delay=delay)',
        "Stored at once, but stays pending until its run-at time has passed.",
        _reminder,
        Field("delay", "delay (s)", "30", _bounded(float, 0, 86_400)),
    ),
    "timeout": Sample(
        "A job that times out",
        "Start a job that hangs",
        'run_background_job("demo_app.jobs.Stuck", "wait", {"seconds": 10}, retry_attempts=0, '
        "timeout=3)",
        "Sleeps 10 s under a 3 s timeout: the runner kills its process group after 3 s and "
        "the job ends failed, its attempt ended by 'timeout'.",
        _timeout,
    ),
    "fail": Sample(
        "A job that fails for good",
        "Run a broken job",
        'run_background_job("demo_app.jobs.Broken", "run", {"order": 42}, retry_attempts=1)',
        "Raises on every attempt: retried once, then failed, with the traceback on its job "
        "page and in the error log. Retry it from there (it fails again).",
        _fail,
    ),
    "slow": Sample(
        "CPU work off the request",
        "Crunch numbers",
        'run_background_job("demo_app.jobs.Slow", "crunch", {"seconds": seconds})',
        "Hashes in its own process for a while: the web server stays responsive.",
        _slow,
        Field("seconds", "seconds", "5", _bounded(float, 0.1, 600)),
    ),
    "words": Sample(
        "A module function",
        "Count words",
        'run_background_job("demo_app.jobs", "word_count", {"text": text})',
        "A plain function rather than a class method; its result is the word counts.",
        _words,
        Field("text", "text", "the quick brown fox jumps over the lazy dog and the end", _text),
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
    app.jinja_env.globals["job_url"] = job_url
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
        messages=_messages(),
        dashboard=_dashboard_url(),
    )


def enqueue() -> Response:
    """Enqueue the sample named by the form, then go back to the page (POST/redirect/GET).

    The flashed message carries the new jobs' ids; the page links each to its dashboard page.
    """
    back = redirect(url_for("index", refresh=request.args.get("refresh")), code=303)
    sample = SAMPLES.get(request.form.get("sample", ""))
    if sample is None:
        flash("Unknown sample job.", "error")
        return back
    value = None
    if sample.field is not None:
        try:
            value = sample.field.parse(request.form.get(sample.field.name, sample.field.default))
        except ValueError as exc:
            flash(f"{sample.title}: {sample.field.label} {exc}.", "error")
            return back
    try:
        jobs = sample.enqueue(value)
    except BgJobsError as exc:  # e.g. JobNotAllowed after an edit of BGJOBS_ALLOWED_JOBS
        flash(f"{sample.title}: {type(exc).__name__}: {exc}", "error")
        return back
    summary = {
        "text": f"{sample.title}: enqueued",
        "jobs": [{"id": j.id, "name": j.name, "priority": j.priority} for j in jobs],
    }
    flash(json.dumps(summary), "enqueued")
    return back


def _messages() -> list[dict[str, Any]]:
    """The flashed messages; an ``enqueued`` one lists its jobs (the page links each)."""
    messages: list[dict[str, Any]] = []
    flashed = cast("list[tuple[str, str]]", get_flashed_messages(with_categories=True))
    for category, text in flashed:
        if category == "enqueued":
            summary = json.loads(text)
            messages.append({"category": "ok", "text": summary["text"], "jobs": summary["jobs"]})
        else:
            messages.append({"category": category, "text": text, "jobs": []})
    return messages


def _dashboard_url() -> str | None:
    """The dashboard's overview, or None when it is off (``BGJOBS_DASHBOARD=false``)."""
    if "bgjobs" not in current_app.blueprints:
        return None
    return url_for("bgjobs.overview")


def job_url(job_id: int) -> str | None:
    """The job's page in the dashboard (under the configured prefix), or None when it is off."""
    if "bgjobs" not in current_app.blueprints:
        return None
    return url_for("bgjobs.job", job_id=job_id)


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
        "end_reason": job.end_reason if job.status == "failed" else None,
        "created_at": _clock(job.created_at),
        "started": _started(job),
    }


def _clock(ts: float) -> str:
    """``12:30:05.123`` (UTC): to the millisecond, so start order shows within a second."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def _started(job: Job) -> str:
    if job.status in ("pending", "retrying"):
        wait = job.run_at - time.time()
        return f"due in {wait:.0f} s" if wait >= 1 else "due now"
    return _clock(job.started_at) if job.started_at is not None else ""


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
