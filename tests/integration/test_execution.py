"""Jobs run in their own processes, in order, with retries, timeouts and recorded outcomes."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from conftest import Env, pid_alive, wait_for

from flask_bgjobs import run_background_job

J = "jobapp.jobs.Jobs"

pytestmark = pytest.mark.usefixtures("ctx")


def test_positional_and_keyword_params_reach_the_method_and_results_are_stored(
    env: Env, bgjobs: Any
) -> None:
    add = run_background_job(J, "add", [2, 3])
    greet = run_background_job(J, "greet", {"name": "Ada", "greeting": "Hi"})
    func = run_background_job("jobapp.jobs", "module_function", [21])
    env.burst()
    assert bgjobs.get_job(add.id).result == 5
    assert bgjobs.get_job(greet.id).result == "Hi, Ada!"
    done = bgjobs.get_job(func.id)
    assert (done.status, done.result, done.attempts) == ("succeeded", 42, 1)
    assert done.finished_at is not None and done.started_at is not None


def test_every_attempt_runs_in_its_own_process_never_the_web_process(env: Env, bgjobs: Any) -> None:
    jobs = [run_background_job(J, "record", ["pids"]) for _ in range(3)]
    env.burst()
    pids = {bgjobs.get_job(j.id).result["pid"] for j in jobs}
    assert len(pids) == 3
    assert os.getpid() not in pids


def test_due_jobs_start_by_priority_then_run_at_then_id(env: Env, bgjobs: Any) -> None:
    order = [
        run_background_job(J, "record", ["order"], priority=1),
        run_background_job(J, "record", ["order"], priority=5),
        run_background_job(J, "record", ["order"], priority=1),
        run_background_job(J, "record", ["order"], priority=9),
        run_background_job(J, "record", ["order"], priority=-3),
    ]
    env.burst("--concurrency", "1")
    ran = [int(line.split()[0]) for line in env.marks_of("order")]
    assert ran == [order[3].id, order[1].id, order[0].id, order[2].id, order[4].id]


def test_delay_is_respected_and_burst_leaves_jobs_due_later(env: Env, bgjobs: Any) -> None:
    later = run_background_job(J, "noop", delay=3600)
    now = run_background_job(J, "noop")
    env.burst()
    assert bgjobs.get_job(now.id).status == "succeeded"
    assert bgjobs.get_job(later.id).status == "pending"
    assert bgjobs.get_job(later.id).run_at >= later.created_at + 3600


def test_failed_job_retries_until_attempts_are_used_up(env: Env, bgjobs: Any) -> None:
    job = run_background_job(J, "fail", ["boom"], retry_attempts=2)
    assert job.max_attempts == 3
    proc = env.start_worker()
    done = wait_for(
        lambda: bgjobs.get_job(job.id).status == "failed" and bgjobs.get_job(job.id),
        what="the job to fail for good",
    )
    assert done.attempts == 3
    assert done.error == "ValueError: boom"
    assert "raise ValueError(message)" in done.traceback
    ends = [e.kind for e in done.events if e.kind != "started"]
    assert ends == ["exception"] * 3
    errors = env.error_log.read_text()
    for attempt in (1, 2, 3):
        assert f"(job {job.id}, attempt {attempt}/3). Error: ValueError: boom" in errors
    main = env.main_log.read_text()
    assert f"(job {job.id}, attempt 1/3); retrying in 0.1 s. Error: ValueError: boom" in main
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_flaky_job_succeeds_on_a_later_attempt(env: Env, bgjobs: Any) -> None:
    job = run_background_job(J, "flaky", ["flaky", 2], retry_attempts=3)
    env.start_worker()
    done = wait_for(
        lambda: bgjobs.get_job(job.id).status == "succeeded" and bgjobs.get_job(job.id),
        what="the flaky job to succeed",
    )
    assert done.attempts == 3
    assert done.result == "ok"
    assert done.error is None
    assert env.marks_of("flaky") == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("method", "params", "reason", "error"),
    [
        ("exit_hard", [3], "exit", "exit code 3"),
        ("kill_self", [9], "signal", "killed by signal 9"),
    ],
)
def test_a_job_process_that_dies_is_recorded_with_the_reason(
    env: Env, bgjobs: Any, method: str, params: list[Any], reason: str, error: str
) -> None:
    job = run_background_job(J, method, params, retry_attempts=0)
    survivor = run_background_job(J, "add", [1, 1])
    env.burst()
    done = bgjobs.get_job(job.id)
    assert done.status == "failed"
    assert done.end_reason == reason
    assert error in done.error
    assert bgjobs.get_job(survivor.id).status == "succeeded"  # the runner kept serving


def test_timeout_kills_the_whole_process_group(env: Env, bgjobs: Any) -> None:
    job = run_background_job(J, "spawn_and_hang", ["hang"], retry_attempts=0, timeout=1)
    env.burst()
    done = bgjobs.get_job(job.id)
    assert (done.status, done.end_reason) == ("failed", "timeout")
    assert done.error == "timeout after 1 s"
    leader, child = map(int, env.marks_of("hang")[0].split())
    wait_for(
        lambda: not pid_alive(leader) and not pid_alive(child), what="the process group to die"
    )


def test_progress_and_result_are_recorded_and_logged(env: Env, bgjobs: Any) -> None:
    job = run_background_job(J, "progress", [4])
    env.burst()
    done = bgjobs.get_job(job.id)
    assert (done.progress, done.progress_message) == (100.0, "step 4 of 4")
    assert done.result == "done"
    assert any(e.kind == "progress" for e in done.events)
    log = env.main_log.read_text()
    name = f"{J}::progress"
    assert f"INFO: Job progress 25% for {name} (job {job.id}): step 1 of 4\n" in log
    assert f"INFO: Job started for {name} (job {job.id}, attempt 1/4).\n" in log
    assert f"INFO: Job completed successfully for {name} (job {job.id}, " in log


def test_a_result_that_is_not_json_is_not_stored_but_the_job_succeeds(
    env: Env, bgjobs: Any
) -> None:
    job = run_background_job(J, "unserialisable")
    env.burst()
    done = bgjobs.get_job(job.id)
    assert done.status == "succeeded"
    assert done.result is None
    assert "not JSON-serialisable" in done.events[-1].message


def test_row_edited_to_a_forbidden_call_is_refused_at_run_time(
    env: Env, app: Any, bgjobs: Any
) -> None:
    import sqlalchemy as sa

    from flask_bgjobs.models import jobs

    job = run_background_job(J, "noop", retry_attempts=3)
    store = app.extensions["bgjobs"].store
    with store.engine.begin() as conn:
        conn.execute(
            jobs.update()
            .where(jobs.c.id == job.id)
            .values(class_name="os", method_name="system", params='["touch /tmp/pwned"]')
        )
    env.burst()
    done = bgjobs.get_job(job.id)
    assert (done.status, done.end_reason, done.attempts) == ("failed", "rejected", 1)
    assert "JobNotAllowed" in done.error
    assert "Job rejected for os::system. Error: JobNotAllowed" in env.error_log.read_text()
    from flask_bgjobs.errors import JobNotAllowed

    with pytest.raises(JobNotAllowed):
        bgjobs.retry(job.id)
    assert bgjobs.get_job(job.id).status == "failed"
    _ = sa


def test_concurrency_limits_jobs_running_at_once(env: Env, bgjobs: Any) -> None:
    gate = env.tmp / "gate"
    jobs = [run_background_job(J, "wait_for_file", [str(gate), "gate"]) for _ in range(5)]
    env.start_worker("--concurrency", "2")
    wait_for(lambda: len(env.marks_of("gate")) == 2, what="two jobs to start")
    time.sleep(0.5)  # a third start would show up here if the limit leaked
    assert len(env.marks_of("gate")) == 2
    assert bgjobs.stats()["counts"]["running"] == 2
    gate.touch()
    wait_for(
        lambda: all(bgjobs.get_job(j.id).status == "succeeded" for j in jobs),
        what="all jobs to finish",
    )


def test_jobs_use_the_apps_own_database_from_their_own_connections(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's pooled connections never cross into a job (SQLAlchemy's pid guard)."""
    monkeypatch.setenv("BGJOBS_APP", "jobapp.dbapp:create_app()")
    monkeypatch.setenv("BGJOBS_ALLOWED_JOBS", "jobapp.dbapp.Notes:add")
    from jobapp import dbapp

    app = dbapp.create_app()
    with app.app_context():
        ids = [run_background_job("jobapp.dbapp.Notes", "add", [f"note {i}"]).id for i in range(6)]
        dbapp.db.session.query(dbapp.Note).count()  # the web process holds a pooled connection
    result = env.flask("--app", "jobapp.dbapp:create_app()", "bgjobs", "worker", "--burst")
    assert result.returncode == 0, result.stderr
    with app.app_context():
        ext = dbapp.bgjobs
        assert all(ext.get_job(i).status == "succeeded" for i in ids)
        notes = dbapp.db.session.query(dbapp.Note).all()
        assert sorted(n.text for n in notes) == [f"note {i}" for i in range(6)]
        assert len({n.pid for n in notes}) == 6  # one process per attempt
        dbapp.db.session.remove()
        dbapp.db.engine.dispose()
