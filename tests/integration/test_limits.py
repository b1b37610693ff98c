"""Limits, usage and output per attempt (SPEC §13), with real processes, with and without reuse.

Per-job limits are written into the job's row with SQL after enqueue: the ``memory_limit`` and
``cpu_limit`` columns the runner reads (``run_background_job`` takes them as keywords once the
enqueue side has them).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import APP_IMPORT, Env, wait_for

from flask_bgjobs import run_background_job

J = "jobapp.jobs.Jobs"
MiB = 1024 * 1024

pytestmark = pytest.mark.usefixtures("ctx")

#: Every behaviour holds with a fresh process per attempt and with one process for several.
REUSE = pytest.mark.parametrize("reuse", ["1", "5"], ids=["fresh", "reuse5"])


def set_limits(
    env: Env, job_id: int, *, memory: int | None = None, cpu: float | None = None
) -> None:
    """Give a stored job its own limits, as the enqueue keywords will."""
    engine = sa.create_engine(env.database_uri)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE bgjobs_jobs SET memory_limit = :m, cpu_limit = :c WHERE id = :id"),
                {"m": memory, "c": cpu, "id": job_id},
            )
    finally:
        engine.dispose()


def ending(job: Any) -> Any:
    """The event that ended the job's latest attempt."""
    return [e for e in job.events if e.ends_attempt][-1]


