"""What a job says is checked and bounded before it is stored (issue 12, defects 1, 4, 5, 6).

Text no database can hold, 20 MiB errors, results a job process forges past the executor's
own checks: each is made storable and bounded, the same on SQLite and PostgreSQL, and none
holds up another job's outcome, lease or claim.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import Env

from flask_bgjobs import InvalidJob, run_background_job

J = "jobapp.jobs.Jobs"

pytestmark = pytest.mark.usefixtures("ctx")


def test_text_postgresql_cannot_store_is_stored_the_same_on_both_backends_and_blocks_no_one(
    env: Env, bgjobs: Any
) -> None:
    poison = run_background_job(J, "poison", retry_attempts=0)
    healthy = run_background_job(J, "add", [1, 2])
    env.burst()
    bad, good = bgjobs.get_job(poison.id), bgjobs.get_job(healthy.id)
    assert (good.status, good.result) == ("succeeded", 3)
    assert (bad.status, bad.end_reason) == ("failed", "exception")
    assert bad.error == "ValueError: poison\ufffdagain \ufffd"
    assert "\x00" not in (bad.traceback or "") and "poison" in (bad.traceback or "")
    assert [e.kind for e in bad.events or ()][-1] == "exception"


def test_progress_with_a_nul_is_stored_and_never_holds_up_a_lease_or_another_claim(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_LEASE_SECONDS", "3")
    noisy = run_background_job(J, "progress_poison", [4])
    healthy = run_background_job(J, "sleep", [4])
    env.burst()
    loud, quiet = bgjobs.get_job(noisy.id), bgjobs.get_job(healthy.id)
    assert (loud.status, quiet.status) == ("succeeded", "succeeded")
    assert (loud.attempts, quiet.attempts) == (1, 1), "a lease was lost: a job ran twice"
    assert loud.progress_message == "a\ufffdb"


def test_a_20_mib_exception_message_is_cut_in_the_record_and_the_logs(
    env: Env, bgjobs: Any
) -> None:
    job = run_background_job(J, "huge_error", [20], retry_attempts=0)
    env.burst()
    done = bgjobs.get_job(job.id)
    assert done.status == "failed"
    assert done.error is not None and done.error.startswith("ValueError: EEEE")
    assert len(done.error) < 5000
    assert max(len(e.message) for e in done.events or ()) < 5000
    assert env.main_log.stat().st_size < 50_000
    assert env.error_log.stat().st_size < 200_000


@pytest.mark.parametrize("forged", ["NaN", "deep", "big", "duplicate"])
def test_a_result_forged_past_the_executor_is_refused_by_the_runner(
    env: Env, bgjobs: Any, app: Any, forged: str
) -> None:
    job = run_background_job(J, "forged_result", [forged])
    env.burst()
    done = bgjobs.get_job(job.id)
    assert (done.status, done.result_json) == ("succeeded", None)
    assert any("return value not stored" in e.message for e in done.events or ())
    client = app.test_client()
    listed = client.get("/bgjobs/api/jobs")
    assert listed.status_code == 200
    json.loads(listed.get_data(as_text=True))  # strict JSON for everyone


@pytest.mark.parametrize(
    ("option", "value"),
    [("delay", 1e12), ("timeout", 1e12), ("delay", 315_360_001)],
)
def test_delays_and_timeouts_past_ten_years_are_refused_storing_nothing(
    env: Env, bgjobs: Any, option: str, value: float
) -> None:
    with pytest.raises(InvalidJob, match=f"{option} must be at most"):
        run_background_job(J, "noop", **{option: value})
    assert bgjobs.list_jobs()[1] == 0


def test_the_cli_refuses_a_huge_delay_in_one_line(env: Env) -> None:
    result = env.flask("bgjobs", "enqueue", J, "noop", "--delay", "1e12")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "delay must be at most" in result.stderr
    listed = env.flask("bgjobs", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
