"""The runner's loop on fakes: claims, shutdown, outages, idle exit, due times and leases.

No process, no database: `fakes.Rig` puts the real `Runner` (with its real `Claims`,
`Leases` and `Recorder`) on an in-memory store, pretend job processes and a clock that moves
only when the loop waits. Each test runs in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import BUSY, Rig

from flask_bgjobs.runner.claims import POLL_INTERVAL
from flask_bgjobs.runner.health import REPORT_EVERY
from flask_bgjobs.runner.leases import OWNERSHIP_CHECK
from flask_bgjobs.store import Outcome


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(str(tmp_path))


def test_a_due_job_is_claimed_started_and_its_success_recorded_then_logged(rig: Rig) -> None:
    job = rig.store.add()
    rig.step()
    assert [j.id for j in rig.children.started] == [job.id]
    assert rig.status(job.id) == "running"
    rig.children.succeed(job.id)
    rig.step()
    assert rig.status(job.id) == "succeeded"
    log = rig.main_log()
    assert f"Job started for jobapp.jobs.Jobs::noop (job {job.id}, attempt 1/1)." in log
    assert f"Job completed successfully for jobapp.jobs.Jobs::noop (job {job.id}," in log


def test_no_more_attempts_start_than_the_concurrency(rig: Rig) -> None:
    jobs = [rig.store.add() for _ in range(5)]
    rig.step(3)
    assert len(rig.children.started) == 2
    rig.children.succeed(jobs[0].id)
    rig.step()
    assert len(rig.children.started) == 3 and len(rig.children.attempts) == 2


# -- shutdown ---------------------------------------------------------------------------------


def test_sigterm_stops_claiming_and_lets_the_running_job_finish_within_the_grace(rig: Rig) -> None:
    running, queued = rig.store.add(), rig.store.add()
    rig.children.concurrency = 1
    rig.step()
    rig.runner.request_stop()
    assert rig.step(5)  # still waiting for the job
    rig.children.succeed(running.id)
    assert not rig.step()
    assert rig.status(running.id) == "succeeded"
    assert rig.status(queued.id) == "pending"
    assert [j.id for j in rig.children.started] == [running.id]
    assert rig.runner.exit_code == 0


def test_when_the_grace_runs_out_the_attempt_is_killed_and_handed_back_unspent(
    tmp_path: Path,
) -> None:
    rig = Rig(str(tmp_path), BGJOBS_SHUTDOWN_GRACE=3)
    job = rig.store.add(max_attempts=2)
    rig.step()
    rig.runner.request_stop()
    stopped_at = rig.clock.mono
    while rig.step():
        assert rig.clock.mono - stopped_at < 3 + 1, "the runner overstayed its grace"
    assert rig.clock.mono - stopped_at >= 3
    assert (rig.status(job.id), rig.store.jobs[job.id].attempts) == ("pending", 0)
    assert rig.store.jobs[job.id].end_reason == "shutdown"
    assert "Job interrupted by shutdown for jobapp.jobs.Jobs::noop" in rig.main_log()


def test_a_second_sigterm_kills_at_once(rig: Rig) -> None:
    job = rig.store.add()
    rig.step()
    rig.runner.request_stop()
    rig.step()
    rig.runner.request_stop()
    started = rig.clock.mono
    while rig.step():
        pass
    assert rig.clock.mono - started < 1
    assert rig.status(job.id) == "pending"


def test_outcomes_are_held_while_the_database_is_down_and_written_when_it_is_back(rig: Rig) -> None:
    job = rig.store.add()
    rig.step()
    rig.store.down = BUSY
    rig.children.succeed(job.id)
    rig.step(50)  # a while with the database locked
    assert rig.status(job.id) == "running"
    assert [o.job_id for o in rig.runner.recorder.unsaved] == [job.id]
    errors = rig.error_log()
    assert errors.count("database error during") <= 1 + int(rig.clock.mono // REPORT_EVERY)
    rig.store.down = None
    rig.step(3)
    assert rig.status(job.id) == "succeeded"
    assert rig.runner.recorder.unsaved == []


def test_a_stopping_runner_waits_out_its_grace_for_outcomes_it_could_not_write(
    tmp_path: Path,
) -> None:
    rig = Rig(str(tmp_path), BGJOBS_SHUTDOWN_GRACE=4)
    job = rig.store.add()
    rig.step()
    rig.children.succeed(job.id)
    rig.store.down = BUSY
    rig.runner.request_stop()
    stopped_at = rig.clock.mono
    while rig.step():
        pass
    assert 4 <= rig.clock.mono - stopped_at < 5
    assert f"exiting without recording job {job.id} attempt 1 (succeeded)" in rig.error_log()


def test_a_stopping_runner_leaves_as_soon_as_its_held_outcomes_are_written(tmp_path: Path) -> None:
    rig = Rig(str(tmp_path), BGJOBS_SHUTDOWN_GRACE=30)
    job = rig.store.add()
    rig.step()
    rig.children.succeed(job.id)
    rig.store.down = BUSY
    rig.runner.request_stop()
    rig.step(4)
    rig.store.down = None
    while rig.step():
        pass
    assert rig.status(job.id) == "succeeded"
    assert rig.clock.mono < 1000 + 30


# -- one bad write holds up nothing else (issue 12, defect 1) --------------------------------


def test_an_outcome_the_database_refuses_does_not_hold_up_the_others(rig: Rig) -> None:
    poison, healthy = rig.store.add(), rig.store.add()
    rig.step()
    real_finish = rig.store.finish

    def finish(owner: str, outcomes: list[Outcome], now: object = None, **kw: object) -> list[bool]:
        if any(o.job_id == poison.id and o.error == "ValueError: x" for o in outcomes):
            raise ValueError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return real_finish(owner, outcomes, **kw)  # type: ignore[arg-type]

    rig.store.finish = finish  # type: ignore[method-assign]
    rig.children.exit(poison.id, final={"t": "err", "error": "ValueError: x", "tb": "tb"}, code=70)
    rig.children.succeed(healthy.id)
    rig.step()
    assert rig.status(healthy.id) == "succeeded"
    rig.run_until(lambda: rig.status(poison.id) == "failed")
    assert "[not stored: the database refused it (ValueError)]" in (
        rig.store.jobs[poison.id].error or ""
    )


def test_failing_progress_writes_never_delay_claims(rig: Rig) -> None:
    rig.children.concurrency = 1
    first, second = rig.store.add(), rig.store.add()
    rig.step()
    real_progress = rig.store.progress

    def progress(*args: object) -> list[bool]:
        raise ValueError("bad progress text")

    rig.store.progress = progress  # type: ignore[method-assign]
    att = rig.children.attempts[first.id]
    rig.children.on_progress(att, 10.0, "a")
    rig.children.succeed(first.id)
    rig.step()
    assert rig.status(first.id) == "succeeded"
    assert rig.status(second.id) == "running"
    rig.store.progress = real_progress  # type: ignore[method-assign]


# -- idle exit --------------------------------------------------------------------------------


def test_an_idle_autostarted_runner_exits_and_gives_up_the_lock(tmp_path: Path) -> None:
    rig = Rig(str(tmp_path), autostarted=True, BGJOBS_IDLE_TIMEOUT=60)
    while rig.step():
        pass
    assert 60 <= rig.clock.mono - 1000 < 62
    assert rig.launcher.holder is None


def test_a_job_enqueued_during_the_idle_exit_is_not_stranded(tmp_path: Path) -> None:
    """The race: an enqueue that saw the lock held commits just before the runner lets go."""
    rig = Rig(str(tmp_path), autostarted=True, BGJOBS_IDLE_TIMEOUT=5)
    looks = 0
    real_has_work = rig.store.has_work

    def has_work() -> bool:
        nonlocal looks
        looks += 1
        if looks == 1:  # first look: empty; the enqueue lands before the second look
            rig.store.add()
            return False
        return real_has_work()

    rig.store.has_work = has_work  # type: ignore[method-assign]
    rig.run_until(lambda: looks >= 2)
    assert rig.launcher.holder is not None, "the runner must take the lock back"
    rig.run_until(lambda: bool(rig.children.started))


def test_an_idle_runner_leaves_when_another_took_the_lock_during_its_exit(tmp_path: Path) -> None:
    rig = Rig(str(tmp_path), autostarted=True, BGJOBS_IDLE_TIMEOUT=5)
    looks = 0

    def has_work() -> bool:
        nonlocal looks
        looks += 1
        if looks == 2:  # a new runner was started meanwhile, and an enqueue came
            rig.launcher.holder = 99
            return True
        return False

    rig.store.has_work = has_work  # type: ignore[method-assign]
    while rig.step():
        pass
    assert looks == 2 and rig.launcher.holder == 99


# -- due times and leases ---------------------------------------------------------------------


def test_a_delayed_job_starts_within_a_poll_interval_of_falling_due(rig: Rig) -> None:
    job = rig.store.add(delay=30)
    due = rig.store.jobs[job.id].run_at
    rig.run_until(lambda: bool(rig.children.started))
    assert due <= rig.clock.wall < due + POLL_INTERVAL + 0.01
    assert max(rig.selector.waits) <= POLL_INTERVAL


def test_leases_are_renewed_every_third_of_the_lease_while_a_job_runs(tmp_path: Path) -> None:
    rig = Rig(str(tmp_path), BGJOBS_LEASE_SECONDS=30)
    rig.store.add()
    rig.step()
    rig.store.calls.clear()
    start = rig.clock.mono
    while rig.clock.mono - start < 60:
        rig.step()
    assert rig.store.calls.count("renew") in (5, 6)
    assert rig.store.calls.count("sweep") in (5, 6)


def test_a_cancelled_running_job_is_killed_within_an_ownership_check_and_not_recorded(
    rig: Rig,
) -> None:
    job = rig.store.add()
    rig.step()
    rig.store.cancel(job.id)
    cancelled_at = rig.clock.mono
    rig.run_until(lambda: not rig.children.attempts)
    assert rig.clock.mono - cancelled_at <= OWNERSHIP_CHECK + 0.01
    rig.step()
    assert rig.status(job.id) == "cancelled"
    assert "this runner no longer holds it" in rig.main_log()


def test_an_attempt_past_its_timeout_is_killed_and_recorded_as_such(rig: Rig) -> None:
    job = rig.store.add(timeout=5, max_attempts=1)
    rig.step()
    rig.run_until(lambda: rig.status(job.id) == "failed")
    assert rig.store.jobs[job.id].end_reason == "timeout"
    assert 5 <= rig.clock.mono - 1000 < 6


# -- burst ------------------------------------------------------------------------------------


def test_a_burst_runner_leaves_once_nothing_runs_and_nothing_is_due(tmp_path: Path) -> None:
    rig = Rig(str(tmp_path), burst=True)
    now_job, later = rig.store.add(), rig.store.add(delay=3600)
    rig.step()
    rig.children.succeed(now_job.id)
    while rig.step():
        pass
    assert rig.status(now_job.id) == "succeeded"
    assert rig.status(later.id) == "pending"
    assert rig.runner.exit_code == 0


def test_a_burst_runner_gives_up_with_exit_1_when_the_database_stays_away(tmp_path: Path) -> None:
    rig = Rig(str(tmp_path), burst=True)
    rig.store.down = BUSY
    while rig.step():
        pass
    assert rig.runner.exit_code == 1
    assert 30 <= rig.clock.mono - 1000 < 32
