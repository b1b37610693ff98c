"""``BGJOBS_EXECUTION`` ``inline`` and ``manual`` (SPEC §12): jobs run in the calling process,
recorded as a runner records them, and no runner is woken or started."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Env, runner_pids
from flask import Flask

from flask_bgjobs import run_background_job, signals, testing

J = "jobapp.jobs.Jobs"

MakeApp = Callable[[str], Flask]


@pytest.fixture
def make_app(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeApp]:
    """The test app with ``BGJOBS_EXECUTION`` set, autostart on (it must start nothing)."""
    made: list[Flask] = []

    def make(mode: str) -> Flask:
        monkeypatch.setenv("BGJOBS_EXECUTION", mode)
        monkeypatch.setenv("BGJOBS_AUTOSTART", "true")
        from jobapp import create_app

        made.append(create_app())
        return made[-1]

    yield make
    for app in made:
        app.extensions["bgjobs"].store.close()


def test_inline_runs_the_job_before_returning_and_records_it_as_a_runner_would(
    env: Env, make_app: MakeApp
) -> None:
    with make_app("inline").app_context():
        job = run_background_job(J, "progress", [2])
        assert (job.status, job.result, job.attempts, job.progress) == ("succeeded", "done", 1, 100)
        assert job.runner_id == f"{socket.gethostname()}:{os.getpid()}"
        from jobapp import bgjobs

        kinds = [e.kind for e in bgjobs.get_job(job.id).events]
        assert kinds == ["started", "progress", "progress", "succeeded"]
    log = env.main_log.read_text()
    assert f"Job started for {J}::progress (job {job.id}, attempt 1/4)." in log
    assert f"Job progress 50% for {J}::progress (job {job.id}): step 1 of 2" in log
    assert f"Job completed successfully for {J}::progress (job {job.id}, " in log
    assert runner_pids(env.instance, env.database_uri) == set()


def test_inline_records_a_failure_without_raising_and_retries_at_once(
    env: Env, make_app: MakeApp
) -> None:
    with make_app("inline").app_context():
        job = run_background_job(J, "fail", ["bad row"], retry_attempts=2, delay=0)
        assert (job.status, job.attempts, job.end_reason) == ("failed", 3, "exception")
        assert job.error == "ValueError: bad row" and "raise ValueError" in (job.traceback or "")
        flaky = run_background_job(J, "flaky", ["flaky", 1])
        assert (flaky.status, flaky.attempts, flaky.result) == ("succeeded", 2, "ok")
        asked = run_background_job(J, "retry_later", [3600, "later"])  # not waited inline
        assert (asked.status, asked.attempts) == ("succeeded", 2)
        gone = run_background_job(J, "discard", ["no order"], retry_attempts=5)
        assert (gone.status, gone.attempts, gone.end_reason) == ("failed", 1, "discarded")
    errors = env.error_log.read_text()
    assert f"(job {job.id}, attempt 3/3). Error: ValueError: bad row" in errors
    assert "retrying in 0 s" in env.main_log.read_text()


def test_inline_sends_every_signal_in_the_calling_process(env: Env, make_app: MakeApp) -> None:
    heard: list[tuple[str, Any]] = []

    def hear(name: str) -> Callable[..., None]:
        def receiver(sender: Flask, job: Any, **kw: Any) -> None:
            heard.append((name, kw.get("result", type(kw.get("exception")).__name__)))

        return receiver

    receivers = {n: hear(n) for n in ("job_enqueued", "job_started", "job_succeeded", "job_failed")}
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver)
    try:
        with make_app("inline").app_context():
            run_background_job(J, "add", [2, 3])
            run_background_job(J, "fail", ["x"], retry_attempts=0)
    finally:
        for name, receiver in receivers.items():
            getattr(signals, name).disconnect(receiver)
    assert heard == [
        ("job_enqueued", "NoneType"), ("job_started", "NoneType"), ("job_succeeded", 5),
        ("job_enqueued", "NoneType"), ("job_started", "NoneType"), ("job_failed", "ValueError"),
    ]  # fmt: skip


def test_manual_stores_jobs_and_runs_the_due_ones_when_asked(env: Env, make_app: MakeApp) -> None:
    with make_app("manual").app_context():
        low = run_background_job(J, "record", ["order"], priority=1)
        high = run_background_job(J, "record", ["order"], priority=9)
        later = run_background_job(J, "noop", delay=3600)
        bad = run_background_job(J, "fail", ["x"], retry_attempts=1)
        assert {j.status for j in (low, high, later, bad)} == {"pending"}
        assert [j.id for j in testing.enqueued()] == [low.id, high.id, later.id, bad.id]
        assert [j.id for j in testing.enqueued(J, "record")] == [low.id, high.id]
        assert testing.enqueued("jobapp.jobs", "module_function") == []
        assert runner_pids(env.instance, env.database_uri) == set()  # nothing auto-started
        assert env.marks_of("order") == []
        assert testing.run_jobs() == 3
        ran = [int(line.split()[0]) for line in env.marks_of("order")]
        assert ran == [high.id, low.id]  # claim order: priority first
        from jobapp import bgjobs

        assert bgjobs.get_job(bad.id).attempts == 2  # its retry ran at once
        assert [j.id for j in testing.enqueued()] == [later.id]
        assert testing.run_jobs() == 0
    assert runner_pids(env.instance, env.database_uri) == set()


def test_jobs_that_a_job_enqueues_run_too(env: Env, make_app: MakeApp) -> None:
    with make_app("manual").app_context():
        run_background_job(J, "chain", ["chain", 3])
        assert testing.run_jobs() == 4
        assert env.marks_of("chain") == ["3", "2", "1", "0"]
        assert testing.enqueued() == []
    with make_app("inline").app_context():
        done = run_background_job(J, "chain", ["nested", 2])  # each one inline, inside the last
        assert done.status == "succeeded"
        assert env.marks_of("nested") == ["2", "1", "0"]
