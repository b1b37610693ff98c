"""The only module that starts runner processes or signals them.

Per host and database there is one *run directory* holding:

- ``<key>.lock``: held with ``flock`` by every live runner — exclusively by an auto-started
  one, shared by operator-run workers. A web process that can take it exclusively knows no
  runner is alive and starts one, passing its locked descriptor to the child, so "check" and
  "start" are one atomic step: of many web workers enqueuing at once, one starts a runner.
- ``<key>/<pid>.sock``: each runner's datagram socket. After every commit the web process
  sends one byte to each: the runner wakes in microseconds instead of at its next poll.
  A lost datagram costs only latency: runners also poll.

Since any descriptor of the lock file can hold the lock, and whoever controls a socket folder
receives the wake-ups and chooses what a stale-socket cleanup removes, all of it belongs to
the app's user alone: folders 0700, the lock file 0600, each checked on an open descriptor.
A folder of ours that is too open is closed; anything of another account, or a symlink, is
refused (`UnsafePathError`): no autostart (the web process logs why), no wake-up socket (the
runner polls). Nothing is ever removed through a path another account could redirect.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import stat
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

# The run folder, the socket folders and the lock file are the app's user's alone: another
# account that could open the lock could fake a live runner, and one that controls a socket
# folder receives the wake-ups and could make us remove files elsewhere (docs/security.md).
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as the lock file must not block

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
    """The argument list of an auto-started runner: no job data ever travels on it.

    ``-P`` (Python 3.11+): the working directory is not put first on ``sys.path`` at start, so
    a ``secrets.py`` lying there cannot stand in for the standard library's. The app itself is
    then imported the way ``flask`` imports it (Flask adds the app's folder), after the
    runner's own modules are loaded.
    """
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe_path, "-m", "flask_bgjobs.runner"]


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


class UnsafePathError(PermissionError):
    """Raised when a run or socket folder, or the lock file, is not the app's user's alone.

    A `PermissionError`, so a web process reports it like any other failure to start a runner
    (one line in the error log; the job stays stored for a runner).
    """


class Launcher:
    """Starts and wakes the runners of one database on this host."""

    def __init__(self, instance_path: str, database_uri: str) -> None:
        self.key = key_for(database_uri)
        self.run_dir = os.path.join(instance_path, "bgjobs-run")
        self.lock_path = os.path.join(self.run_dir, f"{self.key}.lock")
        sock_dir = os.path.join(self.run_dir, self.key)
        self._sock_in_temp = len(sock_dir) + 16 > _MAX_SOCKET_PATH
        if self._sock_in_temp:
            digest = hashlib.sha256(sock_dir.encode("utf-8", "surrogateescape")).hexdigest()[:12]
            sock_dir = os.path.join(tempfile.gettempdir(), f"bgjobs-{_uid()}", digest)
        self.sock_dir = sock_dir
        #: Why the last folder or file was refused (`bind` gave ``None``, `hold_lock` too):
        #: for a runner to log. ``None`` while nothing was refused.
        self.last_refusal: str | None = None
        self._sock: socket.socket | None = None
        self._targets: list[str] = []
        self._targets_mtime: int | None = None
        self._sock_dir_fd: int | None = None
        self._sock_dir_id: tuple[int, int] | None = None
        self._bound: dict[str, tuple[int, int]] = {}
        self._probe_fd: int | None = None
        self._probe_id: tuple[int, int] | None = None
        self._mutex = threading.Lock()

    # -- web side ----------------------------------------------------------------------------

    def nudge(self, payload: bytes = WAKE_ENQUEUED) -> None:
        """Send one datagram to every runner of this database on this host.

        Only to sockets of this user in the checked socket folder; a stale one (its runner was
        killed with SIGKILL) is removed through a descriptor of that folder, never through a
        path someone else could point elsewhere.
        """
        if not hasattr(socket, "AF_UNIX"):  # pragma: no cover - Windows: runners poll
            return
        with self._mutex:
            for name in self._socket_names():
                try:
                    self._sender().sendto(payload, os.path.join(self.sock_dir, name))
                except BlockingIOError:
                    pass  # its queue is full: that runner has wake-ups enough
                except (ConnectionRefusedError, FileNotFoundError):
                    # A runner killed with SIGKILL leaves its socket behind.
                    if self._sock_dir_fd is not None:
                        with contextlib.suppress(OSError):
                            os.unlink(name, dir_fd=self._sock_dir_fd)
                    self._targets_mtime = None
                except OSError:
                    pass

    def _sender(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        return self._sock

    def _socket_names(self) -> list[str]:
        """Names of the runner sockets in the socket folder; none if it is not ours alone."""
        try:
            st = os.lstat(self.sock_dir)
        except OSError:
            return []
        if (st.st_dev, st.st_ino) != self._sock_dir_id:
            # First use, or the folder was made anew: check it once, then keep a descriptor
            # of it, so that every later look and removal happens in that very folder.
            self._forget_sock_dir()
            try:
                if self._sock_in_temp:  # <tmp>/bgjobs-<uid> must be ours too, as in `bind`
                    owner_dir = _open_dir(os.path.dirname(self.sock_dir))
                    try:
                        if _dir_problem(os.fstat(owner_dir)) is not None:
                            return []
                    finally:
                        os.close(owner_dir)
                fd = _open_dir(self.sock_dir)
            except OSError:
                return []
            fst = os.fstat(fd)
            if _dir_problem(fst) is not None:
                os.close(fd)
                return []
            self._sock_dir_fd, self._sock_dir_id = fd, (fst.st_dev, fst.st_ino)
        # Listing the folder on every enqueue is wasteful: its mtime changes exactly when a
        # runner binds or removes its socket.
        if st.st_mtime_ns != self._targets_mtime and self._sock_dir_fd is not None:
            try:
                # Listed by path (a shared descriptor would share its read offset with forked
                # web workers), then each entry checked inside the folder we hold.
                names = [n for n in os.listdir(self.sock_dir) if n.endswith(".sock")]
            except OSError:
                return []
            self._targets = [n for n in names if _is_own_socket(n, self._sock_dir_fd)]
            self._targets_mtime = st.st_mtime_ns
        return self._targets

    def _forget_sock_dir(self) -> None:
        if self._sock_dir_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._sock_dir_fd)
        self._sock_dir_fd = self._sock_dir_id = self._targets_mtime = None
        self._targets = []

    def runner_alive(self) -> bool:
        """True when some runner of this database holds the host lock.

        Alive means: a process of the app's own user holds the lock file. Only that user can
        open it (0600, in a 0700 run folder, both checked; anything else raises
        `UnsafePathError`), so no other account can make a runner look alive and keep jobs
        waiting for one that never comes.
        """
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
        if self._probe_fd is not None:
            # A descriptor of a lock file since removed (run folder cleaned, a refused file
            # deleted) would ask about a lock no runner takes any more.
            try:
                st = os.lstat(self.lock_path)
                if (st.st_dev, st.st_ino) == self._probe_id:
                    return self._probe_fd
            except OSError:
                pass
            with contextlib.suppress(OSError):
                os.close(self._probe_fd)
            self._probe_fd = self._probe_id = None
        fd = self._open_lock()
        st = os.fstat(fd)
        self._probe_fd, self._probe_id = fd, (st.st_dev, st.st_ino)
        return fd

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
        start another in the ~1 s before the runner has imported the app. Raises
        `UnsafePathError` when the run folder or lock file is not the app's user's alone.
        """
        if not _HAS_FLOCK or self.runner_alive():  # pragma: no cover - Windows
            return None
        fd = self._open_lock()
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
        """Take (or adopt) the host lock for a runner.

        ``None`` if it is held elsewhere, or refused because the run folder or lock file is
        not the app's user's alone (the reason is in `last_refusal`).
        """
        if not _HAS_FLOCK:  # pragma: no cover
            return None
        if inherited_fd is not None:
            try:
                os.set_inheritable(inherited_fd, False)
                # Adopted only if it is this very lock file, so a stray descriptor number in
                # the environment cannot pass for the lock.
                if self._is_lock_file(inherited_fd):
                    fcntl.flock(inherited_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours: no-op
                    _write_pid(inherited_fd)
                    return inherited_fd
            except OSError:
                pass
        try:
            fd = self._open_lock()
        except UnsafePathError as exc:
            self.last_refusal = str(exc)
            return None
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if exclusive:
            _write_pid(fd)
        return fd

    def _is_lock_file(self, fd: int) -> bool:
        st = os.fstat(fd)
        try:
            named = os.lstat(self.lock_path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (named.st_dev, named.st_ino) and _file_problem(st) is None

    def _open_lock(self) -> int:
        """Open (creating) the lock file: 0600 in a 0700 run folder, both this user's own.

        Raises `UnsafePathError` for a run folder or lock file that another account owns, a
        symlink, or a lock file others could have opened: making it 0600 now would not close
        a descriptor opened meanwhile, and any descriptor can hold the lock.
        """
        parent = os.path.dirname(self.run_dir)
        if parent:
            os.makedirs(parent, exist_ok=True)  # the instance folder, with the usual mode
        dir_fd = _private_dir(self.run_dir)
        try:
            # Opened through the checked folder; never follows a symlink planted as the file.
            fd = os.open(
                os.path.basename(self.lock_path),
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK,
                _FILE_MODE,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(f"{self.lock_path} is a symlink; remove it") from None
            raise
        finally:
            os.close(dir_fd)
        try:
            problem = _file_problem(os.fstat(fd))
            if problem is not None:
                raise UnsafePathError(
                    f"{self.lock_path} {problem}; remove it (the next runner or enqueue makes "
                    "a private one)"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def bind(self) -> tuple[socket.socket, str] | None:
        """Bind this runner's wake-up socket in a folder of this user's own.

        ``None`` where AF_UNIX is missing, or when the socket folder (or, under the shared
        temp folder, its parent) belongs to another account or is a symlink: the runner then
        polls, which costs latency only. The reason is in `last_refusal`.
        """
        if not hasattr(socket, "AF_UNIX"):  # pragma: no cover
            return None
        try:
            dir_fd = self._open_sock_dir()
        except UnsafePathError as exc:
            self.last_refusal = str(exc)
            return None
        try:
            folder = os.fstat(dir_fd)
            name = f"{os.getpid()}.sock"
            # Left by an earlier process with our pid; removed inside the checked folder.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
            path = os.path.join(self.sock_dir, name)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.bind(path)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        finally:
            os.close(dir_fd)
        self._bound[path] = (folder.st_dev, folder.st_ino)
        return sock, path

    def unbind(self, sock: socket.socket, path: str) -> None:
        """Remove a socket made by `bind` and close it; a runner calls this as it exits.

        The file is removed only from the folder `bind` checked, found again through a
        descriptor and compared: never through a path that could point elsewhere by then.
        """
        folder, name = os.path.split(path)
        expected = self._bound.pop(path, None)
        try:
            fd = _open_dir(folder)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                st = os.fstat(fd)
                same = expected is None or (st.st_dev, st.st_ino) == expected
                if same and _dir_problem(st) is None and _is_own_socket(name, fd):
                    os.unlink(name, dir_fd=fd)
            except OSError:
                pass
            finally:
                os.close(fd)
        sock.close()

    def _open_sock_dir(self) -> int:
        """A descriptor of the socket folder, made and checked along with its parent."""
        if self._sock_in_temp:
            # <tmp>/bgjobs-<uid>/<digest>: anyone may create names in <tmp>, so each of our
            # two folders must be ours and closed, and <tmp> must stop others renaming them.
            owner_dir = os.path.dirname(self.sock_dir)
            _check_shared_parent(os.path.dirname(owner_dir))
            os.close(_private_dir(owner_dir))
        else:
            parent = os.path.dirname(self.run_dir)
            if parent:
                os.makedirs(parent, exist_ok=True)
            os.close(_private_dir(self.run_dir))
        return _private_dir(self.sock_dir)


# -- private folders and files ---------------------------------------------------------------


def _uid() -> int:
    # Files are created with the effective uid, so that is whose they must be.
    return os.geteuid() if hasattr(os, "geteuid") else 0


def _open_dir(path: str) -> int:
    """Open the folder itself, never a symlink in its place (ELOOP/ENOTDIR otherwise)."""
    return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | os.O_CLOEXEC)


def _dir_problem(st: os.stat_result) -> str | None:
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if st.st_uid != _uid():
        return f"belongs to uid {st.st_uid}, not to this user (uid {_uid()})"
    if st.st_mode & 0o077:
        return f"is open to other accounts (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _file_problem(st: os.stat_result) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != _uid():
        return f"belongs to uid {st.st_uid}, not to this user (uid {_uid()})"
    if st.st_nlink != 1:
        return "has other names (hard links)"
    if st.st_mode & 0o077:
        return f"could be opened by other accounts (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _private_dir(path: str) -> int:
    """Make `path` a folder only this user can use (0700) and return a descriptor of it.

    Created 0700 when missing. An existing folder of ours that is too open (made by an older
    version, or by hand) is closed to 0700: the files we keep in it are checked one by one.
    A folder of another account, or a symlink, raises `UnsafePathError`: its owner could
    swap what is inside. Checked on the opened descriptor, so the folder cannot be replaced
    between the check and its use.
    """
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        pass
    try:
        fd = _open_dir(path)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(f"{path} is not a folder (a symlink?); remove it") from None
        raise
    try:
        st = os.fstat(fd)
        problem = _dir_problem(st)
        if problem is not None and st.st_uid == _uid() and stat.S_ISDIR(st.st_mode):
            os.fchmod(fd, _DIR_MODE)
        elif problem is not None:
            raise UnsafePathError(f"{path} {problem}; remove it")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_shared_parent(path: str) -> None:
    """Refuse a temp folder in which another account could rename our folder away."""
    st = os.stat(path)
    if st.st_uid not in (0, _uid()):
        raise UnsafePathError(f"{path} belongs to uid {st.st_uid}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafePathError(f"{path} is writable by other accounts without the sticky bit")


def _is_own_socket(name: str, dir_fd: int) -> bool:
    """True for a socket of this user named `name` in the folder `dir_fd` (not a symlink)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISSOCK(st.st_mode) and st.st_uid == _uid()


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
