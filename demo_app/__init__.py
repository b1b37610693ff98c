"""The flask-bgjobs demo: a tiny app that enqueues the sample jobs of `demo_app.jobs`.

Run it with ``./scripts/demo`` (sets everything up), or by hand from the repository root::

    cp demo_app/.env.example demo_app/.env
    gunicorn -w 2 --threads 4 'demo_app:create_app()'
    flask --app demo_app bgjobs list

Configuration comes from ``app.config`` (``test_config``), the environment, then ``.env``
(read by flask-bgjobs itself: ``.env`` in the current directory, else ``demo_app/.env``).
The demo's own table (``orders``) and the job tables share one database, ``instance/demo.db``
(``BackgroundJobs(db=db)``), so an order and its job can commit in one transaction.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
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
from sqlalchemy.schema import CreateTable
from werkzeug.wrappers import Response

from demo_app.extensions import bgjobs, db
from demo_app.orders import Order, confirm_order
from flask_bgjobs import BgJobsError, Job, run_background_job, signals
from flask_bgjobs.models import ScheduleInfo

__all__ = ["SAMPLES", "Order", "bgjobs", "create_app", "db"]

# The jobs of the 0.2.0 buttons, allowed one by one in code (the older ones are in
# BGJOBS_ALLOWED_JOBS, .env.example), so that a demo_app/.env copied before them still works.
# confirm_order is allowed by its @bgjobs.job decorator (demo_app/orders.py).
bgjobs.allow("demo_app.jobs.Mail", "welcome")
bgjobs.allow("demo_app.jobs.Digest", "build")
bgjobs.allow("demo_app.jobs.Printer", "print_page")
bgjobs.allow("demo_app.jobs.Sms", "hold_line", "send_code")
bgjobs.allow("demo_app.jobs.Limits", "chatty", "hog_memory", "burn_cpu")
bgjobs.allow("demo_app.jobs.Control", "discard", "retry_later")
bgjobs.allow("demo_app.jobs.Ops", "heartbeat")
bgjobs.allow("demo_app.jobs.Reports", "process_data")  # also in .env: the nightly schedule's

# Two recurring jobs: the runners enqueue exactly one job per tick (SPEC §11). A new schedule
# waits for its next tick: the heartbeat's first job comes within 30 s of the runner starting.
bgjobs.schedule("heartbeat", "demo_app.jobs.Ops", "heartbeat", every=30, retry_attempts=0)
bgjobs.schedule(
    "nightly-report",
    "demo_app.jobs.Reports",
    "process_data",
    cron="30 2 * * *",
    timezone="Europe/Berlin",
    params={"rows": 1000},
)

#: The demo's queue of its own, capped at one running job (``BGJOBS_QUEUE_LIMITS``).
MAIL_QUEUE = "mail"


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
    enqueue: Callable[[Any], list[Job] | Done]
    field: Field | None = None


@dataclass(frozen=True)
class Done:
    """What a button did, when that is more than "enqueued these jobs"."""

    #: The flashed message, after the sample's title.
    text: str
    jobs: list[Job] = field(default_factory=list)
    #: Orders it placed (or rolled back), by reference.
    orders: list[str] = field(default_factory=list)


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


# -- release 0.2.0 -------------------------------------------------------------------------------


def _mail(count: int) -> list[Job]:
    return [
        run_background_job(
            "demo_app.jobs.Mail", "welcome", {"user": f"user{n}@example.com"}, queue=MAIL_QUEUE
        )
        for n in range(1, count + 1)
    ]


def _pause_mail(_: None) -> Done:
    bgjobs.pause(MAIL_QUEUE)
    return Done(f"queue {MAIL_QUEUE} paused: its jobs wait as pending until it is resumed")


def _resume_mail(_: None) -> Done:
    waiting = next((q.pending for q in bgjobs.queues() if q.name == MAIL_QUEUE), 0)
    bgjobs.resume(MAIL_QUEUE)
    return Done(f"queue {MAIL_QUEUE} resumed with {waiting} job(s) waiting")


def _unique(_: None) -> Done:
    day = datetime.now(timezone.utc).date().isoformat()
    first, second = (
        run_background_job(
            "demo_app.jobs.Digest", "build", {"day": day}, unique_key=f"digest-{day}"
        )
        for _ in range(2)
    )
    same = "the same job: one row" if second.duplicate else "two jobs"
    return Done(f"enqueued twice, got {same}", [first, second])


def _concurrency(_: None) -> list[Job]:
    return bgjobs.enqueue_many(
        [
            {
                "class_name": "demo_app.jobs.Printer",
                "method_name": "print_page",
                "params": {"page": page},
                "concurrency_key": "printer-1",
                "concurrency_limit": 1,
            }
            for page in (1, 2, 3)
        ]
    )


def _run_at(seconds: float) -> list[Job]:
    at = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return [
        run_background_job(
            "demo_app.jobs.Reminders", "send", {"message": "the meeting starts"}, run_at=at
        )
    ]


def _expires(_: None) -> list[Job]:
    # The gateway takes one job at a time: the code waits behind a 6 s bulk send, and is
    # cancelled (expired) 5 s after it fell due, without ever running.
    busy = run_background_job(
        "demo_app.jobs.Sms", "hold_line", {"seconds": 6}, priority=5, concurrency_key="sms-gateway"
    )
    code = run_background_job(
        "demo_app.jobs.Sms",
        "send_code",
        {"code": f"{secrets.randbelow(10**6):06d}"},
        concurrency_key="sms-gateway",
        expires_in=5,
    )
    return [busy, code]


def _prints(_: None) -> list[Job]:
    return [run_background_job("demo_app.jobs.Limits", "chatty", {"lines": 3}, retry_attempts=0)]


def _memory(_: None) -> list[Job]:
    return [
        run_background_job(
            "demo_app.jobs.Limits",
            "hog_memory",
            {"mib": 256},
            retry_attempts=0,
            memory_limit=MEMORY_LIMIT,
        )
    ]


def _cpu(_: None) -> list[Job]:
    return [
        run_background_job(
            "demo_app.jobs.Limits", "burn_cpu", {"seconds": 30}, retry_attempts=0, cpu_limit=1
        )
    ]


def _discard(_: None) -> list[Job]:
    return [run_background_job("demo_app.jobs.Control", "discard", {"order": 7}, retry_attempts=3)]


def _retry(in_seconds: float) -> list[Job]:
    return [
        run_background_job(
            "demo_app.jobs.Control", "retry_later", {"in_seconds": in_seconds}, retry_attempts=1
        )
    ]


def _new_order(item: str) -> Order:
    order = Order(reference=secrets.token_hex(4), item=item)
    db.session.add(order)
    db.session.flush()  # the order has its id; nothing is committed yet
    return order


def _order(item: str) -> Done:
    order = _new_order(item)
    job = confirm_order.with_options(session=db.session).enqueue(order.id)
    db.session.commit()  # the order and its job, together
    return Done(
        f"order {order.reference} and its confirmation job committed", [job], [order.reference]
    )


def _rollback(item: str) -> Done:
    order = _new_order(item)
    job = confirm_order.with_options(session=db.session).enqueue(order.id)
    reference, job_id = order.reference, job.id
    db.session.rollback()  # neither the order nor its job ever existed
    return Done(
        f"order {reference} and its job (id {job_id} inside the transaction) rolled back: "
        "neither exists",
        orders=[reference],
    )


#: The memory limit of the "too much memory" button: above the forked process's baseline
#: (its share of the app, about 40-60 MiB), below what the job allocates.
MEMORY_LIMIT = 64 * 1024 * 1024


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
    "mail": Sample(
        "A queue of its own, with a limit",
        "Send 3 mails to the mail queue",
        'run_background_job("demo_app.jobs.Mail", "welcome", {"user": ...}, queue="mail")  '
        "# 3 times",
        "The mail queue runs one job at a time (BGJOBS_QUEUE_LIMITS mail:1, across every "
        "runner): the three start one after another. See the Queues page of the dashboard.",
        _mail,
        Field("count", "mails", "3", _bounded(int, 1, 20)),
    ),
    "pause_mail": Sample(
        "Pause a queue",
        "Pause the mail queue",
        'bgjobs.pause("mail")',
        "No runner claims the queue's jobs until it is resumed (running ones finish). The "
        "pause is stored in the database: it holds for every runner, across restarts.",
        _pause_mail,
    ),
    "resume_mail": Sample(
        "Resume a queue",
        "Resume the mail queue",
        'bgjobs.resume("mail")',
        "The mail that waited while the queue was paused now runs, one at a time.",
        _resume_mail,
    ),
    "unique": Sample(
        "A unique job",
        "Enqueue the digest twice",
        'run_background_job("demo_app.jobs.Digest", "build", {"day": day}, '
        'unique_key=f"digest-{day}")  # twice',
        "While a job with the key waits or runs, enqueuing again returns it (job.duplicate): "
        "two clicks, one row. Once it has ended, the key is free again.",
        _unique,
    ),
    "concurrency": Sample(
        "A concurrency key",
        "Print 3 pages on one printer",
        'bgjobs.enqueue_many([{..., "concurrency_key": "printer-1", '
        '"concurrency_limit": 1}, ...])  # 3 jobs, one transaction',
        "At most one job with the key runs at once; the others wait as pending without "
        "spending an attempt, and never block other jobs.",
        _concurrency,
    ),
    "run_at": Sample(
        "At a given time",
        "Remind me at a time",
        'run_background_job("demo_app.jobs.Reminders", "send", {...}, '
        "run_at=datetime.now(timezone.utc) + timedelta(seconds=seconds))",
        "A timezone-aware datetime: the job stays pending until then.",
        _run_at,
        Field("seconds", "in (s)", "30", _bounded(float, 0, 86_400)),
    ),
    "expires": Sample(
        "A job that expires",
        "Send a one-time code (expires in 5 s)",
        'run_background_job("demo_app.jobs.Sms", "hold_line", ..., '
        'concurrency_key="sms-gateway")\n'
        'run_background_job("demo_app.jobs.Sms", "send_code", {"code": ...}, '
        'concurrency_key="sms-gateway", expires_in=5)',
        "The code waits behind a 6 s bulk send on the same gateway; not started within 5 s "
        "of falling due, it ends cancelled (expired) and never runs.",
        _expires,
    ),
    "prints": Sample(
        "Captured output",
        "Run a job that prints",
        'run_background_job("demo_app.jobs.Limits", "chatty", {"lines": 3})',
        "What the attempt's process writes to stdout and stderr is kept with the job: see "
        "its job page (or flask bgjobs show ID).",
        _prints,
    ),
    "memory": Sample(
        "A memory limit",
        "Use too much memory",
        'run_background_job("demo_app.jobs.Limits", "hog_memory", {"mib": 256}, '
        "memory_limit=64 * 1024**2, retry_attempts=0)",
        "Allocating 256 MiB under a 64 MiB limit raises MemoryError in the job's own process: "
        "it fails, ended by 'memory'; the runner and other jobs never notice. Its job page "
        "shows the attempt's peak memory and CPU time.",
        _memory,
    ),
    "cpu": Sample(
        "A CPU limit",
        "Burn CPU",
        'run_background_job("demo_app.jobs.Limits", "burn_cpu", {"seconds": 30}, '
        "cpu_limit=1, retry_attempts=0)",
        "Would spin for 30 s; after 1 s of CPU the kernel stops its process: failed, ended by "
        "'cpu'.",
        _cpu,
    ),
    "discard": Sample(
        "Give up at once: DiscardJob",
        "Run a job that discards itself",
        "raise DiscardJob(...)  # in demo_app.jobs.Control.discard, retry_attempts=3",
        "Fails for good on its first attempt, ended by 'discarded', although 3 retries were "
        "left. Its job_failed signal adds a line to the list of signals below.",
        _discard,
    ),
    "retry": Sample(
        "Come back later: RetryJob",
        "Run a job that retries in 5 s",
        "raise RetryJob(in_seconds)  # in demo_app.jobs.Control.retry_later, on attempt 1",
        "Its first attempt asks to be retried in 5 s (instead of BGJOBS_RETRY_DELAY); the "
        "second succeeds.",
        _retry,
        Field("in_seconds", "retry in (s)", "5", _bounded(float, 1, 600)),
    ),
    "order": Sample(
        "An order and its job, in one transaction",
        "Place an order",
        "db.session.add(order); db.session.flush()\n"
        "confirm_order.with_options(session=db.session).enqueue(order.id)\n"
        "db.session.commit()",
        "An Order row of the demo's own database and its typed confirmation job "
        "(@bgjobs.job) commit together; the job marks the order confirmed.",
        _order,
        Field("item", "item", "a teapot", _text),
    ),
    "rollback": Sample(
        "... or roll it back",
        "Place an order, then roll back",
        "db.session.add(order); db.session.flush()\n"
        "confirm_order.with_options(session=db.session).enqueue(order.id)\n"
        "db.session.rollback()",
        "The rollback takes the job with the order: no row, no job, nothing runs.",
        _rollback,
        Field("item", "item", "a kettle", _text),
    ),
}


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the demo app; ``test_config`` overrides everything else (as in the Flask tutorial)."""
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    # The demo's database, in the instance folder (a relative SQLite path is resolved there).
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///demo.db"
    # The mail queue runs one job at a time, across every runner (set here rather than in
    # .env so that a demo_app/.env copied before it still shows it).
    app.config["BGJOBS_QUEUE_LIMITS"] = {MAIL_QUEUE: 1}
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY, FLASK_SQLALCHEMY_DATABASE_URI and friends
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        # Flask sends no SameSite by default; the dashboard's CSRF check does not rely on it,
        # but Lax keeps the session cookie off cross-site posts in every browser.
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if test_config is not None:
        app.config.from_mapping(test_config)
    if not app.config.get("SECRET_KEY"):
        # Stable across gunicorn workers and restarts, so sessions (and CSRF tokens) survive.
        app.config["SECRET_KEY"] = _instance_secret(os.path.join(app.instance_path, "secret_key"))

    db.init_app(app)
    bgjobs.init_app(app)
    with app.app_context():
        # The demo's own table; IF NOT EXISTS, as gunicorn workers and runners start at once.
        db.session.execute(CreateTable(Order.__table__, if_not_exists=True))
        db.session.commit()

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
        queues=bgjobs.queues(),
        schedules=[_schedule_row(s) for s in _schedules()],
        orders=db.session.scalars(db.select(Order).order_by(Order.id.desc()).limit(5)).all(),
        signal_lines=_signal_lines(),
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
        done = sample.enqueue(value)
    except BgJobsError as exc:  # e.g. JobNotAllowed after an edit of BGJOBS_ALLOWED_JOBS
        flash(f"{sample.title}: {type(exc).__name__}: {exc}", "error")
        return back
    if not isinstance(done, Done):
        done = Done("enqueued", done)
    summary = {
        "text": f"{sample.title}: {done.text}",
        "jobs": [{"id": j.id, "name": j.name, "priority": j.priority} for j in done.jobs],
        "orders": done.orders,
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
            messages.append(
                {
                    "category": "ok",
                    "text": summary["text"],
                    "jobs": summary["jobs"],
                    "orders": summary.get("orders", []),
                }
            )
        else:
            messages.append({"category": category, "text": text, "jobs": [], "orders": []})
    return messages


def _schedules() -> list[ScheduleInfo]:
    """``bgjobs.schedules()``: every recurring job, its next run and its last job."""
    return bgjobs.schedules()


def _schedule_row(info: ScheduleInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "job": info.job,
        "words": info.words,
        "next_run": "paused" if info.next_run is None else _clock(info.next_run, seconds=True),
        "last_job_id": info.last_job_id,
        "last_status": info.last_status,
        "paused": info.paused,
    }


# -- signals: a line per finished attempt, written in the attempt's own process ---------------


def _signal_log() -> str:
    return os.path.join(current_app.instance_path, "logs", "signals.log")


@signals.job_succeeded.connect
def _on_job_succeeded(app: Flask, job: Job, result: Any, **extra: Any) -> None:
    _signal_line(f"job_succeeded: job {job.id} {job.name} (attempt {job.attempts})")


@signals.job_failed.connect
def _on_job_failed(app: Flask, job: Job, exception: BaseException, **extra: Any) -> None:
    what = f"{type(exception).__name__}: {exception}"[:120]
    _signal_line(f"job_failed: job {job.id} {job.name} (attempt {job.attempts}): {what}")


def _signal_line(text: str) -> None:
    path = _signal_log()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
    with open(path, "a", encoding="utf-8") as fh:  # one short append per line: no interleaving
        fh.write(f"{stamp} {text}\n")


def _signal_lines(count: int = 8) -> list[str]:
    """The last lines the signal receivers wrote, newest first."""
    try:
        with open(_signal_log(), encoding="utf-8") as fh:
            return fh.read().splitlines()[-count:][::-1]
    except FileNotFoundError:
        return []


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
        "end_reason": job.end_reason if job.status in ("failed", "cancelled") else None,
        "created_at": _clock(job.created_at),
        "started": _started(job),
    }


def _clock(ts: float, *, seconds: bool = False) -> str:
    """``12:30:05.123`` (UTC): to the millisecond, so start order shows within a second;
    with `seconds`, ``2026-12-07 01:30:00`` (a schedule's next run)."""
    when = datetime.fromtimestamp(ts, timezone.utc)
    if seconds:
        return when.strftime("%Y-%m-%d %H:%M:%S")
    return when.strftime("%H:%M:%S.%f")[:-3]


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
