"""Peer benchmark: RQ, Celery, Huey and procrastinate on a no-op job, on this machine, today.

    .venv/bin/python bench/peers.py [--jobs N] [--only rq,celery] [--keep]   # see bench/README.md

The peers live in their own virtualenv, ``bench/.peers-venv`` (gitignored), which this script
creates and fills from PyPI (``rq``, ``celery[redis]``, ``huey``, ``procrastinate[psycopg]``,
whatever versions pip gives; each is installed on its own, and one that fails is reported
and skipped). None of their code is committed: only this driver and the four tiny job modules
in ``bench/peer_jobs/``. flask-bgjobs itself (SQLite and PostgreSQL) goes through the same
harness, from the bench's own interpreter, so that its row is timed like the peers'.

For each system, concurrency 2, no-op jobs that append their own start/finish times to a file:

- enqueue rate: N enqueues in a loop in one process, no worker alive; and again N with the
  workers alive and idle at the start (as bench/run.py's figure 1, "runner alive");
- drain rate: the N queued jobs, then the workers start: N / (last finish - first start);
- latency: workers alive and idle, 200 jobs enqueued 20 ms apart: job start - the moment just
  before the enqueue call, p50/p95.

And the floors: ``fork()+_exit+waitpid`` in a parent that imported flask, flask_sqlalchemy and
sqlalchemy; one ``INSERT`` + ``COMMIT`` per row in PostgreSQL (psycopg 3) and in SQLite (WAL,
``synchronous=NORMAL``).

Importable: ``peers.measure_all(jobs=2000, concurrency=2) -> dict`` and
``peers.format_table(result) -> str``. Every measurement runs in its own child interpreter
(``peers.py --phase NAME --dir DIR``, internal), and everything started (workers, their
children, a Redis server if it had to be started) is killed by PID at the end, also on error
or Ctrl-C; temporary files live under ``/tmp/bgpeers-*``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench/run.py, for its stdlib-only helpers (it imports nothing else at module level, so this
# works in the peers' venv too). bench/ is on sys.path: it is the script's own folder.
import run as bench_run

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
VENV = BENCH / ".peers-venv"
JOBS_DIR = BENCH / "peer_jobs"
TOKEN_ENV = bench_run.TOKEN_ENV
NOISY_CORES = bench_run.NOISY_CORES
#: Shorter measurement windows are not judged for noise (see PeerBench.quietest).
MIN_WINDOW_S = 0.25

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    str(REDIS_PORT),
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"

# Inherited variables that would change what a peer, psycopg or the bench app does.
_STRIPPED_PREFIXES = ("BGJOBS_", "FLASK_", "BGPEERS_", "CELERY_", "RQ_", "HUEY_", "PROCRASTINATE_")
_STRIPPED_NAMES = {"PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PGHOST", "PGPORT", "PGDATABASE"}
_STRIPPED_NAMES |= {"PGUSER", "PGPASSWORD", "PGSERVICE", "PGOPTIONS", "DATABASE_URL"}


@dataclass(frozen=True)
class Peer:
    name: str
    title: str
    requirement: str  # what pip installs ("": ours, from the bench's own interpreter)
    dists: tuple[str, ...]  # whose versions the output records
    service: str  # "redis", "postgres" or "sqlite"
    model: str

    @property
    def ours(self) -> bool:
        return not self.requirement


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        # Our engine through the same harness (same job record, same clock) as the peers;
        # bench/run.py's figures are the reference ones, from the engine's own rows.
        Peer(
            "bgjobs", "flask-bgjobs (SQLite)", "", ("flask-bgjobs",), "sqlite", "fork per attempt"
        ),
        Peer(
            "bgjobs-pg",
            "flask-bgjobs (PostgreSQL)",
            "",
            ("flask-bgjobs",),
            "postgres",
            "fork per attempt",
        ),
        Peer("rq", "RQ", "rq", ("rq", "redis"), "redis", "fork per job"),
        Peer(
            "celery",
            "Celery (Redis)",
            "celery[redis]",
            ("celery", "kombu", "billiard", "redis"),
            "redis",
            "prefork pool, reused",
        ),
        Peer("huey", "Huey (SQLite)", "huey", ("huey",), "sqlite", "process pool, reused, polls"),
        Peer(
            "procrastinate",
            "procrastinate (PostgreSQL)",
            "procrastinate[psycopg]",
            ("procrastinate", "psycopg", "psycopg-pool"),
            "postgres",
            "async, one process",
        ),
    )
}


def _say(msg: str, end: str = "\n") -> None:
    print(msg, end=end, file=sys.stderr, flush=True)


# -- measuring helpers, used by the child phases ---------------------------------------------


def token_pids(token: str) -> set[int]:
    """Every process whose environment carries this run's token (workers, their children)."""
    return {
        int(e)
        for e in os.listdir("/proc")
        if e.isdigit() and bench_run.carries_token(int(e), token)
    }


def process_cpu(pid: int) -> float:
    """CPU seconds of a process plus the children it reaped (0 when it is gone).

    Its own share comes from ``/proc/<pid>/task/*/schedstat`` (nanoseconds): a window of half
    a second is too short for the 10 ms ticks of ``/proc/<pid>/stat``, whose truncation summed
    over a handful of processes would pass for other people's load. ``stat`` wins when larger:
    it also holds the time of threads that have exited. Reaped children only exist in ticks.
    """
    times = bench_run.cpu_times(pid)
    if times is None:
        return 0.0
    utime, stime, cutime, cstime = times
    ns = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as fh:
                ns += int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return max(ns / 1e9, utime + stime) + cutime + cstime


