"""Job processes: start them, talk to them, watch them end, kill them.

Every attempt runs in a job process of its own — forked from the runner (the default: ~3 ms,
the app is already loaded) or spawned as a fresh interpreter that loads the app
(``BGJOBS_START_METHOD=spawn``). With ``BGJOBS_PROCESS_REUSE`` N > 1 a job process runs up to
N attempts one after another; a timeout, cancel or crash still kills that process, and the next
attempt gets a fresh one.

Runner and job process share one socket pair (the *channel*): the runner sends the attempt
(when the process is reused or spawned), the job process sends progress and a final message.
An attempt ends when its process exits, or, in a reused process, at its final message.

A job process's file descriptors 1 and 2 are the write end of a pipe (the *output*) whose read
end is one more descriptor the selector watches: what an attempt writes there, its
subprocesses and C code included, goes into its bounded `OutputTail`. The pipe is drained
before an attempt is closed, at its process's exit or, reused, at its final message (which the
job process sends after flushing its streams), so output goes to the attempt that wrote it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc

from flask_bgjobs import executor
from flask_bgjobs.executor import FINAL_MESSAGES, MSG_PROGRESS, MSG_USAGE, Work
from flask_bgjobs.launcher import kill_group
from flask_bgjobs.limits import NO_LIMITS, Limits, OutputTail
from flask_bgjobs.models import Job
from flask_bgjobs.runner.forkserver import Exit, ForkServer
from flask_bgjobs.runner.outcomes import (
    KILLED_LOST,
    KILLED_SHUTDOWN,
    KILLED_TIMEOUT,
    Usage,
    parse_message,
)

if TYPE_CHECKING:
    from flask import Flask

    from flask_bgjobs.security import Allowlist

#: Most bytes kept from a job process before a line ends (a runaway writer is cut off).
MAX_LINE = 64 * 1024 * 1024
#: Output read per wake-up and job process: a job that writes without pause cannot hold the
#: loop (the rest waits in the pipe, and the job waits for room in it).
OUTPUT_READS = 16
#: Reads when an attempt closes: what the pipe holds (64 KiB), unless a subprocess the attempt
#: left behind keeps writing, which must not hold the loop either.
DRAIN_READS = 64
_CHUNK = 1 << 16

FORK = "fork"
SPAWN = "spawn"


@dataclass(eq=False)
class Attempt:
    """One attempt of a job, in a job process."""

    job: Job
    proc: JobProcess
    started: float  # monotonic
    deadline: float | None  # monotonic
    final: dict[str, Any] | None = None
    killed: str | None = None
    #: Wait status of its process; ``None`` when the attempt ended in a reused, living process.
    status: int | None = None
    limits: Limits = NO_LIMITS
    #: What it wrote to its stdout and stderr (the last `limits.OUTPUT_LIMIT` bytes).
    output: OutputTail = field(default_factory=OutputTail)
    #: Its process's usage from ``wait4``, when the process exited during the attempt.
    rusage: Usage | None = None
    #: CPU seconds its process had used before the attempt (a reused or spawned process).
    cpu_base: float = 0.0

    @property
    def pid(self) -> int:
        """The job process running it."""
        return self.proc.pid


@dataclass(eq=False)
class JobProcess:
    """A forked or spawned process that runs attempts."""

    pid: int
    sock: socket.socket
    #: Attempts it may still be handed (the current one excluded).
    budget: int
    attempt: Attempt | None = None
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    popen: subprocess.Popen[bytes] | None = None
    channel_open: bool = True
    #: Our end of its output pipe; ``None`` once closed.
    out: int | None = None
    #: It said it will run no further attempt (it hit a limit).
    retiring: bool = False
    #: Forked by the fork server, which reaps it and kills it for us.
    via_server: bool = False


class Children:
    """The job processes of one runner and the attempts they run."""

    def __init__(
        self,
        *,
        app: Flask,
        allowlist: Allowlist,
        selector: selectors.BaseSelector,
        concurrency: int,
        reuse: int = 1,
        start_method: str = FORK,
        max_params_bytes: int,
        on_progress: Callable[[Attempt, float, str], None],
        inherited_fds: Callable[[], Iterable[int]] = lambda: (),
        memory_limit: int = 0,
        cpu_limit: float = 0.0,
        fork_server: bool = True,
    ) -> None:
        self.app = app
        self.allowlist = allowlist
        self.selector = selector
        self.concurrency = concurrency
        self.reuse = max(1, reuse)
        self.start_method = start_method
        self.max_params_bytes = max_params_bytes
        self.on_progress = on_progress
        #: ``BGJOBS_MEMORY_LIMIT`` and ``BGJOBS_CPU_LIMIT``: for jobs that set none themselves.
        self.memory_limit = memory_limit
        self.cpu_limit = cpu_limit
        #: Descriptors of the other parts that a forked job process must close.
        self.inherited_fds = inherited_fds
        self.processes: dict[int, JobProcess] = {}
        self.idle: list[JobProcess] = []
        self.attempts: dict[int, Attempt] = {}  # by job id
        self._ended: list[Attempt] = []
        #: With ``fork``: job processes come from a fork server (see runner/forkserver.py).
        self.use_fork_server = fork_server
        self.server: ForkServer | None = None
        self._server_exits: list[Exit] = []

    # -- what the loop asks ----------------------------------------------------------------

    def free(self) -> int:
        """Attempts that may start now."""
        return self.concurrency - len(self.attempts)

    def next_deadline(self) -> float | None:
        """The earliest timeout of a running attempt (monotonic)."""
        deadlines = [a.deadline for a in self.attempts.values() if a.deadline and not a.killed]
        return min(deadlines) if deadlines else None

    def fds(self) -> list[int]:
        """Our ends of every channel and output pipe: a forked job process must close them."""
        fds = [p.sock.fileno() for p in self.processes.values() if p.channel_open]
        fds += [p.out for p in self.processes.values() if p.out is not None]
        return fds + (self.server.fds() if self.server is not None else [])

    # -- start -----------------------------------------------------------------------------

    def start(self, job: Job, now: float) -> Attempt:
        """Start an attempt of a claimed job: in an idle reused process, else a new one."""
        limits = Limits.for_job(
            job.memory_limit,
            job.cpu_limit,
            default_memory=self.memory_limit,
            default_cpu=self.cpu_limit,
        )
        work = Work(
            job.id, job.attempts, job.class_name, job.method_name, job.params_json, limits, job
        )
        if self.idle:
            proc = self.idle.pop()
            proc.budget -= 1
            self._send(proc, work.message())
        elif self.start_method == SPAWN:
            proc = self._spawn()
            self._send(proc, work.message())
        elif self.server is not None:
            proc = self._from_server(work.message())
        else:
            proc = self._fork(work)
        deadline = now + job.timeout if job.timeout > 0 else None
        att = Attempt(job, proc, now, deadline, limits=limits)
        proc.attempt = att
        self.attempts[job.id] = att
        return att

    def _fork(self, work: Work) -> JobProcess:
        mine, theirs = socket.socketpair()
        out_r, out_w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the job process; it reports over the channel
            mine.close()
            os.close(out_r)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            os.close(out_w)
            executor.serve(
                self.app,
                theirs.fileno(),
                work,
                budget=self.reuse,
                allowlist=self.allowlist,
                max_params_bytes=self.max_params_bytes,
                parent_pid=parent,
                after_fork=self._close_inherited,
            )
        theirs.close()
        os.close(out_w)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # the child does it too: whichever runs first wins the race
        return self._adopt(pid, mine, out_r, budget=self.reuse - 1)

    def _from_server(self, first: bytes) -> JobProcess:
        """A job process from the fork server, sent `first` (its attempt).

        The attempt goes into the channel while the server answers, so it is waiting there
        when the process first reads: the runner never waits for the process to be ready.
        """
        assert self.server is not None
        mine, theirs = socket.socketpair()
        mine.setblocking(False)
        out_r, out_w = os.pipe()
        sent = 0

        def send_first() -> None:
            nonlocal sent
            with contextlib.suppress(BlockingIOError):  # the rest goes with the outbox
                sent = mine.send(first)

        try:
            pid = self.server.fork(theirs.fileno(), out_w, meanwhile=send_first)
        finally:
            theirs.close()
            os.close(out_w)
        proc = self._adopt(pid, mine, out_r, budget=self.reuse - 1)
        proc.via_server = True
        self._send(proc, first[sent:])
        return proc

    def _job_process(self, channel_fd: int, output_fd: int, server_pid: int) -> NoReturn:
        """In a process the fork server just forked: serve attempts from the channel."""
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.close(output_fd)
        executor.serve(
            self.app,
            channel_fd,
            None,
            budget=self.reuse,
            allowlist=self.allowlist,
            max_params_bytes=self.max_params_bytes,
            parent_pid=server_pid,
            prepared=True,
        )

    def _spawn(self) -> JobProcess:
        mine, theirs = socket.socketpair()
        out_r, out_w = os.pipe()
        env = dict(os.environ)
        env[executor.CHANNEL_FD_ENV] = str(theirs.fileno())
        env[executor.BUDGET_ENV] = str(self.reuse)
        env[executor.PARENT_ENV] = str(os.getpid())
        popen = subprocess.Popen(
            [sys.executable, "-m", "flask_bgjobs.executor"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=out_w,
            pass_fds=(theirs.fileno(),),
            start_new_session=True,  # its own process group, as a forked one gets
        )
        theirs.close()
        os.close(out_w)
        proc = self._adopt(popen.pid, mine, out_r, budget=self.reuse - 1)
        proc.popen = popen
        return proc

    def _adopt(self, pid: int, sock: socket.socket, out: int, *, budget: int) -> JobProcess:
        sock.setblocking(False)
        os.set_blocking(out, False)
        proc = JobProcess(pid, sock, budget, out=out)
        self.processes[pid] = proc
        self.selector.register(sock, selectors.EVENT_READ, lambda mask: self._on_ready(proc, mask))
        self.selector.register(out, selectors.EVENT_READ, lambda mask: self._read_output(proc))
        return proc

    def _close_inherited(self) -> None:
        """In a forked job process: close every descriptor that belongs to the runner."""
        for fd in (*self.fds(), *self.inherited_fds()):
            with contextlib.suppress(OSError):
                os.close(fd)
        # The selector's own descriptor (epoll) too: it is the runner's.
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.selector.fileno())  # type: ignore[attr-defined]

    def prepare_fork(self) -> None:
        """Once, before the first fork: keep the collector off everything loaded so far, and
        start the fork server.

        Every object alive now lives as long as the runner; frozen, neither the runner's nor a
        job process's collector walks (and so copies) their pages.
        """
        gc.collect()
        gc.freeze()
        if self.start_method == FORK and self.use_fork_server:
            self._start_server()

    def _start_server(self) -> None:
        server = ForkServer()
        server.start(self._job_process, close=[*self.inherited_fds(), self._selector_fd()])
        self.selector.register(server.exits_socket, selectors.EVENT_READ, self._on_exits)
        self.server = server

    def _selector_fd(self) -> int:
        fileno = getattr(self.selector, "fileno", None)
        return int(fileno()) if fileno is not None else -1

    def _on_exits(self, _mask: int) -> None:
        assert self.server is not None
        self._server_exits.extend(self.server.read_exits())

    def stop(self) -> None:
        """At the runner's exit: let idle processes go and the fork server with them."""
        self.release_idle()
        if self.server is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.server.exits_socket)
            self.server.stop()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.server.pid, 0)  # it leaves as soon as its socket closes
            self.server = None

    # -- talk --------------------------------------------------------------------------------

    def _send(self, proc: JobProcess, data: bytes) -> None:
        proc.outbox += data
        self._write(proc)

    def _write(self, proc: JobProcess) -> None:
        while proc.outbox and proc.channel_open:
            try:
                sent = proc.sock.send(proc.outbox)
            except BlockingIOError:
                break
            except OSError:
                proc.outbox.clear()  # it died; the reaper will say so
                break
            del proc.outbox[:sent]
        if proc.channel_open:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if proc.outbox else 0)
            self.selector.modify(proc.sock, events, self.selector.get_key(proc.sock).data)

    def _on_ready(self, proc: JobProcess, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._write(proc)
        if mask & selectors.EVENT_READ:
            self._read(proc)

    def _read(self, proc: JobProcess) -> None:
        while proc.channel_open:
            try:
                chunk = proc.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._close_channel(proc)
                break
            proc.inbox += chunk
            if len(proc.inbox) > MAX_LINE:
                self._close_channel(proc)  # a runaway writer: stop listening, keep the job
                break
        while True:
            end = proc.inbox.find(b"\n")
            if end < 0:
                return
            line = bytes(proc.inbox[:end])
            del proc.inbox[: end + 1]
            message = parse_message(line, self.max_params_bytes)
            att = proc.attempt
            if message is None or att is None:
                continue  # a job may scribble on the channel; it cannot confuse us
            if message["t"] == MSG_PROGRESS:
                self.on_progress(att, message["pct"], message["msg"])
            elif message["t"] == MSG_USAGE:
                att.cpu_base = message["cpu"]
            elif message["t"] in FINAL_MESSAGES and att.final is None:
                att.final = message
                if self.reuse > 1 and att.killed is None:
                    # Sent after the job flushed its streams: what it wrote is in the pipe.
                    self._read_output(proc, drain=True)
                    self._end(att, status=None)
                    proc.retiring = proc.retiring or bool(message.get("retire"))
                    if proc.budget > 0 and not proc.retiring:
                        self.idle.append(proc)

    def _read_output(self, proc: JobProcess, *, drain: bool = False) -> None:
        """Read what the job process wrote into its attempt's output (all of it, to `drain`)."""
        reads, most = 0, DRAIN_READS if drain else OUTPUT_READS
        while proc.out is not None and reads < most:
            try:
                chunk = os.read(proc.out, _CHUNK)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # every writer is gone
                self._close_output(proc)
                return
            reads += 1
            if proc.attempt is not None:
                proc.attempt.output.write(chunk)
            # Between attempts of a reused process nothing of ours runs: what arrives then
            # (a subprocess an attempt left behind) belongs to no attempt, and is dropped.

    def _close_output(self, proc: JobProcess) -> None:
        if proc.out is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(proc.out)
            os.close(proc.out)
            proc.out = None

    def _close_channel(self, proc: JobProcess) -> None:
        if proc.channel_open:
            proc.channel_open = False
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(proc.sock)
            proc.sock.close()

    # -- watch -------------------------------------------------------------------------------

    def collect(self, now: float) -> list[Attempt]:
        """Reap exited job processes, enforce timeouts; return the attempts that ended."""
        self._reap()
        for att in list(self.attempts.values()):
            if att.deadline is not None and now >= att.deadline and att.killed is None:
                self.kill(att, KILLED_TIMEOUT)
        ended, self._ended = self._ended, []
        return ended

    def _reap(self) -> None:
        if self.server is not None:
            # Read what the server said even if the selector has not been asked yet: an exit
            # that happened while the runner was stopped must end its attempt before the
            # lease check that follows can call the attempt lost.
            self._on_exits(0)
        exits, self._server_exits = self._server_exits, []
        for note in exits:
            self._gone(note.pid, note.status, Usage(note.max_rss_kb, note.cpu_s))
        while self.processes or self.server is not None:
            try:
                # wait4, not waitpid: the process's peak RSS and CPU come with its status.
                pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.server is not None and pid == self.server.pid:
                self._server_died()
                continue
            self._gone(pid, status, Usage(int(rusage.ru_maxrss), rusage.ru_utime + rusage.ru_stime))

    def _server_died(self) -> None:
        """The fork server was killed: its job processes died with it (their death signal)."""
        assert self.server is not None
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.server.exits_socket)
        self.server.stop()
        self.server = None
        for pid, proc in list(self.processes.items()):
            if proc.via_server:
                self._gone(pid, signal.SIGKILL, None)
        if self.use_fork_server:
            self._start_server()

    def _gone(self, pid: int, status: int, usage: Usage | None) -> None:
        """A job process exited: close its descriptors, end its attempt."""
        proc = self.processes.pop(pid, None)
        if proc is None:
            return
        if proc.popen is not None:
            proc.popen.returncode = status  # reaped here: Popen must not wait for it
        if proc.channel_open:
            self._read(proc)  # what it said last
            self._close_channel(proc)
        # What it wrote before it exited is in the pipe; a subprocess it left behind
        # writes to no one from here on.
        self._read_output(proc, drain=True)
        self._close_output(proc)
        if proc in self.idle:
            self.idle.remove(proc)
        if proc.attempt is not None:
            proc.attempt.rusage = usage
            self._end(proc.attempt, status=status)

    def _end(self, att: Attempt, *, status: int | None) -> None:
        att.status = status
        att.proc.attempt = None
        self.attempts.pop(att.job.id, None)
        self._ended.append(att)

    # -- kill --------------------------------------------------------------------------------

    def kill(self, att: Attempt, reason: str) -> None:
        """Kill an attempt's whole process group; it ends when the reaper sees it go."""
        if att.killed is None:
            att.killed = reason
        if att.proc.via_server and self.server is not None:
            self.server.kill(att.pid)  # it still has the process: the id is not recycled
        else:
            kill_group(att.pid, signal.SIGKILL)

    def kill_lost(self, owned: set[int]) -> None:
        """Kill the attempts whose jobs this runner no longer holds (cancelled, taken back)."""
        for att in list(self.attempts.values()):
            if att.job.id not in owned and att.killed is None:
                self.kill(att, KILLED_LOST)

    def kill_all(self) -> None:
        """Shutdown past its grace: kill every running attempt (returned to pending)."""
        for att in list(self.attempts.values()):
            if att.killed is None:
                self.kill(att, KILLED_SHUTDOWN)

    def release_idle(self) -> None:
        """Let idle reused processes go: closing the channel makes them exit."""
        for proc in self.idle:
            self._close_channel(proc)
            self._close_output(proc)
        self.idle.clear()


