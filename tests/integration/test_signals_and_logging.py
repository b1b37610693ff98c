"""Signals where SPEC §12 says (the attempt's own process; the enqueuing one), and every log-file
line on the standard logger ``flask_bgjobs``, in the processes that write them."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Env

from flask_bgjobs import joblog, run_background_job

J = "jobapp.jobs.Jobs"

pytestmark = pytest.mark.usefixtures("ctx")


@pytest.fixture(autouse=True)
def listening(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("JOBAPP_SIGNALS", "1")
    yield
    import jobapp

    jobapp.stop_listening()


def heard(env: Env) -> list[list[str]]:
    """The mark ``signals``: [name, job id, attempt, pid, sender, detail…] per signal."""
    return [line.split(" ", 5) for line in env.marks_of("signals")]


@pytest.mark.parametrize(
    "worker_args",
    [(), ("--reuse", "3")],
    ids=["forked", "reused"],
)
def test_attempt_signals_are_sent_in_the_attempts_own_process(
    env: Env, bgjobs: Any, worker_args: tuple[str, ...]
) -> None:
    ok = run_background_job(J, "greet", ["Ada"])
    bad = run_background_job(J, "fail", ["bad row"], retry_attempts=0)
    gone = run_background_job(J, "discard", ["no order"])
    enqueued = [s for s in heard(env) if s[0] == "job_enqueued"]
    assert [(s[1], s[3]) for s in enqueued] == [
        (str(j.id), str(os.getpid())) for j in (ok, bad, gone)
    ]
    env.burst("--concurrency", "1", *worker_args)
    attempt_signals = [s for s in heard(env) if s[0] != "job_enqueued"]
    by_job: dict[str, list[list[str]]] = {}
    for s in attempt_signals:
        by_job.setdefault(s[1], []).append(s)
    assert [s[0] for s in by_job[str(ok.id)]] == ["job_started", "job_succeeded"]
    assert by_job[str(ok.id)][1][5] == "'Hello, Ada!'"  # the returned object itself
    assert [(s[0], s[2]) for s in by_job[str(bad.id)]] == [
        ("job_started", "1"),
        ("job_failed", "1"),
    ]
    assert by_job[str(bad.id)][1][5] == "ValueError:bad row traced"  # the exception object
    assert by_job[str(gone.id)][1][5] == "DiscardJob:no order traced"
    runner_and_us = {str(os.getpid())}
    assert all(s[3] not in runner_and_us for s in attempt_signals)
    assert {s[4] for s in heard(env)} == {"jobapp"}  # sender: the app
    pids = {bgjobs.get_job(ok.id).pid, bgjobs.get_job(gone.id).pid}
    assert {int(by_job[str(ok.id)][0][3]), int(by_job[str(gone.id)][0][3])} == pids


def test_job_enqueued_is_sent_by_the_process_that_enqueues(env: Env, bgjobs: Any) -> None:
    result = env.flask("bgjobs", "enqueue", J, "noop")
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout)
    [signal] = heard(env)
    assert signal[:3] == ["job_enqueued", str(job_id), "0"]
    assert signal[3] != str(os.getpid())  # the CLI's process
    run_background_job(J, "noop", unique_key="once")
    run_background_job(J, "noop", unique_key="once")  # a duplicate stores nothing: no signal
    assert [s[0] for s in heard(env)] == ["job_enqueued"] * 2


def test_a_receiver_that_raises_changes_nothing_and_says_so_in_the_attempts_output(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBAPP_SIGNALS", "raise")
    job = run_background_job(J, "add", [2, 3])
    env.burst()
    done = bgjobs.get_job(job.id, with_events=True)
    assert (done.status, done.result) == ("succeeded", 5)
    assert "A receiver of the job-succeeded signal raised (ignored)." in (done.output or "")
    assert "RuntimeError: the error reporter is down" in (done.output or "")


def test_every_log_file_line_reaches_the_hosts_logging_in_the_runner_too(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged = env.tmp / "host.log"
    monkeypatch.setenv("JOBAPP_LOG", str(logged))
    ok = run_background_job(J, "progress", [2])
    bad = run_background_job(J, "fail", ["boom"], retry_attempts=0)
    env.burst()
    records = [line.split("|", 4) for line in logged.read_text().splitlines() if "|" in line]
    main = [joblog.parse_line(x) for x in env.main_log.read_text().splitlines()]
    from_main = [(lvl, msg) for _, lvl, msg in main if lvl]
    assert [(r[0], r[4]) for r in records if r[2] == "main"] == from_main
    errors = [r for r in records if r[2] == "errors"]
    assert [(r[0], r[1]) for r in errors] == [("ERROR", str(bad.id))]
    assert (
        errors[0][4]
        == f"Job failed for {J}::fail (job {bad.id}, attempt 1/1). Error: ValueError: boom"
    )
    # The traceback follows the record's line, as Python's logging prints it.
    text = logged.read_text()
    assert re.search(r"Error: ValueError: boom\nTraceback \(most recent call last\):\n", text)
    per_job = {r[1] for r in records if r[2] == "main" and "(job " in r[4]}
    assert per_job == {str(ok.id), str(bad.id)}
    runner_pids = {r[3] for r in records}
    assert str(os.getpid()) not in runner_pids  # written by the runner, not by us
