"""The fork server: a process forked from the runner once the app is loaded, that forks the job
processes, reaps them and kills them on the runner's behalf.

Why: ``fork()`` shares every page of the forking process with the new one. When the runner
itself forks, each page it then writes (claims, outcomes, its loop) is copied while a job
process lives: measured here at about 3 ms of the runner's CPU per attempt, more than the fork
itself. The fork server does nothing between forks, so it writes almost nothing; the runner,
forked from once, owns its pages. Job processes start from the same warm app as before.

The runner talks to it over two socket pairs: *requests* (fork a job process, with its channel
and output descriptors passed along by ``SCM_RIGHTS``; kill this process group) answered in
order, and
*exits* (a job process ended: its wait status and ``wait4`` usage), which the runner's
selector watches. Only the fork server reaps its children, so a process id it is asked to kill
is still its own: never a recycled one. It dies with the runner (``PR_SET_PDEATHSIG``), and its
job processes with it. The attempt itself goes to the new job process over its channel, as to
a spawned or reused one: the fork server never sees a job's params.

A fork request is answered from a *spare*: a job process forked ahead of time that waits for
its descriptors. Handing them over takes one ``sendmsg``; the fork (about 1.5 ms here, most of
an idle runner's enqueue-to-start latency) happens after the answer, off the attempt's path,
while the runner and the previous job process get on with their work. A spare is a fresh
process like any other (it has run nothing), so it changes nothing a job can observe.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn

from flask_bgjobs import executor
from flask_bgjobs.launcher import kill_group

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
#: Seconds of quiet after which the fork server forks its next spare.
SPARE_AFTER = 0.005
#: The fork server's name in ``ps`` and ``/proc/<pid>/comm`` (15 bytes at most).
NAME = b"bgjobs-forksrv"


# Fixed-size binary records (no JSON): the server runs as little Python per fork as it can,
# since every page it writes between forks is one more copy (it shares them with its children).
_FORK = b"F"  # request: fork a job process; its channel and output come as SCM_RIGHTS
_KILL = struct.Struct("=ci")  # request: b"K", pid
_ANSWER = struct.Struct("=i")  # the new pid; 0 for a kill
_EXIT = struct.Struct("=iiqd")  # pid, wait status, peak RSS (KiB), CPU seconds


@dataclass(frozen=True)
class Exit:
    """A job process the fork server reaped."""

    pid: int
    status: int
    max_rss_kb: int
    cpu_s: float


class ForkServer:
    """The runner's handle on its fork server process."""

    def __init__(self) -> None:
        self.pid = 0
        self._requests: socket.socket | None = None
        self._exits: socket.socket | None = None
        self._buffer = b""
        self._pending = b""

    def fds(self) -> list[int]:
        """The runner's ends: a job process forked by the runner itself would close them."""
        return [s.fileno() for s in (self._requests, self._exits) if s is not None]

    @property
    def exits_socket(self) -> socket.socket:
        """What the runner's selector watches for `Exit` notes."""
        assert self._exits is not None
        return self._exits

    def start(self, child: Callable[[int, int, int], NoReturn], close: Iterable[int]) -> None:
        """Fork the server. `child(channel_fd, output_fd, server_pid)` runs a job process;
        `close` are descriptors of the runner the server must not keep."""
        requests, server_requests = socket.socketpair()
        exits, server_exits = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the fork server; it never returns
            requests.close()
            exits.close()
            for fd in close:
                with contextlib.suppress(OSError):
                    os.close(fd)
            _serve(server_requests, server_exits, child)
        server_requests.close()
        server_exits.close()
        exits.setblocking(False)
        self.pid, self._requests, self._exits = pid, requests, exits

    def fork(
        self, channel_fd: int, output_fd: int, *, meanwhile: Callable[[], None] = lambda: None
    ) -> int:
        """Have a job process started on these descriptors; return its pid.

        `meanwhile` runs between the request and the wait for the answer: what the runner
        writes to the channel then is there when the job process first reads it.
        """
        assert self._requests is not None
        socket.send_fds(self._requests, [_FORK], [channel_fd, output_fd])
        meanwhile()
        return self._answer()

    def kill(self, pid: int) -> None:
        """SIGKILL the process group of a job process the server still has (not yet reaped)."""
        assert self._requests is not None
        self._requests.sendall(_KILL.pack(b"K", pid))
        self._answer()

    def _answer(self) -> int:
        assert self._requests is not None
        while len(self._buffer) < _ANSWER.size:
            chunk = self._requests.recv(4096)
            if not chunk:
                raise ConnectionError("the fork server is gone")
            self._buffer += chunk
        (value,) = _ANSWER.unpack_from(self._buffer)
        self._buffer = self._buffer[_ANSWER.size :]
        return int(value)

    def read_exits(self) -> list[Exit]:
        """The exits the server reported since the last call (non-blocking)."""
        assert self._exits is not None
        data = b""
        while True:
            try:
                chunk = self._exits.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        self._pending += data
        whole = len(self._pending) - len(self._pending) % _EXIT.size
        found = [Exit(*fields) for fields in _EXIT.iter_unpack(self._pending[:whole])]
        self._pending = self._pending[whole:]
        return found

    def stop(self) -> None:
        """Close the sockets: the server exits, and is reaped by whoever waits for it."""
        for sock in (self._requests, self._exits):
            if sock is not None:
                sock.close()
        self._requests = self._exits = None


