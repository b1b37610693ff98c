"""Process reuse (SPEC §14), the spawn start method (§13) and async targets (§12), for real."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Env, pid_alive, wait_for

from flask_bgjobs import run_background_job

J = "jobapp.jobs.Jobs"

pytestmark = pytest.mark.usefixtures("ctx")


def test_with_reuse_one_job_process_runs_several_attempts_in_a_row(env: Env, bgjobs: Any) -> None:
    jobs = [run_background_job(J, "where") for _ in range(12)]
    env.burst("--concurrency", "2", "--reuse", "6")
    found = [bgjobs.get_job(j.id) for j in jobs]
    assert all(j.status == "succeeded" for j in found)
    pids = [j.result["pid"] for j in found]
    assert len(set(pids)) < len(pids), "no job process ran two attempts"
    assert max(pids.count(p) for p in set(pids)) <= 6
    assert all(j.result["pgid"] == j.result["pid"] for j in found), "each leads its own group"
    assert os.getpid() not in pids


def test_without_reuse_every_attempt_gets_a_fresh_process(env: Env, bgjobs: Any) -> None:
    jobs = [run_background_job(J, "where") for _ in range(6)]
    env.burst("--concurrency", "2")
    assert len({bgjobs.get_job(j.id).result["pid"] for j in jobs}) == 6


@pytest.mark.parametrize(
    ("method", "params", "reason"),
    [("exit_hard", [3], "exit"), ("kill_self", [9], "signal"), ("sleep", [60], "timeout")],
)
def test_with_reuse_a_crash_or_timeout_fails_only_that_attempt_and_the_next_gets_a_fresh_process(
    env: Env, bgjobs: Any, method: str, params: list[Any], reason: str
) -> None:
    before = [run_background_job(J, "where", priority=9) for _ in range(2)]
    bad = run_background_job(J, method, params, retry_attempts=0, timeout=2, priority=5)
    after = [run_background_job(J, "where", priority=1) for _ in range(3)]
    env.burst("--concurrency", "1", "--reuse", "50")
    done = bgjobs.get_job(bad.id)
    assert (done.status, done.end_reason) == ("failed", reason)
    first = {bgjobs.get_job(j.id).result["pid"] for j in before}
    later = {bgjobs.get_job(j.id).result["pid"] for j in after}
    assert len(first) == 1 and len(later) == 1, "one process each side of the failure"
    assert first != later, "the attempt after the failure ran in the failed process"


def test_with_reuse_a_cancel_kills_only_the_cancelled_attempt(env: Env, bgjobs: Any) -> None:
    gate = env.tmp / "gate"
    victim = run_background_job(J, "wait_for_file", [str(gate), "victim"], priority=5)
    others = [run_background_job(J, "where", priority=1) for _ in range(3)]
    worker = env.start_worker("--concurrency", "1", "--reuse", "50")
    wait_for(lambda: env.marks_of("victim"), what="the victim to start")
    bgjobs.cancel(victim.id)
    wait_for(
        lambda: all(bgjobs.get_job(j.id).status == "succeeded" for j in others),
        what="the other jobs to run",
    )
    assert bgjobs.get_job(victim.id).status == "cancelled"
    assert not gate.exists()
    worker.terminate()
    assert worker.wait(timeout=20) == 0


def test_with_reuse_progress_results_and_errors_are_recorded_per_attempt(
    env: Env, bgjobs: Any
) -> None:
    prog = run_background_job(J, "progress", [4], priority=3)
    fail = run_background_job(J, "fail", ["bad row"], retry_attempts=0, priority=2)
    add = run_background_job(J, "add", [2, 3], priority=1)
    env.burst("--concurrency", "1", "--reuse", "10")
    p, f, a = (bgjobs.get_job(j.id) for j in (prog, fail, add))
    assert (p.status, p.progress, p.result) == ("succeeded", 100, "done")
    assert any(e.kind == "progress" for e in p.events or ())
    assert env.main_log.read_text().count("Job progress") == 4  # each report is logged
    assert (f.status, f.attempts, f.error) == ("failed", 1, "ValueError: bad row")
    assert (a.status, a.result) == ("succeeded", 5)


def test_spawned_job_processes_load_the_app_themselves(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_START_METHOD", "spawn")
    jobs = [run_background_job(J, "where") for _ in range(3)]
    progress = run_background_job(J, "progress", [2])
    failing = run_background_job(J, "fail", ["spawned"], retry_attempts=0)
    result = env.burst("--concurrency", "2")
    found = [bgjobs.get_job(j.id).result for j in jobs]
    assert all(not r["runner_loaded"] for r in found), "a forked runner's modules came along"
    assert len({r["pid"] for r in found}) == 3
    assert len({r["ppid"] for r in found}) == 1, "all children of the one runner"
    assert all(r["pgid"] == r["pid"] for r in found)
    assert bgjobs.get_job(progress.id).progress == 100
    assert bgjobs.get_job(failing.id).error == "ValueError: spawned"
    assert result.returncode == 0


def test_spawned_job_processes_can_be_reused_too(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_START_METHOD", "spawn")
    jobs = [run_background_job(J, "where") for _ in range(6)]
    env.burst("--concurrency", "1", "--reuse", "10")
    assert len({bgjobs.get_job(j.id).result["pid"] for j in jobs}) == 1


def test_an_async_target_is_awaited_in_the_job_process(env: Env, bgjobs: Any) -> None:
    job = run_background_job(J, "wait_async", [0.05])
    env.burst()
    done = bgjobs.get_job(job.id)
    assert (done.status, done.result) == ("succeeded", f"awaited {job.id}")


def _fork_server_of(worker_pid: int) -> int:
    """The fork server: the worker's child whose children are the job processes."""
    children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_job_processes_come_from_a_fork_server_that_the_runner_replaces_if_it_dies(
    env: Env, bgjobs: Any
) -> None:
    import signal as signals

    gate = env.tmp / "gate"
    stuck = run_background_job(J, "wait_for_file", [str(gate), "stuck"], retry_attempts=0)
    worker = env.start_worker("--concurrency", "2")
    wait_for(lambda: env.marks_of("stuck"), what="the job to start")
    server = _fork_server_of(worker.pid)
    job_pid = wait_for(lambda: bgjobs.get_job(stuck.id).pid, what="the job's pid to be recorded")
    parent = int(Path(f"/proc/{job_pid}/stat").read_text().split(") ")[1].split()[1])
    assert parent == server
    os.kill(server, signals.SIGKILL)
    done = wait_for(
        lambda: (j := bgjobs.get_job(stuck.id)).is_finished and j, what="the attempt to end"
    )
    assert (done.status, done.end_reason) == ("failed", "signal")
    wait_for(lambda: not pid_alive(job_pid), what="the job process to die with its server")
    after = run_background_job(J, "where")
    wait_for(lambda: bgjobs.get_job(after.id).status == "succeeded", what="a job after the crash")
    assert _fork_server_of(worker.pid) != server
    worker.terminate()
    assert worker.wait(timeout=20) == 0


