"""A prototype, not engine code: what a fork server would buy the drain rate.

    .venv/bin/python bench/proto_forkserver.py [--jobs 2000] [--concurrency 2]

Runs the same stripped-down runner loop twice over the same number of queued no-op jobs, with
the engine's own `Store.claim` / `Store.finish` and `executor.child_main` (so the database work
and the child's work are the engine's):

- ``runner forks``: the process that talks to the database forks every child itself, as
  ``flask_bgjobs.runner`` does today. Every fork re-arms copy-on-write on the whole heap, so
  each page the next SQL round trip writes costs a page fault and a 4 KiB copy.
- ``fork server``: right after the app is loaded (before any database connection) the runner
  forks one idle "zygote"; for each attempt it sends the job and the write end of the
  attempt's pipe (``SCM_RIGHTS``) and the zygote forks the child. The runner never forks, so
  its SQL runs without faults; the zygote touches almost nothing between forks.
- ``fork server, lean child``: the same, and the per-child setup the zygote can do once is
  done once: drop the inherited database pools (``dispose_after_fork`` and the app's
  Flask-SQLAlchemy engines) and load libc for ``prctl`` (``ctypes.CDLL(None)`` per child).
- ``…, early slot``: and the slot is freed when the result line arrives, not at the pipe's
  EOF, which comes only after the child's address space is torn down.

Missing on purpose (not needed to measure the cost): leases renewal, timeouts, progress,
logs, signals. It prints jobs/s, CPU per attempt of each process and minor faults.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import pickle
import resource
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from run import (  # noqa: E402 - bench/ is not a package
    JOB_CLASS,
    JOB_METHOD,
    LoadMeter,
    Workdir,
    cleanup_dir,
    machine_busy,
    sweep_token,
)

MODES = (
    "runner forks",
    "fork server",
    "fork server, lean child",
    "fork server, lean child, early slot",
)


def _nothing() -> None:
    pass


TOKEN = os.environ.get("BGBENCH_PROTO_TOKEN") or uuid.uuid4().hex
os.environ["BGBENCH_PROTO_TOKEN"] = TOKEN


def engine_after_fork(app: Any, state: Any) -> Callable[[], None]:
    """What the runner's `_after_fork_in_child` does for the databases, in every child."""

    def after_fork() -> None:
        state.store.dispose_after_fork()
        state.guard_app_engines(app)

    return after_fork


def zygote_main(sock: socket.socket, app: Any, state: Any, *, lean: bool) -> None:
    """The fork server: receive (job, fd), fork a child that runs `executor.child_main`."""
    from flask_bgjobs import executor

    me = os.getpid()
    after_fork = engine_after_fork(app, state)
    if lean:
        # Once here instead of in every child: drop the inherited pools, load libc's prctl.
        after_fork()
        after_fork = _nothing
        libc = ctypes.CDLL(None, use_errno=True)

        def death_signal() -> None:
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

        executor._set_parent_death_signal = death_signal  # type: ignore[attr-defined]
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 1)
        except OSError:
            break
        if not msg:
            break
        job = pickle.loads(msg)
        pid = os.fork()
        if pid == 0:
            sock.close()
            executor.child_main(
                app,
                job,
                fds[0],
                allowlist=state.allowlist,
                max_params_bytes=state.settings.max_params_bytes,
                parent_pid=me,
                after_fork=after_fork,
            )
        os.close(fds[0])
        # The real thing would report `pid` back (timeouts, cancel); the prototype needs not.
        while True:  # reap whatever finished
            try:
                done, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if done == 0:
                break
    while True:  # reap the rest, then say how much CPU the zygote itself used
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.environ["BGBENCH_PROTO_ZYGOTE_CPU"], "w", encoding="ascii") as fh:
        fh.write(f"{ru.ru_utime + ru.ru_stime} {ru.ru_minflt}")
    os._exit(0)


