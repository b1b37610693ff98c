"""Where the time goes: the profiling evidence behind the figures of ``bench/run.py``.

    .venv/bin/python bench/profile_engine.py [enqueue] [drain] [cow] [child] [pyspy]

(default: all but pyspy)

- ``enqueue``: enqueue rate with no runner, a SIGSTOPped runner (nudge + lock probe only),
  a runner woken by every enqueue but with nothing due (jobs delayed 1 h), a live runner,
  and a live runner at ``nice 10``; each split into on-CPU / waiting-for-a-CPU / asleep, and
  the time spent in ``BEGIN IMMEDIATE``, the ``INSERT`` and ``COMMIT``.
- ``drain``: the real ``Runner`` in this process (burst, concurrency 2) with its store calls,
  ``fork()`` and loop steps timed, and the minor page faults each one takes.
- ``cow``: the runner's database cycle (claim 2 + finish 2) in a loop, without and with one
  ``fork()`` per cycle: the copy-on-write faults that every fork re-arms.
- ``child``: one job child's steps in ``executor.child_main`` (time, CPU, page faults each),
  and its whole CPU cost including the exit.
- ``pyspy``: ``py-spy record`` of a burst worker (needs ``.venv/bin/pip install py-spy``).

Everything runs on fresh temporary SQLite databases; every process started is killed by PID.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import itertools
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from run import (  # noqa: E402 - bench/ is not a package
    JOB_CLASS,
    JOB_METHOD,
    PY,
    LoadMeter,
    Workdir,
    cleanup_dir,
    kill_pid,
    machine_busy,
    spawn,
    sweep_token,
    wait_worker_ready,
    worker_cmd,
)

TOKEN = uuid.uuid4().hex
ROOT = Path(tempfile.mkdtemp(prefix="bgp-"))
_DIRS: list[Workdir] = []


@contextmanager
def workdir(name: str, *, autostart: bool = False) -> Iterator[Workdir]:
    """A fresh database and instance folder; this process's environment points at it."""
    wd = Workdir(ROOT / f"{name}-{len(_DIRS)}").create()
    _DIRS.append(wd)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(wd.env(TOKEN, autostart=autostart))
    try:
        yield wd
    finally:
        os.environ.clear()
        os.environ.update(saved)
        cleanup_dir(wd, TOKEN)


def new_app() -> Any:
    import benchapp

    return benchapp.create_app()


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Timers:
    """Wraps methods to count calls, wall time and minor page faults taken inside them."""

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0])
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str | None = None) -> None:
        orig = getattr(owner, name)
        key = label or f"{getattr(owner, '__name__', owner)}.{name}"
        stats = self.stats

        @functools.wraps(orig)
        def timed(*args: Any, **kwargs: Any) -> Any:
            f0, t0 = faults(), time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                s = stats[key]
                s[0] += 1
                s[1] += time.perf_counter() - t0
                s[2] += faults() - f0

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, orig))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def print(self, per: int) -> None:
        print(f"    {'call':34} {'calls':>6} {'total s':>8} {'ms/call':>8} {'faults/call':>11}")
        for key, (n, total, flt) in sorted(self.stats.items(), key=lambda kv: -kv[1][1]):
            print(f"    {key:34} {n:6d} {total:8.2f} {total / n * 1e3:8.3f} {flt / n:11.0f}")
        print(f"    (per job: divide totals by {per})")


# -- enqueue ---------------------------------------------------------------------------------


def profile_enqueue(n: int) -> None:
    print(f"\n== enqueue: {n} run_background_job calls in one process, app context")
    modes = ("no runner", "runner stopped", "runner, nothing due", "runner alive")
    for mode in (*modes, "runner alive, nice 10"):
        with workdir("enq", autostart=mode != "no runner") as wd:
            worker = None
            if mode != "no runner":
                worker = spawn(wd, worker_cmd(burst=False), dict(os.environ), "worker")
                wait_worker_ready(wd, worker)
                if mode == "runner stopped":
                    os.kill(worker.pid, signal.SIGSTOP)
                if mode.endswith("nice 10"):  # its job children inherit it
                    os.setpriority(os.PRIO_PROCESS, worker.pid, 10)
            try:
                _enqueue_run(mode, n)
            finally:
                if worker is not None:
                    if mode == "runner stopped":
                        os.kill(worker.pid, signal.SIGCONT)
                    kill_pid(worker.pid, TOKEN, grace=10)
                    worker.wait()


