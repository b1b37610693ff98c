"""Recurring jobs (SPEC §11): exactly one job per tick whatever the number of runners and hosts.

Three runners (on PostgreSQL, three "hosts": separate instance folders, so separate locks and
sockets, as in case 13) watch an ``every: 1`` schedule; one is killed half-way and started
again. Every tick between the first and the last has exactly one job, or a skip line (an
``overlap: skip`` schedule whose previous job still runs), never both and never two.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Env, pid_alive, runner_pids, wait_for

from faults.conftest import Invariants, start_worker, store_of

pytestmark = pytest.mark.usefixtures("ctx", "tables")


@pytest.fixture
def tables(app: Any) -> None:
    """The job tables exist before the first runner looks (the helpers below read them)."""
    store_of(app).ensure_tables()


#: How long the three runners watch the schedules (the issue: 30 s).
WATCH = float(os.environ.get("BGJOBS_FAULTS_SCHEDULE_SECONDS") or 30)
SCHEDULE = {
    "beat": {"job": "jobapp.jobs.Jobs:noop", "every": 1},
    # Runs 2.5 s every second: most ticks find the previous job still running and skip.
    "slow": {"job": "jobapp.jobs.Jobs:sleep", "every": 1, "params": [2.5], "overlap": "skip"},
}
SKIP_LINE = re.compile(
    r"INFO: Schedule (\S+) skipped for (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d): job (\d+) has not finished\."
)


def ticks(app: Any, schedule: str) -> Counter[float]:
    with store_of(app).engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT scheduled_for FROM bgjobs_jobs WHERE schedule = :s"), {"s": schedule}
        ).scalars()
        return Counter(float(t) for t in rows)


def skipped(env: Env, instances: list[Any]) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for log in [env.main_log, *(i / "logs" / "background_jobs.log" for i in instances)]:
        if log.exists():
            found.update((m[1], m[2]) for m in SKIP_LINE.finditer(log.read_text()))
    return found


def minute_of(tick: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(tick))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_runners_enqueue_exactly_one_job_per_tick_even_when_one_is_killed(
    env: Env, app: Any, backend: str, invariants: Invariants, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_SCHEDULE", json.dumps(SCHEDULE))
    monkeypatch.setenv("BGJOBS_LEASE_SECONDS", "3")
    hosts = ["host-a", "host-b", "host-c"]
    instances = [env.tmp / f"{h}-instance" for h in hosts] if backend == "postgresql" else []

    def start(i: int) -> Any:
        extra = {"JOBAPP_INSTANCE": str(instances[i])} if instances else None
        return start_worker(env, "--concurrency", "4", runner_id=hosts[i], extra_env=extra)

    workers = [start(i) for i in range(3)]
    started = time.time()
    wait_for(lambda: ticks(app, "beat"), timeout=30, what="the first tick's job")
    first = min(ticks(app, "beat"))
    half = first + WATCH / 2
    wait_for(lambda: time.time() >= half, timeout=WATCH, interval=0.1, what="half-time")
    os.kill(workers[1].pid, signal.SIGKILL)
    workers[1].wait(timeout=10)
    workers[1] = start(1)
    end = first + WATCH
    wait_for(lambda: time.time() >= end + 1.5, timeout=WATCH + 10, interval=0.1, what="the end")
    for w in (workers[0], workers[2], workers[1]):
        w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(timeout=30)

    beat = ticks(app, "beat")
    assert max(beat.values()) == 1, f"a tick ran twice: {[t for t, n in beat.items() if n > 1]}"
    expected = {first + k for k in range(int(end - first) + 1)}
    missing = sorted(expected - set(beat))
    assert missing == [], f"ticks without a job: {[minute_of(t) for t in missing]}"

    slow = ticks(app, "slow")
    assert max(slow.values()) == 1
    lines = skipped(env, instances)
    assert all(n == 1 for n in lines.values()), f"a skip logged twice: {lines}"
    slow_first = min(slow)
    covered = {minute_of(t) for t in slow} | {tick for name, tick in lines if name == "slow"}
    wanted = {minute_of(slow_first + k) for k in range(int(end - slow_first) - 3)}
    assert wanted - covered == set(), "a slow tick has neither a job nor a skip line"
    assert not ({minute_of(t) for t in slow} & {t for n, t in lines if n == "slow"})
    assert time.time() - started < WATCH + 120
    invariants.check()


def test_after_downtime_only_the_latest_missed_tick_runs_once(
    env: Env, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # overlap allow: the job of the last tick before the stop may still be waiting then, and
    # with skip the returning runner would rightly skip the latest tick for it.
    beat = SCHEDULE["beat"] | {"overlap": "allow"}
    monkeypatch.setenv("BGJOBS_SCHEDULE", json.dumps({"beat": beat}))
    worker = start_worker(env, runner_id="host-a")
    wait_for(lambda: ticks(app, "beat"), timeout=30, what="a first job")
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    before = ticks(app, "beat")
    last = max(before)
    wait_for(lambda: time.time() >= last + 4.2, timeout=10, interval=0.05, what="4 ticks to pass")
    env.burst()  # a runner comes back: takes the latest tick, not the four it missed
    after = ticks(app, "beat")
    new = sorted(set(after) - set(before))
    assert len(new) == 1, [minute_of(t) for t in new]
    assert new[0] >= last + 4


def test_overlap_allow_enqueues_while_the_previous_job_still_runs(
    env: Env, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"job": "jobapp.jobs.Jobs:sleep", "every": 1, "params": [3], "overlap": "allow"}
    monkeypatch.setenv("BGJOBS_SCHEDULE", json.dumps({"busy": spec}))
    worker = start_worker(env, "--concurrency", "4", runner_id="host-a")
    wait_for(lambda: len(ticks(app, "busy")) >= 3, timeout=30, what="three overlapping jobs")
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    assert "skipped" not in env.main_log.read_text()


def test_an_autostarted_runner_stays_up_while_schedules_exist_and_a_request_starts_one(
    env: Env, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_SCHEDULE", json.dumps({"beat": SCHEDULE["beat"]}))
    monkeypatch.setenv("BGJOBS_AUTOSTART", "true")
    monkeypatch.setenv("BGJOBS_IDLE_TIMEOUT", "1")
    from jobapp import create_app

    web = create_app()
    assert web.test_client().get("/no-such-page").status_code == 404  # any request will do
    wait_for(lambda: runner_pids(env.instance), timeout=30, what="a runner to be started")
    [pid] = runner_pids(env.instance)
    wait_for(lambda: len(ticks(app, "beat")) >= 3, timeout=30, what="three ticks")
    assert pid_alive(pid), "the runner left while schedules exist (idle timeout 1 s)"
    web.extensions["bgjobs"].store.close()


def test_schedules_are_listed_and_paused_for_every_runner(
    env: Env, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    nightly = {"job": "jobapp.jobs.Jobs:noop", "cron": "0 2 * * *", "timezone": "Europe/Berlin"}
    monkeypatch.setenv(
        "BGJOBS_SCHEDULE", json.dumps({"beat": SCHEDULE["beat"], "nightly": nightly})
    )
    listed = json.loads(env.flask("bgjobs", "schedules", "--json").stdout)
    assert [s["name"] for s in listed] == ["beat", "nightly"]
    night = listed[1]
    assert (night["cron"], night["timezone"], night["paused"]) == (
        "0 2 * * *",
        "Europe/Berlin",
        False,
    )
    assert night["words"] == "At 02:00 every day (Europe/Berlin)"
    assert night["next_run"].endswith(":00:00Z")
    text = env.flask("bgjobs", "schedules").stdout
    assert "cron 0 2 * * * (Europe/Berlin)" in text and "every 1 s" in text
    assert env.flask("bgjobs", "pause", "--schedule", "beat").stdout == "schedule beat paused\n"
    env.burst()
    assert ticks(app, "beat") == Counter()
    assert env.flask("bgjobs", "resume", "--schedule", "beat").returncode == 0
    unknown = env.flask("bgjobs", "pause", "--schedule", "nope")
    assert unknown.returncode == 1 and "no schedule named" in unknown.stderr


def test_the_python_api_lists_pauses_and_resumes_schedules(
    env: Env, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobapp

    from flask_bgjobs import InvalidJob

    monkeypatch.setenv("BGJOBS_SCHEDULE", json.dumps({"beat": SCHEDULE["beat"]}))
    web = jobapp.create_app()
    bgjobs = jobapp.bgjobs
    with web.app_context():
        [beat] = bgjobs.schedules()
        assert (beat.name, beat.every, beat.paused) == ("beat", 1, False)
        assert beat.next_run is not None
        bgjobs.pause_schedule("beat")
        assert env.flask("bgjobs", "schedules", "--json").stdout.count('"paused": true') == 1
        env.burst()
        assert ticks(app, "beat") == Counter()
        [beat] = bgjobs.schedules()
        assert (beat.paused, beat.next_run) == (True, None)
        bgjobs.resume_schedule("beat")
        assert bgjobs.schedules()[0].paused is False
        with pytest.raises(InvalidJob, match="no schedule named"):
            bgjobs.pause_schedule("nope")
    web.extensions["bgjobs"].store.close()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"job": "jobapp.jobs.Jobs:noop"}, "cron"),
        ({"job": "jobapp.jobs.Jobs:noop", "cron": "61 * * * *"}, "cron"),
        ({"job": "jobapp.jobs.Jobs:noop", "cron": "* * * *"}, "cron"),
        ({"job": "jobapp.jobs.Jobs:noop", "every": 0}, "every"),
        (
            {"job": "jobapp.jobs.Jobs:noop", "cron": "* * * * *", "timezone": "Mars/Base"},
            "timezone",
        ),
        ({"job": "os:system", "every": 5}, "job"),
        ({"job": "jobapp.jobs.Jobs", "every": 5}, "job"),
        ({"job": "jobapp.jobs.Jobs:noop", "every": 5, "overlap": "maybe"}, "overlap"),
        ({"job": "jobapp.jobs.Jobs:noop", "every": 5, "queue": "a b"}, "queue"),
        ({"job": "jobapp.jobs.Jobs:noop", "every": 5, "priority": "high"}, "priority"),
        ({"job": "jobapp.jobs.Jobs:noop", "every": 5, "timeout": -1}, "timeout"),
    ],
)
def test_a_malformed_schedule_stops_the_app_naming_the_schedule_and_field(
    env: Env, monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any], field: str
) -> None:
    monkeypatch.setenv("BGJOBS_SCHEDULE", json.dumps({"bad-one": spec}))
    result = env.flask("bgjobs", "schedules")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert "BGJOBS_SCHEDULE" in result.stderr
    assert f"schedule 'bad-one', field '{field}'" in result.stderr


def test_a_schedule_whose_timing_changed_waits_for_its_next_tick(
    env: Env, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moving a cron line is not a missed tick: the new timing starts afresh."""
    yearly = {"job": "jobapp.jobs.Jobs:noop", "cron": "0 0 1 1 *"}
    monkeypatch.setenv("BGJOBS_SCHEDULE", json.dumps({"report": yearly}))
    env.burst()  # records the schedule, its last tick last 1 January
    monkeypatch.setenv("BGJOBS_SCHEDULE", json.dumps({"report": yearly | {"cron": "* * * * *"}}))
    changed_at = time.time()
    env.burst()
    early = [t for t in ticks(app, "report") if t <= changed_at]
    assert early == [], "the new timing ran at once for a tick before the change"