def drain(mode: str, jobs: int, concurrency: int, root: Path) -> dict[str, float]:
    wd = Workdir(root / mode.replace(" ", "-")).create()
    os.environ.update(wd.env(TOKEN, autostart=False))
    import benchapp

    from flask_bgjobs import executor, models, run_background_job
    from flask_bgjobs.store import Outcome

    app = benchapp.create_app()
    state = app.extensions["bgjobs"]
    store = state.store
    with app.app_context():
        for _ in range(jobs):
            run_background_job(JOB_CLASS, JOB_METHOD)
    store.close()
    gc.collect()
    gc.freeze()

    zsock = None
    zpid = 0
    os.environ["BGBENCH_PROTO_ZYGOTE_CPU"] = str(wd.path / "zygote-cpu")
    if mode.startswith("fork server"):
        zsock, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zpid = os.fork()
        if zpid == 0:
            zsock.close()
            zygote_main(child_end, app, state, lean="lean child" in mode)
        child_end.close()

    sel = selectors.DefaultSelector()
    running: dict[int, Any] = {}  # read fd -> job
    outcomes: list[Outcome] = []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    rc0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    more = True
    me = os.getpid()
    early = mode.endswith("early slot")
    with app.app_context():
        while True:
            if outcomes:
                store.finish("proto", outcomes)
                outcomes = []
            free = concurrency - len(running)
            if more and free > 0:
                claimed = store.claim(
                    owner="proto", runner_id="proto", limit=free, lease_seconds=60
                )
                more = len(claimed) == free
                for job in claimed:
                    r, w = os.pipe()
                    if zsock is not None:
                        socket.send_fds(zsock, [pickle.dumps(job)], [w])
                    else:
                        pid = os.fork()
                        if pid == 0:
                            os.close(r)
                            executor.child_main(
                                app,
                                job,
                                w,
                                allowlist=state.allowlist,
                                max_params_bytes=state.settings.max_params_bytes,
                                parent_pid=me,
                                after_fork=engine_after_fork(app, state),
                            )
                    os.close(w)
                    running[r] = job
                    sel.register(r, selectors.EVENT_READ)
            if not running:
                break
            for key, _ in sel.select():
                fd = key.fd
                data = b""
                while chunk := os.read(fd, 65536):
                    data += chunk
                    if early and data.endswith(b"\n"):
                        break  # the result is in: the slot is free, the child only exits now
                sel.unregister(fd)
                os.close(fd)
                job = running.pop(fd)
                ok = b'"t":"ok"' in data
                reason = models.END_SUCCEEDED if ok else models.END_EXIT
                outcomes.append(Outcome(job.id, job.attempts, reason, "done"))
            if zsock is None:
                while True:
                    try:
                        done, _status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if done == 0:
                        break
        if outcomes:
            store.finish("proto", outcomes)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    zygote_cpu = zygote_faults = 0.0
    if zsock is not None:
        zsock.close()
        os.waitpid(zpid, 0)
        cpu_text, faults_text = (wd.path / "zygote-cpu").read_text().split()
        zygote_cpu, zygote_faults = float(cpu_text), float(faults_text)
    rc1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # RUSAGE_CHILDREN counts the zygote and, through it, the job children it reaped.
    children_cpu = rc1.ru_utime + rc1.ru_stime - rc0.ru_utime - rc0.ru_stime - zygote_cpu
    import sqlite3

    conn = sqlite3.connect(wd.db)
    succeeded = conn.execute("SELECT count(*) FROM bgjobs_jobs WHERE status='succeeded'").fetchone()
    conn.close()
    gc.unfreeze()
    cleanup_dir(wd, TOKEN)
    return {
        "jobs_per_s": jobs / wall,
        "succeeded": succeeded[0],
        "runner_cpu_ms": (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / jobs * 1e3,
        "runner_faults": (ru1.ru_minflt - ru0.ru_minflt) / jobs,
        "children_cpu_ms": children_cpu / jobs * 1e3,
        "zygote_cpu_ms": zygote_cpu / jobs * 1e3,
        "zygote_faults": zygote_faults / jobs,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--mode", choices=MODES, default=None)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bgz-"))
    try:
        modes = [args.mode] if args.mode else list(MODES)
        quiet_until = time.monotonic() + 60
        for mode in modes:
            # Each mode in its own interpreter: same heap, same start.
            if len(modes) > 1:
                import subprocess

                while machine_busy(1.0) > 0.15 and time.monotonic() < quiet_until:
                    pass
                with LoadMeter() as meter:
                    subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            *("--jobs", str(args.jobs), "--mode", mode),
                            *("--concurrency", str(args.concurrency)),
                        ],
                        check=True,
                    )
                print(f"{'':36} (other processes used {meter.foreign_cores:.2f} cores meanwhile)")
                continue
            r = drain(mode, args.jobs, args.concurrency, root)
            print(
                f"{mode:36} {r['jobs_per_s']:6.0f} jobs/s ({r['succeeded']} succeeded); per job: "
                f"runner {r['runner_cpu_ms']:.2f} ms CPU, {r['runner_faults']:.0f} faults; "
                f"zygote {r['zygote_cpu_ms']:.2f} ms, {r['zygote_faults']:.0f} faults; "
                f"job child {r['children_cpu_ms']:.2f} ms CPU"
            )
    finally:
        sweep_token(TOKEN)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
