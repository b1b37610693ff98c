"""The only module that starts runner processes or signals them.

Per host and database there is one *run directory* holding:

- ``<key>.lock``: held with ``flock`` by every live runner — exclusively by an auto-started
  one, shared by operator-run workers. A web process that can take it exclusively knows no
  runner is alive and starts one, passing its locked descriptor to the child, so "check" and
  "start" are one atomic step: of many web workers enqueuing at once, one starts a runner.
- ``<key>/<pid>.sock``: each runner's datagram socket. After every commit the web process
  sends one byte to each: the runner wakes in microseconds instead of at its next poll.
  A lost datagram costs only latency: runners also poll.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import make_url

#: Environment variable through which an auto-started runner receives its locked descriptor.
LOCK_FD_ENV = "BGJOBS_RUNNER_LOCK_FD"
#: ... and the error log, so it can report an app that fails to load (it has no config then).
ERROR_LOG_ENV = "BGJOBS_RUNNER_ERROR_LOG"
#: Datagram payloads: a job was enqueued (claim now) / a job was cancelled (check leases now).
WAKE_ENQUEUED = b"e"
WAKE_CANCELLED = b"c"

# AF_UNIX paths are limited to 108 bytes on Linux (104 on macOS).
_MAX_SOCKET_PATH = 100

try:
    import fcntl

    _HAS_FLOCK = True
except ImportError:  # pragma: no cover - Windows: no host lock, no autostart
    _HAS_FLOCK = False


def popen_kwargs(platform: str) -> dict[str, Any]:
    """Keyword arguments that detach a runner from the process that starts it.

    POSIX: a new session, so the web server's restart (which signals its process group)
    leaves the runner alone. Windows: its own process group and no console.
    """
    if platform == "nt":
        flags = getattr(subprocess, "DETACHED_PROCESS", 0x00000008) | getattr(
            subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200
        )
        return {"creationflags": flags, "close_fds": True}
    return {"start_new_session": True, "close_fds": True}


def runner_command() -> list[str]:
    """The argument list of an auto-started runner: no job data ever travels on it."""
    return [sys.executable, "-m", "flask_bgjobs.runner"]


def key_for(database_uri: str) -> str:
    """A short stable name for one database, so two apps on one host never share a runner.

    It names the lock file, which anyone who can list the run folder sees, so no secret goes
    into the hash: a hash over a password lets anyone test password guesses offline. An SQLite
    database is named by the real path of its file (every spelling of one file agrees), any
    other by its URL without the password (nor a password given as a query parameter). Web
    workers, runners and the CLI of one app compute it alike from the same configuration.
    """
    url = make_url(database_uri)
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        # sqlite:///file:path?uri=true names the same file as sqlite:///path (see config).
        if str(url.query.get("uri", "")).lower() in ("true", "1") and path.startswith("file:"):
            path = path[len("file:") :]
        identity = "sqlite:" + os.path.realpath(path)
    else:
        # Built field by field so that no password can slip in whatever the URL looks like.
        query = sorted((k, str(v)) for k, v in url.query.items() if "pass" not in k.lower())
        identity = repr((url.drivername, url.username, url.host, url.port, url.database, query))
    return hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:12]


class Launcher:
    """Starts and wakes the runners of one database on this host."""

    def __init__(self, instance_path: str, database_uri: str) -> None:
        self.key = key_for(database_uri)
        self.run_dir = os.path.join(instance_path, "bgjobs-run")
        self.lock_path = os.path.join(self.run_dir, f"{self.key}.lock")
        sock_dir = os.path.join(self.run_dir, self.key)
        if len(sock_dir) + 16 > _MAX_SOCKET_PATH:
            uid = os.getuid() if hasattr(os, "getuid") else 0
            digest = hashlib.sha1(sock_dir.encode("utf-8")).hexdigest()[:12]
            sock_dir = os.path.join(tempfile.gettempdir(), f"bgjobs-{uid}", digest)
        self.sock_dir = sock_dir
        self._sock: socket.socket | None = None
        self._targets: list[str] = []
        self._targets_mtime: int | None = None
        self._probe_fd: int | None = None
        self._mutex = threading.Lock()

    # -- web side ----------------------------------------------------------------------------

    def nudge(self, payload: bytes = WAKE_ENQUEUED) -> None:
        """Send one datagram to every runner of this database on this host."""
        if not hasattr(socket, "AF_UNIX"):  # pragma: no cover - Windows: runners poll
            return
        with self._mutex:
            for path in self._socket_paths():
                try:
                    self._sender().sendto(payload, path)
                except BlockingIOError:
                    pass  # its queue is full: that runner has wake-ups enough
                except (ConnectionRefusedError, FileNotFoundError):
                    # A runner killed with SIGKILL leaves its socket behind.
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    self._targets_mtime = None
                except OSError:
                    pass

    def _sender(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        return self._sock

    def _socket_paths(self) -> list[str]:
        # Listing the directory on every enqueue is wasteful: its mtime changes exactly when a
        # runner binds or removes its socket.
        try:
            mtime = os.stat(self.sock_dir).st_mtime_ns
        except OSError:
            return []
        if mtime != self._targets_mtime:
            try:
                names = os.listdir(self.sock_dir)
            except OSError:
                return []
            self._targets = [os.path.join(self.sock_dir, n) for n in names if n.endswith(".sock")]
            self._targets_mtime = mtime
        return self._targets

    def runner_alive(self) -> bool:
        """True when some runner of this database holds the host lock."""
        if not _HAS_FLOCK:  # pragma: no cover
            return False
        with self._mutex:
            fd = self._probe()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False

    def _probe(self) -> int:
        if self._probe_fd is None:
            os.makedirs(self.run_dir, exist_ok=True)
            self._probe_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return self._probe_fd

    def release_lock(self, fd: int) -> None:
        """Give up the host lock, clearing the pid an exclusive holder wrote into it."""
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size:
                os.truncate(fd, 0)
        with contextlib.suppress(OSError):
            os.close(fd)

    def ensure_runner(self, env: Callable[[], Mapping[str, str]]) -> int | None:
        """Start a detached runner unless one is alive; return the new runner's pid.

        The lock is taken here and inherited by the runner, so no second web process can
        start another in the ~1 s before the runner has imported the app.
        """
        if not _HAS_FLOCK or self.runner_alive():  # pragma: no cover - Windows
            return None
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # another process is starting one right now
            child_env = dict(env())  # built only now: most enqueues find a runner alive
            child_env[LOCK_FD_ENV] = str(fd)
            proc = subprocess.Popen(
                runner_command(),
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(fd,),
                **popen_kwargs(os.name),
            )
            _forget(proc)
            return proc.pid
        finally:
            os.close(fd)  # the runner keeps the lock through its own copy

    # -- runner side -------------------------------------------------------------------------

    def hold_lock(self, inherited_fd: int | None, *, exclusive: bool) -> int | None:
        """Take (or adopt) the host lock for a runner; ``None`` if it is held elsewhere."""
        if not _HAS_FLOCK:  # pragma: no cover
            return None
        if inherited_fd is not None:
            try:
                os.set_inheritable(inherited_fd, False)
                fcntl.flock(inherited_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # already ours: no-op
                _write_pid(inherited_fd)
                return inherited_fd
            except OSError:
                pass
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if exclusive:
            _write_pid(fd)
        return fd

    def bind(self) -> tuple[socket.socket, str] | None:
        """Bind this runner's wake-up socket (``None`` where AF_UNIX is missing)."""
        if not hasattr(socket, "AF_UNIX"):  # pragma: no cover
            return None
        os.makedirs(self.sock_dir, exist_ok=True)
        path = os.path.join(self.sock_dir, f"{os.getpid()}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        return sock, path


def _write_pid(fd: int) -> None:
    # For operators (and tests) who want to know which process holds the lock.
    os.truncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _forget(proc: subprocess.Popen[bytes]) -> None:
    # The runner outlives us; reap it if it exits while we still run, so no zombie stays.
    def wait() -> None:
        try:
            proc.wait()
        except Exception:  # noqa: BLE001 - best effort
            pass

    threading.Thread(target=wait, name="bgjobs-reap", daemon=True).start()


def kill_group(pgid: int, sig: int) -> None:
    """Signal a whole process group, tolerating one that is already gone."""
    try:
        os.killpg(pgid, sig)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise
