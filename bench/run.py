"""flask-bgjobs benchmark: one command, every figure of the performance issue.

    .venv/bin/python bench/run.py            # see bench/README.md

SQLite, no-op jobs (``benchapp.Noop.run``), concurrency 2. Every measurement runs in its own
fresh interpreter (``run.py --phase NAME --dir DIR``) on its own fresh temporary database, and
every process started here (workers, auto-started runners, their job children) is killed by
PID at the end of its measurement and again at the end of the run, even on error. Results
are printed as a table and written to ``bench/results/latest.json`` (plus a timestamped copy).

Nothing here is imported by the package or collected by the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PY = sys.executable

JOB_CLASS = "benchapp.Noop"
JOB_METHOD = "run"
APP_IMPORT = "benchapp:create_app()"
CONCURRENCY = 2
TOKEN_ENV = "BGBENCH_TOKEN"

# Environment variables that would change what is measured if inherited from the shell.
_STRIPPED_PREFIXES = ("BGJOBS_", "FLASK_")
_STRIPPED_NAMES = {
    "BACKGROUND_JOB_LOG",
    "ERROR_LOG",
    "DEFAULT_RETRY_ATTEMPTS",
    "DEFAULT_DELAY",
    "DEFAULT_PRIORITY",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONDONTWRITEBYTECODE",
}

# Targets from the issue.
TARGET_ENQUEUE = 3000.0  # jobs/s, runner alive
TARGET_DRAIN = 400.0  # jobs/s, first started_at -> last finished_at
TARGET_P50_MS = 8.0
TARGET_P95_MS = 25.0
COLD_BUDGET_MS = 300.0  # over the fresh-interpreter floor
#: Other processes using more than this many cores during a phase make its figures suspect.
NOISY_CORES = 0.1


# -- small helpers ---------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Linear-interpolated percentile (0-100) of `values`; NaN when empty."""
    if not values:
        return math.nan
    data = sorted(values)
    k = (len(data) - 1) * pct / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean of durations given in seconds, in milliseconds."""
    ms = [s * 1e3 for s in seconds]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else math.nan,
        "mean": statistics.fmean(ms) if ms else math.nan,
    }


def wait_for(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(") ", 1)[-1][:1] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def carries_token(pid: int, token: str) -> bool:
    """True when `pid` was started by this benchmark run (its environment has our token)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read().split(b"\0")
    except OSError:
        return False
    return f"{TOKEN_ENV}={token}".encode() in env


def memory(pid: int) -> dict[str, int] | None:
    """PSS, RSS and USS (private) of one process in KiB, from /proc/<pid>/smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            text = fh.read()
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1])
    if "Pss" not in fields:
        return None
    return {
        "pss_kib": fields["Pss"],
        "rss_kib": fields.get("Rss", 0),
        "uss_kib": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def cpu_times(pid: int) -> tuple[float, float, float, float] | None:
    """(utime, stime, cutime, cstime) of `pid` in seconds, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    # Fields 14-17 of proc(5); fields[0] here is field 3 (state).
    return tuple(int(x) / tick for x in fields[11:15])  # type: ignore[return-value]


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        vals = [int(x) for x in fh.readline().split()[1:9]]
    idle = vals[3] + vals[4]  # idle + iowait
    return sum(vals) - idle, sum(vals)


def machine_busy(seconds: float = 0.5) -> float:
    """Fraction of all CPUs busy over `seconds` (before a phase: other people's load)."""
    b0, t0 = cpu_jiffies()
    time.sleep(seconds)
    b1, t1 = cpu_jiffies()
    return (b1 - b0) / max(1, t1 - t0)


class LoadMeter:
    """CPU used by *other* processes while a phase ran: the machine's busy time minus ours.

    Ours is ``RUSAGE_CHILDREN`` of this process: the phase interpreter plus everything it
    waited for (workers, which waited for their job children; reaped auto-started runners).
    """

    def __enter__(self) -> LoadMeter:
        self.busy0 = cpu_jiffies()[0]
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.ours0 = ru.ru_utime + ru.ru_stime
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = max(1e-9, time.perf_counter() - self.t0)
        busy = (cpu_jiffies()[0] - self.busy0) / os.sysconf("SC_CLK_TCK")
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = ru.ru_utime + ru.ru_stime - self.ours0
        self.busy_cores = busy / wall
        self.ours_cores = ours / wall
        self.foreign_cores = max(0.0, busy - ours) / wall


# -- process bookkeeping: everything started is killed by PID ------------------------------