def guard_app_engines(app: Flask) -> None:
    """In the runner, before forking: keep jobs off the runner's pooled connections.

    Each of the app's Flask-SQLAlchemy engines gets SQLAlchemy's documented pid guard: a
    connection made in another process is discarded at checkout. A job process that uses the
    app's database so opens its own, and one that doesn't pays nothing (disposing the pools in
    every job process cost ~1.7 ms per attempt).
    """
    ext = app.extensions.get("sqlalchemy")
    if ext is None:
        return
    try:
        with app.app_context():
            engines = list(ext.engines.values())
    except Exception:  # noqa: BLE001 - an unconfigured db has no pools to guard
        return
    for engine in engines:
        guard_engine(engine)


def guard_engine(engine: Any) -> None:
    """Make `engine` discard, at checkout, pooled connections another process opened."""
    if getattr(engine, "_bgjobs_guarded", False):
        return

    @sa_event.listens_for(engine, "connect")
    def _connect(_dbapi: Any, record: Any) -> None:
        record.info["bgjobs_pid"] = os.getpid()

    @sa_event.listens_for(engine, "checkout")
    def _checkout(_dbapi: Any, record: Any, proxy: Any) -> None:
        if record.info.get("bgjobs_pid") != os.getpid():
            # Never close it here: it belongs to the parent, which may still be using it.
            record.dbapi_connection = proxy.dbapi_connection = None
            raise sa_exc.DisconnectionError("connection opened by another process")

    engine.dispose()  # connections made before the guard have no pid: drop them now
    engine._bgjobs_guarded = True