def schedstat() -> tuple[float, float]:
    """(seconds on CPU, seconds runnable but waiting for a CPU) of this thread."""
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat", encoding="ascii") as fh:
        on_cpu, waiting, _ = fh.read().split()
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def _enqueue_run(mode: str, n: int) -> None:
    import sqlalchemy as sa

    from flask_bgjobs import run_background_job

    app = new_app()
    delay = 3600.0 if mode == "runner, nothing due" else None
    spent: dict[str, list[float]] = collections.defaultdict(list)
    with app.app_context():
        run_background_job(JOB_CLASS, JOB_METHOD, delay=delay)  # creates the engine
        engine = app.extensions["bgjobs"].store.engine
        marks: dict[int, float] = {}

        @sa.event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            marks[id(cursor)] = time.perf_counter()

        @sa.event.listens_for(engine, "after_cursor_execute")
        def _after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            key = "BEGIN IMMEDIATE" if statement == "BEGIN IMMEDIATE" else "INSERT"
            spent[key].append(time.perf_counter() - marks.pop(id(cursor)))

        real_commit = engine.dialect.do_commit

        def do_commit(dbapi_connection: Any) -> None:
            t0 = time.perf_counter()
            try:
                real_commit(dbapi_connection)
            finally:
                spent["COMMIT"].append(time.perf_counter() - t0)

        engine.dialect.do_commit = do_commit  # type: ignore[method-assign]
        for _ in range(10):
            run_background_job(JOB_CLASS, JOB_METHOD, delay=delay)
        spent.clear()
        ru0, s0 = resource.getrusage(resource.RUSAGE_SELF), schedstat()
        t0 = time.perf_counter()
        for _ in range(n):
            run_background_job(JOB_CLASS, JOB_METHOD, delay=delay)
        wall = time.perf_counter() - t0
        ru1, s1 = resource.getrusage(resource.RUSAGE_SELF), schedstat()
    cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    runq = s1[1] - s0[1]
    asleep = max(0.0, wall - (s1[0] - s0[0]) - runq)
    parts = ", ".join(
        f"{k} {sum(v) / n * 1e3:.3f} (max {max(v) * 1e3:.1f})" for k, v in sorted(spent.items())
    )
    print(
        f"  {mode:20} {n / wall:6.0f} jobs/s = {wall / n * 1e3:.3f} ms/job: on CPU "
        f"{cpu / n * 1e3:.3f}, waiting for a CPU {runq / n * 1e3:.3f}, asleep "
        f"{asleep / n * 1e3:.3f}\n  {'':20} inside: {parts} ms/job"
    )


# -- drain -----------------------------------------------------------------------------------


def profile_drain(n: int) -> None:
    print(f"\n== drain: the Runner in this process, burst, concurrency 2, {n} no-op jobs")
    with workdir("drain"):
        from flask_bgjobs import run_background_job, runner, store

        app = new_app()
        with app.app_context():
            for _ in range(n):
                run_background_job(JOB_CLASS, JOB_METHOD)
        state = app.extensions["bgjobs"]
        timers = Timers()
        for name in ("claim", "finish", "next_due_at", "has_work", "renew", "owned"):
            timers.wrap(store.Store, name)
        for name in ("_claim", "_record", "_start", "_wait", "_reap", "_housekeeping"):
            timers.wrap(runner.Runner, name)
        real_fork = os.fork

        def fork() -> int:
            t0 = time.perf_counter()
            pid = real_fork()
            if pid:
                s = timers.stats["os.fork (in the runner)"]
                s[0] += 1
                s[1] += time.perf_counter() - t0
            return pid

        os.fork = fork
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        rc0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        try:
            with app.app_context():
                runner.Runner(app, state, concurrency=2, burst=True).run()
        finally:
            os.fork = real_fork
            timers.restore()
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        rc1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        attempts = int(timers.stats["os.fork (in the runner)"][0]) or 1
        print(f"  {n} jobs, {attempts} attempts in {wall:.2f} s = {n / wall:.0f} jobs/s")
        print(
            f"  runner: user {(ru1.ru_utime - ru0.ru_utime) / attempts * 1e3:.2f} ms + sys "
            f"{(ru1.ru_stime - ru0.ru_stime) / attempts * 1e3:.2f} ms per attempt, "
            f"{(ru1.ru_minflt - ru0.ru_minflt) / attempts:.0f} minor faults per attempt"
        )
        print(
            f"  job children: user {(rc1.ru_utime - rc0.ru_utime) / attempts * 1e3:.2f} ms + sys "
            f"{(rc1.ru_stime - rc0.ru_stime) / attempts * 1e3:.2f} ms each, "
            f"{(rc1.ru_minflt - rc0.ru_minflt) / attempts:.0f} minor faults each"
        )
        timers.print(attempts)
        state.store.close()