class ForeignLoad:
    """Cores that *other* processes used during a window: machine busy time minus ours.

    Ours is every process carrying the run's token plus this one, each with the CPU of the
    children it reaped (a job child forked by RQ ends up in its worker's), plus the broker
    processes serving us (``service_pids``: the Redis server, our PostgreSQL backends), whose
    work is part of what the peer costs. A process of ours reaped by someone else during the
    window (none should be) would make the figure pessimistic, never optimistic.
    """

    def __init__(self, token: str, service_pids: Callable[[], set[int]] = set) -> None:
        self.token = token
        self.service_pids = service_pids

    def _ours(self) -> float:
        pids = token_pids(self.token) | {os.getpid()} | self.service_pids()
        return sum(process_cpu(pid) for pid in pids)

    def __enter__(self) -> ForeignLoad:
        self.ours0 = self._ours()
        self.busy0 = bench_run.cpu_jiffies()[0]
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = max(1e-9, time.perf_counter() - self.t0)
        busy = (bench_run.cpu_jiffies()[0] - self.busy0) / os.sysconf("SC_CLK_TCK")
        ours = self._ours() - self.ours0
        self.figures = {
            "seconds": wall,
            "busy_cores": busy / wall,
            "our_cores": ours / wall,
            "foreign_cores": max(0.0, busy - ours) / wall,
        }


@contextlib.contextmanager
def window(
    load: dict[str, dict[str, float]],
    label: str,
    service_pids: Callable[[], set[int]] = set,
) -> Iterator[None]:
    meter = ForeignLoad(os.environ[TOKEN_ENV], service_pids)
    with meter:
        yield
    load[label] = meter.figures


@dataclass(frozen=True)
class Row:
    tag: str
    pid: int
    enqueued: float
    started: float
    finished: float


