"""The signals an attempt sends, where its result and exception objects exist; and the `Job`
that travels with an attempt to a reused or spawned job process, for their ``job=``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from flask_bgjobs import current, executor, signals
from flask_bgjobs.models import Job
from flask_bgjobs.security import Allowlist

ALLOW = Allowlist({"jobapp.jobs.Jobs": "*"})
JOB = Job(
    id=7, class_name="jobapp.jobs.Jobs", method_name="add", params_json="[2, 3]",
    status="running", priority=1, attempts=2, max_attempts=4, delay=0.0, timeout=60.0,
    run_at=1.5, created_at=1.0, queue="mail", unique_key="k\u00e9y",
)  # fmt: skip


@pytest.fixture
def received() -> Iterator[list[tuple[str, object, dict[str, Any]]]]:
    """Every signal sent during the test: (name, sender, keywords)."""
    seen: list[tuple[str, object, dict[str, Any]]] = []
    hooks = []
    for sig in (signals.job_started, signals.job_succeeded, signals.job_failed):

        def hook(sender: object, _name: str = str(sig.name), **kw: Any) -> None:
            seen.append((_name, sender, kw))

        sig.connect(hook)
        hooks.append((sig, hook))
    yield seen
    for sig, hook in hooks:
        sig.disconnect(hook)


def attempt(method: str, params: str) -> dict[str, Any]:
    work = executor.Work(7, 2, "jobapp.jobs.Jobs", method, params, job=JOB)
    with current.running(current.JobContext(7, 2, lambda pct, text: None)):
        return executor.run_attempt(work, ALLOW, 1 << 20)


def test_a_success_sends_started_then_succeeded_with_the_returned_object(
    received: list[tuple[str, object, dict[str, Any]]],
) -> None:
    assert attempt("greet", '["Ada"]')["result"] == '"Hello, Ada!"'
    assert [(name, kw) for name, _, kw in received] == [
        ("job-started", {"job": JOB}),
        ("job-succeeded", {"job": JOB, "result": "Hello, Ada!"}),
    ]


def test_a_failure_sends_the_exception_object_with_its_traceback(
    received: list[tuple[str, object, dict[str, Any]]],
) -> None:
    assert attempt("fail", '["bad row"]')["error"] == "ValueError: bad row"
    names = [name for name, _, _ in received]
    assert names == ["job-started", "job-failed"]
    exc = received[1][2]["exception"]
    assert isinstance(exc, ValueError) and str(exc) == "bad row"
    assert exc.__traceback__ is not None and received[1][2]["job"] is JOB


def test_a_refused_job_sends_nothing_as_it_never_started(
    received: list[tuple[str, object, dict[str, Any]]],
) -> None:
    work = executor.Work(7, 2, "os", "system", '["true"]', job=JOB)
    assert executor.run_attempt(work, ALLOW, 1 << 20)["t"] == "rej"
    assert received == []


def test_the_sender_is_the_app_whose_context_runs_the_attempt(
    received: list[tuple[str, object, dict[str, Any]]],
) -> None:
    from flask import Flask

    app = Flask("signals-test")
    with app.app_context():
        attempt("noop", "[]")
    assert {sender for _, sender, _ in received} == {app}


def test_a_receiver_that_raises_changes_nothing_and_is_reported_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(sender: object, **kw: Any) -> None:
        raise RuntimeError("reporter down")

    signals.job_succeeded.connect(broken)
    try:
        final = attempt("add", "[2, 3]")
    finally:
        signals.job_succeeded.disconnect(broken)
    assert (final["t"], final["result"]) == ("ok", "5")
    err = capsys.readouterr().err
    assert "A receiver of the job-succeeded signal raised (ignored)." in err
    assert "RuntimeError: reporter down" in err


def test_the_job_travels_with_the_attempt_to_a_reused_or_spawned_process() -> None:
    work = executor.Work(7, 2, "jobapp.jobs.Jobs", "add", "[2, 3]", job=JOB)
    message = json.loads(work.message())
    again = executor.Work.from_message(message)
    assert again == work and again.job == JOB
    assert executor.Work.from_message({**message, "row": None}).job is None