# -- copy-on-write ---------------------------------------------------------------------------


def profile_cow(cycles: int) -> None:
    print("\n== cow: the runner's DB cycle (claim 2 + finish 2 in two write transactions)")
    for forking in (False, True):
        with workdir("cow"):
            from flask_bgjobs import models, run_background_job
            from flask_bgjobs.store import Outcome

            app = new_app()
            with app.app_context():
                for _ in range(2 * cycles + 40):
                    run_background_job(JOB_CLASS, JOB_METHOD)
            st = app.extensions["bgjobs"].store

            def cycle(st: Any = st) -> None:
                jobs = st.claim(owner="o", runner_id="r", limit=2, lease_seconds=30)
                st.finish(
                    "o",
                    [Outcome(j.id, j.attempts, models.END_SUCCEEDED, "ok", pid=1) for j in jobs],
                )

            gc.collect()
            gc.freeze()
            for _ in range(20):
                cycle()
            ru0, t0, fork_s = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0.0
            for _ in range(cycles):
                pid = 0
                if forking:
                    f0 = time.perf_counter()
                    pid = os.fork()
                    if pid == 0:
                        os._exit(0)
                    fork_s += time.perf_counter() - f0
                cycle()
                if pid:
                    os.waitpid(pid, 0)
            wall = time.perf_counter() - t0
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            gc.unfreeze()
            label = "one fork() per cycle" if forking else "no fork"
            print(
                f"  {label:22} {wall / cycles * 1e3:6.2f} ms/cycle (of which fork() "
                f"{fork_s / cycles * 1e3:.2f}); CPU user "
                f"{(ru1.ru_utime - ru0.ru_utime) / cycles * 1e3:.2f} + sys "
                f"{(ru1.ru_stime - ru0.ru_stime) / cycles * 1e3:.2f} ms; "
                f"{(ru1.ru_minflt - ru0.ru_minflt) / cycles:.0f} minor faults/cycle"
            )
            st.close()


# -- the job child ---------------------------------------------------------------------------


def profile_child(n: int) -> None:
    print(f"\n== child: where a job child's time goes ({n} children of a warm app process)")
    with workdir("child"):
        from flask_bgjobs import executor, run_background_job

        app = new_app()
        state = app.extensions["bgjobs"]
        with app.app_context():
            for _ in range(n):
                run_background_job(JOB_CLASS, JOB_METHOD)
        jobs = state.store.claim(owner="o", runner_id="r", limit=n, lease_seconds=600)
        state.store.close()
        marks: list[tuple[str, float, int, float]] = []

        def mark(name: str) -> None:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            marks.append((name, time.perf_counter(), ru.ru_minflt, ru.ru_utime + ru.ru_stime))

        def traced(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                mark(f"{name} start")
                try:
                    return func(*args, **kwargs)
                finally:
                    mark(f"{name} end")

            return wrapper

        def after_fork() -> None:  # what the runner's _after_fork_in_child does for the DBs
            state.store.dispose_after_fork()
            state.guard_app_engines(app)

        saved = executor._set_parent_death_signal, executor._run
        executor._set_parent_death_signal = traced(
            "prctl(PR_SET_PDEATHSIG) via ctypes.CDLL", saved[0]
        )  # type: ignore[attr-defined]
        executor._run = traced("_run (resolve, call, report)", saved[1])  # type: ignore[attr-defined]
        real_exit = os._exit
        gc.collect()
        gc.freeze()
        steps: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0, 0.0])
        rc0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            for job in jobs:
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(r)
                    marks.clear()
                    mark("fork")

                    def leave(code: int, w: int = w) -> None:
                        mark("_exit")
                        os.write(w, b"\0" + json.dumps(marks).encode())
                        real_exit(code)

                    os._exit = leave  # type: ignore[assignment]
                    executor.child_main(
                        app,
                        job,
                        w,
                        allowlist=state.allowlist,
                        max_params_bytes=state.settings.max_params_bytes,
                        parent_pid=os.getppid(),
                        after_fork=traced("after_fork (drop DB pools)", after_fork),
                    )
                os.close(w)
                data = b""
                while chunk := os.read(r, 65536):
                    data += chunk
                os.close(r)
                os.waitpid(pid, 0)
                got = json.loads(data.rsplit(b"\0", 1)[1])
                for (a, ta, fa, ca), (b, tb, fb, cb) in itertools.pairwise(got):
                    inside = a.endswith(" start") and b == a[: -len("start")] + "end"
                    step = steps[a[: -len(" start")] if inside else f"(between) {a} -> {b}"]
                    step[0] += 1
                    step[1] += tb - ta
                    step[2] += fb - fa
                    step[3] += cb - ca
        finally:
            executor._set_parent_death_signal, executor._run = saved  # type: ignore[misc]
            gc.unfreeze()
        rc1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = rc1.ru_utime + rc1.ru_stime - rc0.ru_utime - rc0.ru_stime
        print(
            f"  per child, exit included: {cpu / n * 1e3:.2f} ms CPU, "
            f"{(rc1.ru_minflt - rc0.ru_minflt) / n:.0f} minor faults"
        )
        for name, (count, wall, flt, ccpu) in steps.items():
            print(
                f"    {name:52} {wall / count * 1e3:6.3f} ms, CPU {ccpu / count * 1e3:6.3f} ms, "
                f"{flt / count:4.0f} faults"
            )


