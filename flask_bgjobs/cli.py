"""``flask bgjobs …``: every command goes through the service functions, never its own SQL.

Bad input exits non-zero with one clear line on stderr, never a traceback: Click's usage
errors are folded into one line too, and every other error becomes ``Error: <one line>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import IO, Any

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.exc import SQLAlchemyError

from flask_bgjobs import limits, models, security, service
from flask_bgjobs.errors import BgJobsError
from flask_bgjobs.models import Event, Job
from flask_bgjobs.state import EXTENSION_KEY, AppState

#: Longest error line printed; a huge message (a giant class name) is cut, not dumped.
_MAX_ERROR_CHARS = 500
#: Ids are 64-bit on every backend: a larger number is a typo, not a job to look up.
_MAX_ID = 2**63 - 1
_JOB_ID = click.IntRange(min=1, max=_MAX_ID)
#: Said after params or a result shown as stored because they are not strict JSON.
_NOT_JSON = "  (stored text, not strict JSON: shown as stored)"


class _OneLineUsageError(click.UsageError):
    """A Click usage error shown as one line, with a pointer to ``--help``."""

    def show(self, file: IO[Any] | None = None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"Error: {_one_line(self.format_message())}{hint}", file=file, err=True)


class _Group(AppGroup):
    """An `AppGroup` whose commands turn every error into one line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _OneLineUsageError:
            raise
        except click.UsageError as exc:
            raise _OneLineUsageError(exc.format_message(), exc.ctx) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BgJobsError as exc:
            raise click.ClickException(_one_line(str(exc))) from None
        except SQLAlchemyError as exc:
            raise click.ClickException(_database_error(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the contract: never a traceback
            raise click.ClickException(_one_line(f"{type(exc).__name__}: {exc}")) from None


def _one_line(text: str) -> str:
    """The first non-empty line of `text`, control characters escaped, length capped."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    first = security.printable(lines[0].strip()) if lines else "failed"
    if len(first) > _MAX_ERROR_CHARS:
        first = first[: _MAX_ERROR_CHARS - 3] + "..."
    return first


def _database_error(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = _one_line(f"database error: {type(orig).__name__}: {orig}")
    missing = "no such table" in text or "does not exist" in text
    if missing and any(table.name in text for table in (models.jobs, models.events)):
        text += "; create them with 'flask bgjobs init-db'"
    return text


def _when(ts: float | None) -> str:
    """Epoch seconds as ``YYYY-MM-DD HH:MM:SS`` UTC, the format of the log files."""
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):  # an edited row: NaN, infinity...
        return "-"


bgjobs_cli = _Group(
    "bgjobs",
    help="""Background jobs: run a worker, enqueue, inspect, retry, cancel and prune jobs.

    \b
    Examples:
      flask bgjobs worker
      flask bgjobs enqueue demo_app.jobs.Reports process_data --params '[42]'
      flask bgjobs list --status failed
    """,
)


def _state() -> AppState:
    state = current_app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise click.ClickException("flask-bgjobs is not initialised on this app")
    return state  # type: ignore[no-any-return]


@bgjobs_cli.command("worker")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs run at once (default: BGJOBS_MAX_CONCURRENCY, the number of CPUs).",
)
@click.option(
    "--burst",
    is_flag=True,
    help="Run what is due now, then exit once nothing runs and nothing is due.",
)
@click.option(
    "--reuse",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Attempts one job process runs one after another (default: BGJOBS_PROCESS_REUSE, 1).",
)
@click.option(
    "--queues",
    default=None,
    metavar="Q1,Q2",
    help="Claim only jobs of these queues (default: every queue).",
)
def worker_command(
    concurrency: int | None, burst: bool, reuse: int | None, queues: str | None
) -> None:
    """Run jobs in this process until SIGTERM or Ctrl-C.

    \b
    Examples:
      flask --app myapp bgjobs worker --concurrency 4
      flask --app myapp bgjobs worker --burst
      flask --app myapp bgjobs worker --reuse 100
      flask --app myapp bgjobs worker --queues mail,default
    """
    from flask_bgjobs.runner import Runner  # only this command needs it

    state = _state()
    # The runner rides out database outages silently (they go to the error log); an
    # operator starting it against a wrong or dead database should hear about it now. A
    # locked SQLite file is no such error: the runner waits for it like any other.
    state.store.ping()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    served = tuple(
        service.queue_name(q.strip(), "") for q in (queues or "").split(",") if q.strip()
    )
    runner = Runner.for_app(
        app, state, concurrency=concurrency, burst=burst, reuse=reuse, queues=served or None
    )
    raise SystemExit(runner.run(app))


@bgjobs_cli.command("enqueue")
@click.argument("class_name")
@click.argument("method_name")
@click.option(
    "--params", default=None, help="JSON list (positional) or object (keyword arguments)."
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=None,
    help="Re-runs after the first failure (default: BGJOBS_DEFAULT_RETRY_ATTEMPTS).",
)
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds before the first run (default: BGJOBS_DEFAULT_DELAY).",
)
@click.option(
    "--priority",
    type=int,
    default=None,
    help="Higher runs first (default: BGJOBS_DEFAULT_PRIORITY).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds per attempt, 0 for none (default: BGJOBS_JOB_TIMEOUT).",
)
@click.option("--queue", default=None, help="The job's queue (default: BGJOBS_DEFAULT_QUEUE).")
@click.option(
    "--at",
    "run_at",
    default=None,
    metavar="WHEN",
    help="When to run it, ISO 8601 with a time zone: 2026-12-24T18:00:00Z (not with --delay).",
)
@click.option(
    "--expires-in",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="S",
    help="Cancel it (expired) if it has not started S seconds after falling due.",
)
@click.option(
    "--unique-key", default=None, help="Store nothing if a job with this key waits or runs."
)
@click.option(
    "--concurrency-key", default=None, help="At most --concurrency-limit jobs with it run at once."
)
@click.option(
    "--concurrency-limit",
    type=click.IntRange(min=1),
    default=None,
    help="With --concurrency-key (default 1).",
)
def enqueue_command(
    class_name: str,
    method_name: str,
    params: str | None,
    retries: int | None,
    delay: float | None,
    priority: int | None,
    timeout: float | None,
    queue: str | None,
    run_at: str | None,
    expires_in: float | None,
    unique_key: str | None,
    concurrency_key: str | None,
    concurrency_limit: int | None,
) -> None:
    """Enqueue a job and print its id.

    The new job's id is printed alone on stdout, so scripts can capture it. CLASS_NAME is a dotted path to a class (instantiated with no arguments) or a module
    (METHOD_NAME is then a function of it); the pair must be in BGJOBS_ALLOWED_JOBS.

    \b
    Examples:
      flask bgjobs enqueue demo_app.jobs.Reports process_data --params '[42]' --priority 5
      flask bgjobs enqueue demo_app.mail send --params '{"to": "ada@example.com"}' --delay 60
      flask bgjobs enqueue demo_app.mail send --queue mail --at 2026-12-24T18:00:00Z
      flask bgjobs enqueue demo_app.jobs.Reports process_data --unique-key report-42
    """
    state = _state()
    decoded = None
    if params is not None:
        try:
            decoded = security.decode_params(params, state.settings.max_params_bytes)
        except BgJobsError as exc:
            service.log_rejected(state, class_name, method_name, exc)
            raise
    job = service.enqueue(
        state, class_name, method_name, decoded, retries, delay, priority, timeout=timeout,
        queue=queue, run_at=_when_given(run_at), expires_in=expires_in, unique_key=unique_key,
        concurrency_key=concurrency_key, concurrency_limit=concurrency_limit,
    )  # fmt: skip
    click.echo(job.id)


def _when_given(text: str | None) -> datetime | None:
    """``--at``: ISO 8601 with a time zone (``Z`` or ``+01:00``); a naive time is refused."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 time such as 2026-12-24T18:00:00Z",
            param_hint="'--at'",
        ) from None


@bgjobs_cli.command("list")
@click.option(
    "--status", type=click.Choice(models.STATUSES), default=None, help="Only jobs in this status."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Show at most this many (the newest).",
)
@click.option("--queue", default=None, help="Only jobs of this queue.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of jobs.")
def list_command(status: str | None, limit: int, queue: str | None, as_json: bool) -> None:
    """List jobs, newest first.

    \b
    Examples:
      flask bgjobs list --status failed --limit 50
      flask bgjobs list --queue mail
      flask bgjobs list --json
    """
    jobs, total = service.list_jobs(
        _state(), status=status, per_page=min(limit, _MAX_ID), queue=queue
    )
    if as_json:
        click.echo(json.dumps([j.to_dict() for j in jobs], indent=2))
        return
    if not jobs:
        click.echo("no jobs" + (f" with status {status}" if status else ""))
        return
    p = security.printable
    rows = [
        (
            str(j.id),
            p(str(j.status)),
            p(str(j.priority)),
            p(f"{j.attempts}/{j.max_attempts}"),
            _when(j.created_at),
            p(j.name),
        )
        for j in jobs
    ]
    header = ("ID", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED (UTC)", "JOB")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    right = (True, False, True, True, False)  # numbers align right
    for row in (header, *rows):
        cells = [
            cell.rjust(w) if r else cell.ljust(w)
            for cell, w, r in zip(row[:-1], widths, right, strict=True)
        ]
        click.echo("  ".join([*cells, row[-1]]))
    if total > len(jobs):
        click.echo(f"({len(jobs)} of {total} shown; use --limit for more)")


@bgjobs_cli.command("show")
@click.argument("job_id", type=_JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the job (and its events) as JSON.")
def show_command(job_id: int, as_json: bool) -> None:
    """Show one job: its fields, result, error and history.

    \b
    Examples:
      flask bgjobs show 17
      flask bgjobs show 17 --json
    """
    job = _state().store.get(job_id, with_events=True)
    if as_json:
        click.echo(json.dumps(job.to_dict(), indent=2))
        return
    _print_job(job)


def _print_job(job: Job) -> None:
    data = job.to_dict()
    p = security.printable

    def field(label: str, value: object) -> None:
        if value is not None:
            click.echo(f"{label + ':':<18}{p(str(value))}")

    field("job", job.name)
    field("id", job.id)
    field("status", job.status)
    field("priority", job.priority)
    field("attempts", f"{job.attempts} of {job.max_attempts}")
    field("timeout", f"{job.timeout:g} s" if job.timeout else "none")
    field("queue", job.queue)
    field("unique_key", job.unique_key)
    if job.concurrency_key is not None:
        field("concurrency_key", f"{job.concurrency_key} (limit {job.concurrency_limit})")
    if job.schedule is not None:
        field("schedule", f"{job.schedule} (tick {data['scheduled_for']})")
    if job.memory_limit is not None:
        field("memory_limit", f"{job.memory_limit} bytes")
    if job.cpu_limit is not None:
        field("cpu_limit", f"{job.cpu_limit:g} s")
    for key in ("created_at", "run_at", "expires_at", "started_at", "finished_at"):
        field(key, data[key])
    if job.progress is not None:
        field(
            "progress",
            f"{job.progress:g}%" + (f" {job.progress_message}" if job.progress_message else ""),
        )
    field("runner_id", job.runner_id)
    field("pid", job.pid)
    field("end_reason", job.end_reason)
    # Params or a result that are not strict JSON (an edited row) show as their stored text, cut.
    params = job.shown_params
    if params.decoded:
        click.echo(f"{'params:':<18}{p(json.dumps(params.value, ensure_ascii=False))}")
    else:
        click.echo(f"{'params:':<18}{p(params.value)}{_NOT_JSON}")
    if job.result_json is not None:
        result = job.shown_result
        text = models.text_of(job.result_json) if result.decoded else result.value
        click.echo(f"{'result:':<18}{p(text or '')}{'' if result.decoded else _NOT_JSON}")
    if job.error:
        click.echo(f"{'error:':<18}{p(str(job.error))}")
    if job.log_incomplete:
        click.echo(f"{'log:':<18}incomplete (some log lines could not be written)")
    if job.events:
        click.echo("events:")
        for e in job.events:
            attempt = f"attempt {e.attempt}" if e.attempt else ""
            click.echo(f"  {_when(e.at)}  {p(str(e.kind)):<13}  {attempt:<10}  {p(str(e.message))}")
        _print_attempts(job.events)
    if job.traceback:
        click.echo("traceback:")
        _print_block(str(job.traceback))
    ended = [e for e in job.events or () if e.ends_attempt]
    if ended and ended[-1].output:
        click.echo(f"output (attempt {ended[-1].attempt}, its stdout and stderr):")
        _print_block(models.text_of(ended[-1].output) or "")


def _print_block(text: str) -> None:
    """Lines of stored text, indented, each escaped for the terminal."""
    for line in text.rstrip("\n").split("\n"):
        click.echo("  " + security.printable(line))


def _print_attempts(events: tuple[Event, ...]) -> None:
    """One line per attempt that ended: how long it took, why, and what it used."""
    rows = []
    for started, end in models.attempts_of(events):
        took = end.at - started.at if started is not None else None
        rows.append(
            (
                str(end.attempt),
                _when(started.at if started is not None else None),
                "-" if took is None or not 0 <= took < 1e9 else f"{took:.2f} s",
                security.printable(str(end.kind)),
                "-" if end.max_rss_kb is None else limits.size_text(end.max_rss_kb * 1024),
                "-" if models.finite(end.cpu_s) is None else f"{end.cpu_s:.2f} s",
            )
        )
    if not rows:
        return
    click.echo("attempts:")
    header = ("#", "STARTED (UTC)", "TOOK", "ENDED", "PEAK RSS", "CPU")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    right = (True, False, True, False, True, True)
    for row in (header, *rows):
        cells = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        click.echo("  " + "  ".join(cells).rstrip())


class _NotRun(click.ClickException):
    """The stored job could not be run at all (unknown, not allowed, bad params): exit 2."""

    exit_code = 2


@bgjobs_cli.command("run")
@click.argument("job_id", type=_JOB_ID)
@click.option(
    "--pdb", "use_pdb", is_flag=True, help="Open the post-mortem debugger if the job raises."
)
def run_command(job_id: int, use_pdb: bool) -> None:
    """Run a stored job here, in the foreground, to reproduce or debug it.

    Calls the job's target with its stored params in this process, after the allowlist
    check the runner makes. The job's record is not touched: no status, attempt, event or log
    line is written, and limits and timeouts do not apply. Progress reports go to stderr; the
    return value is printed on stdout as JSON.

    Exit code 0 when the job returns; 1 when it raises (its traceback on stderr, and with
    --pdb the debugger first); 2 when it cannot be run (no such job, not allowed, bad params).

    \b
    Examples:
      flask bgjobs run 17
      flask bgjobs run 17 --pdb
    """
    from flask_bgjobs import current, executor  # the job process's code: only this command

    state = _state()
    try:
        job = state.store.get(job_id)
        params = security.decode_params(job.params_json, state.settings.max_params_bytes)
        target = security.resolve(job.class_name, job.method_name, state.allowlist)
    except BgJobsError as exc:
        raise _NotRun(f"job {job_id} not run: {_one_line(str(exc))}") from None

    def report(percent: float, message: str) -> None:
        text = f"progress {percent:g}%" + (f": {message}" if message else "")
        click.echo(security.printable(text), err=True)

    context = current.JobContext(job.id, max(1, job.attempts), report)
    try:
        with current.running(context):
            result = executor.call(target, params)
    except BaseException as exc:  # noqa: BLE001 - the job's exception, whatever it is, is the point
        click.echo(executor.job_traceback(exc), err=True, nl=False)
        if use_pdb:
            import pdb

            pdb.post_mortem(executor.job_frames(exc) or exc.__traceback__)
        raise SystemExit(1) from None
    encoded = executor.encode_result(result, state.settings.max_params_bytes)
    if isinstance(encoded, executor.Note):
        click.echo(encoded.text, err=True)
    else:
        click.echo(encoded)


@bgjobs_cli.command("retry")
@click.argument("job_id", type=_JOB_ID, required=False)
@click.option("--all-failed", is_flag=True, help="Retry every failed job.")
def retry_command(job_id: int | None, all_failed: bool) -> None:
    """Retry a failed or cancelled job, or every failed one.

    The job becomes pending with a fresh set of attempts; its history is kept. Jobs in
    other statuses are refused.

    \b
    Examples:
      flask bgjobs retry 17
      flask bgjobs retry --all-failed
    """
    if job_id is None and not all_failed:
        raise click.UsageError("give a job ID or --all-failed")
    if job_id is not None and all_failed:
        raise click.UsageError("give a job ID or --all-failed, not both")
    state = _state()
    if all_failed:
        click.echo(f"{service.retry_all_failed(state)} job(s) retried")
        return
    assert job_id is not None
    job = service.retry(state, job_id)
    click.echo(f"job {job.id} is {job.status}")


@bgjobs_cli.command("cancel")
@click.argument("job_id", type=_JOB_ID)
def cancel_command(job_id: int) -> None:
    """Cancel a pending, retrying or running job.

    A running job's whole process group is killed. Finished jobs are refused.

    \b
    Example:
      flask bgjobs cancel 17
    """
    job = service.cancel(_state(), job_id)
    click.echo(f"job {job.id} is {job.status}")


@bgjobs_cli.command("prune")
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0),
    required=True,
    metavar="DAYS",
    help="Delete succeeded, failed and cancelled jobs that finished more than DAYS ago.",
)
def prune_command(older_than: float) -> None:
    """Delete finished jobs older than DAYS.

    Only succeeded, failed and cancelled jobs whose finished_at is older than DAYS go (with
    their history); pending, retrying and running jobs are never deleted.

    \b
    Example:
      flask bgjobs prune --older-than 30
    """
    click.echo(f"{service.prune(_state(), older_than)} job(s) deleted")


@bgjobs_cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats_command(as_json: bool) -> None:
    """Show job counts per status and throughput.

    Throughput is the number of attempts that ended, per minute, over the last hour.

    \b
    Example:
      flask bgjobs stats --json
    """
    stats = service.stats(_state())
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    for status, n in stats["counts"].items():
        click.echo(f"{security.printable(str(status)) + ':':<11}{n}")
    ok = sum(b["succeeded"] for b in stats["throughput"])
    bad = sum(b["failed"] for b in stats["throughput"])
    click.echo(f"last hour: {ok} attempt(s) succeeded, {bad} failed")


@bgjobs_cli.command("sweep")
def sweep_command() -> None:
    """Take back running jobs whose lease expired.

    Runners do this on their own; sweep does it now. Each job taken back counts as a failed
    attempt: it is retried if attempts remain, else it fails.

    \b
    Example:
      flask bgjobs sweep
    """
    reclaimed = service.sweep(_state())
    click.echo(f"{len(reclaimed)} expired lease(s) taken back")
    for r in reclaimed:
        then = "retrying" if r.retry_in is not None else "failed"
        click.echo(f"  job {r.job.id} ({security.printable(r.job.name)}): {then}")


@bgjobs_cli.command("init-db")
def init_db_command() -> None:
    """Create the job tables, or upgrade them to this release's schema.

    Needed only when BGJOBS_CREATE_TABLES is false (tables are otherwise created, and
    upgraded, on first use); safe to run again.

    \b
    Example:
      flask bgjobs init-db
    """
    _upgrade()


@bgjobs_cli.command("upgrade-db")
@click.option("--sql", "as_sql", is_flag=True, help="Print the SQL instead of running it.")
def upgrade_db_command(as_sql: bool) -> None:
    """Upgrade the job tables to this release's schema, keeping every job.

    Runs the migrations shipped with flask-bgjobs (Alembic; the version is kept in
    bgjobs_alembic_version). A database written by 0.1.0 is upgraded in place. With --sql,
    prints the SQL for this database instead, and changes nothing.

    \b
    Examples:
      flask bgjobs upgrade-db
      flask bgjobs upgrade-db --sql > upgrade.sql
    """
    if as_sql:
        click.echo(_state().store.upgrade_sql(), nl=False)
        return
    _upgrade()


def _upgrade() -> None:
    store = _state().store
    before = store.schema_version()
    store.ensure_tables()
    after = store.schema_version()
    if before is None:
        click.echo(f"job tables created (schema {after})")
    elif before != after:
        click.echo(f"job tables upgraded from schema {before} to {after}")
    else:
        click.echo(f"job tables ready (schema {after})")


# -- queues and recurring jobs ----------------------------------------------------------------


@bgjobs_cli.command("queues")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of queues.")
def queues_command(as_json: bool) -> None:
    """List queues: jobs waiting and running, paused or not, limit.

    Every queue with jobs waiting or running, a stored setting (paused) or a limit in
    BGJOBS_QUEUE_LIMITS, and the default queue.

    \b
    Examples:
      flask bgjobs queues
      flask bgjobs queues --json
    """
    found = service.queues(_state())
    if as_json:
        click.echo(json.dumps([q.to_dict() for q in found], indent=2))
        return
    header = ("QUEUE", "PENDING", "RUNNING", "LIMIT", "OLDEST WAITING", "STATE")
    rows = [
        (
            q.name,
            str(q.pending),
            str(q.running),
            "-" if q.limit is None else str(q.limit),
            "-" if q.oldest_waiting is None else f"{q.oldest_waiting:.0f} s",
            "paused" if q.paused else "active",
        )
        for q in found
    ]
    _table(header, rows, right=(False, True, True, True, True, False))


@bgjobs_cli.command("pause")
@click.argument("queue", required=False)
@click.option("--schedule", "schedule", default=None, metavar="NAME", help="Pause a recurring job.")
def pause_command(queue: str | None, schedule: str | None) -> None:
    """Pause a queue (its jobs are not claimed) or, with --schedule, a recurring job.

    Running jobs finish. The pause is stored in the database: it holds for every runner on
    every host and survives restarts, until resume.

    \b
    Examples:
      flask bgjobs pause mail
      flask bgjobs pause --schedule nightly-report
    """
    state = _state()
    if _one_of(queue, schedule) == "queue":
        assert queue is not None
        service.pause(state, queue)
        click.echo(f"queue {queue} paused")
    else:
        assert schedule is not None
        service.pause_schedule(state, schedule)
        click.echo(f"schedule {schedule} paused")


@bgjobs_cli.command("resume")
@click.argument("queue", required=False)
@click.option(
    "--schedule", "schedule", default=None, metavar="NAME", help="Resume a recurring job."
)
def resume_command(queue: str | None, schedule: str | None) -> None:
    """Resume a paused queue or, with --schedule, a recurring job.

    A resumed recurring job runs from its next tick: ticks missed while paused never run.

    \b
    Examples:
      flask bgjobs resume mail
      flask bgjobs resume --schedule nightly-report
    """
    state = _state()
    if _one_of(queue, schedule) == "queue":
        assert queue is not None
        service.resume(state, queue)
        click.echo(f"queue {queue} resumed")
    else:
        assert schedule is not None
        service.resume_schedule(state, schedule)
        click.echo(f"schedule {schedule} resumed")


def _one_of(queue: str | None, schedule: str | None) -> str:
    if (queue is None) == (schedule is None):
        raise click.UsageError("give a QUEUE or --schedule NAME (one of them)")
    return "queue" if queue is not None else "schedule"


@bgjobs_cli.command("schedules")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of recurring jobs.")
def schedules_command(as_json: bool) -> None:
    """List recurring jobs: the job, cron or every, next run (UTC), last job, paused.

    \b
    Examples:
      flask bgjobs schedules
      flask bgjobs schedules --json
    """
    found = service.schedules(_state())
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in found], indent=2))
        return
    if not found:
        click.echo("no recurring jobs (BGJOBS_SCHEDULE, bgjobs.schedule())")
        return
    header = ("NAME", "JOB", "WHEN", "NEXT RUN (UTC)", "LAST JOB", "STATE")
    rows = [
        (
            security.printable(s.name),
            security.printable(s.job),
            f"cron {s.cron}" + (f" ({s.timezone})" if s.timezone != "UTC" else "")
            if s.cron
            else f"every {s.every} s",
            _when(s.next_run),
            "-" if s.last_job_id is None else f"{s.last_job_id} ({s.last_status or 'deleted'})",
            "paused" if s.paused else "active",
        )
        for s in found
    ]
    _table(header, rows, right=(False,) * 6)


def _table(
    header: tuple[str, ...], rows: Sequence[tuple[str, ...]], *, right: tuple[bool, ...]
) -> None:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [
            cell.rjust(w) if r else cell.ljust(w)
            for cell, w, r in zip(row, widths, right, strict=True)
        ]
        click.echo("  ".join(cells).rstrip())
