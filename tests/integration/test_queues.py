"""Queues, unique jobs, concurrency keys, run_at, expiry and retention (SPEC §10), for real.

Every rule here is the database's: several runners (separate processes, and on PostgreSQL
separate "hosts") are started where a rule must hold across them.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Env, wait_for

from flask_bgjobs import InvalidJob, run_background_job

J = "jobapp.jobs.Jobs"

pytestmark = pytest.mark.usefixtures("ctx")


def spans(env: Env, tag: str) -> list[tuple[int, float, float]]:
    """(job id, start, end) of every attempt that recorded itself under `tag`."""
    found = []
    for line in env.marks_of(tag):
        job_id, _attempt, start, end = line.split()
        found.append((int(job_id), float(start), float(end)))
    return found


def most_at_once(intervals: list[tuple[int, float, float]]) -> int:
    edges = sorted([(s, 1) for _, s, _ in intervals] + [(e, -1) for _, _, e in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


# -- queues -----------------------------------------------------------------------------------


def test_a_worker_with_queues_claims_only_those_and_the_default_queue_is_default(
    env: Env, bgjobs: Any
) -> None:
    mail = run_background_job(J, "add", [1, 1], queue="mail")
    plain = run_background_job(J, "add", [2, 2])
    reports = run_background_job(J, "add", [3, 3], queue="reports")
    assert (mail.queue, plain.queue, reports.queue) == ("mail", "default", "reports")
    env.burst("--queues", "mail,default")
    assert bgjobs.get_job(mail.id).status == "succeeded"
    assert bgjobs.get_job(plain.id).status == "succeeded"
    assert bgjobs.get_job(reports.id).status == "pending"
    listed = env.flask("bgjobs", "list", "--queue", "reports", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)] == [reports.id]


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "mail/1", "é"])
def test_a_malformed_queue_name_is_refused_storing_nothing(
    env: Env, bgjobs: Any, name: str
) -> None:
    with pytest.raises(InvalidJob, match="queue"):
        run_background_job(J, "noop", queue=name)
    assert bgjobs.list_jobs()[1] == 0


def test_a_paused_queue_is_not_claimed_by_any_runner_and_holds_up_no_other_queue(
    env: Env, bgjobs: Any
) -> None:
    paused = [run_background_job(J, "add", [i, i], queue="mail", priority=9) for i in range(3)]
    other = run_background_job(J, "add", [5, 5], queue="reports", priority=1)
    result = env.flask("bgjobs", "pause", "mail")
    assert result.stdout == "queue mail paused\n", result.stderr
    env.burst()
    env.burst()  # a second runner, a fresh process: the pause is in the database
    assert bgjobs.get_job(other.id).status == "succeeded"
    assert {bgjobs.get_job(j.id).status for j in paused} == {"pending"}
    listed = json.loads(env.flask("bgjobs", "queues", "--json").stdout)
    mail = next(q for q in listed if q["name"] == "mail")
    assert (mail["paused"], mail["pending"], mail["running"]) == (True, 3, 0)
    assert mail["oldest_waiting_seconds"] >= 0
    assert env.flask("bgjobs", "resume", "mail").stdout == "queue mail resumed\n"
    env.burst()
    assert {bgjobs.get_job(j.id).status for j in paused} == {"succeeded"}


def test_the_python_api_lists_pauses_and_resumes_queues_like_the_cli(env: Env, bgjobs: Any) -> None:
    waiting = run_background_job(J, "add", [1, 2], queue="mail")
    bgjobs.pause("mail")
    env.burst()
    assert bgjobs.get_job(waiting.id).status == "pending"
    found = {q.name: q for q in bgjobs.queues()}
    assert (found["mail"].paused, found["mail"].pending) == (True, 1)
    assert "default" in found  # the default queue is always listed
    assert [j.id for j in bgjobs.list_jobs(queue="mail")[0]] == [waiting.id]
    assert bgjobs.list_jobs(queue="reports") == ([], 0)
    listed = json.loads(env.flask("bgjobs", "queues", "--json").stdout)
    assert next(q for q in listed if q["name"] == "mail")["paused"] is True
    bgjobs.resume("mail")
    env.burst()
    assert bgjobs.get_job(waiting.id).status == "succeeded"
    with pytest.raises(InvalidJob, match="queue"):
        bgjobs.pause("a b")


def test_a_queue_limit_holds_across_runners(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_QUEUE_LIMITS", "slow:1")
    jobs = [run_background_job(J, "span", ["slow", 0.4], queue="slow") for _ in range(4)]
    fast = [run_background_job(J, "add", [i, 1], queue="fast") for i in range(4)]
    workers = [env.start_worker("--concurrency", "3") for _ in range(2)]
    wait_for(
        lambda: all(bgjobs.get_job(j.id).status == "succeeded" for j in jobs + fast),
        timeout=60,
        what="every job to finish",
    )
    for w in workers:
        w.terminate()
        assert w.wait(timeout=20) == 0
    assert most_at_once(spans(env, "slow")) == 1
    assert all(bgjobs.get_job(j.id).attempts == 1 for j in jobs)


# -- concurrency keys -------------------------------------------------------------------------


def test_a_concurrency_key_limits_running_jobs_across_runners_without_spending_attempts(
    env: Env, bgjobs: Any
) -> None:
    limited = [
        run_background_job(
            J,
            "span",
            ["keyed", 0.2],
            concurrency_key="tenant-7",
            concurrency_limit=2,
            retry_attempts=0,
        )
        for _ in range(20)
    ]
    others = [run_background_job(J, "span", ["other", 0.05], priority=-1) for _ in range(4)]
    workers = [env.start_worker("--concurrency", "3") for _ in range(3)]
    wait_for(
        lambda: all(bgjobs.get_job(j.id).status == "succeeded" for j in limited + others),
        timeout=90,
        what="every job to finish",
    )
    for w in workers:
        w.terminate()
        assert w.wait(timeout=20) == 0
    keyed = spans(env, "keyed")
    assert len(keyed) == 20
    assert most_at_once(keyed) == 2
    assert all(bgjobs.get_job(j.id).attempts == 1 for j in limited), "an attempt was spent waiting"
    # The jobs of no key ran while the keyed ones waited (not after them all).
    assert min(s for _, s, _ in spans(env, "other")) < max(s for _, s, _ in keyed)


def test_a_concurrency_limit_without_a_key_is_refused(env: Env) -> None:
    with pytest.raises(InvalidJob, match="concurrency_key"):
        run_background_job(J, "noop", concurrency_limit=3)


# -- unique jobs ------------------------------------------------------------------------------


def test_a_unique_key_returns_the_waiting_job_until_it_has_ended(env: Env, bgjobs: Any) -> None:
    first = run_background_job(J, "add", [1, 2], unique_key="report-42")
    again = run_background_job(J, "add", [9, 9], unique_key="report-42")
    assert (again.id, again.duplicate, first.duplicate) == (first.id, True, False)
    assert bgjobs.get_job(first.id).params == [1, 2]
    assert bgjobs.list_jobs()[1] == 1
    env.burst()
    assert bgjobs.get_job(first.id).status == "succeeded"
    later = run_background_job(J, "add", [3, 4], unique_key="report-42")
    assert later.id != first.id and not later.duplicate


def test_a_unique_key_is_held_while_the_job_retries(env: Env, bgjobs: Any) -> None:
    job = run_background_job(J, "fail", ["x"], retry_attempts=2, unique_key="retrying", delay=0)
    env.burst()  # fails once, retrying 0.05 s later: not due yet for this burst
    assert bgjobs.get_job(job.id).status in ("retrying", "failed")
    if bgjobs.get_job(job.id).status == "retrying":
        assert run_background_job(J, "noop", unique_key="retrying").id == job.id


# -- time -------------------------------------------------------------------------------------


def test_run_at_needs_a_timezone_and_excludes_delay(env: Env, bgjobs: Any) -> None:
    with pytest.raises(InvalidJob, match="timezone-aware"):
        run_background_job(J, "noop", run_at=datetime(2030, 1, 1))
    with pytest.raises(InvalidJob, match="run_at or delay"):
        run_background_job(J, "noop", run_at=datetime.now(timezone.utc), delay=5)
    soon = datetime.now(timezone.utc) + timedelta(hours=2)
    job = run_background_job(J, "noop", run_at=soon)
    assert abs(job.run_at - soon.timestamp()) < 1e-3
    at = env.flask("bgjobs", "enqueue", J, "noop", "--at", "2031-01-02T03:04:05Z")
    assert at.returncode == 0, at.stderr
    shown = json.loads(env.flask("bgjobs", "show", at.stdout.strip(), "--json").stdout)
    assert shown["run_at"] == "2031-01-02T03:04:05Z"
    naive = env.flask("bgjobs", "enqueue", J, "noop", "--at", "2031-01-02T03:04:05")
    assert naive.returncode != 0 and naive.stderr.count("\n") == 1


def test_a_job_that_did_not_start_within_expires_in_is_cancelled_and_never_runs(
    env: Env, bgjobs: Any
) -> None:
    late = run_background_job(J, "record", ["expired"], expires_in=0.2)
    fresh = run_background_job(J, "record", ["fresh"], expires_in=60)
    wait_for(lambda: time.time() > late.expires_at + 0.05, what="the expiry to pass")
    env.burst()
    gone, ran = bgjobs.get_job(late.id), bgjobs.get_job(fresh.id)
    assert (gone.status, gone.end_reason, gone.attempts) == ("cancelled", "expired", 0)
    assert [e.kind for e in gone.events] == ["expired"]
    assert env.marks_of("expired") == []
    assert ran.status == "succeeded" and ran.to_dict()["expires_at"].endswith("Z")
    assert f"Job expired for {J}::record (job {late.id})" in env.main_log.read_text()


# -- retention --------------------------------------------------------------------------------


def test_runners_delete_finished_jobs_past_the_retention_failed_ones_after_twice_that(
    env: Env, app: Any, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_RETENTION_DAYS", "1")
    ok = run_background_job(J, "add", [1, 1])
    bad = run_background_job(J, "fail", ["x"], retry_attempts=0)
    keep = run_background_job(J, "add", [2, 2])
    env.burst()
    day = 86400
    store = app.extensions["bgjobs"].store
    with store.engine.begin() as conn:
        for job_id, age in ((ok.id, 1.5 * day), (bad.id, 1.5 * day), (keep.id, 0.5 * day)):
            conn.execute(
                sa.text("UPDATE bgjobs_jobs SET finished_at = :t WHERE id = :id"),
                {"t": time.time() - age, "id": job_id},
            )
    env.burst()  # a new runner purges at once, then hourly
    remaining = {j.id for j in bgjobs.list_jobs()[0]}
    assert remaining == {bad.id, keep.id}


def test_retrying_a_job_whose_unique_key_another_job_holds_is_refused_cleanly(
    env: Env, bgjobs: Any
) -> None:
    old = run_background_job(J, "fail", ["x"], retry_attempts=0, unique_key="export")
    other_failed = run_background_job(J, "fail", ["y"], retry_attempts=0)
    env.burst()
    holder = run_background_job(J, "noop", unique_key="export", delay=3600)
    refused = env.flask("bgjobs", "retry", str(old.id))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert f"held by job {holder.id}" in refused.stderr
    all_failed = env.flask("bgjobs", "retry", "--all-failed")
    assert all_failed.stdout == "1 job(s) retried\n", all_failed.stderr
    assert bgjobs.get_job(other_failed.id).status == "pending"
    assert bgjobs.get_job(old.id).status == "failed"


def test_a_retried_expired_job_runs_instead_of_expiring_again(env: Env, bgjobs: Any) -> None:
    job = run_background_job(J, "record", ["revived"], expires_in=0.1)
    wait_for(lambda: time.time() > job.expires_at + 0.05, what="the expiry to pass")
    env.burst()
    assert bgjobs.get_job(job.id).end_reason == "expired"
    bgjobs.retry(job.id)
    env.burst()
    assert bgjobs.get_job(job.id).status == "succeeded"
    assert len(env.marks_of("revived")) == 1


def _job_row(i: int, now: float) -> dict[str, Any]:
    return {
        "class_name": J, "method_name": "noop", "params": "[]", "status": "pending",
        "priority": i % 3, "attempts": 0, "max_attempts": 1, "delay": 0.0, "timeout": 0.0,
        "run_at": now - i, "created_at": now, "log_incomplete": False,
        "queue": ("mail", "default", "reports")[i % 3],
        "concurrency_key": f"tenant-{i % 50}" if i % 2 else None,
        "concurrency_limit": 2 if i % 2 else None,
    }  # fmt: skip


def test_the_claim_stays_index_backed_with_queues_and_keys_in_use(env: Env, app: Any) -> None:
    """The claim's candidates read the partial index in claim order with 20,000 jobs in
    queues and keys: EXPLAIN on PostgreSQL (its own planner's choice, after ANALYZE), EXPLAIN
    QUERY PLAN on SQLite."""
    from flask_bgjobs.models import jobs

    store = app.extensions["bgjobs"].store
    store.ensure_tables()
    now = time.time()
    with store.engine.begin() as conn:
        conn.execute(jobs.insert(), [_job_row(i, now) for i in range(20_000)])
        conn.execute(sa.text("ANALYZE bgjobs_jobs" if store.is_postgres else "ANALYZE"))
    for queues in (None, ("mail", "default")):
        plan = store.explain_claim(queues=queues)
        assert "ix_bgjobs_jobs_due" in plan, plan
        assert "Seq Scan on bgjobs_jobs j" not in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # SQLite: no sort of every waiting job