# -- py-spy ----------------------------------------------------------------------------------


def profile_pyspy(n: int) -> None:
    spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if spy is None:
        print("\n== pyspy: py-spy not installed (.venv/bin/pip install py-spy); skipped")
        return
    print(f"\n== pyspy: burst worker over {n} jobs, inclusive share of the runner's samples")
    with workdir("spy") as wd:
        from flask_bgjobs import run_background_job

        app = new_app()
        with app.app_context():
            for _ in range(n):
                run_background_job(JOB_CLASS, JOB_METHOD)
        app.extensions["bgjobs"].store.close()
        raw = wd.path / "pyspy.txt"
        cmd = [spy, "record", "-r", "250", "-f", "raw", "-o", str(raw), "--nonblocking", "--"]
        proc = spawn(wd, cmd + worker_cmd(burst=True), dict(os.environ), "pyspy")
        try:
            proc.wait(timeout=600)
        finally:
            kill_pid(proc.pid, TOKEN)
        total, inclusive = 0, collections.Counter[str]()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            total += int(count)
            seen = set()
            for frame in stack.split(";"):
                name = frame.split(" (")[0]
                where = (
                    frame.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] if " (" in frame else ""
                )
                key = f"{name} ({where})"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += int(count)
        shown = [
            (k, v)
            for k, v in inclusive.most_common()
            if k.startswith(("Runner.", "Store.", "DefaultDialect.do_", "Connection.execute"))
        ]
        for key, count in shown[:16]:
            print(f"  {count / total * 100:5.1f}%  {key}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", nargs="*", default=["enqueue", "drain", "cow", "child"])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--wait-quiet", type=float, default=60, help="s to wait for an idle machine")
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sections = {
            "enqueue": lambda: profile_enqueue(args.jobs),
            "drain": lambda: profile_drain(args.jobs),
            "cow": lambda: profile_cow(args.jobs // 2),
            "child": lambda: profile_child(min(args.jobs, 300)),
            "pyspy": lambda: profile_pyspy(args.jobs),
        }
        for what in args.what:
            if what not in sections:
                raise SystemExit(f"unknown: {what}; use {', '.join(sections)}")
            deadline = time.monotonic() + args.wait_quiet
            while machine_busy(0.5) > 0.15 and time.monotonic() < deadline:
                pass
            with LoadMeter() as meter:
                sections[what]()
            # Our own CPU here is this process's, not RUSAGE_CHILDREN's: report the machine.
            print(f"  (machine busy meanwhile: {meter.busy_cores:.2f} cores of {os.cpu_count()})")
    finally:
        for wd in _DIRS:
            cleanup_dir(wd, TOKEN)
        sweep_token(TOKEN)
        shutil.rmtree(ROOT, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
