"""Another account on the same machine attacks what the app keeps in files (issue 12).

The app and its runners run as root here; the unprivileged account ``nobody`` (uid 65534)
plays the attacker, in processes of its own. The instance folder sits in a folder every
account may enter (0755), as ``/srv/myapp/instance`` usually does, and its path is long, so
the wake-up sockets go to the temp folder: a stand-in for ``/tmp`` (1777) that the case owns,
so the real ``/tmp/bgjobs-0`` is never touched.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Env, kill_tree, pid_alive, runner_pids, wait_for

from faults.conftest import Invariants, J, sqlite_only, start_worker, wait_status
from flask_bgjobs import JobNotAllowed, run_background_job

NOBODY = 65534


def _nobody_python() -> tuple[str | None, str]:
    """An interpreter the nobody account can run (the test's own may live in root's home)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None, "acting as another account (uid 65534) needs root"
    try:
        pwd.getpwuid(NOBODY)
    except KeyError:
        return None, "this machine has no account with uid 65534"
    for candidate in dict.fromkeys([sys.executable, shutil.which("python3"), "/usr/bin/python3"]):
        if not candidate:
            continue
        try:
            subprocess.run(
                [candidate, "-c", "import fcntl, os, sys"],
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
                cwd="/",
                capture_output=True,
                timeout=30,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        return candidate, ""
    return None, "no Python interpreter that the nobody account may run"


NOBODY_PYTHON, NO_NOBODY = _nobody_python()

pytestmark = [
    pytest.mark.usefixtures("ctx"),
    pytest.mark.skipif(NOBODY_PYTHON is None, reason=NO_NOBODY),
    sqlite_only,  # files on this host are the subject; the job database plays no part
]


def as_nobody(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start Python `code` with `args` as the nobody account (uid and gid 65534, no groups)."""
    assert NOBODY_PYTHON is not None
    return subprocess.Popen(
        [NOBODY_PYTHON, "-c", textwrap.dedent(code), *args],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        text=True,
        **kwargs,
    )


def nobody(code: str, *args: str) -> str:
    """Run Python `code` with `args` as the nobody account; return what it printed."""
    proc = as_nobody(code, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out.strip()


def stale_socket(path: Path) -> None:
    """Leave a socket file nobody listens on, as a runner killed with SIGKILL does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()


@pytest.fixture(autouse=True)
def shared_folders(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Folders every account may enter: the instance folder's and a stand-in for /tmp."""
    # Not under pytest's own temp folder: that is root's alone, and nobody must reach these.
    base = Path(tempfile.mkdtemp(prefix="bgjobs-local-"))
    base.chmod(0o755)
    instance = base / ("i" * 100) / "instance"
    instance.mkdir(parents=True)
    for folder in (instance.parent, instance):
        folder.chmod(0o755)
    tmp = base / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    monkeypatch.setenv("JOBAPP_INSTANCE", str(instance))
    monkeypatch.setenv("TMPDIR", str(tmp))  # for runners
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # for this process
    env.instance = instance
    yield base
    # Runners first (found through files in `base`), then the folders.
    for proc in env.procs:
        if proc.poll() is None:
            kill_tree(proc.pid)
    for pid in runner_pids(instance, env.database_uri):
        kill_tree(pid)
        wait_for(lambda p=pid: not pid_alive(p), timeout=10, what=f"runner {pid} to exit")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def web(app: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A second app with autostart on: its enqueues start runners as a web app's do."""
    from jobapp import create_app

    monkeypatch.setenv("BGJOBS_AUTOSTART", "true")
    web = create_app()
    yield web
    web.extensions["bgjobs"].store.close()


def test_another_account_holding_the_lock_file_cannot_keep_jobs_waiting(
    env: Env, app: Any, web: Any, invariants: Invariants
) -> None:
    """A shared flock taken through a read-only descriptor made every enqueue believe a
    runner was alive: no runner was started and every job stayed pending."""
    launcher = web.extensions["bgjobs"].launcher
    assert launcher.runner_alive() is False  # the web process has looked: the file exists
    holder = as_nobody(
        """
        import fcntl, os, sys
        try:
            fd = os.open(sys.argv[1], os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            print("denied", type(exc).__name__, flush=True)
        else:
            print("holding", flush=True)
        sys.stdin.readline()
        """,
        launcher.lock_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    env.procs.append(holder)  # type: ignore[arg-type]
    assert holder.stdout is not None
    said = holder.stdout.readline().strip()

    with web.app_context():
        job = run_background_job(J, "add", [2, 3])
    invariants.enqueued.add(job.id)
    done = wait_status(app, job.id, "succeeded", timeout=20)
    assert done.result == 5
    assert said == "denied PermissionError"
    invariants.check()


def test_a_socket_folder_another_account_made_first_gets_no_wake_ups(
    env: Env, app: Any, invariants: Invariants
) -> None:
    """The temp socket folder was made with ``exist_ok=True`` and never checked: the
    account that made it first received the runners' wake-ups. Now the runner refuses that
    folder and finds its jobs by polling."""
    sock_dir = Path(app.extensions["bgjobs"].launcher.sock_dir)
    nobody(
        """
        import os, sys
        for folder in (os.path.dirname(sys.argv[1]), sys.argv[1]):
            os.mkdir(folder)
            os.chmod(folder, 0o777)
        """,
        str(sock_dir),
    )
    start_worker(env)
    job = invariants.enqueue(J, "add", [1, 2])
    assert wait_status(app, job.id, "succeeded").result == 3
    assert list(sock_dir.iterdir()) == []  # no runner socket where the other account reads
    invariants.check()


def test_a_symlink_another_account_puts_as_the_socket_folder_makes_nudges_remove_nothing(
    env: Env, app: Any, invariants: Invariants
) -> None:
    """A web process that nudged runners through a symlinked socket folder removed every
    ``*.sock`` it could not send to in the folder the symlink named."""
    victim = env.tmp / "victim"
    victim.mkdir()
    stale_socket(victim / "service.sock")
    (victim / "notes.sock").write_text("not a socket, but named like one")
    sock_dir = Path(app.extensions["bgjobs"].launcher.sock_dir)
    nobody(
        """
        import os, sys
        os.mkdir(os.path.dirname(sys.argv[1]))
        os.chmod(os.path.dirname(sys.argv[1]), 0o777)
        os.symlink(sys.argv[2], sys.argv[1])
        """,
        str(sock_dir),
        str(victim),
    )
    invariants.enqueue(J, "noop")  # stores the job, then nudges
    assert sorted(p.name for p in victim.iterdir()) == ["notes.sock", "service.sock"]
    invariants.check()


def test_a_runner_that_stops_removes_nothing_through_a_socket_folder_swapped_meanwhile(
    env: Env, app: Any, invariants: Invariants
) -> None:
    """A runner removed its socket at exit through the folder's path, which the account that
    owned the folder could have replaced with a symlink in the meantime."""
    sock_dir = Path(app.extensions["bgjobs"].launcher.sock_dir)
    nobody(
        """
        import os, sys
        for folder in (os.path.dirname(sys.argv[1]), sys.argv[1]):
            os.mkdir(folder)
            os.chmod(folder, 0o777)
        """,
        str(sock_dir),
    )
    worker = start_worker(env)
    job = invariants.enqueue(J, "noop")
    wait_status(app, job.id, "succeeded")  # the worker is past its start: socket or not
    victim = env.tmp / "victim"
    victim.mkdir()
    stale_socket(victim / f"{worker.pid}.sock")
    nobody(
        """
        import os, sys
        os.rename(sys.argv[1], sys.argv[1] + ".old")
        os.symlink(sys.argv[2], sys.argv[1])
        """,
        str(sock_dir),
        str(victim),
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert (victim / f"{worker.pid}.sock").exists()
    invariants.check()


READ_FILES = """
import sys
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        print(path, "denied", type(exc).__name__)
    else:
        print(path, "read")
"""


def test_another_account_cannot_read_the_job_logs(
    env: Env, app: Any, invariants: Invariants
) -> None:
    """The logs carry job names, errors and tracebacks; they were created 0644."""
    with pytest.raises(JobNotAllowed):
        run_background_job("os", "system", ["id"])  # the web process writes the error log
    job = invariants.enqueue(J, "fail", ["secret row 17"], retry_attempts=0)
    start_worker(env)  # the runner writes both logs
    wait_status(app, job.id, "failed")
    logs = [env.main_log, env.error_log]
    assert all(log.exists() for log in logs)
    said = nobody(READ_FILES, *map(str, logs)).splitlines()
    assert said == [f"{log} denied PermissionError" for log in logs]
    invariants.check()


def test_another_account_cannot_read_an_sqlite_job_database(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default database, ``<instance>/bgjobs.db``, holds every job's params and results."""
    from jobapp import create_app

    monkeypatch.setenv("BGJOBS_DATABASE_URI", "sqlite:///bgjobs.db")  # in the instance folder
    web = create_app()
    try:
        with web.app_context():
            run_background_job(J, "add", [1, 1])
            files = [
                env.instance / name for name in ("bgjobs.db", "bgjobs.db-wal", "bgjobs.db-shm")
            ]
            assert all(f.exists() for f in files)  # the web process's connection is open
            said = nobody(READ_FILES, *map(str, files)).splitlines()
    finally:
        web.extensions["bgjobs"].store.close()
    assert said == [f"{f} denied PermissionError" for f in files]
