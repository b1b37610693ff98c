"""flask-bgjobs benchmark: one command, every figure of the performance issues.

    .venv/bin/python bench/run.py            # see bench/README.md
    .venv/bin/python bench/run.py --quick    # smoke run

SQLite and PostgreSQL (``--backend``), fork per attempt and process reuse (``--mode``), no-op
jobs (``benchapp.Noop``), concurrency 2 per runner; the queue/key overhead runs; the peers'
figures from ``bench/peers.py`` with ``--peers``. Every measurement runs in its own fresh
interpreter (``run.py --phase NAME --dir DIR``) on its own fresh database, and every process
started here (workers, auto-started runners, their job children) is killed by PID at the end
of its measurement and again at the end of the run, even on error. Results are printed as a
table and a markdown summary, and written to ``bench/results/latest.json`` and
``latest.md`` (plus a timestamped copy of the JSON).

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
STAMP_METHOD = "stamp"  # the latency job: records when its own code starts
APP_IMPORT = "benchapp:create_app()"
CONCURRENCY = 2
#: Concurrency per runner of the extra PostgreSQL reuse drain (the issue's 1,000 jobs/s).
WIDE = 8
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


def postgres_cpu() -> float:
    """CPU seconds of the local PostgreSQL server: its processes (``comm`` ``postgres``) plus
    the backends they reaped, so a window's difference counts backends that came and went."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                text = fh.read()
        except OSError:
            continue
        comm = text[text.find("(") + 1 : text.rfind(")")]
        if comm != "postgres":
            continue
        times = cpu_times(int(entry))
        if times is not None:
            total += sum(times)
    return total


class LoadMeter:
    """CPU used by *other* processes while a phase ran: the machine's busy time minus ours.

    Ours is ``RUSAGE_CHILDREN`` of this process: the phase interpreter plus everything it
    waited for (workers, which waited for their job children; reaped auto-started runners);
    on PostgreSQL also the whole local server's CPU (mostly our backends; another session's
    PostgreSQL work meanwhile would count as ours, so the figure is then optimistic).
    """

    def __init__(self, pg: bool = False) -> None:
        self.pg = pg

    def __enter__(self) -> LoadMeter:
        self.busy0 = cpu_jiffies()[0]
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.ours0 = ru.ru_utime + ru.ru_stime + (postgres_cpu() if self.pg else 0.0)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = max(1e-9, time.perf_counter() - self.t0)
        busy = (cpu_jiffies()[0] - self.busy0) / os.sysconf("SC_CLK_TCK")
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = ru.ru_utime + ru.ru_stime + (postgres_cpu() if self.pg else 0.0) - self.ours0
        self.busy_cores = busy / wall
        self.ours_cores = ours / wall
        self.foreign_cores = max(0.0, busy - ours) / wall


# -- process bookkeeping: everything started is killed by PID ------------------------------


class Workdir:
    """One measurement's folder: instance path, database, logs, and the PIDs it started.

    The database is the folder's own SQLite file, or a PostgreSQL database the orchestrator
    created for it; that URI and the process-reuse setting are kept in ``workdir.json`` so the
    phase's own interpreter sees the same.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.instance = path / "instance"
        self.db = path / "bench.db"
        self.uri = f"sqlite:///{self.db}"
        self.reuse = 1
        self.pids_file = path / "pids"
        self.stamps = path / "stamps.txt"
        with contextlib.suppress(OSError, ValueError):
            conf = json.loads((path / "workdir.json").read_text())
            self.uri, self.reuse = conf["uri"], int(conf["reuse"])

    @property
    def backend(self) -> str:
        return "postgresql" if self.uri.startswith("postgresql") else "sqlite"

    def create(self, uri: str | None = None, reuse: int = 1) -> Workdir:
        self.instance.mkdir(parents=True, exist_ok=True)
        (self.path / "empty.env").touch()
        self.uri, self.reuse = uri or self.uri, reuse
        (self.path / "workdir.json").write_text(json.dumps({"uri": self.uri, "reuse": reuse}))
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
                "BENCHAPP_STAMPS": str(self.stamps),
                "BGJOBS_DATABASE_URI": self.uri,
                "BGJOBS_ALLOWED_JOBS": f"{JOB_CLASS}:{JOB_METHOD}|{STAMP_METHOD}",
                "BGJOBS_APP": APP_IMPORT,
                "BGJOBS_AUTOSTART": "true" if autostart else "false",
                "BGJOBS_IDLE_TIMEOUT": "2",
                "BGJOBS_MAX_CONCURRENCY": str(CONCURRENCY),
                # Also for runners the bench does not start itself (auto-started ones).
                "BGJOBS_PROCESS_REUSE": str(self.reuse),
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


def worker_cmd(
    wd: Workdir, *, burst: bool, queues: str | None = None, concurrency: int = CONCURRENCY
) -> list[str]:
    cmd = [PY, "-m", "flask", "--app", APP_IMPORT, "bgjobs", "worker"]
    cmd += ["--concurrency", str(concurrency)]
    if wd.reuse > 1:
        cmd += ["--reuse", str(wd.reuse)]
    if queues:
        cmd += ["--queues", queues]
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


def pg_dsn(uri: str) -> str:
    """A libpq DSN from an SQLAlchemy URI (``postgresql+psycopg://`` -> ``postgresql://``)."""
    return "postgresql://" + uri.split("://", 1)[1]


def db_rows(wd: Workdir, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one query (``?`` placeholders) on the workdir's database, SQLite or PostgreSQL."""
    if wd.backend == "postgresql":
        import psycopg

        with psycopg.connect(pg_dsn(wd.uri), autocommit=True) as pconn:
            return pconn.execute(sql.replace("?", "%s"), args).fetchall()  # type: ignore[arg-type]
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


def phase_pg_floor(wd: Workdir, args: argparse.Namespace) -> dict[str, Any]:
    """Floor for PostgreSQL: one ``INSERT`` + ``COMMIT`` per row with psycopg 3, same server."""
    import psycopg

    conn = psycopg.connect(pg_dsn(wd.uri))
    try:
        conn.execute(
            "CREATE TABLE t (id bigserial PRIMARY KEY, a text, b text, c double precision)"
        )
        conn.commit()
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "synchronous_commit", "fsync")
        }
        conn.commit()
        n = args.jobs
        t0 = time.perf_counter()
        for _ in range(n):
            conn.execute("INSERT INTO t (a, b, c) VALUES (%s, %s, %s)", ("x", "[]", time.time()))
            conn.commit()
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    return {
        "rows": n,
        "seconds": elapsed,
        "rate": n / elapsed,
        "psycopg": psycopg.__version__,
        "settings": settings,
    }


