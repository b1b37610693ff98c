"""Runners start, stop, die and come back without losing or doubling a job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import APP_IMPORT, Env, pid_alive, runner_pids, wait_for

from flask_bgjobs import run_background_job, service
from flask_bgjobs.launcher import runner_command
from flask_bgjobs.models import jobs

J = "jobapp.jobs.Jobs"

pytestmark = pytest.mark.usefixtures("ctx")


def status_of(bgjobs: Any, job_id: int) -> str:
    return str(bgjobs.get_job(job_id, with_events=False).status)


def age_leases(app: Any, seconds: float = 3600) -> None:
    """Make every running job's lease look expired, instead of sleeping until it is."""
    store = app.extensions["bgjobs"].store
    with store.engine.begin() as conn:
        conn.execute(
            jobs.update()
            .where(jobs.c.status == "running")
            .values(lease_expires_at=jobs.c.lease_expires_at - seconds)
        )


def test_sigterm_lets_the_running_job_finish_and_leaves_queued_jobs_pending(
    env: Env, bgjobs: Any
) -> None:
    gate = env.tmp / "gate"
    running = run_background_job(J, "wait_for_file", [str(gate), "term"])
    worker = env.start_worker("--concurrency", "1")
    wait_for(lambda: env.marks_of("term"), what="the job to start")
    queued = run_background_job(J, "noop")
    worker.send_signal(signal.SIGTERM)
    gate.touch()
    assert worker.wait(timeout=20) == 0
    assert status_of(bgjobs, running.id) == "succeeded"
    assert status_of(bgjobs, queued.id) == "pending"


def test_sigterm_past_the_grace_period_returns_the_job_to_pending_without_an_attempt(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_SHUTDOWN_GRACE", "1")
    job = run_background_job(J, "sleep", [60, "grace"])
    worker = env.start_worker()
    wait_for(lambda: env.marks_of("grace"), what="the job to start")
    job_pid = int(env.marks_of("grace")[0].split()[1])
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=1 + 5) == 0
    assert time.monotonic() - started < 6
    done = bgjobs.get_job(job.id)
    assert (done.status, done.attempts, done.end_reason) == ("pending", 0, "shutdown")
    assert done.events[-1].kind == "shutdown"
    wait_for(lambda: not pid_alive(job_pid), what="the job process to die")
    assert "Job interrupted by shutdown for" in env.main_log.read_text()


def test_a_second_sigterm_kills_running_jobs_at_once(env: Env, bgjobs: Any) -> None:
    job = run_background_job(J, "sleep", [60, "twice"])
    worker = env.start_worker()  # conftest: grace 10 s
    wait_for(lambda: env.marks_of("twice"), what="the job to start")
    worker.send_signal(signal.SIGTERM)
    # Signals of one kind do not queue: wait until the first was handled.
    wait_for(lambda: "stopping" in env.main_log.read_text(), what="the first SIGTERM")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=5) == 0
    assert status_of(bgjobs, job.id) == "pending"


def test_a_killed_runner_loses_no_job_the_next_runner_takes_it_back_after_the_lease(
    env: Env, app: Any, bgjobs: Any
) -> None:
    gate = env.tmp / "gate"
    job = run_background_job(J, "wait_for_file", [str(gate), "lost"], retry_attempts=2)
    worker = env.start_worker()
    wait_for(lambda: env.marks_of("lost"), what="the job to start")
    job_pid = int(env.marks_of("lost")[0].split()[1])
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    # The attempt's process dies with its runner (PDEATHSIG): no orphan finishes the job.
    wait_for(lambda: not pid_alive(job_pid), what="the orphaned job process to die")
    assert status_of(bgjobs, job.id) == "running"
    age_leases(app)
    gate.touch()
    env.start_worker()
    wait_for(lambda: status_of(bgjobs, job.id) == "succeeded", what="the retried job")
    done = bgjobs.get_job(job.id)
    assert done.attempts == 2
    ends = [e.kind for e in done.events if e.kind != "started"]
    assert ends == ["lease_expired", "succeeded"]
    assert "LeaseExpired" in env.error_log.read_text()


