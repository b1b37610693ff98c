"""Every end reason from (final message, exit status, kill reason), and what a job process may say."""

from __future__ import annotations

import json
import signal

import pytest

from flask_bgjobs import models
from flask_bgjobs.models import Job
from flask_bgjobs.runner.outcomes import classify, parse_message
from flask_bgjobs.store import storable

OK = {"t": "ok", "result": "42"}
ERR = {"t": "err", "error": "ValueError: bad row", "tb": "Traceback …\nValueError: bad row\n"}
REJ = {"t": "rej", "error": "JobNotAllowed: os::system is not in BGJOBS_ALLOWED_JOBS"}


def job(attempts: int = 1, max_attempts: int = 3, timeout: float = 5.0) -> Job:
    return Job(
        id=7, class_name="app.Jobs", method_name="run", params_json="[]", status="running",
        priority=1, attempts=attempts, max_attempts=max_attempts, delay=0.0, timeout=timeout,
        run_at=0.0, created_at=0.0,
    )  # fmt: skip


def exited(code: int) -> int:
    return code << 8


def retry_policy(j: Job) -> float | None:
    return None if j.attempts >= j.max_attempts else 2.0


def end(final: dict[str, object] | None, status: int | None, killed: str | None = None, **kw: int):  # type: ignore[no-untyped-def]
    return classify(
        job(**kw), final=final, status=status, killed=killed, retry_in=retry_policy, pid=99
    )


@pytest.mark.parametrize(
    ("final", "status", "killed", "reason", "message"),
    [
        (OK, exited(0), None, "succeeded", "succeeded"),
        (OK, None, None, "succeeded", "succeeded"),  # a reused process, still alive
        (OK, exited(3), None, "exit", "exit code 3 without a result; retrying in 2.0 s"),
        (OK, signal.SIGSEGV, None, "signal", "killed by signal 11 (SIGSEGV); retrying in 2.0 s"),
        (ERR, exited(70), None, "exception", "ValueError: bad row; retrying in 2.0 s"),
        (REJ, exited(0), None, "rejected", REJ["error"]),
        (None, exited(0), None, "exit", "exit code 0 without a result; retrying in 2.0 s"),
        (None, signal.SIGKILL, None, "signal", "killed by signal 9 (SIGKILL); retrying in 2.0 s"),
        (OK, signal.SIGKILL, "timeout", "timeout", "timeout after 5 s; retrying in 2.0 s"),
        (None, signal.SIGKILL, "shutdown", "shutdown", "interrupted by shutdown"),
    ],
)
def test_each_ending_gets_exactly_one_reason(
    final: dict[str, object] | None,
    status: int | None,
    killed: str | None,
    reason: str,
    message: str,
) -> None:
    outcome = end(final, status, killed)
    assert outcome is not None
    assert (outcome.reason, outcome.message, outcome.pid) == (reason, message, 99)
    assert reason in models.END_REASONS


def test_a_success_keeps_the_result_and_clears_nothing_else() -> None:
    outcome = end(OK, exited(0))
    assert outcome is not None and outcome.result_json == "42" and outcome.error is None


def test_an_exception_keeps_its_error_and_traceback_and_retries_while_attempts_remain() -> None:
    outcome = end(ERR, exited(70))
    assert outcome is not None
    assert (outcome.error, outcome.traceback, outcome.retry_in) == (ERR["error"], ERR["tb"], 2.0)
    last = end(ERR, exited(70), attempts=3)
    assert last is not None and last.retry_in is None and last.message == ERR["error"]


def test_a_refused_job_is_never_retried() -> None:
    outcome = end(REJ, exited(0), attempts=1, max_attempts=5)
    assert outcome is not None and outcome.retry_in is None


def test_an_attempt_whose_lease_was_lost_is_not_this_runners_to_record() -> None:
    assert end(OK, exited(0), "lost") is None


def test_a_note_replaces_the_success_message() -> None:
    outcome = end({"t": "ok", "result": None, "note": "return value not stored"}, exited(0))
    assert outcome is not None and outcome.message == "return value not stored"


# -- what a job process may say --------------------------------------------------------------


def msg(data: object) -> bytes:
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        msg({"t": "p", "pct": "50"}),
        msg({"t": "p", "pct": 101}),
        msg({"t": "p", "pct": True}),
        msg({"t": "nonsense"}),
        b'{"t": "p", "pct": NaN}',
        b"[" * 100_000,
    ],
)
def test_a_malformed_message_is_ignored(line: bytes) -> None:
    assert parse_message(line, 1024) is None


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ("[NaN]", "NaN"),
        ("[Infinity]", "Infinity"),
        ("{oops", "not valid JSON"),
        ("[" * 100 + "]" * 100, "deeper than 64 levels"),
        ("[" * 100_000 + "]" * 100_000, "deeper than 64 levels"),
        ('{"a": 1, "a": 2}', "more than once"),
        ('"' + "x" * 2_000_000 + '"', "larger than BGJOBS_MAX_PARAMS_BYTES"),
        (12, "not JSON text"),
    ],
)
def test_a_result_the_executor_would_refuse_is_not_stored_and_says_why(
    result: object, problem: str
) -> None:
    checked = parse_message(msg({"t": "ok", "result": result}), 10**6)
    assert checked is not None
    assert checked["result"] is None
    assert checked["note"].startswith("return value not stored: ")
    assert problem in checked["note"]


def test_texts_a_job_process_sends_are_bounded() -> None:
    checked = parse_message(msg({"t": "err", "error": "E" * 10**6, "tb": "T" * 10**6}), 1024)
    assert checked is not None
    assert len(checked["error"]) <= 4100 and len(checked["tb"]) <= 64 * 1024 + 100
    progress = parse_message(msg({"t": "p", "pct": 5, "msg": "m" * 5000}), 1024)
    assert progress is not None and len(progress["msg"]) <= 1100


def test_a_good_result_passes_unchanged() -> None:
    checked = parse_message(msg({"t": "ok", "result": '{"rows": [1, 2]}'}), 1024)
    assert checked == {"t": "ok", "result": '{"rows": [1, 2]}'}


# -- storable text ---------------------------------------------------------------------------


def test_text_both_backends_cannot_hold_becomes_the_replacement_character() -> None:
    assert storable("poison\x00again") == "poison\ufffdagain"
    assert storable("lone \ud800 surrogate") == "lone \ufffd surrogate"
    assert storable(None) is None


def test_storable_text_keeps_the_head_or_the_tail_of_a_long_text_and_says_how_much_was_cut() -> (
    None
):
    long = "HEAD" + "a" * 500 + "TAIL"
    assert storable(long, 10) == "HEADaaaaaa… [498 characters cut]"
    assert storable(long, 10, tail=True) == "[498 characters cut] …aaaaaaTAIL"
    assert storable("x" * 105, 10) == "x" * 105  # within the slack for notes made upstream