def phase_enqueue(wd: Workdir, args: argparse.Namespace) -> dict[str, Any]:
    """1. Enqueue rate of run_background_job with a worker running (autostart on, the default)."""
    token = os.environ[TOKEN_ENV]
    worker = spawn(wd, worker_cmd(wd, burst=False), wd.env(token, autostart=True), "worker")
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


#: Variants of the queue/key overhead runs: what every job carries, what the worker serves.
VARIANTS = {
    "plain": "(a) plain",
    "queue": "(b) queue=mail",
    "key": "(c) 1/2 with concurrency_key",
}


def enqueue_kwargs(variant: str, i: int) -> dict[str, Any]:
    """Keyword arguments of job `i` in a variant of the overhead runs."""
    if variant == "queue":
        return {"queue": "mail"}
    if variant == "key" and i % 2 == 0:
        return {"concurrency_key": f"k{(i // 2) % 8}", "concurrency_limit": 1000}
    return {}


def phase_drain(wd: Workdir, args: argparse.Namespace) -> dict[str, Any]:
    """2. Enqueue N jobs with no runner (the enqueue rate, autostart off), then drain them with
    ``flask bgjobs worker --burst --concurrency 2`` (``params.runners`` of them at once);
    5. the first runner's memory while it runs jobs.

    ``params.variant`` (see VARIANTS) gives what the jobs carry and what the workers serve."""
    token = os.environ[TOKEN_ENV]
    params = args.params
    variant = params.get("variant", "plain")
    runners = int(params.get("runners", 1))
    concurrency = int(params.get("concurrency", CONCURRENCY))
    app = _app(wd)
    from flask_bgjobs import run_background_job

    kwargs = [enqueue_kwargs(variant, i) for i in range(args.jobs)]
    with app.app_context():
        # Warm-up: the first connection and the table check, for jobs no one runs now.
        for _ in range(10):
            run_background_job(JOB_CLASS, JOB_METHOD, delay=3600)
        calls: list[float] = []
        t0 = time.perf_counter()
        for kw in kwargs:
            t = time.perf_counter()
            run_background_job(JOB_CLASS, JOB_METHOD, **kw)
            calls.append(time.perf_counter() - t)
        enqueue_s = time.perf_counter() - t0
    # Leave the database as a web process would: closed, nothing held.
    app.extensions["bgjobs"].store.close()

    queues = "mail" if variant == "queue" else None
    start_epoch = time.time()
    t0 = time.perf_counter()
    env = wd.env(token, autostart=False)
    workers = [
        spawn(
            wd,
            worker_cmd(wd, burst=True, queues=queues, concurrency=concurrency),
            env,
            f"worker{i}",
        )
        for i in range(runners)
    ]
    samples: list[dict[str, Any]] = []
    last_cpu: dict[int, tuple[float, float, float, float]] = {}
    walls: dict[int, float] = {}
    try:
        deadline = time.monotonic() + args.drain_timeout
        while len(walls) < len(workers):
            for w in workers:
                if w.pid in walls:
                    continue
                pid, status, _rusage = os.wait4(w.pid, os.WNOHANG)
                if pid:
                    walls[w.pid] = time.perf_counter() - t0
                    w.returncode = os.waitstatus_to_exitcode(status)
                    continue
                cpu = cpu_times(w.pid)
                if cpu is not None:
                    last_cpu[w.pid] = cpu
            if len(walls) == len(workers):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"burst worker still running after {args.drain_timeout} s")
            first = workers[0]
            mem = memory(first.pid) if first.pid not in walls else None
            kids = children_of(first.pid)
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
        for w in workers:
            if w.returncode is None:
                kill_pid(w.pid, token, grace=10)
                w.wait()
    wall = max(walls.values())
    span = db_rows(
        wd,
        "SELECT min(started_at), max(finished_at), count(*) FROM bgjobs_jobs "
        "WHERE finished_at IS NOT NULL",
    )[0]
    first_start, last_finish, finished = span
    jobs = job_summary(wd)
    out: dict[str, Any] = {
        "jobs": args.jobs,
        "variant": variant,
        "runners": runners,
        "concurrency": concurrency,
        "reuse": wd.reuse,
        "finished": finished,
        "worker_exit_codes": [w.returncode for w in workers],
        "enqueue_no_runner_rate": args.jobs / enqueue_s,
        "enqueue_call_ms": summary_ms(calls),
        "wall_s": wall,
        "wall_rate": args.jobs / wall,
        "startup_s": (first_start - start_epoch) if first_start else None,
        "span_s": (last_finish - first_start) if first_start else None,
        "rate": finished / (last_finish - first_start) if first_start else None,
        "job_summary": jobs,
        "memory_samples": len(samples),
    }
    if finished != args.jobs:
        raise RuntimeError(f"the burst workers finished {finished} of {args.jobs} jobs: {jobs}")
    if last_cpu:
        attempts = max(1, jobs["attempts"])
        utime = sum(c[0] for c in last_cpu.values())
        stime = sum(c[1] for c in last_cpu.values())
        cutime = sum(c[2] for c in last_cpu.values())
        cstime = sum(c[3] for c in last_cpu.values())
        out["runner_cpu_ms_per_attempt"] = (utime + stime) / attempts * 1e3
        out["runner_user_ms_per_attempt"] = utime / attempts * 1e3
        out["runner_sys_ms_per_attempt"] = stime / attempts * 1e3
        out["children_cpu_ms_per_attempt"] = (cutime + cstime) / attempts * 1e3
        out["runner_busy_fraction"] = (utime + stime) / wall / runners
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
    """3. Enqueue -> start latency, jobs 20 ms apart, idle runner alive; 5. idle memory.

    The job is ``Noop.stamp(i)``: its first line records when it started, and the latency is
    that moment minus the one just before the enqueue call (as ``bench/peers.py`` measures
    the peers). The database's ``created_at -> started_at`` (the claim, before the job process
    gets it) and ``created_at -> finished_at`` are kept beside it."""
    token = os.environ[TOKEN_ENV]
    worker = spawn(wd, worker_cmd(wd, burst=False), wd.env(token, autostart=True), "worker")
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
            for i in range(5):  # warm-up, not measured
                run_background_job(JOB_CLASS, STAMP_METHOD, params=[-1 - i])
                time.sleep(args.gap)
            wait_for(all_done, 30, "the warm-up jobs")
            first_id = db_rows(wd, "SELECT coalesce(max(id), 0) FROM bgjobs_jobs")[0][0] + 1
            time.sleep(0.2)
            calls: list[float] = []
            before: dict[int, float] = {}
            start = time.perf_counter()
            for i in range(args.latency_jobs):
                due = start + i * args.gap
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                before[i] = time.time()
                t = time.perf_counter()
                run_background_job(JOB_CLASS, STAMP_METHOD, params=[i])
                calls.append(time.perf_counter() - t)
        wait_for(all_done, 60, "the measured jobs", interval=0.05)
        rows = db_rows(
            wd,
            "SELECT created_at, started_at, finished_at FROM bgjobs_jobs WHERE id >= ?",
            (first_id,),
        )
        claim_lat = [s - c for c, s, _f in rows if s is not None]
        end_lat = [f - c for c, _s, f in rows if f is not None]
        job_lat = []
        for line in wd.stamps.read_text().splitlines():
            seq, _, when = line.partition(" ")
            if int(seq) in before:
                job_lat.append(float(when) - before[int(seq)])
        time.sleep(0.3)
        idle_after = memory(worker.pid)
        return {
            "jobs": len(rows),
            "gap_ms": args.gap * 1e3,
            "job_start_latency_ms": summary_ms(job_lat),
            "start_latency_ms": summary_ms(claim_lat),
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
    "pg_floor": phase_pg_floor,
    "enqueue": phase_enqueue,
    "drain": phase_drain,
    "latency": phase_latency,
    "coldstart": phase_coldstart,
}