class Workdir:
    """One measurement's folder: instance path, SQLite file, logs, and the PIDs it started."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.instance = path / "instance"
        self.db = path / "bench.db"
        self.uri = f"sqlite:///{self.db}"
        self.pids_file = path / "pids"

    def create(self) -> Workdir:
        self.instance.mkdir(parents=True, exist_ok=True)
        (self.path / "empty.env").touch()
        return self

    def env(self, token: str, *, autostart: bool) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_STRIPPED_PREFIXES) and k not in _STRIPPED_NAMES
        }
        env.update(
            {
                TOKEN_ENV: token,
                "PYTHONPATH": str(BENCH),
                "BENCHAPP_INSTANCE": str(self.instance),
                "BGJOBS_DATABASE_URI": self.uri,
                "BGJOBS_ALLOWED_JOBS": f"{JOB_CLASS}:{JOB_METHOD}",
                "BGJOBS_APP": APP_IMPORT,
                "BGJOBS_AUTOSTART": "true" if autostart else "false",
                "BGJOBS_IDLE_TIMEOUT": "2",
                "BGJOBS_MAX_CONCURRENCY": str(CONCURRENCY),
                "BGJOBS_DASHBOARD": "false",
                # An empty .env of our own: a stray .env in the cwd must not leak in.
                "BGJOBS_DOTENV_PATH": str(self.path / "empty.env"),
                "FLASK_SKIP_DOTENV": "1",
            }
        )
        return env

    def record_pid(self, pid: int) -> None:
        with open(self.pids_file, "a", encoding="ascii") as fh:
            fh.write(f"{pid}\n")

    def runner_pids(self) -> set[int]:
        """PIDs named by the engine's own files: ``bgjobs-run/*.lock`` and ``<key>/<pid>.sock``."""
        pids: set[int] = set()
        run_dir = self.instance / "bgjobs-run"
        sock_dirs = {run_dir / p.name for p in run_dir.glob("*") if p.is_dir()}
        try:
            from flask_bgjobs import launcher  # a long path moves the sockets under /tmp

            sock_dirs.add(Path(launcher.Launcher(str(self.instance), self.uri).sock_dir))
        except Exception:  # noqa: BLE001 - cleanup must go on whatever happens
            pass
        for lock in run_dir.glob("*.lock"):
            with contextlib.suppress(OSError, ValueError):
                text = lock.read_text().strip()
                if text:
                    pids.add(int(text))
        for folder in sock_dirs:
            for sock in folder.glob("*.sock"):
                with contextlib.suppress(ValueError):
                    pids.add(int(sock.stem))
        return pids

    def recorded_pids(self) -> set[int]:
        try:
            return {int(x) for x in self.pids_file.read_text().split()}
        except (OSError, ValueError):
            return set()


def log_tails(wd: Workdir, chars: int = 2000) -> str:
    """The ends of a workdir's logs (phase, workers, the engine's own), for an error report."""
    parts = []
    for path in [*sorted(wd.path.glob("*.log")), *sorted((wd.instance / "logs").glob("*.log"))]:
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace")
            if text.strip():
                parts.append(f"--- {path} (end)\n{text[-chars:]}")
    return "\n".join(parts)


def kill_pid(pid: int, token: str, *, grace: float = 3.0) -> bool:
    """SIGTERM then SIGKILL one process of ours (checked by token); True if we signalled it."""
    if pid == os.getpid() or not pid_alive(pid) or not carries_token(pid, token):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return True


def cleanup_dir(wd: Workdir, token: str) -> list[int]:
    """Kill every process this workdir's measurement started or the engine auto-started."""
    killed = []
    for pid in sorted(wd.recorded_pids() | wd.runner_pids()):
        if kill_pid(pid, token):
            killed.append(pid)
    return killed


def sweep_token(token: str) -> list[int]:
    """Last safety net: any process still carrying this run's token (e.g. a job child)."""
    killed = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and kill_pid(int(entry), token, grace=1.0):
            killed.append(int(entry))
    return killed


