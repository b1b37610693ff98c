"""Every end reason from (final message, exit status, kill reason), and what a job process may say."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from flask_bgjobs import models
from flask_bgjobs.limits import NO_LIMITS, Limits
from flask_bgjobs.models import Job
from flask_bgjobs.runner.outcomes import Usage, classify, parse_message
from flask_bgjobs.store import Outcome, storable

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


# -- limits, usage and output ------------------------------------------------------------------

MiB = 1024 * 1024
MEM_ERR = {"t": "err", "error": "MemoryError", "tb": "Traceback …\nMemoryError\n", "mem": True}
SIGXCPU = getattr(signal, "SIGXCPU", 24)


def ended(
    final: dict[str, object] | None, status: int | None, limits: Limits = NO_LIMITS, **kw: object
) -> Outcome:
    outcome = classify(
        job(), final=final, status=status, killed=None, retry_in=retry_policy, limits=limits,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    assert outcome is not None
    return outcome


def test_a_memory_error_ends_the_attempt_for_memory_naming_the_limit() -> None:
    outcome = ended(MEM_ERR, exited(70), Limits(memory=256 * MiB))
    assert outcome.reason == models.END_MEMORY
    assert outcome.error == "MemoryError (memory limit 256 MiB)"
    assert outcome.traceback == MEM_ERR["tb"] and outcome.retry_in == 2.0  # retried as usual
    assert models.END_MEMORY in models.ATTEMPT_FAILURES


def test_a_memory_error_subclass_counts_by_its_flag_and_one_that_escaped_by_its_name() -> None:
    numpy_like = {**MEM_ERR, "error": "_ArrayMemoryError: Unable to allocate 8.00 GiB"}
    assert ended(numpy_like, exited(70)).reason == models.END_MEMORY
    escaped = {"t": "err", "error": "MemoryError", "tb": None}  # no flag: caught by serve()
    assert ended(escaped, exited(70)).reason == models.END_MEMORY
    assert ended(escaped, exited(70)).error == "MemoryError"  # no limit to name


def test_a_process_that_gave_up_for_memory_under_a_limit_ends_for_memory() -> None:
    said = "terminate called after throwing an instance of 'std::bad_alloc'\n"
    outcome = ended(None, signal.SIGABRT, Limits(memory=MiB), output=said)
    assert outcome.reason == models.END_MEMORY
    assert outcome.error == "out of memory (memory limit 1 MiB): killed by signal 6 (SIGABRT)"
    # Without a memory limit, or without those last words, a signal is just a signal.
    assert ended(None, signal.SIGABRT, output=said).reason == models.END_SIGNAL
    assert ended(None, signal.SIGABRT, Limits(memory=MiB), output="boom").reason == "signal"


def test_sigxcpu_ends_the_attempt_for_cpu() -> None:
    outcome = ended(None, SIGXCPU, Limits(cpu=5.0))
    assert outcome.reason == models.END_CPU
    assert outcome.error == f"CPU limit of 5 s exceeded: killed by signal {SIGXCPU} (SIGXCPU)"
    assert models.END_CPU in models.ATTEMPT_FAILURES and outcome.retry_in == 2.0


def test_sigkill_past_the_cpu_limit_is_cpu_but_below_it_a_signal() -> None:
    spent = Usage(1000, 5.2)
    assert ended(None, signal.SIGKILL, Limits(cpu=5.0), rusage=spent).reason == models.END_CPU
    light = Usage(1000, 0.3)
    assert ended(None, signal.SIGKILL, Limits(cpu=5.0), rusage=light).reason == "signal"


def test_usage_comes_from_wait4_less_the_cpu_used_before_the_attempt() -> None:
    outcome = ended(OK, exited(0), rusage=Usage(51200, 3.75), cpu_base=1.25)
    assert (outcome.max_rss_kb, outcome.cpu_s) == (51200, 2.5)


def test_a_reused_process_reports_its_own_usage_when_it_lives_on() -> None:
    final = {**OK, "usage": {"rss": 40000, "cpu": 0.125}}
    outcome = ended(final, None)
    assert (outcome.max_rss_kb, outcome.cpu_s) == (40000, 0.125)
    # A reused process killed mid-attempt: wait4's figures win over anything it said before.
    killed = ended(final, signal.SIGKILL, rusage=Usage(90000, 9.0), cpu_base=8.0)
    assert (killed.max_rss_kb, killed.cpu_s) == (90000, 1.0)


def test_usage_and_output_ride_on_every_recorded_outcome_and_unknown_usage_is_none() -> None:
    for final, status in ((OK, exited(0)), (ERR, exited(70)), (REJ, exited(0)), (None, 9)):
        outcome = ended(final, status, output="hello\n")
        assert outcome.output == "hello\n"
        assert (outcome.max_rss_kb, outcome.cpu_s) == (None, None)
    shutdown = classify(
        job(), final=None, status=9, killed="shutdown", retry_in=retry_policy,
        rusage=Usage(7, 0.5), output="bye",
    )  # fmt: skip
    assert shutdown is not None and (shutdown.max_rss_kb, shutdown.output) == (7, "bye")


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


def test_usage_retire_and_memory_flags_are_checked_before_they_are_believed() -> None:
    assert parse_message(msg({"t": "u", "cpu": 1.5}), 1024) == {"t": "u", "cpu": 1.5}
    for cpu in (-1, "1", None, True):
        assert parse_message(msg({"t": "u", "cpu": cpu}), 1024) is None
    assert parse_message(b'{"t": "u", "cpu": Infinity}', 1024) is None
    good = {"t": "err", "error": "MemoryError", "tb": None, "mem": True, "retire": True,
            "usage": {"rss": 100, "cpu": 0.5}}  # fmt: skip
    assert parse_message(msg(good), 1024) == good
    lies = {"t": "ok", "result": None, "mem": 1, "retire": "yes", "usage": {"rss": -5, "cpu": 1}}
    assert parse_message(msg(lies), 1024) == {"t": "ok", "result": None}


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


# -- DiscardJob and RetryJob -----------------------------------------------------------------

DISCARD = {
    "t": "err",
    "error": "DiscardJob: order 7 is gone",
    "tb": "Traceback …\n",
    "discard": True,
}


def test_a_discard_fails_the_job_for_good_with_attempts_left() -> None:
    outcome = end(DISCARD, exited(0), attempts=1, max_attempts=5)
    assert outcome is not None
    assert (outcome.reason, outcome.retry_in) == (models.END_DISCARDED, None)
    assert outcome.error == outcome.message == "DiscardJob: order 7 is gone"
    assert outcome.traceback == DISCARD["tb"]
    assert models.END_DISCARDED in models.END_REASONS
    assert models.END_DISCARDED in models.ATTEMPT_FAILURES  # the attempt failed


def test_a_retry_request_replaces_the_policys_wait_while_attempts_remain() -> None:
    asked = {"t": "err", "error": "RetryJob: retry in 30 s", "tb": None, "retry_in": 30.0}
    outcome = end(asked, exited(0), attempts=1, max_attempts=3)
    assert outcome is not None
    assert (outcome.reason, outcome.retry_in) == (models.END_EXCEPTION, 30.0)
    assert outcome.message == "RetryJob: retry in 30 s; retrying in 30.0 s"
    # With no attempt left it fails like any other failed attempt.
    last = end(asked, exited(0), attempts=3, max_attempts=3)
    assert last is not None and (last.reason, last.retry_in) == (models.END_EXCEPTION, None)


def test_a_timeout_wins_over_a_discard_or_retry_request_sent_before_the_kill() -> None:
    outcome = end(DISCARD, signal.SIGKILL, "timeout", attempts=1, max_attempts=3)
    assert outcome is not None and (outcome.reason, outcome.retry_in) == ("timeout", 2.0)


@pytest.mark.parametrize(
    ("extra", "kept"),
    [
        ({"discard": True}, {"discard": True}),
        ({"discard": 1}, {}),  # only true itself
        ({"retry_in": 2.5}, {"retry_in": 2.5}),
        ({"retry_in": 10**12}, {"retry_in": 10 * 365 * 86400.0}),  # capped like any delay
        ({"retry_in": -1}, {}),
        ({"retry_in": "soon"}, {}),
        ({"retry_in": True}, {}),
    ],
)
def test_a_job_process_may_ask_for_a_discard_or_a_retry_and_nothing_else(
    extra: dict[str, object], kept: dict[str, object]
) -> None:
    parsed = parse_message(msg({**ERR, **extra}), 1024)
    assert parsed == {**ERR, **kept}


def test_retry_job_takes_a_number_of_seconds_only() -> None:
    from flask_bgjobs import RetryJob

    assert RetryJob(1.5).in_seconds == 1.5 and str(RetryJob(2)) == "retry in 2 s"
    for bad in (-1, float("nan"), float("inf"), "5", True, 1e12):
        with pytest.raises(ValueError, match="RetryJob"):
            RetryJob(bad)  # type: ignore[arg-type]


def test_run_attempt_turns_discard_and_retry_into_their_final_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_bgjobs import current, executor
    from flask_bgjobs.security import Allowlist

    monkeypatch.setenv("JOBAPP_MARKS", str(tmp_path))
    allow = Allowlist({"jobapp.jobs.Jobs": "*"})
    with current.running(current.JobContext(1, 1, lambda pct, text: None)):
        work = executor.Work(1, 1, "jobapp.jobs.Jobs", "discard", '["gone"]')
        final = executor.run_attempt(work, allow, 1 << 20)
        assert (final["t"], final["error"], final["discard"]) == ("err", "DiscardJob: gone", True)
        assert "raise DiscardJob(reason)" in final["tb"]
        work = executor.Work(1, 1, "jobapp.jobs.Jobs", "retry_later", '[4.5, "unit-tag"]')
        final = executor.run_attempt(work, allow, 1 << 20)
    assert (final["error"], final["retry_in"]) == ("RetryJob: retry in 4.5 s", 4.5)