def run_phase_here(args: argparse.Namespace) -> int:
    """Child side of ``--phase``: run one measurement, write ``result.json`` in its dir."""
    wd = Workdir(Path(args.dir))
    args.params = json.loads(args.params or "{}")
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
        self.pg_created: list[str] = []

    def wait_quiet(self) -> float:
        """Wait (up to --wait-quiet s) until other processes leave the CPUs mostly idle."""
        deadline = time.monotonic() + self.args.wait_quiet
        busy = machine_busy()
        while busy > self.args.quiet_below and time.monotonic() < deadline:
            busy = machine_busy()
        return busy

    @contextlib.contextmanager
    def measured(self, label: str, pg: bool = False) -> Iterator[dict[str, float]]:
        """Wait for a quiet machine, then record how much CPU others used while measuring."""
        busy = self.wait_quiet()
        print(
            f"  {label} (machine {busy * 100:.0f}% busy before) …",
            end="",
            flush=True,
            file=sys.stderr,
        )
        t0 = time.perf_counter()
        meter = LoadMeter(pg)
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

    def quietest(
        self,
        label: str,
        measure: Callable[[str], dict[str, Any]],
        *,
        retry: bool = True,
        pg: bool = False,
    ) -> dict[str, Any]:
        """Measure; while others used the CPUs meanwhile, measure again (--retry-noisy times)
        and keep the attempt during which they used the least."""
        best: tuple[float, dict[str, Any], dict[str, float]] | None = None
        tries = 1 + max(0, self.args.retry_noisy) if retry else 1
        for attempt in range(1, tries + 1):
            name = label if attempt == 1 else f"{label}-try{attempt}"
            with self.measured(name, pg) as load:
                result = measure(name)
            foreign = load["foreign_cores"]
            if best is None or foreign < best[0]:
                best = (foreign, result, {**load, "kept_try": attempt})
            if foreign <= NOISY_CORES:
                break
        assert best is not None
        self.load[label] = {**best[2], "tries": attempt}
        return best[1]

    def workdir(self, name: str, backend: str = "sqlite", reuse: int = 1) -> Workdir:
        wd = Workdir(self.root / name)
        self.dirs.append(wd)
        return wd.create(self.pg_database(name) if backend == "postgresql" else None, reuse)

    def pg_database(self, label: str) -> str:
        """A fresh PostgreSQL database of this run's own (dropped in `close`); its URI."""
        import psycopg

        name = f"bgbench_{self.token[:10]}_{label}".replace("-", "_").lower()[:63]
        with psycopg.connect(pg_dsn(self.args.pg_admin), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.pg_created.append(name)
        base = self.args.pg_admin.rsplit("/", 1)[0]
        return f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)

    def phase(
        self,
        name: str,
        *,
        backend: str = "sqlite",
        mode: str = "fork",
        params: dict[str, Any] | None = None,
        autostart: bool = False,
        tag: str = "",
        retry: bool = True,
    ) -> dict[str, Any]:
        label = f"{'pg' if backend == 'postgresql' else 'sq'}-{mode}-{name}{tag}"
        return self.quietest(
            label,
            lambda lab: self._phase_once(
                name, lab, backend=backend, mode=mode, params=params or {}, autostart=autostart
            ),
            retry=retry,
            pg=backend == "postgresql",
        )

    def _phase_once(
        self,
        name: str,
        label: str,
        *,
        backend: str,
        mode: str,
        params: dict[str, Any],
        autostart: bool,
    ) -> dict[str, Any]:
        a = self.args
        wd = self.workdir(label, backend, a.reuse if mode == "reuse" else 1)
        jobs = a.pg_jobs if backend == "postgresql" else a.jobs
        cmd = [PY, str(Path(__file__).resolve()), "--phase", name, "--dir", str(wd.path)]
        cmd += ["--jobs", str(jobs), "--latency-jobs", str(a.latency_jobs)]
        cmd += ["--gap", str(a.gap), "--fork-samples", str(a.fork_samples)]
        cmd += ["--drain-timeout", str(a.drain_timeout)]
        cmd += ["--sample-interval", str(a.sample_interval)]
        cmd += ["--params", json.dumps(params)]
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
                raise RuntimeError(f"phase {label} failed (exit {code}):\n{log_tails(wd)}")
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
        r: dict[str, Any] = {"backends": a.backends, "modes": a.modes, "runs": {}}
        print(f"flask-bgjobs bench in {self.root}", file=sys.stderr)
        r["floor_fork"] = self.phase("fork_floor")
        r["floor_interpreter"] = self.interpreter_floor()
        if "sqlite" in a.backends:
            r["floor_sqlite_insert"] = self.phase("sqlite_floor")
        if "postgresql" in a.backends:
            r["floor_pg_insert"] = self.phase("pg_floor", backend="postgresql")
        for backend in a.backends:
            for mode in a.modes:
                run: dict[str, Any] = {}
                r["runs"][f"{backend}/{mode}"] = run
                kw: dict[str, Any] = {"backend": backend, "mode": mode}
                if backend == "sqlite" and mode == "fork":
                    run["enqueue"] = self.phase("enqueue", autostart=True, **kw)
                run["drain1"] = self.phase("drain", params={"runners": 1}, **kw)
                run["drain2"] = self.phase("drain", params={"runners": 2}, tag="2", **kw)
                if backend == "postgresql" and mode == "reuse":
                    # Short jobs on PostgreSQL: more at once per runner, so that each claim
                    # and each batch of outcomes (one COMMIT, one WAL flush) carries more jobs.
                    run["drain2wide"] = self.phase(
                        "drain", params={"runners": 2, "concurrency": WIDE}, tag="2w", **kw
                    )
                run["latency"] = self.phase("latency", autostart=True, **kw)
            if backend == "sqlite" and "fork" in a.modes:
                r["coldstart"] = [
                    self.phase("coldstart", autostart=True, tag=f"-{i + 1}")
                    for i in range(a.cold_trials)
                ]
        if a.rounds > 0:
            r["variants"] = {}
            for backend in a.variant_backends:
                # Interleaved: round 1 a, b, c; round 2 a, b, c; ... so that a busy moment of
                # the machine hits every variant alike. One try each: the median does the rest.
                got: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
                for i in range(a.rounds):
                    for v in VARIANTS:
                        got[v].append(
                            self.phase(
                                "drain",
                                backend=backend,
                                mode=a.variant_mode,
                                params={"runners": 1, "variant": v},
                                tag=f"-{v}-{i + 1}",
                                retry=False,
                            )
                        )
                r["variants"][backend] = {"mode": a.variant_mode, "runs": got}
        r["load"] = self.load
        return r

    def close(self) -> None:
        for wd in self.dirs:
            cleanup_dir(wd, self.token)
        stray = sweep_token(self.token)
        if stray:
            print(f"killed stray processes {stray}", file=sys.stderr)
        if self.pg_created:
            import psycopg

            with psycopg.connect(pg_dsn(self.args.pg_admin), autocommit=True) as conn:
                for name in self.pg_created:
                    # FORCE: a worker killed mid-query may leave its backend for a moment.
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self.pg_created = []
        if self.args.keep:
            print(f"kept {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


# -- report ----------------------------------------------------------------------------------


def _med(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def peer_rate(peers: dict[str, Any] | None, name: str, key: str) -> float | None:
    """A peer's figure from bench/peers.py's JSON (``systems.<name>.<key>.rate``), if measured."""
    system = (peers or {}).get("systems", {}).get(name, {})
    if system.get("status") != "ok":
        return None
    value = system.get(key, {}).get("rate")
    return float(value) if value else None


def figures(r: dict[str, Any], peers: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The table: one row per figure with its reference (floor or peer), ratio, goal, verdict."""
    fork_ms = r["floor_fork"]["fork_exit_wait_ms"]["p50"]
    fork_rate = 1e3 / fork_ms
    interp_ms = r["floor_interpreter"]["app_ms"]["p50"]
    ready_ms = r["floor_interpreter"]["app_ready_ms"]["p50"]
    rows: list[dict[str, Any]] = []

    def row(
        name: str,
        value: float | None,
        unit: str,
        ref: str = "",
        ratio: float | None = None,
        goal: str = "",
        ok: bool | None = None,
        note: str = "",
    ) -> None:
        rows.append(
            {
                "figure": name,
                "value": value,
                "unit": unit,
                "ref": ref,
                "ratio": ratio,
                "goal": goal,
                "ok": ok,
                "note": note,
            }
        )

    def vs_peer(
        name: str, value: float, unit: str, peer: str, key: str, factor: float, what: str
    ) -> None:
        """A row comparing `value` with a peer's figure, goal `factor` x theirs."""
        theirs = peer_rate(peers, peer, key)
        if theirs is None:
            row(name, value, unit, f"{peer}: not measured", goal=f">= {factor:g}x {peer}")
            return
        ratio = value / theirs
        row(
            name,
            value,
            unit,
            f"{peer} {what} {theirs:,.0f}",
            ratio,
            f">= {factor:g}x {peer}",
            ratio >= factor,
        )

    for key, run in r["runs"].items():
        backend, mode = key.split("/")
        pg = backend == "postgresql"
        tag = f"{'PG' if pg else 'SQLite'}, {mode}"
        if mode == "reuse":
            tag += f" {r.get('reuse', '')}"
        if "enqueue" in run:
            e = run["enqueue"]
            sq = r["floor_sqlite_insert"]["rate"]
            row(
                f"enqueue, runner alive ({tag})",
                e["rate"],
                "jobs/s",
                f"raw SQLite insert {sq:,.0f}",
                e["rate"] / sq,
                note=f"call p50 {e['call_ms']['p50']:.2f} ms, p99 {e['call_ms']['p99']:.2f} ms",
            )
            vs_peer(
                f"   enqueue, runner alive, vs RQ ({tag})",
                e["rate"],
                "jobs/s",
                "rq",
                "enqueue_alive",
                4,
                "enqueue, workers alive",
            )
        d1, d2 = run["drain1"], run["drain2"]
        enq = _med([d1["enqueue_no_runner_rate"], d2["enqueue_no_runner_rate"]])
        if pg:
            floor = r["floor_pg_insert"]["rate"]
            row(
                f"enqueue, no runner ({tag})",
                enq,
                "jobs/s",
                f"psycopg INSERT+COMMIT {floor:,.0f}",
                enq / floor,
                ">= 0.5x floor",
                enq >= 0.5 * floor,
                "median of the 2 drain phases' enqueue loops",
            )
        else:
            sq = r["floor_sqlite_insert"]["rate"]
            row(
                f"enqueue, no runner ({tag})",
                enq,
                "jobs/s",
                f"raw SQLite insert {sq:,.0f}",
                enq / sq,
                note="median of the 2 drain phases' enqueue loops",
            )
            if mode == "fork":
                vs_peer(
                    f"   enqueue, no runner, vs RQ ({tag})",
                    enq,
                    "jobs/s",
                    "rq",
                    "enqueue",
                    4,
                    "enqueue, no worker",
                )
        for n, d in ((1, d1), (2, d2)):
            rate = d["rate"] or 0.0
            name = f"drain, {n} runner{'s' if n > 1 else ''} ({tag})"
            note = (
                f"wall incl. startup {d['wall_rate']:,.0f}/s; startup "
                f"{(d['startup_s'] or 0) * 1e3:.0f} ms; runner CPU "
                f"{d.get('runner_cpu_ms_per_attempt', math.nan):.2f} ms/attempt"
            )
            floor_ref = f"fork floor {fork_rate:,.0f}/s x {n}"
            if mode == "fork" and n == 1 and not pg:
                ratio = rate / fork_rate
                row(
                    name, rate, "jobs/s", floor_ref, ratio, ">= 0.6x fork floor", ratio >= 0.6, note
                )
                vs_peer(f"   {name.strip()} vs RQ", rate, "jobs/s", "rq", "drain", 3, "drain")
            elif mode == "reuse" and n == 1 and not pg:
                row(name, rate, "jobs/s", floor_ref, rate / fork_rate, note=note)
                vs_peer(
                    f"   {name.strip()} vs Celery",
                    rate,
                    "jobs/s",
                    "celery",
                    "drain",
                    1,
                    "prefork drain",
                )
            else:
                row(name, rate, "jobs/s", floor_ref, rate / (n * fork_rate), note=note)
        wide = run.get("drain2wide")
        if wide is not None:
            rate = wide["rate"] or 0.0
            row(
                f"drain, 2 runners x concurrency {WIDE} ({tag})",
                rate,
                "jobs/s",
                f"fork floor {fork_rate:,.0f}/s x 2",
                rate / (2 * fork_rate),
                ">= 1,000/s",
                rate >= 1000,
                f"runner CPU {wide.get('runner_cpu_ms_per_attempt', math.nan):.2f} ms/attempt; "
                f"at concurrency {CONCURRENCY} see the row above",
            )
        lat = run["latency"]
        jl, cl, el = lat["job_start_latency_ms"], lat["start_latency_ms"], lat["end_to_end_ms"]
        goal50 = None if pg else (4.0 if mode == "fork" else 3.0)
        goal95 = 8.0 if (not pg and mode == "fork") else None
        row(
            f"latency p50, enqueue -> job's code ({tag})",
            jl["p50"],
            "ms",
            f"fork floor {fork_ms:.2f} ms",
            jl["p50"] / fork_ms,
            f"<= {goal50:g} ms" if goal50 else "",
            (jl["p50"] <= goal50) if goal50 else None,
            f"claim (created -> started_at) p50 {cl['p50']:.2f} ms; created -> finished p50 "
            f"{el['p50']:.1f} ms",
        )
        row(
            f"latency p95, enqueue -> job's code ({tag})",
            jl["p95"],
            "ms",
            f"fork floor {fork_ms:.2f} ms",
            jl["p95"] / fork_ms,
            f"<= {goal95:g} ms" if goal95 else "",
            (jl["p95"] <= goal95) if goal95 else None,
            f"claim p95 {cl['p95']:.2f} ms; created -> finished p95 {el['p95']:.1f} ms",
        )
        fa = sum(x["job_summary"]["failed_attempts"] for x in (d1, d2, lat))
        row(f"   failed attempts, no-op jobs ({tag})", fa, "attempts", goal="0", ok=fa == 0)

    if "coldstart" in r:
        cold = [c["cold_start_ms"] for c in r["coldstart"]]
        cold_med = statistics.median(cold)
        budget = interp_ms + COLD_BUDGET_MS
        row(
            "cold start, autostart: created -> started (SQLite, fork)",
            cold_med,
            "ms",
            f"interpreter floor {interp_ms:.0f} ms",
            cold_med / interp_ms,
            f"<= {budget:.0f} ms (floor + {COLD_BUDGET_MS:g}, 0.1.0's budget)",
            cold_med <= budget,
            f"{cold_med - ready_ms:+.0f} ms vs app-built; trials "
            + ", ".join(f"{c:.0f}" for c in cold),
        )

    for backend, var in r.get("variants", {}).items():
        runs = var["runs"]
        tag = f"{'PG' if backend == 'postgresql' else 'SQLite'}, {var['mode']}"
        base_d = _med([x["rate"] for x in runs["plain"]])
        base_e = _med([x["enqueue_no_runner_rate"] for x in runs["plain"]])
        for v, label in VARIANTS.items():
            d = _med([x["rate"] for x in runs[v]])
            e = _med([x["enqueue_no_runner_rate"] for x in runs[v]])
            each = ", ".join(f"{x['rate']:,.0f}" for x in runs[v])
            for what, val, base in (("drain", d, base_d), ("enqueue", e, base_e)):
                ratio = val / base if base else None
                goal, ok = "", None
                if v == "queue":
                    goal, ok = ">= 0.9x plain", ratio is not None and ratio >= 0.9
                row(
                    f"{'   ' if v != 'plain' else ''}{what}, {label} ({tag})",
                    val,
                    "jobs/s",
                    "plain" if v != "plain" else "",
                    ratio if v != "plain" else None,
                    goal,
                    ok,
                    f"median of {len(runs[v])}" + (f"; drains {each}" if what == "drain" else ""),
                )

    sample = next(iter(r["runs"].values()), {}).get("drain1", {})
    lat0 = next(iter(r["runs"].values()), {}).get("latency", {})
    if lat0.get("runner_idle_fresh"):
        row(
            "runner PSS idle, fresh / after jobs",
            lat0["runner_idle_fresh"]["pss_kib"] / 1024,
            "MiB",
            note=f"after jobs {lat0['runner_idle_after_jobs']['pss_kib'] / 1024:.1f} MiB",
        )
    if "runner_pss_running_kib" in sample:
        row(
            "runner PSS running jobs (median)",
            sample["runner_pss_running_kib"]["median"] / 1024,
            "MiB",
            note=(
                "runner + job processes "
                f"{sample['runner_plus_children_pss_kib']['median'] / 1024:.1f} MiB"
            ),
        )
    ff = r["floor_fork"]
    row(
        "floor: fork+_exit+waitpid (warm app)",
        fork_ms,
        "ms",
        note=f"p95 {ff['fork_exit_wait_ms']['p95']:.2f} ms; {fork_rate:,.0f} forks/s one at a time",
    )
    row(
        "floor: fresh interpreter + create_app",
        interp_ms,
        "ms",
        note=(
            f"app built after {ready_ms:.0f} ms; bare python "
            f"{r['floor_interpreter']['bare_python_ms']['p50']:.0f} ms"
        ),
    )
    if "floor_sqlite_insert" in r:
        row(
            "floor: raw SQLite INSERT+COMMIT",
            r["floor_sqlite_insert"]["rate"],
            "rows/s",
            note="WAL, synchronous=NORMAL",
        )
    if "floor_pg_insert" in r:
        st = r["floor_pg_insert"]["settings"]
        row(
            "floor: PostgreSQL INSERT+COMMIT (psycopg 3)",
            r["floor_pg_insert"]["rate"],
            "rows/s",
            note=f"server {st['server_version']}, synchronous_commit={st['synchronous_commit']}",
        )
    for name, key, what in (
        ("rq", "drain", "drain"),
        ("rq", "enqueue", "enqueue, no worker"),
        ("rq", "enqueue_alive", "enqueue, workers alive"),
        ("celery", "drain", "drain"),
        ("celery", "enqueue", "enqueue, no worker"),
        ("huey", "drain", "drain"),
        ("procrastinate", "drain", "drain"),
    ):
        v = peer_rate(peers, name, key)
        if v is not None:
            row(f"peer: {name} {what}", v, "jobs/s", note="bench/peers.py")
    return rows


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, int) or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def _status(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "MISSED")


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("figure", "value", "unit", "vs", "ratio", "goal", "status", "notes")
    table = [
        (
            r["figure"],
            _fmt(r["value"]),
            r["unit"],
            r["ref"],
            "" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            r["goal"],
            _status(r["ok"]),
            r["note"],
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [head, *table]) for i in range(len(head))]
    right = {1, 4}

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


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    """The summary as a markdown table (bench/results/latest.md)."""
    lines = [header, ""]
    lines.append("| figure | value | floor / peer | ratio | goal | met? | notes |")
    lines.append("|---|---:|---|---:|---|---|---|")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        name = r["figure"].strip()
        if r["figure"].startswith(" "):
            name = f"↳ {name}"
        cells = [
            name,
            f"{_fmt(r['value'])} {r['unit']}",
            r["ref"],
            ratio,
            r["goal"],
            {"met": "yes", "MISSED": "**no**", "": ""}[_status(r["ok"])],
            r["note"],
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for dist in ("flask", "flask-sqlalchemy", "sqlalchemy", "flask-bgjobs"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[dist] = md.version(dist)
    engine = hashlib.sha256()
    for path in sorted((ROOT / "flask_bgjobs").rglob("*.py")):
        engine.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())

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


QUICK = {
    "jobs": 200,
    "pg_jobs": 100,
    "latency_jobs": 30,
    "cold_trials": 1,
    "fork_samples": 50,
    "interp_samples": 2,
    "rounds": 1,
    "retry_noisy": 0,
    "wait_quiet": 3.0,
}


def run_peers(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run bench/peers.py (its own venv, its own cleanup) for the peers' figures; or read an
    earlier run's JSON (--peers-json). None when neither is asked for or it failed."""
    if args.peers_json:
        return json.loads(args.peers_json.read_text())
    if not args.peers:
        return None
    out = RESULTS / "peers-latest.json"
    cmd = [PY, str(BENCH / "peers.py"), "--only", args.peers_only, "--no-floors"]
    cmd += ["--jobs", str(args.jobs), "--latency-jobs", str(args.latency_jobs)]
    cmd += ["--wait-quiet", str(args.wait_quiet), "--retry-noisy", str(args.retry_noisy)]
    cmd += ["--out", str(out)]
    print(f"peers: {' '.join(cmd[1:])}", file=sys.stderr)
    before = out.stat().st_mtime if out.exists() else None
    proc = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr, check=False)
    if proc.returncode != 0 or not out.exists() or out.stat().st_mtime == before:
        print(f"peers.py failed (exit {proc.returncode}); no peer figures", file=sys.stderr)
        return None
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "both"),
        default="both",
        help="database(s) to measure (both)",
    )
    p.add_argument(
        "--mode",
        choices=("fork", "reuse", "both"),
        default="both",
        help="runner mode(s): a fresh process per attempt, or process reuse (both)",
    )
    p.add_argument("--reuse", type=int, default=100, help="attempts per job process, reuse (100)")
    p.add_argument("--jobs", type=int, default=2000, help="SQLite jobs for enqueue/drain (2000)")
    p.add_argument("--pg-jobs", type=int, default=1000, help="PostgreSQL jobs (1000)")
    p.add_argument(
        "--pg-admin",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="where to create the bench's PostgreSQL databases (bgbench_*, dropped at the end)",
    )
    p.add_argument("--latency-jobs", type=int, default=200, help="jobs for latency (200)")
    p.add_argument("--gap", type=float, default=0.020, help="seconds between latency jobs")
    p.add_argument("--fork-samples", type=int, default=200, help="forks for the fork floor")
    p.add_argument("--interp-samples", type=int, default=5, help="starts for the interp. floor")
    p.add_argument("--cold-trials", type=int, default=3, help="cold starts (median shown)")
    p.add_argument(
        "--rounds", type=int, default=3, help="rounds of the queue/key overhead runs (3; 0: none)"
    )
    p.add_argument(
        "--variant-backend",
        choices=("sqlite", "postgresql", "both", "same"),
        default="same",
        help="database(s) for the queue/key overhead runs (same as --backend)",
    )
    p.add_argument(
        "--variant-mode",
        choices=("fork", "reuse"),
        default="reuse",
        help="runner mode of the queue/key overhead runs (reuse: the claim costs show most)",
    )
    p.add_argument("--peers", action="store_true", help="also run bench/peers.py (RQ, Celery)")
    p.add_argument("--peers-only", default="rq,celery", help="peers for --peers (rq,celery)")
    p.add_argument("--peers-json", type=Path, help="use an earlier bench/peers.py JSON instead")
    p.add_argument("--quick", action="store_true", help="smoke run: small N, one try, 1 round")
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
    p.add_argument("--params", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        return run_phase_here(args)
    if args.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        for key, value in QUICK.items():
            if f"--{key.replace('_', '-')}" not in given:
                setattr(args, key, value)
    both = ["sqlite", "postgresql"]
    args.backends = both if args.backend == "both" else [args.backend]
    args.modes = ["fork", "reuse"] if args.mode == "both" else [args.mode]
    vb = args.variant_backend
    args.variant_backends = args.backends if vb == "same" else (both if vb == "both" else [vb])

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
    measured["reuse"] = args.reuse
    peers = run_peers(args)
    rows = figures(measured, peers)
    print()
    print_table(rows)
    load = measured.get("load", {})
    load_line = f"other processes' CPU during each phase (cores of {os.cpu_count()}): " + ", ".join(
        f"{k} {v['foreign_cores']:.2f}"
        + (f" (best of {v['tries']} tries)" if v["tries"] > 1 else "")
        for k, v in load.items()
    )
    print("\n" + load_line)
    noisy = [k for k, v in load.items() if v["foreign_cores"] > NOISY_CORES]
    warning = ""
    if noisy:
        warning = (
            f"WARNING: the machine was shared during {', '.join(noisy)}: "
            "those figures are pessimistic"
        )
        print(warning)
    env = environment()
    peer_note = "none (run with --peers or --peers-json)"
    if peers:
        peer_note = (
            f"bench/peers.py {peers.get('started_at', '?')}, N={peers.get('settings', {}).get('jobs')}"
            + (" (this run)" if args.peers else f" (from {args.peers_json})")
        )
    header = (
        f"## flask-bgjobs bench, {started.strftime('%Y-%m-%d %H:%M UTC')}\n\n"
        f"`bench/run.py {' '.join(argv if argv is not None else sys.argv[1:])}`: backends "
        f"{', '.join(args.backends)}; modes {', '.join(args.modes)} (reuse {args.reuse}); "
        f"N = {args.jobs} (SQLite), {args.pg_jobs} (PostgreSQL); concurrency {CONCURRENCY} per "
        f"runner; peers: {peer_note}. git {env['git_head'][:10]}"
        + (" + local engine changes" if env["engine_files_dirty"] else "")
        + f", Python {env['python']}, {env['cpus']} CPUs."
    )
    md = markdown(rows, header)
    md += f"\n{load_line}\n" + (f"\n{warning}\n" if warning else "")
    print("\n" + md)
    report = {
        "started_at": started.isoformat(timespec="seconds"),
        "environment": env,
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("phase", "dir", "out", "params")
        },
        "figures": rows,
        "raw": measured,
        "peers": peers,
    }
    report["settings"]["keep"] = bool(args.keep)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str)
    args.out.write_text(text)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (args.out.parent / f"run-{stamp}.json").write_text(text)
    args.out.with_suffix(".md").write_text(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    misses = [r["figure"].strip() for r in rows if r["ok"] is False]
    if misses:
        print(f"missed goals: {len(misses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