def _children_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_an_idle_fork_server_keeps_a_spare_process_that_the_next_job_runs_in(
    env: Env, bgjobs: Any
) -> None:
    import signal as signals

    worker = env.start_worker("--concurrency", "2")
    server = wait_for(lambda: len(_children_of(worker.pid)) == 1 and _children_of(worker.pid)[0])
    spare = wait_for(lambda: _children_of(server), what="a spare job process")[0]
    first = run_background_job(J, "where")
    done = wait_for(lambda: (j := bgjobs.get_job(first.id)).is_finished and j)
    assert done.status == "succeeded"
    assert (done.result["pid"], done.result["ppid"], done.result["pgid"]) == (spare, server, spare)
    assert done.result["attempt"] == 1
    # A spare that dies (killed by someone) is never handed a job: the next comes from a fork.
    other = wait_for(lambda: [p for p in _children_of(server) if p != spare], what="a new spare")
    os.kill(other[0], signals.SIGKILL)
    wait_for(lambda: other[0] not in _children_of(server), what="the killed spare to be reaped")
    after = run_background_job(J, "where")
    done = wait_for(lambda: (j := bgjobs.get_job(after.id)).is_finished and j)
    assert done.status == "succeeded" and done.result["pid"] != other[0]
    left = [server, *_children_of(server)]
    worker.terminate()
    assert worker.wait(timeout=20) == 0
    wait_for(lambda: not any(pid_alive(p) for p in left), what="the server and its spare to go")
