"""``flask bgjobs …`` driven as a real subprocess: every command, its text and JSON output,
and bad input that exits non-zero with exactly one line on stderr and never a traceback.

Jobs are set up in-process (``run_background_job``, `bgjobs`) because that is cheap; the
command under test always runs as ``flask --app jobapp:create_app() bgjobs …``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SPEC_JOB_KEYS, Env, pid_alive, spec_event_keys, wait_for

from flask_bgjobs import run_background_job
from flask_bgjobs.errors import JobNotFound
from flask_bgjobs.models import STATUSES, events, jobs

J = "jobapp.jobs.Jobs"
DAY = 86400.0
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"
COMMANDS = (
    "worker",
    "enqueue",
    "list",
    "show",
    "retry",
    "cancel",
    "prune",
    "stats",
    "sweep",
    "init-db",
    "upgrade-db",
)
#: SPEC §9: the job JSON of `show --json` (and, without ``events``, of `list --json`).
JOB_KEYS = {*SPEC_JOB_KEYS, "events"}
# C0, DEL and C1 controls: none may reach the terminal raw (ESC sequences in names above all).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Checks that need no database run on SQLite only: the PostgreSQL run would repeat them.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


# -- helpers ---------------------------------------------------------------------------------


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Stdout of a command that must succeed quietly."""
    assert result.returncode == 0, f"exit {result.returncode}; stderr: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The single stderr line of a command that must fail cleanly, containing `fragments`."""
    assert result.returncode != 0, f"exit 0; stdout: {result.stdout}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.stdout == "", result.stdout
    assert result.stderr.endswith("\n"), repr(result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert not CONTROL.search(line), f"raw control characters on stderr: {line!r}"
    assert line.startswith("Error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def utc(text: str) -> datetime:
    """Parse an ISO 8601 time and insist it is in UTC."""
    assert "T" in text, text
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert when.utcoffset() == timedelta(0), text
    return when


def update_jobs(app: Any, ids: Iterable[int], **values: Any) -> None:
    """Edit job rows directly, as an operator (or time) would: one UPDATE."""
    with app.extensions["bgjobs"].store.engine.begin() as conn:
        conn.execute(jobs.update().where(jobs.c.id.in_(list(ids))).values(**values))


def kinds(bgjobs: Any, job_id: int) -> list[str]:
    return [e.kind for e in bgjobs.get_job(job_id).events]


# -- enqueue ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("ctx")
def test_enqueue_prints_the_new_id_alone_and_its_options_reach_the_job_record(
    env: Env, bgjobs: Any
) -> None:
    options = ["--retries", "5", "--delay", "60", "--priority", "-7", "--timeout", "9"]
    out = ok(env.flask("bgjobs", "enqueue", J, "add", "--params", "[2, 3]", *options))
    assert re.fullmatch(r"[0-9]+\n", out), repr(out)
    job = bgjobs.get_job(int(out))
    assert (job.class_name, job.method_name, job.params, job.status) == (
        J,
        "add",
        [2, 3],
        "pending",
    )
    assert (job.max_attempts, job.priority, job.timeout, job.attempts) == (6, -7, 9.0, 0)
    assert job.run_at == pytest.approx(job.created_at + 60, abs=0.01)

    out = ok(
        env.flask("bgjobs", "enqueue", "jobapp.jobs", "module_function", "--params", '{"x": 21}')
    )
    func = bgjobs.get_job(int(out))
    assert (func.params, func.max_attempts, func.priority, func.timeout) == (
        {"x": 21},
        4,
        1,
        3600.0,
    )
    assert func.run_at == func.created_at

    env.burst()
    assert bgjobs.get_job(func.id).result == 42
    assert bgjobs.get_job(job.id).status == "pending"  # still delayed


@sqlite_only
@pytest.mark.usefixtures("ctx")
def test_enqueue_of_a_job_not_allowed_is_refused_logged_and_stores_nothing(
    env: Env, bgjobs: Any
) -> None:
    refused(env.flask("bgjobs", "enqueue", "os", "system", "--params", '["id"]'), "os::system")
    assert bgjobs.list_jobs()[1] == 0
    assert "ERROR: Job rejected for os::system." in env.error_log.read_text()


# -- list and show ---------------------------------------------------------------------------


@pytest.mark.usefixtures("ctx")
def test_list_shows_jobs_newest_first_filtered_by_status_and_limit(env: Env, bgjobs: Any) -> None:
    first = run_background_job(J, "add", [1, 2])
    second = run_background_job(J, "noop")
    third = run_background_job(J, "greet", {"name": "Ada"})
    bgjobs.cancel(second.id)

    lines = ok(env.flask("bgjobs", "list")).splitlines()
    assert "STATUS" in lines[0] and "JOB" in lines[0]
    assert [int(line.split()[0]) for line in lines[1:]] == [third.id, second.id, first.id]
    assert "pending" in lines[1] and lines[1].endswith(f"{J}::greet")
    assert "cancelled" in lines[2]

    lines = ok(env.flask("bgjobs", "list", "--limit", "2")).splitlines()
    assert [int(line.split()[0]) for line in lines[1:3]] == [third.id, second.id]
    assert lines[3] == "(2 of 3 shown; use --limit for more)"

    data = json.loads(ok(env.flask("bgjobs", "list", "--status", "cancelled", "--json")))
    assert [j["id"] for j in data] == [second.id]
    assert set(data[0]) >= JOB_KEYS - {"events"}
    assert "events" not in data[0]  # history only on the single-job view
    assert (data[0]["status"], data[0]["method_name"]) == ("cancelled", "noop")

    assert ok(env.flask("bgjobs", "list", "--status", "failed")) == "no jobs with status failed\n"


@pytest.mark.usefixtures("ctx")
def test_show_prints_a_job_as_readable_text_and_as_the_spec_json(env: Env, bgjobs: Any) -> None:
    failed = run_background_job(J, "fail", ["boom"], retry_attempts=0)
    progressed = run_background_job(J, "progress", [2])
    env.burst()

    data = json.loads(ok(env.flask("bgjobs", "show", str(failed.id), "--json")))
    assert set(data) >= JOB_KEYS
    assert data["id"] == failed.id
    assert (data["class_name"], data["method_name"], data["params"]) == (J, "fail", ["boom"])
    assert (data["status"], data["attempts"], data["max_attempts"]) == ("failed", 1, 1)
    assert (data["error"], data["result"], data["priority"]) == ("ValueError: boom", None, 1)
    assert data["runner_id"] and isinstance(data["pid"], int)
    times = {key: utc(data[key]) for key in ("created_at", "run_at", "started_at", "finished_at")}
    assert times["created_at"] <= times["started_at"] <= times["finished_at"]
    assert [e["kind"] for e in data["events"]] == ["started", "exception"]
    for e in data["events"]:
        assert set(e) == spec_event_keys(e)
        assert e["attempt"] == 1
        utc(e["at"])
    assert "ValueError: boom" in data["events"][1]["message"]

    data = json.loads(ok(env.flask("bgjobs", "show", str(progressed.id), "--json")))
    assert (data["status"], data["result"]) == ("succeeded", "done")
    assert (data["progress"], data["progress_message"]) == (100, "step 2 of 2")
    kinds_seen = [e["kind"] for e in data["events"]]
    assert kinds_seen[0] == "started" and kinds_seen[-1] == "succeeded"
    assert "progress" in kinds_seen  # reports may be coalesced: at least the last one is kept

    text = ok(env.flask("bgjobs", "show", str(failed.id)))
    fields = dict(
        re.match(r"([a-z_]+):\s+(.*)", line).groups()  # type: ignore[union-attr]
        for line in text.splitlines()
        if re.match(r"[a-z_]+:\s+\S", line)
    )
    assert fields["job"] == f"{J}::fail"
    assert (fields["id"], fields["status"], fields["attempts"]) == (
        str(failed.id),
        "failed",
        "1 of 1",
    )
    assert fields["error"] == "ValueError: boom"
    assert fields["params"] == '["boom"]'
    assert re.search(r"^  \S+ \S+  exception +attempt 1 +ValueError: boom$", text, re.M), text
    assert "raise ValueError(message)" in text  # the traceback, indented
    assert fields["queue"] == "default"
    assert "unique_key" not in fields and "expires_at" not in fields


@pytest.mark.usefixtures("ctx")
def test_show_prints_the_queue_keys_limits_and_expiry_a_job_was_given(
    env: Env, bgjobs: Any
) -> None:
    job = run_background_job(
        J,
        "noop",
        queue="mail",
        unique_key="order-7",
        concurrency_key="smtp",
        concurrency_limit=2,
        expires_in=600,
        memory_limit=64 * 2**20,
        cpu_limit=5,
    )
    text = ok(env.flask("bgjobs", "show", str(job.id)))
    fields = dict(re.findall(r"^([a-z_]+):\s+(.*)$", text, re.M))
    assert (fields["queue"], fields["unique_key"]) == ("mail", "order-7")
    assert fields["concurrency_key"] == "smtp (limit 2)"
    assert (fields["memory_limit"], fields["cpu_limit"]) == ("67108864 bytes", "5 s")
    expires = utc(fields["expires_at"]) - utc(fields["created_at"])
    assert 599 <= expires.total_seconds() <= 601


# -- retry -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("ctx")
def test_retry_makes_failed_and_cancelled_jobs_pending_with_fresh_attempts_keeping_history(
    env: Env, bgjobs: Any
) -> None:
    failed = run_background_job(J, "fail", retry_attempts=0)
    cancelled = run_background_job(J, "noop", delay=3600)
    done = run_background_job(J, "noop")
    bgjobs.cancel(cancelled.id)
    env.burst()
    assert bgjobs.get_job(failed.id).status == "failed"

    assert ok(env.flask("bgjobs", "retry", str(failed.id))) == f"job {failed.id} is pending\n"
    job = bgjobs.get_job(failed.id)
    assert (job.status, job.attempts, job.max_attempts, job.finished_at) == ("pending", 0, 1, None)
    assert kinds(bgjobs, failed.id) == ["started", "exception", "retry"]

    assert ok(env.flask("bgjobs", "retry", str(cancelled.id))) == f"job {cancelled.id} is pending\n"
    job = bgjobs.get_job(cancelled.id)
    assert (job.status, job.attempts) == ("pending", 0)
    assert kinds(bgjobs, cancelled.id) == ["cancelled", "retry"]
    assert job.run_at <= time.time()  # due now, though it was enqueued with a delay

    refused(env.flask("bgjobs", "retry", str(failed.id)), "pending")
    refused(env.flask("bgjobs", "retry", str(done.id)), "succeeded")

    env.burst()  # the fresh attempt really runs
    job = bgjobs.get_job(failed.id)
    assert (job.status, job.attempts) == ("failed", 1)
    assert kinds(bgjobs, failed.id) == ["started", "exception", "retry", "started", "exception"]
    assert bgjobs.get_job(cancelled.id).status == "succeeded"


@pytest.mark.usefixtures("ctx")
def test_retry_all_failed_retries_every_failed_job_and_nothing_else(env: Env, bgjobs: Any) -> None:
    failed = [run_background_job(J, "fail", retry_attempts=0) for _ in range(2)]
    done = run_background_job(J, "noop")
    cancelled = run_background_job(J, "noop", delay=3600)
    bgjobs.cancel(cancelled.id)
    env.burst()

    assert ok(env.flask("bgjobs", "retry", "--all-failed")) == "2 job(s) retried\n"
    assert [bgjobs.get_job(j.id).status for j in failed] == ["pending", "pending"]
    assert [bgjobs.get_job(j.id).attempts for j in failed] == [0, 0]
    assert bgjobs.get_job(done.id).status == "succeeded"
    assert bgjobs.get_job(cancelled.id).status == "cancelled"


# -- cancel ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("ctx")
def test_cancel_stops_pending_and_retrying_jobs_and_is_refused_on_finished_ones(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_RETRY_DELAY", "3600")  # the burst leaves the retry waiting
    pending = run_background_job(J, "noop", delay=3600)
    retrying = run_background_job(J, "fail", retry_attempts=2)
    done = run_background_job(J, "noop")
    env.burst()
    assert bgjobs.get_job(retrying.id).status == "retrying"

    for job in (pending, retrying):
        assert ok(env.flask("bgjobs", "cancel", str(job.id))) == f"job {job.id} is cancelled\n"
        after = bgjobs.get_job(job.id)
        assert after.status == "cancelled"
        assert after.finished_at is not None
        assert after.events[-1].kind == "cancelled"

    refused(env.flask("bgjobs", "cancel", str(pending.id)), "cancelled")
    refused(env.flask("bgjobs", "cancel", str(done.id)), "succeeded")
    assert bgjobs.get_job(done.id).status == "succeeded"


@pytest.mark.usefixtures("ctx")
def test_cancel_kills_the_whole_process_group_of_a_running_job(env: Env, bgjobs: Any) -> None:
    env.start_worker()
    job = run_background_job(J, "spawn_and_hang", ["hang"], retry_attempts=0)
    marks = wait_for(lambda: env.marks_of("hang"), what="the job to start")
    job_pid, grandchild = map(int, marks[0].split())

    assert ok(env.flask("bgjobs", "cancel", str(job.id))) == f"job {job.id} is cancelled\n"
    wait_for(
        lambda: not pid_alive(job_pid) and not pid_alive(grandchild),
        what="the job and the child it spawned (which ignores SIGTERM) to die",
    )
    after = bgjobs.get_job(job.id)
    assert after.status == "cancelled"
    assert "cancelled while running" in [e.message for e in after.events]

    # The runner carries on, and its write-back of the killed attempt changed nothing.
    other = run_background_job(J, "add", [1, 1])
    wait_for(lambda: bgjobs.get_job(other.id).status == "succeeded", what="the next job to run")
    assert bgjobs.get_job(job.id).status == "cancelled"


# -- prune -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("ctx")
def test_prune_deletes_only_finished_jobs_older_than_the_cutoff(
    env: Env, app: Any, bgjobs: Any
) -> None:
    succeeded = run_background_job(J, "noop")
    failed = run_background_job(J, "fail", retry_attempts=0)
    recent = run_background_job(J, "noop")
    cancelled = run_background_job(J, "noop", delay=3600)
    pending = run_background_job(J, "noop", delay=3600)
    running = run_background_job(J, "noop", delay=3600)
    bgjobs.cancel(cancelled.id)
    env.burst()
    now = time.time()
    old = [succeeded.id, failed.id, cancelled.id]
    update_jobs(app, old, finished_at=now - 10 * DAY)
    update_jobs(app, [recent.id], finished_at=now - 1 * DAY)
    # Unfinished rows with an old finished_at (left from an earlier run): status decides.
    update_jobs(app, [pending.id], finished_at=now - 10 * DAY)
    update_jobs(app, [running.id], status="running", finished_at=now - 10 * DAY)

    assert ok(env.flask("bgjobs", "prune", "--older-than", "2")) == "3 job(s) deleted\n"
    for job_id in old:
        with pytest.raises(JobNotFound):
            bgjobs.get_job(job_id)
    with app.extensions["bgjobs"].store.engine.connect() as conn:
        orphans = conn.execute(sa.select(sa.func.count()).where(events.c.job_id.in_(old)))
        assert orphans.scalar_one() == 0
    jobs_left, _ = bgjobs.list_jobs()
    assert {j.id for j in jobs_left} == {recent.id, pending.id, running.id}

    assert ok(env.flask("bgjobs", "prune", "--older-than", "0.5")) == "1 job(s) deleted\n"
    jobs_left, _ = bgjobs.list_jobs()
    assert {j.id: j.status for j in jobs_left} == {pending.id: "pending", running.id: "running"}


# -- stats -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("ctx")
def test_stats_counts_every_status_and_reports_recent_throughput(env: Env, bgjobs: Any) -> None:
    for _ in range(2):
        run_background_job(J, "noop")
    run_background_job(J, "fail", retry_attempts=0)
    run_background_job(J, "noop", delay=3600)
    env.burst()

    data = json.loads(ok(env.flask("bgjobs", "stats", "--json")))
    assert set(data) == {"counts", "throughput"}
    assert data["counts"] == {s: 0 for s in STATUSES} | {"succeeded": 2, "failed": 1, "pending": 1}
    assert isinstance(data["throughput"], list) and data["throughput"]
    for bucket in data["throughput"]:
        assert set(bucket) == {"at", "succeeded", "failed"}
        utc(bucket["at"])
    assert sum(b["succeeded"] for b in data["throughput"]) == 2
    assert sum(b["failed"] for b in data["throughput"]) == 1

    text = ok(env.flask("bgjobs", "stats"))
    for status, n in data["counts"].items():
        assert re.search(rf"^{status}: +{n}$", text, re.M), text
    assert "last hour: 2 attempt(s) succeeded, 1 failed" in text


# -- sweep -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("ctx")
def test_sweep_takes_back_a_running_job_whose_lease_expired(
    env: Env, app: Any, bgjobs: Any
) -> None:
    worker = env.start_worker()
    job = run_background_job(J, "wait_for_file", [str(env.tmp / "never"), "lost"], retry_attempts=1)
    marks = wait_for(lambda: env.marks_of("lost"), what="the job to start")
    job_pid = int(marks[0].split()[1])
    assert bgjobs.get_job(job.id).status == "running"

    # The runner dies without a word; its job child follows it (PDEATHSIG).
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    wait_for(lambda: not pid_alive(job_pid), what="the job child to die with its runner")

    # The lease has not run out yet: nothing to take back.
    assert ok(env.flask("bgjobs", "sweep")) == "0 expired lease(s) taken back\n"
    assert bgjobs.get_job(job.id).status == "running"

    update_jobs(app, [job.id], lease_expires_at=time.time() - 60)
    out = ok(env.flask("bgjobs", "sweep"))
    assert out.splitlines() == [
        "1 expired lease(s) taken back",
        f"  job {job.id} ({J}::wait_for_file): retrying",
    ]
    after = bgjobs.get_job(job.id)
    assert (after.status, after.attempts, after.end_reason) == ("retrying", 1, "lease_expired")
    assert after.error.startswith("LeaseExpired: ")
    last = after.events[-1]
    assert (last.kind, last.attempt) == ("lease_expired", 1)


# -- init-db ---------------------------------------------------------------------------------


def test_init_db_creates_the_tables(
    env: Env, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL the fixture has just dropped the tables; on SQLite use a brand-new file.
    uri = env.database_uri
    if backend == "sqlite":
        uri = f"sqlite:///{env.tmp / 'fresh' / 'new.db'}"
    monkeypatch.setenv("BGJOBS_DATABASE_URI", uri)
    monkeypatch.setenv("BGJOBS_CREATE_TABLES", "false")

    refused(env.flask("bgjobs", "list"), "bgjobs_jobs", "flask bgjobs init-db")
    assert ok(env.flask("bgjobs", "init-db")) == "job tables created (schema 0002)\n"
    assert ok(env.flask("bgjobs", "init-db")) == "job tables ready (schema 0002)\n"
    engine = sa.create_engine(uri)
    try:
        assert {"bgjobs_jobs", "bgjobs_events"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert ok(env.flask("bgjobs", "list")) == "no jobs\n"


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "retry", "cancel"])
def test_an_unknown_job_id_is_refused_in_one_line(env: Env, command: str) -> None:
    refused(env.flask("bgjobs", command, "424242"), "no job with id 424242")


@sqlite_only
@pytest.mark.usefixtures("ctx")
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(("show", "abc"), "'abc' is not a valid integer", id="show-non-integer-id"),
        pytest.param(("retry", "1e3"), "'1e3' is not a valid integer", id="retry-non-integer-id"),
        pytest.param(("cancel", "-"), "JOB_ID", id="cancel-non-integer-id"),
        pytest.param(("show", "9" * 20), "JOB_ID", id="id-beyond-64-bits"),
        pytest.param(("cancel", "0"), "JOB_ID", id="id-zero"),
        pytest.param(("enqueue", J, "add", "--params", "[1, 2"), "not valid JSON", id="bad-json"),
        pytest.param(("enqueue", J, "add", "--params", "[1, NaN]"), "params[1]", id="nan"),
        pytest.param(("enqueue", J, "greet", "--params", '{"a": -Infinity}'), "Infinity", id="inf"),
        pytest.param(("enqueue", J, "add", "--params", '"1, 2"'), "params", id="params-not-a-list"),
        pytest.param(
            ("enqueue", J, "greet", "--params", '{"name": "a", "name": "b"}'),
            'params["name"]: this key appears more than once',
            id="duplicate-key",
        ),
        pytest.param(("enqueue", "os", "system"), "not in BGJOBS_ALLOWED_JOBS", id="not-allowed"),
        pytest.param(("enqueue", J + "\x1b[2J", "add"), "class_name", id="escape-in-class"),
        pytest.param(("enqueue", J, "ad\nd\r\x07"), "method_name", id="controls-in-method"),
        pytest.param(("enqueue", J, "\x9b31m"), "method_name", id="c1-control-in-method"),
        pytest.param(("enqueue", J, "_private"), "method_name", id="private-method"),
        pytest.param(("enqueue", "a" * 5000, "add"), "class_name", id="huge-class-name"),
        pytest.param(("enqueue", J, "add", "--retries", "-1"), "--retries", id="negative-retries"),
        pytest.param(("enqueue", J, "add", "--delay", "nan"), "delay", id="nan-delay"),
        pytest.param(("enqueue", J, "add", "--priority", "high"), "--priority", id="bad-priority"),
        pytest.param(("enqueue", J), "METHOD_NAME", id="enqueue-missing-method"),
        pytest.param(("list", "--status", "bogus"), "--status", id="unknown-status"),
        pytest.param(("list", "--status", "\x1b[31m"), "--status", id="escape-in-status"),
        pytest.param(("list", "--limit", "0"), "--limit", id="zero-limit"),
        pytest.param(("retry",), "--all-failed", id="retry-neither"),
        pytest.param(("retry", "1", "--all-failed"), "not both", id="retry-both"),
        pytest.param(("prune",), "--older-than", id="prune-without-age"),
        pytest.param(("prune", "--older-than", "-1"), "--older-than", id="prune-negative-age"),
        pytest.param(("worker", "--concurrency", "0"), "--concurrency", id="zero-concurrency"),
        pytest.param(("stats", "--bogus"), "--bogus", id="stats-unknown-option"),
        pytest.param(("sweep", "now"), "now", id="sweep-extra-argument"),
        pytest.param(("init-db", "now"), "now", id="init-db-extra-argument"),
        pytest.param(("frobnicate",), "frobnicate", id="unknown-command"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_on_stderr(
    env: Env, bgjobs: Any, args: tuple[str, ...], fragment: str
) -> None:
    line = refused(env.flask("bgjobs", *args), fragment)
    assert len(line) <= 600
    assert bgjobs.list_jobs()[1] == 0  # nothing was stored


@sqlite_only
@pytest.mark.parametrize(
    "args",
    [
        ("worker", "--burst"),
        ("enqueue", J, "add", "--params", "[1, 2]"),
        ("list",),
        ("list", "--json"),
        ("show", "1", "--json"),
        ("retry", "1"),
        ("retry", "--all-failed"),
        ("cancel", "1"),
        ("prune", "--older-than", "1"),
        ("stats", "--json"),
        ("sweep",),
        ("init-db",),
    ],
    ids=lambda args: "-".join(args[:2]),
)
def test_an_unreachable_database_is_one_line_for_every_command(
    env: Env, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    monkeypatch.setenv("BGJOBS_DATABASE_URI", UNREACHABLE)
    refused(env.flask("bgjobs", *args, timeout=60), "database error", "127.0.0.1")


# -- help ------------------------------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_shows_an_example(env: Env, command: str) -> None:
    text = ok(env.flask("bgjobs", command, "--help"))
    assert "Example" in text
    assert re.search(rf"^ +flask (--app \S+ )?bgjobs {command}\b", text, re.M), text


@sqlite_only
def test_group_help_lists_every_command_with_examples(env: Env) -> None:
    text = ok(env.flask("bgjobs", "--help"))
    assert "Examples:" in text
    for command in COMMANDS:
        assert re.search(rf"^  {command} +\S", text, re.M), f"{command} missing:\n{text}"