def status_kb(pid: int, field: str) -> int:
    """A ``Vm…`` figure of a live process, in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert found, f"no {field} for {pid}"
    return int(found.group(1))


def data_limit(pid: int) -> str:
    """The soft RLIMIT_DATA of a live process, as /proc shows it."""
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if "data" in x)
    return line.split()[3]


# -- limits -------------------------------------------------------------------------------------


@REUSE
def test_a_job_past_its_memory_limit_ends_memory_while_a_neighbour_runs_on_and_succeeds(
    env: Env, bgjobs: Any, reuse: str
) -> None:
    gate = env.tmp / "gate"
    neighbour = run_background_job(J, "allocate_after", [str(gate), 400, "neighbour"], priority=9)
    hog = run_background_job(J, "allocate", [1024], retry_attempts=1, priority=1)
    set_limits(env, hog.id, memory=256 * MiB)
    worker = env.start_worker("--concurrency", "2", "--reuse", reuse)
    done = wait_for(
        lambda: (j := bgjobs.get_job(hog.id)).status == "failed" and j, what="the hog to fail"
    )
    # Both attempts ran out of memory and were recorded as such, retried as usual.
    assert [e.kind for e in done.events if e.ends_attempt] == ["memory", "memory"]
    assert done.end_reason == "memory"
    assert done.error == "MemoryError (memory limit 256 MiB)"
    assert "MemoryError" in done.traceback
    assert ending(done).max_rss_kb is not None
    # Meanwhile the neighbour was running alongside, in a process of its own with no limit.
    assert bgjobs.get_job(neighbour.id).status == "running"
    assert data_limit(worker.pid) == "unlimited", "the runner's own limit changed"
    gate.touch()
    ok = wait_for(
        lambda: (j := bgjobs.get_job(neighbour.id)).status == "succeeded" and j,
        what="the neighbour to succeed",
    )
    assert ok.result == 400  # 400 MiB: more than the hog was allowed
    assert ending(ok).max_rss_kb > 400 * 1024
    assert worker.poll() is None, "the runner died"
    worker.terminate()
    assert worker.wait(timeout=20) == 0


@REUSE
def test_a_busy_loop_past_its_cpu_limit_ends_cpu_and_the_next_job_runs_fresh(
    env: Env, bgjobs: Any, reuse: str
) -> None:
    # With reuse, the busy loop runs in a process that already spent a second of CPU: the
    # limit is the attempt's own, on top of that.
    warm = run_background_job(J, "burn_cpu", [1.0], priority=9)
    spin = run_background_job(J, "burn_cpu", [60], retry_attempts=0, timeout=120, priority=5)
    set_limits(env, spin.id, cpu=2)
    after = run_background_job(J, "usage_here", priority=1)
    started = time.monotonic()
    env.burst("--concurrency", "1", "--reuse", reuse)
    assert time.monotonic() - started < 60, "the CPU limit did not stop the loop"
    done = bgjobs.get_job(spin.id)
    assert (done.status, done.end_reason) == ("failed", "cpu")
    assert done.error.startswith("CPU limit of 2 s exceeded: killed by signal")
    assert "SIGXCPU" in done.error
    assert 1.2 <= ending(done).cpu_s <= 3.0, "the attempt got its own 2 s, about"
    assert bgjobs.get_job(warm.id).status == "succeeded"
    next_one = bgjobs.get_job(after.id)
    assert next_one.status == "succeeded"
    assert next_one.result["cpu"] == -1, "a limit of the last attempt was left on the next"
    assert next_one.result["pid"] != done.pid, "the attempt after the kill reused its process"


def test_the_configured_defaults_apply_to_jobs_without_limits_and_zero_means_none(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_CPU_LIMIT", "1")
    monkeypatch.setenv("BGJOBS_MEMORY_LIMIT", "300M")
    limited = run_background_job(J, "usage_here")
    free = run_background_job(J, "usage_here")
    set_limits(env, free.id, memory=0, cpu=0)
    own = run_background_job(J, "usage_here")
    set_limits(env, own.id, memory=512 * MiB, cpu=7)
    env.burst()
    seen = {j.id: bgjobs.get_job(j.id).result for j in (limited, free, own)}
    assert seen[limited.id]["data"] == 300 * MiB and 1 <= seen[limited.id]["cpu"] <= 2
    assert (seen[free.id]["data"], seen[free.id]["cpu"]) == (-1, -1)
    assert seen[own.id]["data"] == 512 * MiB and 7 <= seen[own.id]["cpu"] <= 8


# -- usage --------------------------------------------------------------------------------------


@REUSE
def test_every_attempt_records_its_peak_rss_and_cpu_in_events_and_show(
    env: Env, bgjobs: Any, reuse: str
) -> None:
    small = run_background_job(J, "noop", priority=9)
    big = run_background_job(J, "allocate", [200], priority=5)
    busy = run_background_job(J, "burn_cpu", [0.5], priority=1)
    env.burst("--concurrency", "1", "--reuse", reuse)
    s, b, c = (ending(bgjobs.get_job(j.id)) for j in (small, big, busy))
    assert 0 < s.max_rss_kb < b.max_rss_kb
    assert b.max_rss_kb - s.max_rss_kb > 150 * 1024  # its own 200 MiB, not a neighbour's
    # With reuse the next attempt's peak starts again from where the process stands.
    assert c.max_rss_kb < b.max_rss_kb - 150 * 1024
    assert 0 <= s.cpu_s < 0.4 and 0.45 <= c.cpu_s < 1.5
    data = json.loads(env.flask("bgjobs", "show", str(busy.id), "--json").stdout)
    end = [e for e in data["events"] if e["kind"] == "succeeded"][-1]
    assert end["max_rss_kb"] == c.max_rss_kb and end["cpu_s"] == pytest.approx(c.cpu_s)
    text = env.flask("bgjobs", "show", str(big.id)).stdout
    attempts = text.split("attempts:\n")[1].splitlines()
    assert attempts[0].split() == ["#", "STARTED", "(UTC)", "TOOK", "ENDED", "PEAK", "RSS", "CPU"]
    assert re.match(
        r"\s+1\s+\S+ \S+\s+[\d.]+ s\s+succeeded\s+2\d\d(\.\d)? MiB\s+[\d.]+ s$", attempts[1]
    )


# -- output -------------------------------------------------------------------------------------


@REUSE
def test_print_os_write_and_a_subprocess_all_land_in_the_attempts_output(
    env: Env, bgjobs: Any, reuse: str
) -> None:
    first = run_background_job(J, "speak", ["one"], priority=9)
    quiet = run_background_job(J, "noop", priority=5)
    second = run_background_job(J, "speak", ["two"], priority=1)
    env.burst("--concurrency", "1", "--reuse", reuse)
    one, none, two = (bgjobs.get_job(j.id) for j in (first, quiet, second))
    for job, tag in ((one, "one"), (two, "two")):
        assert job.status == "succeeded"
        out = job.output
        for line in (
            f"print {tag}",
            f"stderr {tag}",
            f"fd1 {tag}",
            f"child {tag}",
            f"child err {tag}",
        ):
            assert f"{line}\n" in out, (line, out)
        # In order: print is line-buffered, so it lands before the later raw write.
        assert out.index(f"print {tag}") < out.index(f"fd1 {tag}") < out.index(f"child {tag}")
    assert "two" not in one.output and "one" not in two.output, "output went to the wrong attempt"
    assert none.output is None
    assert one.to_dict()["output"] == one.output
    # The main log keeps its format: no output lines in it.
    main = env.main_log.read_text()
    assert "print one" not in main and "fd1 two" not in main
    assert all(
        re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] [A-Z]+: ", x) for x in main.splitlines()
    )


@REUSE
def test_ten_megabytes_of_output_keep_the_last_64_kib_and_the_runner_stays_flat(
    env: Env, bgjobs: Any, reuse: str
) -> None:
    worker = env.start_worker("--concurrency", "1", "--reuse", reuse)
    warm = run_background_job(J, "flood", [1, "warm"])
    wait_for(lambda: bgjobs.get_job(warm.id).status == "succeeded", what="the warm-up flood")
    before = status_kb(worker.pid, "VmHWM")
    flood = run_background_job(J, "flood", [10, "last"])
    done = wait_for(
        lambda: (j := bgjobs.get_job(flood.id)).status == "succeeded" and j, what="the flood"
    )
    after = status_kb(worker.pid, "VmHWM")
    print(f"\nrunner peak RSS {before} KiB before, {after} KiB after 10 MB of output")
    assert after - before < 2 * 1024, f"the runner grew by {after - before} KiB"
    written = done.result + len(b"the end last\n")
    head, _, kept = done.output.partition("\n")
    dropped = int(re.fullmatch(r"\[(\d+) bytes before this were not kept\]", head).group(1))
    assert len(kept.encode()) == 64 * 1024
    assert dropped + 64 * 1024 == written
    assert kept.endswith("the end last\n")
    worker.terminate()
    assert worker.wait(timeout=20) == 0


@REUSE
def test_a_segfault_leaves_its_python_traceback_in_the_output(
    env: Env, bgjobs: Any, reuse: str
) -> None:
    crash = run_background_job(J, "segfault", retry_attempts=0, priority=9)
    after = run_background_job(J, "add", [1, 2], priority=1)
    env.burst("--concurrency", "1", "--reuse", reuse)
    done = bgjobs.get_job(crash.id)
    assert (done.status, done.end_reason) == ("failed", "signal")
    assert "killed by signal 11 (SIGSEGV)" in done.error
    out = done.output
    assert out.startswith("about to crash\n")
    assert "Fatal Python error: Segmentation fault" in out
    assert re.search(r'File ".*jobapp/jobs.py", line \d+ in segfault', out)
    assert bgjobs.get_job(after.id).result == 3


def test_output_reaches_show_and_the_job_page_escaped(env: Env, bgjobs: Any, app: Any) -> None:
    job = run_background_job(J, "say", ["<b>bold</b> \x1b[31mred\x1b[0m\nnext line\n"])
    env.burst()
    shown = env.flask("bgjobs", "show", str(job.id)).stdout
    assert (
        "output (attempt 1, its stdout and stderr):\n  <b>bold</b> \\x1b[31mred\\x1b[0m\n  next line\n"
        in shown
    )
    assert "\x1b" not in shown
    page = app.test_client().get(f"/bgjobs/jobs/{job.id}").get_data(as_text=True)
    assert "&lt;b&gt;bold&lt;/b&gt; \\x1b[31mred\\x1b[0m\nnext line" in page
    assert "\x1b" not in page and "<b>bold" not in page


# -- replay -------------------------------------------------------------------------------------


def snapshot(env: Env, job_id: int) -> tuple[Any, ...]:
    """Everything stored about a job, and the logs."""
    engine = sa.create_engine(env.database_uri)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM bgjobs_jobs WHERE id = :i"), {"i": job_id})
            events = conn.execute(sa.text("SELECT * FROM bgjobs_events ORDER BY id"))
            stored = (tuple(row.one()), [tuple(e) for e in events])
    finally:
        engine.dispose()
    logs = tuple(p.read_text() if p.exists() else None for p in (env.main_log, env.error_log))
    return (*stored, logs)


def flask_run(env: Env, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", APP_IMPORT, "bgjobs", "run", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=env.tmp,
        timeout=120,
        check=False,
    )


def test_run_replays_a_stored_job_in_the_foreground_and_writes_nothing(
    env: Env, bgjobs: Any
) -> None:
    ok = run_background_job(J, "progress", [2])
    env.burst()
    before = snapshot(env, ok.id)
    result = flask_run(env, str(ok.id))
    assert result.returncode == 0, result.stderr
    assert result.stdout == '"done"\n'
    assert result.stderr == "progress 50%: step 1 of 2\nprogress 100%: step 2 of 2\n"
    pending = run_background_job(J, "speak", ["here"], delay=3600)
    before_pending = snapshot(env, pending.id)
    result = flask_run(env, str(pending.id))
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, '"here"')
    assert "print here" in result.stdout and "child err here" in result.stderr
    assert snapshot(env, ok.id)[0] == before[0]
    assert snapshot(env, pending.id) == before_pending, "run wrote to the job's record or logs"


def test_run_of_a_failing_job_prints_its_traceback_and_pdb_opens_at_it_through_a_pipe(
    env: Env, bgjobs: Any
) -> None:
    job = run_background_job(J, "fail", ["boom"], retry_attempts=0)
    env.burst()
    before = snapshot(env, job.id)
    plain = flask_run(env, str(job.id))
    assert plain.returncode == 1
    assert plain.stderr.startswith("Traceback (most recent call last):\n")
    assert "raise ValueError(message)" in plain.stderr
    assert plain.stderr.endswith("ValueError: boom\n")
    assert "executor.py" not in plain.stderr and "cli.py" not in plain.stderr, "our frames shown"
    debugged = flask_run(env, str(job.id), "--pdb", stdin="p message\nup\nq\n")
    assert debugged.returncode == 1
    assert "-> raise ValueError(message)" in debugged.stdout
    assert "(Pdb) 'boom'" in debugged.stdout
    assert "ValueError: boom" in debugged.stderr
    assert snapshot(env, job.id) == before


def test_run_refuses_an_unknown_job_or_one_the_allowlist_does_not_allow_in_one_line(
    env: Env, bgjobs: Any
) -> None:
    missing = flask_run(env, "999999")
    assert (missing.returncode, missing.stderr) == (
        2,
        "Error: job 999999 not run: no job with id 999999\n",
    )
    job = run_background_job(J, "noop")
    canary = env.tmp / "ran"
    engine = sa.create_engine(env.database_uri)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE bgjobs_jobs SET class_name = 'os', method_name = 'system', "
                    "params = :p WHERE id = :i"
                ),
                {"p": json.dumps([f"touch {canary}"]), "i": job.id},
            )
    finally:
        engine.dispose()
    refused = flask_run(env, str(job.id))
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"Error: job {job.id} not run: ")
    assert "BGJOBS_ALLOWED_JOBS" in refused.stderr and refused.stderr.count("\n") == 1
    assert not canary.exists()


# -- the figures per job ------------------------------------------------------------------------


def test_attempt_figures_per_job_over_the_last_day_come_from_the_events(
    env: Env, bgjobs: Any, app: Any
) -> None:
    store = app.extensions["bgjobs"].store
    jobs = [run_background_job(J, "add", [1, i]) for i in range(20)]
    for _ in range(2):
        run_background_job(J, "fail", ["x"], retry_attempts=0)
    env.burst()
    now = time.time()
    # Durations and peaks we know: rewrite the events' times and usage.
    engine = sa.create_engine(env.database_uri)
    try:
        with engine.begin() as conn:
            for i, job in enumerate(jobs, start=1):
                conn.execute(
                    sa.text(
                        "UPDATE bgjobs_events SET at = :at WHERE job_id = :j AND kind = 'started'"
                    ),
                    {"at": now - 100, "j": job.id},
                )
                conn.execute(
                    sa.text(
                        "UPDATE bgjobs_events SET at = :at, max_rss_kb = :rss "
                        "WHERE job_id = :j AND kind = 'succeeded'"
                    ),
                    {"at": now - 100 + i, "rss": 1000 * i, "j": job.id},
                )
    finally:
        engine.dispose()
    figures = {f["method_name"]: f for f in store.attempt_stats(now - 86400)}
    add = figures["add"]
    assert (add["attempts"], add["failed"]) == (20, 0)
    assert add["p50_s"] == pytest.approx(10) and add["p95_s"] == pytest.approx(19)
    assert (add["p50_rss_kb"], add["p95_rss_kb"]) == (10_000, 19_000)
    fail = figures["fail"]
    assert (fail["attempts"], fail["failed"]) == (2, 2)
    assert list(figures) == ["add", "fail"]  # the busiest first
    assert store.attempt_stats(now + 10) == []
    page = app.test_client().get("/bgjobs/").get_data(as_text=True)
    table = page.split("data-figures>")[1].split("</table>")[0]
    assert ">add<" in table and ">100 %<" in table and ">18.6 MiB<" in table


def test_spawned_job_processes_capture_output_and_count_only_the_attempts_own_cpu(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_START_METHOD", "spawn")
    job = run_background_job(J, "speak", ["spawned"])
    spin = run_background_job(J, "burn_cpu", [60], retry_attempts=0)
    set_limits(env, spin.id, cpu=1)
    env.burst()
    done = bgjobs.get_job(job.id)
    assert "print spawned\n" in done.output and "child err spawned\n" in done.output
    # Loading the app cost the fresh interpreter most of a second of CPU: not the attempt's.
    assert ending(done).cpu_s < 0.5
    spun = bgjobs.get_job(spin.id)
    # Its limit is rounded to a whole second of the process's clock, which loading the app
    # had started: the attempt gets about half a second to a second and a half.
    assert spun.end_reason == "cpu" and 0.2 <= ending(spun).cpu_s <= 2.0
