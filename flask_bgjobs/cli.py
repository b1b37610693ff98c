"""``flask bgjobs …``: every command goes through the extension object, never its own SQL.

Bad input exits non-zero with one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import json
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.exc import SQLAlchemyError

from flask_bgjobs import models, security
from flask_bgjobs.errors import BgJobsError
from flask_bgjobs.extension import EXTENSION_KEY, BackgroundJobs
from flask_bgjobs.models import Job


class _Group(AppGroup):
    """An `AppGroup` whose commands turn every error into one line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BgJobsError as exc:
            raise click.ClickException(_one_line(str(exc))) from None
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None) or exc
            raise click.ClickException(
                _one_line(f"database error: {type(orig).__name__}: {orig}")
            ) from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise click.ClickException(_one_line(f"{type(exc).__name__}: {exc}")) from None


def _one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "failed"
    return security.printable(first)[:500]


bgjobs_cli = _Group(
    "bgjobs",
    help="Background jobs: run a worker, enqueue, inspect, retry, cancel and prune jobs.",
)


def _ext() -> BackgroundJobs:
    state = current_app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise click.ClickException("flask-bgjobs is not initialised on this app")
    return state.ext  # type: ignore[no-any-return]


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
def worker_command(concurrency: int | None, burst: bool) -> None:
    """Run jobs in this process until SIGTERM or Ctrl-C.

    \b
    Example:
      flask --app myapp bgjobs worker --concurrency 4
    """
    raise SystemExit(_ext().worker(concurrency=concurrency, burst=burst))


@bgjobs_cli.command("enqueue")
@click.argument("class_name")
@click.argument("method_name")
@click.option("--params", default=None, help="JSON list (positional) or object (keyword).")
@click.option("--retries", type=int, default=None, help="Re-runs after the first failure.")
@click.option("--delay", type=float, default=None, help="Seconds before the first run.")
@click.option("--priority", type=int, default=None, help="Higher runs first.")
@click.option("--timeout", type=float, default=None, help="Seconds per attempt (0: none).")
def enqueue_command(
    class_name: str,
    method_name: str,
    params: str | None,
    retries: int | None,
    delay: float | None,
    priority: int | None,
    timeout: float | None,
) -> None:
    """Enqueue CLASS_NAME.METHOD_NAME and print the new job's id.

    \b
    Example:
      flask bgjobs enqueue demo_app.jobs.Reports process_data --params '[42]' --priority 5
    """
    ext = _ext()
    decoded = None
    if params is not None:
        decoded = security.decode_params(params, ext.state().settings.max_params_bytes)
    job = ext.run(class_name, method_name, decoded, retries, delay, priority, timeout=timeout)
    click.echo(job.id)