class Records:
    """Reads the lines the jobs append (``peer_jobs/_record.py``) as they come, new bytes only:
    the bench polls it while the workers run, so a poll must cost next to nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.rest = b""
        self.rows: dict[str, list[Row]] = {}

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        for line in lines:
            tag, pid, enq, start, end = line.decode("ascii").split()
            row = Row(tag, int(pid), float(enq), float(start), float(end))
            self.rows.setdefault(tag, []).append(row)

    def get(self, tag: str) -> list[Row]:
        return self.rows.get(tag, [])

    def wait(
        self,
        tag: str,
        n: int,
        timeout: float,
        workers: list[subprocess.Popen[bytes]],
        what: str,
    ) -> list[Row]:
        def done() -> bool:
            for w in workers:
                if w.poll() is not None:
                    raise RuntimeError(
                        f"a worker exited (code {w.returncode}) while waiting for {what}"
                    )
            self.poll()
            return len(self.get(tag)) >= n

        # 50 ms: often enough for the figures (they come from the records, not from this
        # loop), rarely enough not to take CPU from the workers.
        bench_run.wait_for(done, timeout, what, interval=0.05)
        return self.get(tag)


def spawn(wd: Path, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
    """Start a worker in its own session (a Ctrl-C is for the bench, which then kills it)."""
    with open(wd / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=wd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with open(wd / "pids", "a", encoding="ascii") as fh:
        fh.write(f"{proc.pid}\n")
    return proc


# -- the peers, driven from a child interpreter of the peers' venv -----------------------------


class Driver:
    """One peer as the bench sees it: how to enqueue the no-op job and start the workers."""

    model = ""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.queue = os.environ["BGPEERS_QUEUE"]
        self.bin = Path(sys.prefix) / "bin"

    def warm(self) -> None:
        """Open connections and build whatever the first enqueue would, without queueing a
        job the workers will see."""

    def enqueue(self, tag: str) -> None:
        raise NotImplementedError

    def worker_cmds(self, concurrency: int) -> list[list[str]]:
        raise NotImplementedError

    def service_pids(self) -> set[int]:
        """The broker processes that work for us (counted as ours, not as other people's)."""
        pid = os.environ.get("BGPEERS_REDIS_PID")
        return {int(pid)} if pid else set()

    def close(self) -> None:
        pass


class RqDriver(Driver):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        import importlib.util

        import rq_jobs
        from redis import Redis
        from rq import Queue

        self.url = os.environ["BGPEERS_REDIS_URL"]
        self.conn = Redis.from_url(self.url)
        self.rq_queue = Queue(self.queue, connection=self.conn)
        self.warm_queue = Queue(f"{self.queue}-warmup", connection=self.conn)
        self.fn = rq_jobs.noop
        # An RQ worker runs one job at a time: concurrency 2 is a pool of 2 (rq >= 1.14) or
        # two plain workers.
        self.pool = not args.rq_workers and importlib.util.find_spec("rq.worker_pool") is not None
        how = "rq worker-pool -n {c}" if self.pool else "{c} x rq worker"
        self.model = "fork per job; " + how.format(c=args.concurrency)

    def warm(self) -> None:
        for _ in range(10):
            self.warm_queue.enqueue(self.fn, "warm", time.time())

    def enqueue(self, tag: str) -> None:
        self.rq_queue.enqueue(self.fn, tag, time.time())

    def worker_cmds(self, concurrency: int) -> list[list[str]]:
        rq = str(self.bin / "rq")
        if self.pool:
            return [[rq, "worker-pool", "-n", str(concurrency), "-u", self.url, self.queue]]
        return [[rq, "worker", "-u", self.url, self.queue] for _ in range(concurrency)]


class CeleryDriver(Driver):
    model = "prefork pool, reused; --pool prefork --concurrency {c}"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        import celery_jobs

        self.task = celery_jobs.noop
        self.model = self.model.format(c=args.concurrency)

    def warm(self) -> None:
        for _ in range(10):  # a queue nobody consumes: connects and sets up the producer
            self.task.apply_async(("warm", time.time()), queue=f"{self.queue}-warmup")

    def enqueue(self, tag: str) -> None:
        self.task.delay(tag, time.time())

    def worker_cmds(self, concurrency: int) -> list[list[str]]:
        name = f"{self.queue}@%h"  # unique: no other Celery node on this host shares it
        return [
            [
                *(str(self.bin / "celery"), "-A", "celery_jobs", "worker"),
                *("--pool", "prefork", "--concurrency", str(concurrency)),
                *("-Q", self.queue, "-n", name),
            ]
        ]


class HueyDriver(Driver):
    model = "process pool, reused, polls; SqliteHuey -w {c} -k process"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        import huey_jobs

        self.huey = huey_jobs.huey
        self.task = huey_jobs.noop
        self.model = self.model.format(c=args.concurrency)

    def warm(self) -> None:
        self.huey.pending_count()  # opens this thread's SQLite connection

    def enqueue(self, tag: str) -> None:
        self.task(tag, time.time())

    def worker_cmds(self, concurrency: int) -> list[list[str]]:
        # Huey's own polling defaults (-d 0.1 s, backoff x1.15 up to -m 10 s) are kept: they
        # are what a user gets, and they are what its latency figure shows.
        consumer = str(self.bin / "huey_consumer")
        return [[consumer, "huey_jobs.huey", "-w", str(concurrency), "-k", "process"]]

    def service_pids(self) -> set[int]:
        return set()


class ProcrastinateDriver(Driver):
    model = "async, one process; worker --concurrency {c}"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        import procrastinate_jobs
        import psycopg

        self.app = procrastinate_jobs.app
        self.task = procrastinate_jobs.noop
        self.model = self.model.format(c=args.concurrency)
        dsn = os.environ["BGPEERS_PG_DSN"]
        self.admin = psycopg.connect(dsn, autocommit=True)
        self.app.open()
        self.app.schema_manager.apply_schema()

    def warm(self) -> None:
        warm = self.task.configure(queue="warmup")  # the workers listen to "default" only
        for _ in range(10):
            warm.defer(tag="warm", enqueued_at=time.time())

    def enqueue(self, tag: str) -> None:
        self.task.defer(tag=tag, enqueued_at=time.time())

    def worker_cmds(self, concurrency: int) -> list[list[str]]:
        return [
            [
                *(str(self.bin / "procrastinate"), "--app", "procrastinate_jobs.app", "worker"),
                *("--concurrency", str(concurrency), "--queues", "default"),
            ]
        ]

    def service_pids(self) -> set[int]:
        return pg_backends(self.admin)

    def close(self) -> None:
        self.app.close()
        self.admin.close()


class BgjobsDriver(Driver):
    """Our engine: ``flask bgjobs worker`` and ``run_background_job`` on bench/benchapp.py."""

    model = "fork per attempt; flask bgjobs worker --concurrency {c}"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        import bgjobs_jobs

        from flask_bgjobs import run_background_job

        self.app = bgjobs_jobs.create_app()
        self.ctx = self.app.app_context()
        self.ctx.push()
        self.run_job = run_background_job
        self.model = self.model.format(c=args.concurrency)
        self.admin: Any = None
        uri = os.environ["BGJOBS_DATABASE_URI"]
        if uri.startswith("postgresql"):
            import psycopg

            self.admin = psycopg.connect(os.environ["BGPEERS_PG_DSN"], autocommit=True)

    def warm(self) -> None:
        # As a deployed app: tables created, connection open. The warm-up jobs are due in an
        # hour, so no worker takes them during the measurements.
        self.app.extensions["bgjobs"].ext.init_db()
        for _ in range(10):
            self.run_job("bgjobs_jobs.Record", "run", ["warm", time.time()], delay=3600)

    def enqueue(self, tag: str) -> None:
        self.run_job("bgjobs_jobs.Record", "run", [tag, time.time()])

    def worker_cmds(self, concurrency: int) -> list[list[str]]:
        app = os.environ["BGJOBS_APP"]
        return [
            [
                *(sys.executable, "-m", "flask", "--app", app, "bgjobs", "worker"),
                *("--concurrency", str(concurrency)),
            ]
        ]

    def service_pids(self) -> set[int]:
        return pg_backends(self.admin) if self.admin is not None else set()

    def close(self) -> None:
        self.ctx.pop()
        if self.admin is not None:
            self.admin.close()


DRIVERS: dict[str, Callable[[argparse.Namespace], Driver]] = {
    "bgjobs": BgjobsDriver,
    "bgjobs-pg": BgjobsDriver,
    "rq": RqDriver,
    "celery": CeleryDriver,
    "huey": HueyDriver,
    "procrastinate": ProcrastinateDriver,
}


def pg_backends(conn: Any) -> set[int]:
    """PIDs of the PostgreSQL backends connected to this connection's database."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    ).fetchall()
    return {int(r[0]) for r in rows}


def enqueue_loop(driver: Driver, tag: str, n: int) -> dict[str, Any]:
    calls: list[float] = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        driver.enqueue(tag)
        calls.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    return {
        "jobs": n,
        "seconds": elapsed,
        "rate": n / elapsed,
        "call_ms": bench_run.summary_ms(calls),
    }


def phase_peer(wd: Path, args: argparse.Namespace) -> dict[str, Any]:
    """All of one peer's figures, in this order: enqueue with no worker alive, drain of those
    jobs, latency with the workers idle, enqueue with the workers alive."""
    token = os.environ[TOKEN_ENV]
    n = args.jobs
    driver = DRIVERS[args.phase](args)
    records = Records(Path(os.environ["BGPEERS_RECORD"]))
    load: dict[str, dict[str, float]] = {}
    out: dict[str, Any] = {"model": driver.model, "load": load}
    workers: list[subprocess.Popen[bytes]] = []
    try:
        driver.warm()
        with window(load, "enqueue", driver.service_pids):
            out["enqueue"] = enqueue_loop(driver, "d", n)

        with window(load, "drain", driver.service_pids):
            spawned_at = time.time()
            for i, cmd in enumerate(driver.worker_cmds(args.concurrency)):
                workers.append(spawn(wd, cmd, f"worker{i}"))
            rows = records.wait("d", n, args.timeout, workers, f"{n} queued jobs to run")
        first = min(r.started for r in rows)
        last = max(r.finished for r in rows)
        out["drain"] = {
            "jobs": n,
            "rate": n / (last - first),
            "seconds": last - first,
            "startup_s": first - spawned_at,  # workers spawned -> first job started
            "wall_s": last - spawned_at,
            "runs": len(rows),  # > jobs: some job ran twice
            "job_processes": len({r.pid for r in rows}),
        }

        with window(load, "latency", driver.service_pids):
            out["latency"] = latency_run(driver, records, workers, args)

        with window(load, "enqueue_alive", driver.service_pids):
            out["enqueue_alive"] = enqueue_loop(driver, "a", n)
        loop_end = time.time()
        records.poll()
        out["enqueue_alive"]["finished_meanwhile"] = sum(
            r.finished <= loop_end for r in records.get("a")
        )
    finally:
        # SIGTERM is every peer's (warm or cold) shutdown; the bench sweeps up after.
        for w in workers:
            bench_run.kill_pid(w.pid, token, grace=5)
        with contextlib.suppress(Exception):
            driver.close()
    return out


def latency_run(
    driver: Driver,
    records: Records,
    workers: list[subprocess.Popen[bytes]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    for _ in range(5):  # warm-up at the same pace, not measured
        driver.enqueue("w")
        time.sleep(args.gap)
    records.wait("w", 5, 60, workers, "the warm-up jobs")
    calls: list[float] = []
    start = time.perf_counter()
    for i in range(args.latency_jobs):
        # A fixed schedule (not "gap after the last call"), as bench/run.py's figure 3.
        pause = start + i * args.gap - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        t = time.perf_counter()
        driver.enqueue("l")
        calls.append(time.perf_counter() - t)
    rows = records.wait("l", args.latency_jobs, 60, workers, "the latency jobs")
    return {
        "jobs": len(rows),
        "gap_ms": args.gap * 1e3,
        "start_latency_ms": bench_run.summary_ms([r.started - r.enqueued for r in rows]),
        "end_to_end_ms": bench_run.summary_ms([r.finished - r.enqueued for r in rows]),
        "enqueue_call_ms": bench_run.summary_ms(calls),
        "job_processes": len({r.pid for r in rows}),
    }


# -- floors, each in a child interpreter ---------------------------------------------------------


def phase_fork_floor(wd: Path, args: argparse.Namespace) -> dict[str, Any]:
    """fork() + child os._exit(0) + waitpid, in a parent that imported what a Flask app does."""
    import flask  # noqa: F401
    import flask_sqlalchemy  # noqa: F401
    import sqlalchemy  # noqa: F401

    gc.collect()
    gc.freeze()  # as a forking runner would: the child touches fewer pages
    samples: list[float] = []
    load: dict[str, dict[str, float]] = {}
    with window(load, "fork"):
        for i in range(args.fork_samples + 10):
            t0 = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            if i >= 10:  # warm-up
                samples.append(time.perf_counter() - t0)
    ms = bench_run.summary_ms(samples)
    return {"fork_exit_wait_ms": ms, "forks_per_s": 1e3 / ms["p50"], "load": load}


def phase_sqlite_floor(wd: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One INSERT per BEGIN IMMEDIATE ... COMMIT, WAL + synchronous=NORMAL (as bench/run.py)."""
    conn = sqlite3.connect(wd / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c REAL)")
    load: dict[str, dict[str, float]] = {}
    with window(load, "sqlite_insert"):
        t0 = time.perf_counter()
        for _ in range(args.jobs):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (a, b, c) VALUES (?, ?, ?)", ("x", "[]", time.time()))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
    conn.close()
    return {"rows": args.jobs, "seconds": elapsed, "rate": args.jobs / elapsed, "load": load}


def phase_pg_floor(wd: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One INSERT + COMMIT per row with psycopg 3, on the server's own settings."""
    import psycopg

    dsn = os.environ["BGPEERS_PG_DSN"]
    admin = psycopg.connect(dsn, autocommit=True)
    conn = psycopg.connect(dsn)
    try:
        conn.execute(
            "CREATE TABLE t (id bigserial PRIMARY KEY, a text, b text, c double precision)"
        )
        conn.commit()
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("synchronous_commit", "fsync", "wal_sync_method")
        }
        conn.commit()
        load: dict[str, dict[str, float]] = {}
        with window(load, "pg_insert", lambda: pg_backends(admin)):
            t0 = time.perf_counter()
            for _ in range(args.pg_rows):
                conn.execute(
                    "INSERT INTO t (a, b, c) VALUES (%s, %s, %s)", ("x", "[]", time.time())
                )
                conn.commit()
            elapsed = time.perf_counter() - t0
    finally:
        conn.close()
        admin.close()
    return {
        "rows": args.pg_rows,
        "seconds": elapsed,
        "rate": args.pg_rows / elapsed,
        "psycopg": psycopg.__version__,
        "settings": settings,
        "load": load,
    }


FLOORS: dict[str, Callable[[Path, argparse.Namespace], dict[str, Any]]] = {
    "fork_floor": phase_fork_floor,
    "sqlite_floor": phase_sqlite_floor,
    "pg_floor": phase_pg_floor,
}


def run_phase_here(args: argparse.Namespace) -> int:
    wd = Path(args.dir)
    if args.phase in FLOORS:
        result = FLOORS[args.phase](wd, args)
    else:
        result = phase_peer(wd, args)
    (wd / "result.json").write_text(json.dumps(result, indent=2))
    return 0


# -- services: Redis and PostgreSQL --------------------------------------------------------------


class RedisAdmin:
    """Just enough of the Redis protocol to ping, pick and flush a database and read INFO: the
    dev venv has no Redis client, and the bench should not need one there."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def __call__(self, *args: str | int) -> Any:
        parts = [str(a).encode() for a in args]
        msg = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        self.sock.sendall(msg)
        return self._reply()

    def _reply(self) -> Any:
        line = self.reader.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.reader.read(size + 2)[:-2].decode()
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise RuntimeError(f"redis: unexpected reply {line!r}")

    def info(self, section: str) -> dict[str, str]:
        text = self("INFO", section)
        return dict(ln.split(":", 1) for ln in text.splitlines() if ":" in ln)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def redis_admin() -> RedisAdmin | None:
    try:
        r = RedisAdmin()
        if r("PING") == "PONG":
            return r
        r.close()
    except OSError:
        pass
    return None


class Postgres:
    """Creates the bench's own databases (one per use, so every try starts empty) and drops
    them at the end. The server itself is never started or restarted here."""

    def __init__(self, token: str) -> None:
        self.prefix = f"bgpeers_{token[:12]}"
        self.created: list[str] = []
        self.error: str | None = None
        self.version = ""
        try:
            import psycopg

            with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
                self.version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        except Exception as exc:  # noqa: BLE001 - any failure means: no PostgreSQL peers
            self.error = f"PostgreSQL at {PG_ADMIN_DSN} unusable: {exc}"

    def create(self, label: str) -> str:
        import psycopg

        name = f"{self.prefix}_{label}".replace("-", "_")
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return f"postgresql://postgres@127.0.0.1:5432/{name}"

    def drop_all(self) -> None:
        if not self.created:
            return
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            for name in self.created:
                # FORCE: a worker killed mid-query may leave its backend behind for a moment.
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created = []


# -- the peers' venv -----------------------------------------------------------------------------

_VERSIONS_CODE = """
import importlib.metadata as md, json, sys
out = {}
for d in sys.argv[1:]:
    try:
        out[d] = md.version(d)
    except md.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def venv_versions(dists: Iterable[str]) -> dict[str, str]:
    py = VENV / "bin" / "python"
    if not py.exists():
        return {}
    proc = subprocess.run(
        [str(py), "-c", _VERSIONS_CODE, *dists], capture_output=True, text=True, check=False
    )
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def ensure_venv(peers: list[Peer], log: Path, *, reinstall: bool) -> dict[str, str | None]:
    """Create bench/.peers-venv and pip-install every peer it lacks, one at a time so that one
    that fails does not stop the others. Returns each peer's install error (None: usable)."""
    if reinstall and VENV.exists():
        shutil.rmtree(VENV)
    if not (VENV / "bin" / "python").exists():
        _say(f"creating {VENV}")
        with open(log, "ab") as fh:
            proc = subprocess.run(
                [sys.executable, "-m", "venv", str(VENV)], stdout=fh, stderr=subprocess.STDOUT
            )
        if proc.returncode != 0:
            why = f"could not create {VENV} (exit {proc.returncode}): see {log}"
            return {peer.name: why for peer in peers}
    have = venv_versions(d for p in peers for d in p.dists)
    errors: dict[str, str | None] = {}
    for peer in peers:
        if all(d in have for d in peer.dists):
            errors[peer.name] = None
            continue
        _say(f"pip install {peer.requirement} into {VENV.name} …")
        with open(log, "ab") as fh:
            proc = subprocess.run(
                [
                    *(str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"),
                    *("--disable-pip-version-check", peer.requirement),
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=900,
                check=False,
            )
        missing = [d for d in peer.dists if d not in venv_versions(peer.dists)]
        if proc.returncode != 0 or missing:
            tail = log.read_text(errors="replace")[-600:].strip()
            errors[peer.name] = (
                f"pip install {peer.requirement} failed (exit {proc.returncode}): {tail}"
            )
        else:
            errors[peer.name] = None
    return errors


def bgjobs_env(wd: Path, pg_dsn: str | None, concurrency: int) -> dict[str, str]:
    """Our engine's configuration, as bench/run.py's, with the recording job allow-listed and
    autostart off: the workers are started by the bench, as the peers' are."""
    (wd / "instance").mkdir(exist_ok=True)
    (wd / "empty.env").touch()
    if pg_dsn:
        uri = pg_dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        uri = f"sqlite:///{wd / 'bench.db'}"
    return {
        "PYTHONPATH": f"{JOBS_DIR}{os.pathsep}{BENCH}",
        "BENCHAPP_INSTANCE": str(wd / "instance"),
        "BGJOBS_DATABASE_URI": uri,
        "BGJOBS_ALLOWED_JOBS": "bgjobs_jobs.Record:run",
        "BGJOBS_APP": "bgjobs_jobs:create_app()",
        "BGJOBS_AUTOSTART": "false",
        "BGJOBS_MAX_CONCURRENCY": str(concurrency),
        "BGJOBS_DASHBOARD": "false",
        # An empty .env of our own: a stray .env in the cwd must not leak in.
        "BGJOBS_DOTENV_PATH": str(wd / "empty.env"),
        "FLASK_SKIP_DOTENV": "1",
    }


# -- the orchestrator ----------------------------------------------------------------------------


class PeerBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.token = uuid.uuid4().hex
        self.queue = f"bgpeers-{self.token[:8]}"
        self.root = Path(tempfile.mkdtemp(prefix="bgpeers-", dir="/tmp"))
        self.dirs: list[Path] = []
        self.redis: RedisAdmin | None = None
        self.redis_db: int | None = None
        self.redis_started: int | None = None  # a server we had to start, stopped at the end
        self.pg: Postgres | None = None
        self.notes: list[str] = []

    # - environment of every child -

    def env(self, wd: Path, extra: dict[str, str]) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_STRIPPED_PREFIXES) and k not in _STRIPPED_NAMES
        }
        env.update(
            {
                TOKEN_ENV: self.token,
                "PYTHONPATH": str(JOBS_DIR),
                "BGPEERS_QUEUE": self.queue,
                "BGPEERS_RECORD": str(wd / "records.txt"),
                **extra,
            }
        )
        return env

    # - services -

    def ensure_redis(self) -> str | None:
        """Reach (or start) Redis and take an empty database of its 16 for this run."""
        r = redis_admin()
        if r is None:
            if shutil.which("redis-server") is None:
                return "Redis is down and redis-server is not installed"
            _say("Redis is down; starting redis-server")
            for folder in ("/var/lib/redis", "/var/log/redis"):
                Path(folder).mkdir(parents=True, exist_ok=True)
            env = {**os.environ, TOKEN_ENV: self.token}
            proc = subprocess.run(REDIS_START, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                return f"redis-server failed to start: {proc.stdout}{proc.stderr}".strip()
            try:
                r = bench_run.wait_for(
                    redis_admin, 10, "redis-server to answer PING", interval=0.05
                )
            except TimeoutError as exc:
                return str(exc)
            self.redis_started = int(r.info("server")["process_id"])
            self.notes.append(
                f"started redis-server (pid {self.redis_started}); stopped at the end"
            )
        self.redis = r
        # Another user of this Redis keeps to database 0 as a rule; take the highest empty one.
        for db in range(15, 0, -1):
            r("SELECT", db)
            if r("DBSIZE") == 0:
                self.redis_db = db
                return None
        return "Redis has no empty database for the bench"

    def redis_env(self) -> dict[str, str]:
        assert self.redis is not None and self.redis_db is not None
        self.redis("FLUSHDB")  # every try starts on an empty database (ours: it was empty)
        pid = self.redis.info("server")["process_id"]
        return {
            "BGPEERS_REDIS_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}",
            "BGPEERS_REDIS_PID": pid,
        }

    # - running one measurement -

    def wait_quiet(self) -> float:
        """Wait (up to --wait-quiet s) until other processes leave the CPUs mostly idle.

        Judged over 2 s, not bench/run.py's 0.5 s: another session's test suite, which forks
        short-lived processes all along, often leaves the CPUs idle for half a second.
        """
        deadline = time.monotonic() + self.args.wait_quiet
        busy = bench_run.machine_busy(2.0)
        while busy > self.args.quiet_below and time.monotonic() < deadline:
            busy = bench_run.machine_busy(2.0)
        return busy

    def child(
        self, python: str, phase: str, label: str, extra: Callable[[Path], dict[str, str]]
    ) -> dict[str, Any]:
        """Run ``peers.py --phase`` in a fresh interpreter; kill whatever it left behind."""
        wd = self.root / label
        wd.mkdir(parents=True)
        self.dirs.append(wd)
        a = self.args
        cmd = [python, str(Path(__file__).resolve()), "--phase", phase, "--dir", str(wd)]
        cmd += ["--jobs", str(a.jobs), "--concurrency", str(a.concurrency)]
        cmd += ["--latency-jobs", str(a.latency_jobs), "--gap", str(a.gap)]
        cmd += ["--fork-samples", str(a.fork_samples), "--pg-rows", str(a.pg_rows)]
        cmd += ["--timeout", str(a.timeout)] + (["--rq-workers"] if a.rq_workers else [])
        env = self.env(wd, extra(wd))
        try:
            with open(wd / "phase.log", "wb") as log:
                proc = subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=wd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            with open(wd / "pids", "a", encoding="ascii") as fh:
                fh.write(f"{proc.pid}\n")
            try:
                code = proc.wait(timeout=2 * a.timeout + 120)
            except subprocess.TimeoutExpired:
                bench_run.kill_pid(proc.pid, self.token)
                raise
            if code != 0:
                raise RuntimeError(f"{label} failed (exit {code}):\n{self.log_tails(wd)}")
            return json.loads((wd / "result.json").read_text())  # type: ignore[no-any-return]
        finally:
            self.kill_dir(wd)

    def kill_dir(self, wd: Path) -> list[int]:
        killed = []
        with contextlib.suppress(OSError, ValueError):
            for pid in {int(x) for x in (wd / "pids").read_text().split()}:
                if bench_run.kill_pid(pid, self.token):
                    killed.append(pid)
        # Workers' children (a work horse, pool processes) carry the token too.
        killed += [
            p
            for p in token_pids(self.token)
            if p != self.redis_started and bench_run.kill_pid(p, self.token, grace=1)
        ]
        return killed

    @staticmethod
    def log_tails(wd: Path, chars: int = 1500) -> str:
        parts = []
        for path in sorted(wd.glob("*.log")):
            text = path.read_text(errors="replace")
            if text.strip():
                parts.append(f"--- {path} (end)\n{text[-chars:]}")
        return "\n".join(parts)

    def quietest(self, label: str, measure: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """Measure; while others used the CPUs meanwhile, measure again (--retry-noisy times)
        and keep the try during which they used the least (in its noisiest window)."""
        best: dict[str, Any] | None = None
        tries = 1 + max(0, self.args.retry_noisy)
        for attempt in range(1, tries + 1):
            name = label if attempt == 1 else f"{label}-try{attempt}"
            busy = self.wait_quiet()
            _say(f"  {name} (machine {busy * 100:.0f}% busy before) …", end="")
            t0 = time.perf_counter()
            result = measure(name)
            # The machine's busy time comes in 10 ms ticks per CPU: over a shorter window
            # than this it says little, so such a window is recorded but not judged.
            judged = [w for w in result["load"].values() if w["seconds"] >= MIN_WINDOW_S]
            foreign = max((w["foreign_cores"] for w in judged), default=0.0)
            _say(f" {time.perf_counter() - t0:.1f} s; others used up to {foreign:.2f} cores")
            result["noise"] = {"busy_before": busy, "foreign_cores_max": foreign, "try": attempt}
            if best is None or foreign < best["noise"]["foreign_cores_max"]:
                best = result
            if foreign <= NOISY_CORES:
                break
        assert best is not None
        best["noise"]["tries"] = attempt
        return best

    # - the whole run -

    def run(self) -> dict[str, Any]:
        a = self.args
        _say(f"flask-bgjobs peer bench in {self.root}")
        peers = [PEERS[n] for n in a.only]
        theirs = [p for p in peers if not p.ours]
        install = (
            ensure_venv(theirs, self.root / "pip.log", reinstall=a.reinstall) if theirs else {}
        )
        versions = venv_versions(sorted({d for p in PEERS.values() for d in p.dists} | {"pip"}))
        versions.pop("flask-bgjobs", None)  # not in the peers' venv
        if any(p.ours for p in peers):
            import importlib.metadata
            import importlib.util

            if importlib.util.find_spec("flask_bgjobs") is None:
                for p in peers:
                    if p.ours:
                        install[p.name] = f"flask_bgjobs is not importable by {sys.executable}"
            else:
                versions["flask-bgjobs"] = importlib.metadata.version("flask-bgjobs")

        redis_error = self.ensure_redis() if any(p.service == "redis" for p in peers) else None
        self.pg = Postgres(self.token)
        out: dict[str, Any] = {"floors": {}, "systems": {}}

        if a.floors:
            out["floors"]["fork"] = self.floor("fork_floor", sys.executable)
            out["floors"]["sqlite_insert"] = self.floor("sqlite_floor", sys.executable)
            if self.pg.error:
                out["floors"]["pg_insert"] = {"status": "skipped", "reason": self.pg.error}
            else:
                out["floors"]["pg_insert"] = self.floor("pg_floor", sys.executable)

        for peer in peers:
            entry: dict[str, Any] = {
                "title": peer.title,
                "versions": {d: versions[d] for d in peer.dists if d in versions},
            }
            reason = install.get(peer.name)
            if reason is None and peer.service == "redis":
                reason = redis_error
            if reason is None and peer.service == "postgres":
                reason = self.pg.error
            if reason:
                _say(f"  {peer.name}: skipped: {first_line(reason)}")
                out["systems"][peer.name] = {**entry, "status": "skipped", "reason": reason}
                continue
            try:
                result = self.quietest(peer.name, lambda label, p=peer: self.peer_once(p, label))
                out["systems"][peer.name] = {**entry, "status": "ok", **result}
            except Exception as exc:  # noqa: BLE001 - one peer failing must not stop the others
                _say(f"\n  {peer.name}: FAILED: {exc}")
                a.keep = True  # its logs say why
                out["systems"][peer.name] = {**entry, "status": "error", "error": str(exc)}
        out["environment"] = self.environment(versions)
        out["notes"] = self.notes
        return out

    def floor(self, phase: str, python: str) -> dict[str, Any]:
        def once(label: str) -> dict[str, Any]:
            extra: dict[str, str] = {}
            if phase == "pg_floor":
                assert self.pg is not None
                extra["BGPEERS_PG_DSN"] = self.pg.create(label)
            return self.child(python, phase, label, lambda _wd: extra)

        try:
            return {"status": "ok", **self.quietest(phase, once)}
        except Exception as exc:  # noqa: BLE001 - a floor failing must not stop the peers
            _say(f"\n  {phase}: FAILED: {exc}")
            self.args.keep = True
            return {"status": "error", "error": str(exc)}

    def peer_once(self, peer: Peer, label: str) -> dict[str, Any]:
        def extra(wd: Path) -> dict[str, str]:
            env: dict[str, str] = {}
            if peer.service == "redis":
                env.update(self.redis_env())
            elif peer.service == "postgres":
                assert self.pg is not None
                env["BGPEERS_PG_DSN"] = self.pg.create(label)
            else:
                env["BGPEERS_HUEY_DB"] = str(wd / "huey.db")
            if peer.ours:
                env.update(bgjobs_env(wd, env.get("BGPEERS_PG_DSN"), self.args.concurrency))
            return env

        python = sys.executable if peer.ours else str(VENV / "bin" / "python")
        return self.child(python, peer.name, label, extra)

    def environment(self, versions: dict[str, str]) -> dict[str, Any]:
        def git(*cmd: str) -> str:
            proc = subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False
            )
            return proc.stdout.strip()

        redis_version = ""
        if self.redis is not None:
            redis_version = self.redis.info("server").get("redis_version", "")
        return {
            "python": platform.python_version(),
            "peers_venv": str(VENV),
            "versions": versions,
            "sqlite": sqlite3.sqlite_version,
            "redis": redis_version,
            "redis_db": self.redis_db,
            "postgresql": self.pg.version if self.pg else "",
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "git_head": git("rev-parse", "HEAD"),
        }

    def close(self) -> None:
        for wd in self.dirs:
            self.kill_dir(wd)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                if self.redis_db is not None:
                    self.redis("SELECT", self.redis_db)
                    self.redis("FLUSHDB")
            self.redis.close()
        if self.redis_started is not None:
            bench_run.kill_pid(self.redis_started, self.token)
        stray = bench_run.sweep_token(self.token)
        if stray:
            _say(f"killed stray processes {stray}")
        if self.pg is not None:
            try:
                self.pg.drop_all()
            except Exception as exc:  # noqa: BLE001 - report, and go on cleaning up
                _say(f"could not drop the bench's databases {self.pg.created}: {exc}")
        if self.args.keep:
            _say(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


# -- the public entry point and the report -----------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=2000, help="jobs for enqueue and drain (2000)")
    p.add_argument("--concurrency", type=int, default=2, help="jobs at once per peer (2)")
    p.add_argument(
        "--only",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=list(PEERS),
        help=f"comma-separated peers ({','.join(PEERS)}; default all)",
    )
    p.add_argument("--latency-jobs", type=int, default=200, help="jobs for latency (200)")
    p.add_argument("--gap", type=float, default=0.020, help="seconds between latency jobs")
    p.add_argument("--fork-samples", type=int, default=200, help="forks for the fork floor")
    p.add_argument("--pg-rows", type=int, default=1000, help="rows for the PostgreSQL floor")
    p.add_argument("--no-floors", dest="floors", action="store_false", help="peers only")
    p.add_argument("--rq-workers", action="store_true", help="N x `rq worker`, not worker-pool")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline for a drain, s (300)")
    p.add_argument("--wait-quiet", type=float, default=30.0, help="wait for an idle machine, s")
    p.add_argument("--quiet-below", type=float, default=0.15, help="'idle': busy below (0.15)")
    p.add_argument(
        "--retry-noisy", type=int, default=2, help="measure again when others used > 0.1 core (2)"
    )
    p.add_argument("--reinstall", action="store_true", help="recreate bench/.peers-venv first")
    p.add_argument("--keep", action="store_true", help="keep /tmp/bgpeers-* (logs, records)")
    p.add_argument("--out", type=Path, default=RESULTS / "peers-latest.json", help="JSON output")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    return p


def measure_all(jobs: int = 2000, concurrency: int = 2, **options: Any) -> dict[str, Any]:
    """Install (if needed) and measure every peer plus the floors; the result as a dict.

    ``options`` are the CLI's, by their Python names: ``only=["rq", "celery"]``, ``keep=True``,
    ``floors=False``, ``latency_jobs=200``, ``retry_noisy=0``, ... Progress goes to stderr.
    """
    args = parser().parse_args([])
    args.jobs, args.concurrency = jobs, concurrency
    for key, value in options.items():
        if not hasattr(args, key):
            raise TypeError(f"measure_all: unknown option {key!r}")
        setattr(args, key, value)
    unknown = set(args.only) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown peers {sorted(unknown)}; known: {', '.join(PEERS)}")
    started = datetime.datetime.now(datetime.timezone.utc)
    bench = PeerBench(args)
    try:
        result = bench.run()
    except BaseException:
        args.keep = True  # the workers' logs say what went wrong
        raise
    finally:
        bench.close()
    result["started_at"] = started.isoformat(timespec="seconds")
    result["settings"] = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("phase", "dir")
    }
    return result


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    """The peers and the floors as a plain-text table."""
    head = (
        "system",
        "version",
        "model",
        "enqueue/s",
        "enq/s alive",
        "drain/s",
        "latency p50/p95 ms",
        "others",
    )
    rows: list[tuple[str, ...]] = []
    for name, r in result["systems"].items():
        version = r.get("versions", {}).get(PEERS[name].dists[0], "?")
        if r["status"] != "ok":
            why = r.get("reason") or r.get("error") or ""
            rows.append(
                (
                    r["title"],
                    version,
                    f"{r['status'].upper()}: {first_line(why)[:70]}",
                    "",
                    "",
                    "",
                    "",
                    "",
                )
            )
            continue
        lat = r["latency"]["start_latency_ms"]
        foreign = r["noise"]["foreign_cores_max"]
        rows.append(
            (
                r["title"],
                version,
                r["model"],
                _fmt(r["enqueue"]["rate"]),
                _fmt(r["enqueue_alive"]["rate"]),
                _fmt(r["drain"]["rate"]),
                f"{_fmt(lat['p50'], 1)} / {_fmt(lat['p95'], 1)}",
                f"{foreign:.2f}" + (" !" if foreign > NOISY_CORES else ""),
            )
        )
    widths = [max(len(t[i]) for t in [head, *rows]) for i in range(len(head))]
    right = {3, 4, 5, 6, 7}

    def line(t: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(t, widths, strict=True))
        ).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    out += [line(t) for t in rows]

    floors = result.get("floors", {})
    notes = []
    fork = floors.get("fork", {})
    if fork.get("status") == "ok":
        ms = fork["fork_exit_wait_ms"]
        notes.append(
            f"floor fork()+_exit+waitpid (flask, flask_sqlalchemy, sqlalchemy imported): "
            f"p50 {ms['p50']:.2f} ms, p95 {ms['p95']:.2f} ms (= {fork['forks_per_s']:,.0f}/s one at a time)"
        )
    for key, what in (
        ("sqlite_insert", "SQLite INSERT+COMMIT (WAL, synchronous=NORMAL)"),
        ("pg_insert", "PostgreSQL INSERT+COMMIT (psycopg 3)"),
    ):
        f = floors.get(key, {})
        if f.get("status") == "ok":
            notes.append(f"floor {what}: {f['rate']:,.0f} rows/s ({f['rows']} rows)")
        elif f:
            notes.append(
                f"floor {what}: {f['status']}: {first_line(f.get('reason') or f.get('error') or '')}"
            )
    out += ["", *notes]
    out.append(
        "enqueue/s: no worker alive; enq/s alive: workers alive (draining meanwhile); "
        "others: cores other processes used in the noisiest window (! = over "
        f"{NOISY_CORES}: pessimistic figures)"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.phase:
        return run_phase_here(args)
    unknown = sorted(set(args.only) - set(PEERS))
    if unknown:
        p.error(f"--only: unknown {', '.join(unknown)}; known: {', '.join(PEERS)}")
    # A SIGTERM must still run the cleanup in measure_all.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    options = {
        k: v
        for k, v in vars(args).items()
        if k not in ("jobs", "concurrency", "phase", "dir", "out")
    }
    result = measure_all(args.jobs, args.concurrency, **options)
    print()
    print(format_table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str)
    args.out.write_text(text)
    stamp = result["started_at"].replace("-", "").replace(":", "").replace("+0000", "Z")
    (args.out.parent / f"peers-{stamp}.json").write_text(text)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