def spawn(wd: Workdir, cmd: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    with open(wd.path / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=wd.path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wd.record_pid(proc.pid)
    return proc


def worker_cmd(*, burst: bool) -> list[str]:
    cmd = [PY, "-m", "flask", "--app", APP_IMPORT, "bgjobs", "worker"]
    cmd += ["--concurrency", str(CONCURRENCY)]
    return [*cmd, "--burst"] if burst else cmd


def lock_held(wd: Workdir) -> bool:
    import fcntl

    locks = list((wd.instance / "bgjobs-run").glob("*.lock"))
    if not locks:
        return False
    fd = os.open(locks[0], os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def wait_worker_ready(wd: Workdir, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> float:
    """Wait until the worker bound its socket and holds the host lock; return seconds waited."""
    t0 = time.perf_counter()

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early (code {proc.returncode}); see {wd.path}")
        socks = wd.runner_pids()
        return proc.pid in socks and lock_held(wd)

    wait_for(ready, timeout, "the worker to bind its socket and take the lock")
    return time.perf_counter() - t0


def db_rows(wd: Workdir, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(wd.db, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def job_summary(wd: Workdir) -> dict[str, Any]:
    """Counts per status, attempts and failed-attempt events, straight from the database."""
    by_status = dict(db_rows(wd, "SELECT status, count(*) FROM bgjobs_jobs GROUP BY status"))
    attempts = db_rows(wd, "SELECT coalesce(sum(attempts), 0), count(*) FROM bgjobs_jobs")[0]
    kinds = dict(db_rows(wd, "SELECT kind, count(*) FROM bgjobs_events GROUP BY kind"))
    messages = db_rows(
        wd,
        "SELECT kind, message, count(*) FROM bgjobs_events "
        "WHERE kind NOT IN ('started', 'succeeded') GROUP BY kind, message ORDER BY 3 DESC LIMIT 5",
    )
    return {
        "jobs": attempts[1],
        "by_status": by_status,
        "attempts": attempts[0],
        "failed_attempts": sum(n for k, n in kinds.items() if k not in ("started", "succeeded")),
        "failure_messages": [list(m) for m in messages],
    }


# -- phases: each runs in its own fresh interpreter ------------------------------------------


def _app(wd: Workdir) -> Any:
    sys.path.insert(0, str(BENCH))
    import benchapp

    return benchapp.create_app()


def phase_fork_floor(wd: Workdir, args: argparse.Namespace) -> dict[str, Any]:
    """Floor (a): fork + child ``os._exit(0)`` + ``waitpid`` in a process with the app built."""
    import flask  # noqa: F401
    import flask_sqlalchemy  # noqa: F401
    import sqlalchemy  # noqa: F401

    _app(wd)
    gc.collect()
    gc.freeze()
    total: list[float] = []
    parent: list[float] = []
    for i in range(args.fork_samples + 10):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        t1 = time.perf_counter()
        os.waitpid(pid, 0)
        t2 = time.perf_counter()
        if i >= 10:  # warm-up
            parent.append(t1 - t0)
            total.append(t2 - t0)
    return {
        "fork_exit_wait_ms": summary_ms(total),
        "fork_parent_ms": summary_ms(parent),
        "process_memory": memory(os.getpid()),
    }


def phase_sqlite_floor(wd: Workdir, args: argparse.Namespace) -> dict[str, Any]:
    """Extra floor (c): one raw sqlite3 INSERT + COMMIT per row, WAL + synchronous=NORMAL."""
    conn = sqlite3.connect(wd.path / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c REAL)")
    n = args.jobs
    t0 = time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (a, b, c) VALUES (?, ?, ?)", ("x", "[]", time.time()))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return {"rows": n, "seconds": elapsed, "rate": n / elapsed}


def phase_enqueue(wd: Workdir, args: argparse.Namespace) -> dict[str, Any]:
    """1. Enqueue rate of run_background_job with a worker running (autostart on, the default)."""
    token = os.environ[TOKEN_ENV]
    worker = spawn(wd, worker_cmd(burst=False), wd.env(token, autostart=True), "worker")
    try:
        ready_s = wait_worker_ready(wd, worker)
        app = _app(wd)
        from flask_bgjobs import run_background_job

        with app.app_context():
            for _ in range(10):  # warm-up: first connection, table check
                run_background_job(JOB_CLASS, JOB_METHOD)
            calls: list[float] = []
            cpu0, ru0 = cpu_times(worker.pid), resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            for _ in range(args.jobs):
                t = time.perf_counter()
                run_background_job(JOB_CLASS, JOB_METHOD)
                calls.append(time.perf_counter() - t)
            elapsed = time.perf_counter() - t0
            cpu1, ru1 = cpu_times(worker.pid), resource.getrusage(resource.RUSAGE_SELF)
        finished_meanwhile = db_rows(
            wd, "SELECT count(*) FROM bgjobs_jobs WHERE status = 'succeeded'"
        )[0][0]
        autostarted = wd.runner_pids() - {worker.pid}
        # Who had the two CPUs during the loop: this process, the runner, its job children.
        enqueuer_cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        cpu: dict[str, float] = {"enqueuer_cpu_ms_per_job": enqueuer_cpu / args.jobs * 1e3}
        cpu["enqueuer_cores"] = enqueuer_cpu / elapsed
        if cpu0 is not None and cpu1 is not None:
            cpu["runner_cores"] = (cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1]) / elapsed
            cpu["job_children_cores"] = (cpu1[2] + cpu1[3] - cpu0[2] - cpu0[3]) / elapsed
        return {
            "jobs": args.jobs,
            "seconds": elapsed,
            "rate": args.jobs / elapsed,
            "call_ms": summary_ms(calls),
            "cpu": cpu,
            "worker_ready_s": ready_s,
            "finished_by_worker_meanwhile": finished_meanwhile,
            "unexpected_runners": sorted(autostarted),
        }
    finally:
        kill_pid(worker.pid, token, grace=10)
        worker.wait()


def phase_drain(wd: Workdir, args: argparse.Namespace) -> dict[str, Any]:
    """2. Drain N queued jobs with ``flask bgjobs worker --burst --concurrency 2``;
    5. the runner's memory while it runs jobs."""
    token = os.environ[TOKEN_ENV]
    app = _app(wd)
    from flask_bgjobs import run_background_job

    with app.app_context():
        t0 = time.perf_counter()
        for _ in range(args.jobs):
            run_background_job(JOB_CLASS, JOB_METHOD)
        enqueue_s = time.perf_counter() - t0
    # Leave the database as a web process would: closed, nothing held.
    app.extensions["bgjobs"].store.close()

    start_epoch = time.time()
    t0 = time.perf_counter()
    worker = spawn(wd, worker_cmd(burst=True), wd.env(token, autostart=False), "worker")
    samples: list[dict[str, Any]] = []
    last_cpu = None
    status = None
    try:
        deadline = time.monotonic() + args.drain_timeout
        while True:
            pid, status, _rusage = os.wait4(worker.pid, os.WNOHANG)
            if pid:
                wall = time.perf_counter() - t0
                worker.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"burst worker still running after {args.drain_timeout} s")
            cpu = cpu_times(worker.pid)
            if cpu is not None:
                last_cpu = cpu
            mem = memory(worker.pid)
            kids = children_of(worker.pid)
            if mem is not None and kids:  # only samples taken while jobs run
                kid_mem = [m for m in (memory(k) for k in kids) if m is not None]
                samples.append(
                    {
                        "runner": mem,
                        "children": len(kid_mem),
                        "children_pss_kib": sum(m["pss_kib"] for m in kid_mem),
                    }
                )
            time.sleep(args.sample_interval)
    finally:
        if worker.returncode is None:
            kill_pid(worker.pid, token, grace=10)
            worker.wait()
    span = db_rows(
        wd,
        "SELECT min(started_at), max(finished_at), count(*) FROM bgjobs_jobs "
        "WHERE finished_at IS NOT NULL",
    )[0]
    first_start, last_finish, finished = span
    jobs = job_summary(wd)
    out: dict[str, Any] = {
        "jobs": args.jobs,
        "finished": finished,
        "worker_exit_code": worker.returncode,
        "enqueue_no_runner_rate": args.jobs / enqueue_s,
        "wall_s": wall,
        "wall_rate": args.jobs / wall,
        "startup_s": (first_start - start_epoch) if first_start else None,
        "span_s": (last_finish - first_start) if first_start else None,
        "rate": finished / (last_finish - first_start) if first_start else None,
        "job_summary": jobs,
        "memory_samples": len(samples),
    }
    if last_cpu is not None:
        utime, stime, cutime, cstime = last_cpu
        attempts = max(1, jobs["attempts"])
        out["runner_cpu_ms_per_attempt"] = (utime + stime) / attempts * 1e3
        out["runner_user_ms_per_attempt"] = utime / attempts * 1e3
        out["runner_sys_ms_per_attempt"] = stime / attempts * 1e3
        out["children_cpu_ms_per_attempt"] = (cutime + cstime) / attempts * 1e3
        out["runner_busy_fraction"] = (utime + stime) / wall
    if samples:
        pss = [s["runner"]["pss_kib"] for s in samples]
        total = [s["runner"]["pss_kib"] + s["children_pss_kib"] for s in samples]
        out["runner_pss_running_kib"] = {"median": statistics.median(pss), "max": max(pss)}
        out["runner_rss_running_kib"] = {
            "median": statistics.median(s["runner"]["rss_kib"] for s in samples)
        }
        out["runner_uss_running_kib"] = {
            "median": statistics.median(s["runner"]["uss_kib"] for s in samples)
        }
        out["runner_plus_children_pss_kib"] = {
            "median": statistics.median(total),
            "max": max(total),
        }
    return out


def phase_latency(wd: Workdir, args: argparse.Namespace) -> dict[str, Any]:
    """3. Enqueue -> start latency, jobs 20 ms apart, idle runner alive; 5. idle memory."""
    token = os.environ[TOKEN_ENV]
    worker = spawn(wd, worker_cmd(burst=False), wd.env(token, autostart=True), "worker")
    try:
        wait_worker_ready(wd, worker)
        time.sleep(0.3)  # let it finish its first sweep and poll
        idle_fresh = memory(worker.pid)
        app = _app(wd)
        from flask_bgjobs import run_background_job

        def all_done() -> bool:
            return not db_rows(
                wd, "SELECT 1 FROM bgjobs_jobs WHERE finished_at IS NULL AND status != 'failed'"
            )

        with app.app_context():
            for _ in range(5):  # warm-up, not measured
                run_background_job(JOB_CLASS, JOB_METHOD)
                time.sleep(args.gap)
            wait_for(all_done, 30, "the warm-up jobs")
            first_id = db_rows(wd, "SELECT coalesce(max(id), 0) FROM bgjobs_jobs")[0][0] + 1
            time.sleep(0.2)
            calls: list[float] = []
            start = time.perf_counter()
            for i in range(args.latency_jobs):
                due = start + i * args.gap
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                t = time.perf_counter()
                run_background_job(JOB_CLASS, JOB_METHOD)
                calls.append(time.perf_counter() - t)
        wait_for(all_done, 60, "the measured jobs", interval=0.05)
        rows = db_rows(
            wd,
            "SELECT created_at, started_at, finished_at FROM bgjobs_jobs WHERE id >= ?",
            (first_id,),
        )
        start_lat = [s - c for c, s, _f in rows if s is not None]
        end_lat = [f - c for c, _s, f in rows if f is not None]
        time.sleep(0.3)
        idle_after = memory(worker.pid)
        return {
            "jobs": len(rows),
            "gap_ms": args.gap * 1e3,
            "start_latency_ms": summary_ms(start_lat),
            "end_to_end_ms": summary_ms(end_lat),
            "enqueue_call_ms": summary_ms(calls),
            "runner_idle_fresh": idle_fresh,
            "runner_idle_after_jobs": idle_after,
            "job_summary": job_summary(wd),
        }
    finally:
        kill_pid(worker.pid, token, grace=10)
        worker.wait()


def phase_coldstart(wd: Workdir, args: argparse.Namespace) -> dict[str, Any]:
    """4. No runner alive, autostart on: enqueue one job; created_at -> started_at."""
    token = os.environ[TOKEN_ENV]
    app = _app(wd)
    state = app.extensions["bgjobs"]
    from flask_bgjobs import run_background_job

    with app.app_context():
        state.store.ensure_tables()  # deployed app: the tables exist, the web process is connected
        assert not state.launcher.runner_alive(), "a runner is alive before the cold start"
        t = time.perf_counter()
        job = run_background_job(JOB_CLASS, JOB_METHOD)
        call_s = time.perf_counter() - t
    runner_pid = None
    try:

        def started() -> Any:
            rows = db_rows(wd, "SELECT started_at FROM bgjobs_jobs WHERE id = ?", (job.id,))
            return rows and rows[0][0]

        wait_for(started, 60, "the cold-started runner to start the job", interval=0.002)
        runner_pid = next(iter(wd.runner_pids()), None)
        idle_mem = None
        with contextlib.suppress(TimeoutError):
            wait_for(
                lambda: db_rows(wd, "SELECT finished_at FROM bgjobs_jobs WHERE id = ?", (job.id,))[
                    0
                ][0],
                30,
                "the job to finish",
            )
            time.sleep(0.2)
            idle_mem = memory(runner_pid) if runner_pid else None
        created, started_at, finished = db_rows(
            wd,
            "SELECT created_at, started_at, finished_at FROM bgjobs_jobs WHERE id = ?",
            (job.id,),
        )[0]
        return {
            "cold_start_ms": (started_at - created) * 1e3,
            "end_to_end_ms": ((finished - created) * 1e3) if finished else None,
            "enqueue_call_ms": call_s * 1e3,
            "runner_pid": runner_pid,
            "autostarted_runner_idle": idle_mem,
        }
    finally:
        cleanup_dir(wd, token)


PHASES: dict[str, Callable[[Workdir, argparse.Namespace], dict[str, Any]]] = {
    "fork_floor": phase_fork_floor,
    "sqlite_floor": phase_sqlite_floor,
    "enqueue": phase_enqueue,
    "drain": phase_drain,
    "latency": phase_latency,
    "coldstart": phase_coldstart,
}


def run_phase_here(args: argparse.Namespace) -> int:
    """Child side of ``--phase``: run one measurement, write ``result.json`` in its dir."""
    wd = Workdir(Path(args.dir))
    result = PHASES[args.phase](wd, args)
    (wd.path / "result.json").write_text(json.dumps(result, indent=2))
    return 0


# -- the orchestrator ------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.token = uuid.uuid4().hex
        self.root = Path(tempfile.mkdtemp(prefix="bgb-"))
        self.dirs: list[Workdir] = []
        #: Per phase: machine busy before it (others' load) and cores others used during it.
        self.load: dict[str, dict[str, float]] = {}

    def wait_quiet(self) -> float:
        """Wait (up to --wait-quiet s) until other processes leave the CPUs mostly idle."""
        deadline = time.monotonic() + self.args.wait_quiet
        busy = machine_busy()
        while busy > self.args.quiet_below and time.monotonic() < deadline:
            busy = machine_busy()
        return busy

    @contextlib.contextmanager
    def measured(self, label: str) -> Iterator[dict[str, float]]:
        """Wait for a quiet machine, then record how much CPU others used while measuring."""
        busy = self.wait_quiet()
        print(
            f"  {label} (machine {busy * 100:.0f}% busy before) …",
            end="",
            flush=True,
            file=sys.stderr,
        )
        t0 = time.perf_counter()
        meter = LoadMeter()
        load = {"busy_before": busy}
        try:
            with meter:
                yield load
        finally:
            load["foreign_cores"] = getattr(meter, "foreign_cores", math.nan)
            load["our_cores"] = getattr(meter, "ours_cores", math.nan)
            print(
                f" {time.perf_counter() - t0:.1f} s; other processes used "
                f"{load['foreign_cores']:.2f} cores",
                file=sys.stderr,
            )

    def quietest(self, label: str, measure: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """Measure; while others used the CPUs meanwhile, measure again (--retry-noisy times)
        and keep the attempt during which they used the least."""
        best: tuple[float, dict[str, Any], dict[str, float]] | None = None
        tries = 1 + max(0, self.args.retry_noisy)
        for attempt in range(1, tries + 1):
            name = label if attempt == 1 else f"{label}-try{attempt}"
            with self.measured(name) as load:
                result = measure(name)
            foreign = load["foreign_cores"]
            if best is None or foreign < best[0]:
                best = (foreign, result, {**load, "kept_try": attempt})
            if foreign <= NOISY_CORES:
                break
        assert best is not None
        self.load[label] = {**best[2], "tries": attempt}
        return best[1]

    def workdir(self, name: str) -> Workdir:
        wd = Workdir(self.root / name).create()
        self.dirs.append(wd)
        return wd

    def phase(self, name: str, *, autostart: bool = False, tag: str = "") -> dict[str, Any]:
        return self.quietest(
            f"{name}{tag}", lambda label: self._phase_once(name, label, autostart=autostart)
        )

    def _phase_once(self, name: str, label: str, *, autostart: bool) -> dict[str, Any]:
        wd = self.workdir(label)
        a = self.args
        cmd = [PY, str(Path(__file__).resolve()), "--phase", name, "--dir", str(wd.path)]
        cmd += ["--jobs", str(a.jobs), "--latency-jobs", str(a.latency_jobs)]
        cmd += ["--gap", str(a.gap), "--fork-samples", str(a.fork_samples)]
        cmd += ["--drain-timeout", str(a.drain_timeout)]
        cmd += ["--sample-interval", str(a.sample_interval)]
        try:
            with open(wd.path / "phase.log", "wb") as log:
                proc = subprocess.Popen(
                    cmd,
                    env=wd.env(self.token, autostart=autostart),
                    cwd=wd.path,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                wd.record_pid(proc.pid)
                try:
                    code = proc.wait(timeout=a.drain_timeout + 120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise
            if code != 0:
                raise RuntimeError(f"phase {name} failed (exit {code}):\n{log_tails(wd)}")
            result: dict[str, Any] = json.loads((wd.path / "result.json").read_text())
        finally:
            leftover = cleanup_dir(wd, self.token)
            if leftover:
                print(f"    (killed leftover pids {leftover})", file=sys.stderr)
        return result

    def interpreter_floor(self) -> dict[str, Any]:
        """Floor (b): wall time of a fresh interpreter that imports and builds the app."""
        return self.quietest("interpreter_floor", self._interpreter_once)

    def _interpreter_once(self, label: str) -> dict[str, Any]:
        wd = self.workdir(label)
        env = wd.env(self.token, autostart=False)
        # Also when the app is built (the child says so on stdout): a runner starts work
        # then, without paying the interpreter's exit that the wall time includes.
        code = "import benchapp; benchapp.create_app(); print(flush=True)"
        walls, ready = [], []
        for i in range(self.args.interp_samples + 1):  # first run: warm the page cache
            t = time.perf_counter()
            proc = subprocess.Popen([PY, "-c", code], env=env, cwd=wd.path, stdout=subprocess.PIPE)
            wd.record_pid(proc.pid)
            assert proc.stdout is not None
            proc.stdout.readline()
            t_ready = time.perf_counter()
            proc.stdout.read()
            if proc.wait() != 0:
                raise RuntimeError("the interpreter floor command failed")
            if i:
                walls.append(time.perf_counter() - t)
                ready.append(t_ready - t)
        bare = []
        for i in range(self.args.interp_samples + 1):
            t = time.perf_counter()
            subprocess.run([PY, "-c", "pass"], env=env, cwd=wd.path, check=True)
            if i:
                bare.append(time.perf_counter() - t)
        return {
            "app_ms": summary_ms(walls),
            "app_ready_ms": summary_ms(ready),
            "bare_python_ms": summary_ms(bare),
        }

    def run(self) -> dict[str, Any]:
        a = self.args
        r: dict[str, Any] = {}
        print(f"flask-bgjobs bench in {self.root}", file=sys.stderr)
        r["floor_fork"] = self.phase("fork_floor")
        r["floor_interpreter"] = self.interpreter_floor()
        r["floor_sqlite_insert"] = self.phase("sqlite_floor")
        r["enqueue"] = self.phase("enqueue", autostart=True)
        r["drain"] = self.phase("drain")
        r["latency"] = self.phase("latency", autostart=True)
        r["coldstart"] = [
            self.phase("coldstart", autostart=True, tag=f"-{i + 1}") for i in range(a.cold_trials)
        ]
        r["load"] = self.load
        return r

    def close(self) -> None:
        for wd in self.dirs:
            cleanup_dir(wd, self.token)
        stray = sweep_token(self.token)
        if stray:
            print(f"killed stray processes {stray}", file=sys.stderr)
        if self.args.keep:
            print(f"kept {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


# -- report ----------------------------------------------------------------------------------


def figures(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The table: one row per figure with its target, floor ratio and verdict."""
    fork_ms = r["floor_fork"]["fork_exit_wait_ms"]["p50"]
    interp_ms = r["floor_interpreter"]["app_ms"]["p50"]
    ready_ms = r["floor_interpreter"]["app_ready_ms"]["p50"]
    sqlite_rate = r["floor_sqlite_insert"]["rate"]
    e, d, lat = r["enqueue"], r["drain"], r["latency"]
    cold = [c["cold_start_ms"] for c in r["coldstart"]]
    cold_med = statistics.median(cold)
    rows: list[dict[str, Any]] = []

    def row(
        name: str,
        value: float | None,
        unit: str,
        target: str = "",
        ok: bool | None = None,
        vs_floor: str = "",
    ) -> None:
        rows.append(
            {
                "figure": name,
                "value": value,
                "unit": unit,
                "target": target,
                "vs_floor": vs_floor,
                "ok": ok,
            }
        )

    row(
        "1. enqueue rate, runner alive",
        e["rate"],
        "jobs/s",
        f">= {TARGET_ENQUEUE:g}",
        e["rate"] >= TARGET_ENQUEUE,
        f"{e['rate'] / sqlite_rate:.2f}x raw sqlite insert",
    )
    row(
        "   enqueue call p50 / p99",
        e["call_ms"]["p50"],
        "ms",
        vs_floor=f"p99 {e['call_ms']['p99']:.2f} ms",
    )
    c = e.get("cpu", {})
    if "runner_cores" in c:
        row(
            "   CPU during enqueue loop: enqueuer",
            c["enqueuer_cpu_ms_per_job"],
            "ms/job",
            vs_floor=(
                f"cores: enqueuer {c['enqueuer_cores']:.2f}, runner {c['runner_cores']:.2f}, "
                f"job children {c['job_children_cores']:.2f}"
            ),
        )
    drain = d["rate"] or 0.0
    floor_rate = 1e3 / fork_ms
    row(
        "2. drain rate (first start -> last finish)",
        drain,
        "jobs/s",
        f">= {TARGET_DRAIN:g}",
        drain >= TARGET_DRAIN,
        f"{drain / floor_rate:.2f}x fork floor ({floor_rate:.0f}/s)",
    )
    row(
        "   drain wall incl. runner startup",
        d["wall_rate"],
        "jobs/s",
        vs_floor=f"{d['wall_s']:.2f} s for {d['jobs']}",
    )
    row(
        "   runner startup (spawn -> 1st start)",
        (d["startup_s"] or 0) * 1e3,
        "ms",
        vs_floor=f"{(d['startup_s'] or 0) * 1e3 / interp_ms:.2f}x interpreter floor",
    )
    if "runner_cpu_ms_per_attempt" in d:
        row(
            "   runner CPU per attempt (user+sys)",
            d["runner_cpu_ms_per_attempt"],
            "ms",
            vs_floor=(
                f"sys {d['runner_sys_ms_per_attempt']:.2f} ms; busy "
                f"{d['runner_busy_fraction'] * 100:.0f}% of wall"
            ),
        )
    fa = d["job_summary"]["failed_attempts"] + lat["job_summary"]["failed_attempts"]
    row("   failed attempts (no-op jobs!)", fa, "attempts", "0", fa == 0, "drain + latency runs")
    p50, p95 = lat["start_latency_ms"]["p50"], lat["start_latency_ms"]["p95"]
    row(
        "3. enqueue -> start latency p50",
        p50,
        "ms",
        f"<= {TARGET_P50_MS:g}",
        p50 <= TARGET_P50_MS,
        f"{p50 / fork_ms:.1f}x fork floor",
    )
    row(
        "   enqueue -> start latency p95",
        p95,
        "ms",
        f"<= {TARGET_P95_MS:g}",
        p95 <= TARGET_P95_MS,
        f"{p95 / fork_ms:.1f}x fork floor",
    )
    row(
        "   enqueue -> finish p50",
        lat["end_to_end_ms"]["p50"],
        "ms",
        vs_floor=f"p95 {lat['end_to_end_ms']['p95']:.1f} ms",
    )
    budget = interp_ms + COLD_BUDGET_MS
    row(
        "4. cold start (autostart) created -> started",
        cold_med,
        "ms",
        f"<= {budget:.0f} (floor + {COLD_BUDGET_MS:g})",
        cold_med <= budget,
        (
            f"{cold_med - interp_ms:+.0f} ms vs floor, {cold_med - ready_ms:+.0f} ms vs app-built; "
            f"trials {', '.join(f'{c:.0f}' for c in cold)}"
        ),
    )

    def kib(m: dict[str, int] | None, key: str = "pss_kib") -> float | None:
        return None if m is None else m[key] / 1024

    row(
        "5. runner PSS idle (fresh)",
        kib(lat["runner_idle_fresh"]),
        "MiB",
        vs_floor=f"RSS {kib(lat['runner_idle_fresh'], 'rss_kib'):.1f} MiB",
    )
    row(
        "   runner PSS idle (after jobs)",
        kib(lat["runner_idle_after_jobs"]),
        "MiB",
        vs_floor=f"USS {kib(lat['runner_idle_after_jobs'], 'uss_kib'):.1f} MiB",
    )
    if "runner_pss_running_kib" in d:
        row(
            "   runner PSS running jobs (median)",
            d["runner_pss_running_kib"]["median"] / 1024,
            "MiB",
            vs_floor=f"max {d['runner_pss_running_kib']['max'] / 1024:.1f}; USS {d['runner_uss_running_kib']['median'] / 1024:.1f} MiB",
        )
        row(
            "   runner + job children PSS (median)",
            d["runner_plus_children_pss_kib"]["median"] / 1024,
            "MiB",
            vs_floor=f"max {d['runner_plus_children_pss_kib']['max'] / 1024:.1f} MiB",
        )
    ff = r["floor_fork"]
    row(
        "6a. floor: fork+_exit+waitpid (warm app)",
        fork_ms,
        "ms",
        vs_floor=f"p95 {ff['fork_exit_wait_ms']['p95']:.2f}; parent fork() p50 {ff['fork_parent_ms']['p50']:.2f} ms",
    )
    row(
        "6b. floor: fresh interpreter + create_app",
        interp_ms,
        "ms",
        vs_floor=(
            f"app built after {r['floor_interpreter']['app_ready_ms']['p50']:.0f} ms (rest: "
            f"exit); bare python {r['floor_interpreter']['bare_python_ms']['p50']:.0f} ms"
        ),
    )
    row(
        "6c. extra floor: raw sqlite INSERT+COMMIT",
        sqlite_rate,
        "rows/s",
        vs_floor="WAL, synchronous=NORMAL",
    )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    def fmt(v: float | None) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        if isinstance(v, int) or abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.2f}"

    head = ("figure", "value", "unit", "target", "status", "vs floor / notes")
    table = [
        (
            r["figure"],
            fmt(r["value"]),
            r["unit"],
            r["target"],
            "" if r["ok"] is None else ("ok" if r["ok"] else "MISS"),
            r["vs_floor"],
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [head, *table]) for i in range(len(head))]
    right = {1}  # the value column

    def cells(t: tuple[str, ...]) -> str:
        out = [
            (c.rjust(w) if i in right else c.ljust(w))
            for i, (c, w) in enumerate(zip(t[:-1], widths, strict=False))
        ]
        return "  ".join([*out, t[-1]])

    print(cells(head))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print(cells(t))


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for dist in ("flask", "flask-sqlalchemy", "sqlalchemy", "flask-bgjobs"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[dist] = md.version(dist)
    engine = hashlib.sha256()
    for path in sorted((ROOT / "flask_bgjobs").glob("*.py")):
        engine.update(path.name.encode() + b"\0" + path.read_bytes())

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "git_head": git("rev-parse", "HEAD"),
        "engine_files_dirty": bool(git("status", "--porcelain", "flask_bgjobs")),
        "engine_sha256": engine.hexdigest()[:16],
        "concurrency": CONCURRENCY,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=2000, help="jobs for enqueue and drain (2000)")
    p.add_argument("--latency-jobs", type=int, default=200, help="jobs for latency (200)")
    p.add_argument("--gap", type=float, default=0.020, help="seconds between latency jobs")
    p.add_argument("--fork-samples", type=int, default=200, help="forks for floor (a)")
    p.add_argument("--interp-samples", type=int, default=5, help="starts for floor (b)")
    p.add_argument("--cold-trials", type=int, default=3, help="cold starts (median shown)")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="seconds")
    p.add_argument("--sample-interval", type=float, default=0.1, help="memory sampling, s")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        help="before each phase, wait up to this many s for the machine to be idle (30)",
    )
    p.add_argument(
        "--retry-noisy",
        type=int,
        default=2,
        help="measure again (up to N times) when others used > 0.1 core meanwhile (2)",
    )
    p.add_argument("--quiet-below", type=float, default=0.15, help="'idle': busy below (0.15)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases)")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="JSON output")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        return run_phase_here(args)

    # A SIGTERM must still run the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.datetime.now(datetime.timezone.utc)
    bench = Bench(args)
    try:
        measured = bench.run()
    except BaseException:
        args.keep = True  # the workers' logs and databases say what went wrong
        raise
    finally:
        bench.close()
    rows = figures(measured)
    print()
    print_table(rows)
    load = measured.get("load", {})
    print(
        "\nother processes' CPU during each phase (cores of "
        f"{os.cpu_count()}): "
        + ", ".join(
            f"{k} {v['foreign_cores']:.2f}"
            + (f" (best of {v['tries']} tries)" if v["tries"] > 1 else "")
            for k, v in load.items()
        )
    )
    noisy = [k for k, v in load.items() if v["foreign_cores"] > NOISY_CORES]
    if noisy:
        print(
            f"WARNING: the machine was shared during {', '.join(noisy)}: those figures are pessimistic"
        )
    report = {
        "started_at": started.isoformat(timespec="seconds"),
        "environment": environment(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("phase", "dir", "out")},
        "figures": rows,
        "raw": measured,
    }
    report["settings"]["keep"] = bool(args.keep)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str)
    args.out.write_text(text)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (args.out.parent / f"run-{stamp}.json").write_text(text)
    print(f"\nwrote {args.out}")
    misses = [r["figure"].strip() for r in rows if r["ok"] is False]
    if misses:
        print(f"missed targets: {len(misses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