# -- the server process -------------------------------------------------------------------------


def _serve(
    requests: socket.socket, exits: socket.socket, child: Callable[[int, int, int], NoReturn]
) -> NoReturn:
    code = 0
    try:
        os.setpgid(0, 0)  # not in the terminal's group: a Ctrl-C is the runner's to handle
        prctl = executor._prctl  # loaded once, in the runner
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            prctl(_PR_SET_NAME, NAME, 0, 0, 0)  # for operators: `ps` tells it from the runner
        # What every job process needs and keeps across fork, done once here for all of them.
        executor.prepare_process()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, _on_child)
        mine = os.getpid()
        children: set[int] = set()
        buffer = b""
        passed: list[int] = []  # descriptors received, in order, for the fork requests
        watch = [requests.fileno(), wake_r]
        own = [requests.fileno(), exits.fileno(), wake_r, wake_w]

        def fork_job(channel_fd: int, output_fd: int) -> int:
            pid = os.fork()
            if pid == 0:  # the job process
                _leave_server(own)
                child(channel_fd, output_fd, mine)
            with contextlib.suppress(OSError):
                os.setpgid(pid, pid)  # the job process does it too: either wins
            children.add(pid)
            return pid

        spare: _Spare | None = None
        while True:
            # The next spare is forked once nothing has been asked for a moment: forking
            # right after a hand-over would take a CPU from the runner and the job process
            # just when they have work to do.
            ready, _, _ = select.select(watch, [], [], None if spare else SPARE_AFTER)
            if not ready and spare is None:
                spare = _fork_spare(child, own, mine)
                children.add(spare.pid)
                continue
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap(children, exits)
            if requests.fileno() not in ready:
                continue
            data, fds, _flags, _addr = socket.recv_fds(requests, 4096, 16)
            if not data:
                break  # the runner closed its end: it is leaving
            buffer += data
            passed.extend(fds)
            while buffer:
                if buffer[:1] == _FORK:
                    buffer = buffer[1:]
                    channel_fd, output_fd = passed[0], passed[1]
                    del passed[:2]
                    pid = spare.hand_over(channel_fd, output_fd) if spare is not None else 0
                    spare = None  # the next one is forked once this request is answered
                    if not pid:  # no spare, or it died: fork one now, the old way
                        pid = fork_job(channel_fd, output_fd)
                    os.close(channel_fd)
                    os.close(output_fd)
                    requests.sendall(_ANSWER.pack(pid))
                elif len(buffer) >= _KILL.size:
                    _op, pid = _KILL.unpack_from(buffer)
                    buffer = buffer[_KILL.size :]
                    if pid in children:  # not reaped yet: the id is still this process's
                        kill_group(pid, signal.SIGKILL)
                    requests.sendall(_ANSWER.pack(0))
                else:
                    break  # the rest of a kill request is on its way
            _reap(children, exits)
    except BaseException:  # noqa: BLE001 - nothing may escape; the runner sees the sockets close
        code = 70
    os._exit(code)


@dataclass
class _Spare:
    """A job process forked ahead of a request, waiting for its descriptors."""

    pid: int
    sock: socket.socket

    def hand_over(self, channel_fd: int, output_fd: int) -> int:
        """Pass it the attempt's descriptors; its pid, or 0 if it is gone (killed by someone)."""
        try:
            socket.send_fds(self.sock, [_FORK], [channel_fd, output_fd])
        except OSError:
            return 0
        finally:
            self.sock.close()
        return self.pid


def _fork_spare(
    child: Callable[[int, int, int], NoReturn], own: list[int], server_pid: int
) -> _Spare:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the spare: waits, then is a job process like any other
        code = 0
        try:
            ours.close()
            _leave_server(own)
            prctl = executor._prctl
            if prctl is not None:  # until it has an attempt, it dies with the server
                prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() == server_pid:
                os.setpgid(0, 0)
                executor.warm_up()
                _data, fds, _flags, _addr = socket.recv_fds(theirs, 16, 2)
                theirs.close()
                if len(fds) == 2:  # else the server closed it unused: it is leaving
                    child(fds[0], fds[1], server_pid)
        except BaseException:  # noqa: BLE001 - nothing may escape a forked process
            code = 70
        os._exit(code)
    theirs.close()
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    return _Spare(pid, ours)


def _leave_server(own: list[int]) -> None:
    """In a process the server forked: drop the server's descriptors and signal handling."""
    for fd in own:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _on_child(_signum: int, _frame: object) -> None:
    """SIGCHLD: its only job is to make the wake-up pipe readable."""


def _reap(children: set[int], exits: socket.socket) -> None:
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        cpu = usage.ru_utime + usage.ru_stime
        exits.sendall(_EXIT.pack(pid, status, int(usage.ru_maxrss), cpu))
