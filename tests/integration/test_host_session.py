"""``session=``: a job joins the host app's transaction (SPEC §12), on SQLite and PostgreSQL.

The order example of docs/transactions.md: an order row and its "send confirmation" job commit
or roll back together; real runner processes run what committed and never see the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import PG_URI, Env, pid_alive, wait_for
from flask import Flask
from sqlalchemy.orm import Session

from flask_bgjobs import BgJobsError, JobNotFound, run_background_job, service, signals

DBAPP = "jobapp.dbapp:create_app()"
J = "jobapp.jobs.Jobs"
ADD = ("--params", "[20, 22]")


@pytest.fixture
def app(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The Flask-SQLAlchemy test app (jobs in the app's own database), as runners build it."""
    monkeypatch.setenv("BGJOBS_APP", DBAPP)
    from jobapp import dbapp

    app = dbapp.create_app()
    with app.app_context():
        dbapp.bgjobs.init_db()  # as a deployed app has them (a first enqueue creates them too)
    yield app
    with app.app_context():
        dbapp.db.session.remove()
        dbapp.db.engine.dispose()
    app.extensions["bgjobs"].store.close()


@pytest.fixture
def enqueued_signals() -> Iterator[list[int]]:
    """Ids of the jobs `job_enqueued` announced in this process."""
    seen: list[int] = []

    def hear(sender: object, job: Any) -> None:
        seen.append(job.id)

    signals.job_enqueued.connect(hear)
    yield seen
    signals.job_enqueued.disconnect(hear)


def place_order(item: str) -> Any:
    """Add an order and flush it (its id is known; the transaction stays open)."""
    from jobapp import dbapp

    order = dbapp.Order(item=item)
    dbapp.db.session.add(order)
    dbapp.db.session.flush()
    return order


def enqueue_confirmation(order_id: int) -> Any:
    from jobapp import dbapp

    return dbapp.send_confirmation.with_options(session=dbapp.db.session).enqueue(order_id)


def test_a_job_enqueued_in_a_transaction_that_commits_runs_in_a_runner(
    env: Env, app: Flask, enqueued_signals: list[int]
) -> None:
    from jobapp import dbapp

    env.start_worker(app=DBAPP)
    with app.app_context():
        order_id = place_order("book").id
        job = enqueue_confirmation(order_id)
        assert (job.status, job.params, job.duplicate) == ("pending", [order_id], False)
        # Not committed: no other connection sees it, so no runner can claim it yet.
        with pytest.raises(JobNotFound):
            dbapp.bgjobs.get_job(job.id)
        assert enqueued_signals == []
        dbapp.db.session.commit()
        assert enqueued_signals == [job.id]
        done = wait_for(
            lambda: (
                dbapp.bgjobs.get_job(job.id).status == "succeeded" and dbapp.bgjobs.get_job(job.id)
            ),
            what="the committed job to run",
        )
    assert done.result == "confirmed book"
    [line] = env.marks_of("confirmations")
    assert line.split()[:2] == [str(order_id), "book"]
    assert int(line.split()[2]) != os.getpid()  # in a job process


def test_a_job_enqueued_in_a_transaction_that_rolls_back_never_existed(
    env: Env, app: Flask, enqueued_signals: list[int]
) -> None:
    from jobapp import dbapp

    with app.app_context():
        order = place_order("pen")
        job = enqueue_confirmation(order.id)
        dbapp.db.session.rollback()
        with pytest.raises(JobNotFound):
            dbapp.bgjobs.get_job(job.id)
        assert sum(dbapp.bgjobs.counts().values()) == 0
        assert dbapp.db.session.query(dbapp.Order).filter_by(item="pen").count() == 0
    result = env.flask("--app", DBAPP, "bgjobs", "worker", "--burst")
    assert result.returncode == 0, result.stderr
    assert env.marks_of("confirmations") == []
    assert enqueued_signals == []
    for log in (env.main_log, env.error_log):
        text = log.read_text() if log.exists() else ""
        assert "send_confirmation" not in text, text


def test_only_what_a_savepoint_kept_is_announced_and_run_after_the_commit(
    env: Env, app: Flask, enqueued_signals: list[int]
) -> None:
    from jobapp import dbapp

    with app.app_context():
        kept_order = place_order("kept")
        with dbapp.db.session.begin_nested():
            kept = enqueue_confirmation(kept_order.id)
        savepoint = dbapp.db.session.begin_nested()
        dropped = enqueue_confirmation(kept_order.id)
        savepoint.rollback()
        dbapp.db.session.commit()
        assert enqueued_signals == [kept.id]
        assert dbapp.bgjobs.get_job(kept.id).status == "pending"
        with pytest.raises(JobNotFound):
            dbapp.bgjobs.get_job(dropped.id)