@bgjobs_cli.command("list")
@click.option("--status", type=click.Choice(models.STATUSES), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(status: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first.

    \b
    Example:
      flask bgjobs list --status failed --limit 50
    """
    jobs, total = _ext().list_jobs(status=status, per_page=limit)
    if as_json:
        click.echo(json.dumps([j.to_dict() for j in jobs], indent=2))
        return
    if not jobs:
        click.echo("no jobs" + (f" with status {status}" if status else ""))
        return
    click.echo(f"{'ID':>7}  {'STATUS':<9}  {'PRIO':>4}  {'TRIES':>5}  {'CREATED':<20}  JOB")
    for j in jobs:
        click.echo(
            f"{j.id:>7}  {j.status:<9}  {j.priority:>4}  {j.attempts:>2}/{j.max_attempts:<2}  "
            f"{models.iso(j.created_at) or '':<20}  {security.printable(j.name)}"
        )
    if total > len(jobs):
        click.echo(f"({len(jobs)} of {total} shown)")


@bgjobs_cli.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(job_id: int, as_json: bool) -> None:
    """Show one job: its fields, result, error and history.

    \b
    Example:
      flask bgjobs show 17
    """
    job = _ext().get_job(job_id)
    if as_json:
        click.echo(json.dumps(job.to_dict(), indent=2))
        return
    _print_job(job)


def _print_job(job: Job) -> None:
    data = job.to_dict()
    p = security.printable
    for key in (
        "id",
        "status",
        "priority",
        "attempts",
        "max_attempts",
        "timeout",
        "created_at",
        "run_at",
        "started_at",
        "finished_at",
        "progress",
        "progress_message",
        "runner_id",
        "pid",
        "end_reason",
    ):
        value = data[key]
        if value is not None:
            click.echo(f"{key + ':':<18}{p(str(value))}")
    click.echo(f"{'job:':<18}{p(job.name)}")
    click.echo(f"{'params:':<18}{p(json.dumps(data['params'], ensure_ascii=False))}")
    if job.result_json is not None:
        click.echo(f"{'result:':<18}{p(job.result_json)}")
    if job.error:
        click.echo(f"{'error:':<18}{p(job.error)}")
    if job.log_incomplete:
        click.echo(f"{'log:':<18}incomplete (some log lines could not be written)")
    if job.events:
        click.echo("events:")
        for e in job.events:
            attempt = f" attempt {e.attempt}" if e.attempt else ""
            click.echo(f"  {models.iso(e.at)}  {e.kind:<13}{attempt}  {p(e.message)}")
    if job.traceback:
        click.echo("traceback:")
        for line in job.traceback.rstrip("\n").split("\n"):
            click.echo("  " + p(line))


@bgjobs_cli.command("retry")
@click.argument("job_id", type=int, required=False)
@click.option("--all-failed", is_flag=True, help="Retry every failed job.")
def retry_command(job_id: int | None, all_failed: bool) -> None:
    """Retry a failed or cancelled job (fresh attempts), or every failed job.

    \b
    Examples:
      flask bgjobs retry 17
      flask bgjobs retry --all-failed
    """
    if (job_id is None) == (not all_failed):
        raise click.UsageError("give either a job ID or --all-failed")
    ext = _ext()
    if all_failed:
        click.echo(f"{ext.retry_all_failed()} job(s) retried")
        return
    assert job_id is not None
    job = ext.retry(job_id)
    click.echo(f"job {job.id} is {job.status}")


@bgjobs_cli.command("cancel")
@click.argument("job_id", type=int)
def cancel_command(job_id: int) -> None:
    """Cancel a pending, retrying or running job (a running one is killed).

    \b
    Example:
      flask bgjobs cancel 17
    """
    job = _ext().cancel(job_id)
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
    """Delete finished jobs older than DAYS (never pending or running ones).

    \b
    Example:
      flask bgjobs prune --older-than 30
    """
    click.echo(f"{_ext().prune(older_than)} job(s) deleted")


@bgjobs_cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats_command(as_json: bool) -> None:
    """Show how many jobs are in each status, and the last hour's throughput.

    \b
    Example:
      flask bgjobs stats --json
    """
    stats = _ext().stats()
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    for status, n in stats["counts"].items():
        click.echo(f"{status + ':':<11}{n}")
    ok = sum(b["succeeded"] for b in stats["throughput"])
    bad = sum(b["failed"] for b in stats["throughput"])
    click.echo(f"last hour: {ok} attempt(s) succeeded, {bad} failed")


@bgjobs_cli.command("sweep")
def sweep_command() -> None:
    """Take back running jobs whose lease expired, now (as failed attempts).

    \b
    Example:
      flask bgjobs sweep
    """
    reclaimed = _ext().sweep()
    click.echo(f"{len(reclaimed)} expired lease(s) taken back")
    for r in reclaimed:
        then = "retrying" if r.retry_in is not None else "failed"
        click.echo(f"  job {r.job.id} ({security.printable(r.job.name)}): {then}")


@bgjobs_cli.command("init-db")
def init_db_command() -> None:
    """Create the job tables if they do not exist.

    \b
    Example:
      flask bgjobs init-db
    """
    _ext().init_db()
    click.echo("job tables ready")