def test_a_job_that_kills_its_runner_every_time_runs_out_of_attempts(
    env: Env, app: Any, bgjobs: Any
) -> None:
    job = run_background_job(J, "kill_runner", ["killer"], retry_attempts=1)
    for attempt in (1, 2):
        worker = env.start_worker()
        worker.wait(timeout=30)  # the job kills it
        wait_for(lambda a=attempt: len(env.marks_of("killer")) == a, what=f"attempt {attempt}")
        assert status_of(bgjobs, job.id) == "running"
        age_leases(app)
    env.burst()
    done = bgjobs.get_job(job.id)
    assert (done.status, done.attempts, done.end_reason) == ("failed", 2, "lease_expired")


def test_cancelling_a_running_job_kills_its_process_group(env: Env, bgjobs: Any) -> None:
    job = run_background_job(J, "sleep", [60, "cancel"])
    after = run_background_job(J, "add", [1, 2])
    env.start_worker("--concurrency", "1")
    wait_for(lambda: env.marks_of("cancel"), what="the job to start")
    job_pid = int(env.marks_of("cancel")[0].split()[1])
    # The record names the process running the job, for operators.
    wait_for(lambda: bgjobs.get_job(job.id, with_events=False).pid == job_pid, what="its pid")
    bgjobs.cancel(job.id)
    wait_for(lambda: not pid_alive(job_pid), what="the cancelled job's process to die")
    assert status_of(bgjobs, job.id) == "cancelled"
    wait_for(lambda: status_of(bgjobs, after.id) == "succeeded", what="the runner to carry on")
    assert status_of(bgjobs, job.id) == "cancelled"  # the killed attempt wrote nothing


def test_a_runner_that_lost_its_lease_changes_nothing(env: Env, app: Any) -> None:
    """Fencing at the store: a paused runner's late writes are refused."""
    from flask_bgjobs.store import Outcome

    store = app.extensions["bgjobs"].store
    state = app.extensions["bgjobs"]
    job = run_background_job(J, "noop")
    [a] = store.claim(owner="A", runner_id="A", limit=1, lease_seconds=30)
    age_leases(app)
    [reclaimed] = service.sweep(state)
    assert reclaimed.job.id == job.id
    later = time.time() + 5  # past the retry wait, without waiting for it
    [b] = store.claim(owner="B", runner_id="B", limit=1, lease_seconds=30, now=later)
    assert b.attempts == 2
    late = Outcome(job.id, a.attempts, "succeeded", result_json='"late"')
    assert store.finish("A", [late]) == [False]
    assert store.renew("A", 30) == set()
    assert store.get(job.id).status == "running"
    assert store.finish("B", [Outcome(job.id, 2, "succeeded", result_json='"b"')]) == [True]
    done = store.get(job.id, with_events=True)
    assert (done.status, done.result) == ("succeeded", "b")
    assert [e.kind for e in done.events].count("succeeded") == 1