def test_runners_are_woken_only_after_the_commit(
    env: Env, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobapp import dbapp

    woken: list[str] = []
    monkeypatch.setattr(service, "wake", lambda state, reason="e": woken.append(reason))
    with app.app_context():
        many = dbapp.bgjobs.enqueue_many(
            [{"class_name": J, "method_name": "add", "params": [i, i]} for i in range(3)],
            session=dbapp.db.session,
        )
        enqueue_confirmation(place_order("lamp").id)
        assert woken == []
        dbapp.db.session.commit()
        assert woken == ["e", "e"]  # once per enqueue call, after the commit
        assert [dbapp.bgjobs.get_job(j.id).status for j in many] == ["pending"] * 3


def test_a_session_of_another_database_is_refused_and_nothing_is_stored(
    env: Env, app: Flask, backend: str, tmp_path: Path, enqueued_signals: list[int]
) -> None:
    from jobapp import dbapp

    other_uri = f"sqlite:///{tmp_path / 'other.db'}" if backend == "sqlite" else PG_URI
    engine = sa.create_engine(other_uri)
    try:
        with app.app_context(), Session(engine) as other:
            with pytest.raises(BgJobsError, match="session= must use the job database"):
                run_background_job(J, "add", [1, 2], session=other)
            with pytest.raises(BgJobsError, match="takes a SQLAlchemy session"):
                run_background_job(J, "add", [1, 2], session="db.session")
            assert sum(dbapp.bgjobs.counts().values()) == 0
    finally:
        engine.dispose()
    assert enqueued_signals == []
    errors = env.error_log.read_text()
    assert errors.count("ERROR: Job rejected for jobapp.jobs.Jobs::add. Error: BgJobsError") == 2


def test_unique_keys_and_bad_specs_behave_in_a_transaction_as_outside_one(
    env: Env, app: Flask
) -> None:
    from jobapp import dbapp

    with app.app_context():
        held = run_background_job(J, "noop", unique_key="nightly")
        first = run_background_job(J, "noop", unique_key="nightly", session=dbapp.db.session)
        assert (first.id, first.duplicate) == (held.id, True)
        dbapp.db.session.commit()
        with pytest.raises(BgJobsError, match=r"specs\[1\]"):
            dbapp.bgjobs.enqueue_many(
                [
                    {"class_name": J, "method_name": "noop"},
                    {"class_name": "os", "method_name": "system"},
                ],
                session=dbapp.db.session,
            )
        dbapp.db.session.commit()
        assert sum(dbapp.bgjobs.counts().values()) == 1


# -- SQLite: the host's transaction holds the single write lock ------------------------------


def _enqueue_from_another_process(env: Env) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", DBAPP, "bgjobs", "enqueue", J, "add", *ADD],
        cwd=env.tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("hold", [2.5, 7.0], ids=["within-busy-timeout", "past-busy-timeout"])
def test_runners_and_enqueues_ride_out_a_host_transaction_holding_the_sqlite_lock(
    env: Env, app: Flask, hold: float
) -> None:
    """A job finishes while the host holds the lock: its outcome waits, then is recorded as it
    was (no failed outcome); an enqueue from another process waits, or is refused having
    stored nothing; the job enqueued in the transaction runs once it commits."""
    from jobapp import dbapp

    gate = env.tmp / "gate"
    env.start_worker(app=DBAPP)
    with app.app_context():
        blocked = run_background_job(J, "wait_for_file", [str(gate), "blocked"])
        wait_for(lambda: env.marks_of("blocked"), what="the first job to start")
        order = place_order("held")  # from here the host's transaction holds the write lock
        in_tx = enqueue_confirmation(order.id)
        started = time.monotonic()
        other = _enqueue_from_another_process(env)
        gate.touch()
        job_pid = int(env.marks_of("blocked")[0].split()[1])
        wait_for(lambda: not pid_alive(job_pid), what="the first job's process to end")
        # Its outcome now waits for the lock. Hold the lock as long as the scenario says: the
        # duration of the host's transaction is what is tested here, not a stand-in for one.
        time.sleep(max(0.0, hold - (time.monotonic() - started)))
        assert dbapp.bgjobs.get_job(blocked.id).status == "running"  # not recorded yet
        dbapp.db.session.commit()
        out, err = other.communicate(timeout=60)
        for job_id in (blocked.id, in_tx.id):
            wait_for(
                lambda j=job_id: dbapp.bgjobs.get_job(j).status == "succeeded",
                timeout=30,
                what=f"job {job_id} to succeed",
            )
        first = dbapp.bgjobs.get_job(blocked.id)
        assert (first.result, first.attempts) == ("released", 1)
        assert [e.kind for e in first.events or ()] == ["started", "succeeded"]
        if hold < 5.0:  # within the busy timeout the other enqueue just waited
            assert other.returncode == 0, err
            queued = int(out.strip())
            wait_for(lambda: dbapp.bgjobs.get_job(queued).status == "succeeded", what="it")
        else:  # past it: refused, saying so, and nothing half-stored
            assert other.returncode != 0 and "locked" in err, (out, err)
            assert sum(dbapp.bgjobs.counts().values()) == 2
            assert "; will retry" in env.error_log.read_text()  # the runner said, and went on
    assert "Job failed" not in (env.error_log.read_text() if env.error_log.exists() else "")