def test_leases_are_renewed_while_a_long_job_runs(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_LEASE_SECONDS", "1")
    job = run_background_job(J, "sleep", [3, "renew"])
    env.start_worker()
    env.start_worker()  # sweeps every third of a second: it would take back an unrenewed lease
    wait_for(lambda: status_of(bgjobs, job.id) == "succeeded", what="the long job to succeed")
    done = bgjobs.get_job(job.id)
    assert done.attempts == 1
    assert "lease_expired" not in [e.kind for e in done.events]
    assert len([m for m in env.marks_of("renew") if m.startswith("start")]) == 1


def test_two_workers_never_run_a_job_twice(env: Env, bgjobs: Any) -> None:
    env.start_worker("--concurrency", "2")
    env.start_worker("--concurrency", "2")
    # Both ready before the jobs arrive, so both take part even on a slow machine.
    wait_for(lambda: len(env.runner_sockets()) == 2, what="both workers to listen")
    ids = {run_background_job(J, "record", ["twice"]).id for _ in range(120)}
    wait_for(
        lambda: bgjobs.stats()["counts"]["succeeded"] == len(ids),
        timeout=60,
        what="every job to succeed",
    )
    ran = [int(line.split()[0]) for line in env.marks_of("twice")]
    assert sorted(ran) == sorted(ids)
    runners = {bgjobs.get_job(i, with_events=False).runner_id for i in ids}
    assert len(runners) == 2  # both took part


def test_enqueue_starts_a_detached_runner_that_outlives_the_web_process(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_AUTOSTART", "true")
    gate = env.tmp / "gate"
    # A short-lived "web process": it enqueues, then exits at once.
    code = (
        "from jobapp import create_app\n"
        "from flask_bgjobs import run_background_job\n"
        "app = create_app()\n"
        "with app.app_context():\n"
        f"    print(run_background_job('{J}', 'wait_for_file', [{str(gate)!r}, 'detached']).id)\n"
    )
    web = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=env.tmp,
        timeout=60,
        check=True,
    )
    job_id = int(web.stdout.strip())
    wait_for(lambda: env.marks_of("detached"), what="the auto-started runner to run the job")
    [pid] = runner_pids(env.instance)
    assert os.getsid(pid) == pid  # its own session: a web server restart does not reach it
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        argv = fh.read().split(b"\0")[:-1]
    assert argv == [a.encode() for a in runner_command()]
    gate.touch()
    wait_for(lambda: status_of(bgjobs, job_id) == "succeeded", what="the job to finish")
    wait_for(lambda: not pid_alive(pid), what="the idle runner to exit")


def test_only_one_runner_is_auto_started_for_many_concurrent_enqueues(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_AUTOSTART", "true")
    monkeypatch.setenv("BGJOBS_IDLE_TIMEOUT", "30")
    code = (
        "from jobapp import create_app\n"
        "from flask_bgjobs import run_background_job\n"
        "app = create_app()\n"
        "with app.app_context():\n"
        f"    for _ in range(10): run_background_job('{J}', 'record', ['many'])\n"
    )
    webs = [subprocess.Popen([sys.executable, "-c", code], cwd=env.tmp) for _ in range(4)]
    for web in webs:
        assert web.wait(timeout=60) == 0
    wait_for(lambda: len(env.marks_of("many")) == 40, what="all 40 jobs to run")
    runners = {
        bgjobs.get_job(int(m.split()[0]), with_events=False).runner_id for m in env.marks_of("many")
    }
    assert len(runners) == 1
    assert len([p for p in runner_pids(env.instance) if pid_alive(p)]) == 1


def test_enqueued_jobs_wake_an_idle_runner_without_waiting_for_its_poll(
    env: Env, bgjobs: Any
) -> None:
    worker = env.start_worker()
    wait_for(env.runner_sockets, what="the runner's socket")
    job = run_background_job(J, "noop")
    done = wait_for(
        lambda: bgjobs.get_job(job.id, with_events=False).started_at, what="the job to start"
    )
    # Not a timing assertion: the record shows it started; the latency is measured in bench/.
    assert done >= job.created_at
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    _ = APP_IMPORT, sa


def test_reads_never_need_sqlite_write_lock_and_a_worker_rides_out_a_locked_start(
    env: Env, app: Any, bgjobs: Any
) -> None:
    """Issue 8: `list` failed, and a worker exited 1, while another connection wrote."""
    import sqlite3

    if not env.database_uri.startswith("sqlite"):
        pytest.skip("SQLite's single write lock")
    with app.app_context():
        job = run_background_job(J, "add", [2, 2])
    holder = sqlite3.connect(env.database_uri.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        listed = env.flask("bgjobs", "list")  # a new process, its first read
        assert listed.returncode == 0, listed.stderr
        assert f"{job.id} " in listed.stdout
        worker = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", APP_IMPORT, "bgjobs", "worker", "--burst"],
            cwd=env.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        env.procs.append(worker)
        wait_for(
            lambda: env.error_log.exists() and "database error during" in env.error_log.read_text(),
            timeout=30,
            what="the worker to meet the lock",
        )
        assert worker.poll() is None, "the worker gave up on a locked database"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert worker.wait(timeout=60) == 0
    with app.app_context():
        assert bgjobs.get_job(job.id).result == 4
