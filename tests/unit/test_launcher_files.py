"""The launcher's files on a host shared with other accounts: real files, no processes.

The run folder, the lock file and the wake-up sockets must be usable by the app's own user
only; a folder or file that another account owns, or could have opened, is fixed when that is
safe and refused otherwise (issue 12). Cases that need a second owner ``chown`` to the
unprivileged ``nobody`` account, so they run as root only; tests/faults/test_local_accounts.py
plays the same attacks with real processes of that account.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_bgjobs.launcher import Launcher

NOBODY = 65534
URI = "sqlite:////srv/app/jobs.db"

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="giving a file to another account (chown) needs root",
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The default umask of most systems: files 0644 and folders 0755 unless asked otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def shared_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp folder like /tmp (world-writable, sticky), standing in for the real one."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    folder.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def long_launcher(tmp_path: Path, shared_tmp: Path) -> Launcher:
    """A launcher whose instance path is too long for sockets: they go to the temp folder."""
    launcher = Launcher(str(tmp_path / ("i" * 100) / "instance"), URI)
    assert launcher.sock_dir.startswith(str(shared_tmp))
    return launcher


def stale_socket(path: Path) -> None:
    """Leave a socket file nobody listens on, as a runner killed with SIGKILL does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()


# -- the run folder and the lock file --------------------------------------------------------


def test_the_run_folder_and_lock_file_are_private_to_the_apps_user(tmp_path: Path) -> None:
    launcher = Launcher(str(tmp_path / "instance"), URI)
    assert launcher.runner_alive() is False
    assert mode(Path(launcher.run_dir)) == 0o700
    assert mode(Path(launcher.lock_path)) == 0o600


def test_a_run_folder_left_open_by_an_older_version_is_closed(tmp_path: Path) -> None:
    launcher = Launcher(str(tmp_path / "instance"), URI)
    Path(launcher.run_dir).mkdir(parents=True, mode=0o755)
    fd = launcher.hold_lock(None, exclusive=False)
    assert fd is not None
    os.close(fd)
    assert mode(Path(launcher.run_dir)) == 0o700
    assert mode(Path(launcher.lock_path)) == 0o600


@needs_root
def test_a_run_folder_owned_by_another_account_is_refused(tmp_path: Path) -> None:
    launcher = Launcher(str(tmp_path / "instance"), URI)
    run_dir = Path(launcher.run_dir)
    run_dir.mkdir(parents=True, mode=0o777)
    os.chown(run_dir, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        launcher.runner_alive()
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        launcher.ensure_runner(lambda: {})
    assert launcher.hold_lock(None, exclusive=True) is None
    assert list(run_dir.iterdir()) == []  # nothing of ours in a folder its owner controls


def test_a_lock_file_other_accounts_could_have_opened_is_refused(tmp_path: Path) -> None:
    # Making it 0600 now would not close a descriptor another account opened meanwhile.
    launcher = Launcher(str(tmp_path / "instance"), URI)
    Path(launcher.run_dir).mkdir(parents=True, mode=0o700)
    Path(launcher.lock_path).touch(mode=0o644)
    with pytest.raises(PermissionError, match=r"mode 0644.*remove it"):
        launcher.runner_alive()
    assert launcher.hold_lock(None, exclusive=False) is None


@needs_root
def test_a_lock_file_owned_by_another_account_is_refused(tmp_path: Path) -> None:
    launcher = Launcher(str(tmp_path / "instance"), URI)
    Path(launcher.run_dir).mkdir(parents=True, mode=0o700)
    Path(launcher.lock_path).touch(mode=0o600)
    os.chown(launcher.lock_path, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        launcher.runner_alive()
    assert launcher.hold_lock(None, exclusive=True) is None


@pytest.mark.parametrize("what", ["run folder", "lock file"])
def test_a_symlink_in_place_of_the_run_folder_or_lock_file_is_refused(
    tmp_path: Path, what: str
) -> None:
    launcher = Launcher(str(tmp_path / "instance"), URI)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if what == "run folder":
        Path(launcher.run_dir).parent.mkdir()
        Path(launcher.run_dir).symlink_to(elsewhere)
    else:
        Path(launcher.run_dir).mkdir(parents=True, mode=0o700)
        Path(launcher.lock_path).symlink_to(elsewhere / "target.lock")
    with pytest.raises(PermissionError, match="symlink"):
        launcher.runner_alive()
    assert list(elsewhere.iterdir()) == []


def test_a_lock_file_replaced_under_a_web_process_is_looked_up_again(tmp_path: Path) -> None:
    web = Launcher(str(tmp_path / "instance"), URI)
    assert web.runner_alive() is False
    os.unlink(web.lock_path)  # the run folder cleaned up while the web process runs
    runner = Launcher(str(tmp_path / "instance"), URI)
    fd = runner.hold_lock(None, exclusive=True)
    assert fd is not None
    try:
        assert web.runner_alive() is True
    finally:
        runner.release_lock(fd)


def test_an_inherited_descriptor_that_is_not_the_lock_file_is_not_adopted(
    tmp_path: Path,
) -> None:
    launcher = Launcher(str(tmp_path / "instance"), URI)
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fd = launcher.hold_lock(other, exclusive=True)
        assert fd is not None and fd != other
        assert os.fstat(fd).st_ino == os.stat(launcher.lock_path).st_ino
        assert Path(launcher.lock_path).read_text() == f"{os.getpid()}\n"
        launcher.release_lock(fd)
    finally:
        os.close(other)


# -- the wake-up sockets ---------------------------------------------------------------------


def test_sockets_in_the_shared_temp_folder_live_in_private_folders(
    long_launcher: Launcher,
) -> None:
    bound = long_launcher.bind()
    assert bound is not None
    sock, path = bound
    sock_dir = Path(long_launcher.sock_dir)
    for folder in (sock_dir, sock_dir.parent):
        assert (mode(folder), folder.lstat().st_uid) == (0o700, os.geteuid())
    assert Path(path).parent == sock_dir
    long_launcher.unbind(sock, path)
    assert not Path(path).exists()
    assert sock.fileno() == -1  # closed


@needs_root
@pytest.mark.parametrize("level", ["bgjobs-<uid>", "<digest>"])
def test_a_temp_socket_folder_created_by_another_account_is_refused(
    long_launcher: Launcher, level: str
) -> None:
    sock_dir = Path(long_launcher.sock_dir)
    if level == "<digest>":
        sock_dir.parent.mkdir(mode=0o700)
    taken = sock_dir.parent if level == "bgjobs-<uid>" else sock_dir
    taken.mkdir(mode=0o777)
    os.chown(taken, NOBODY, NOBODY)
    if level == "bgjobs-<uid>":
        sock_dir.mkdir(mode=0o777)
        os.chown(sock_dir, NOBODY, NOBODY)
    assert long_launcher.bind() is None  # the runner polls instead
    assert list(sock_dir.iterdir()) == []


def test_a_temp_folder_anyone_may_rename_in_is_not_used_for_sockets(
    long_launcher: Launcher, shared_tmp: Path
) -> None:
    shared_tmp.chmod(0o777)  # world-writable without the sticky bit
    assert long_launcher.bind() is None
    assert list(shared_tmp.iterdir()) == []


def test_nudge_deletes_nothing_through_a_symlinked_socket_folder(
    long_launcher: Launcher, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    stale_socket(victim / "service.sock")
    (victim / "notes.sock").write_text("not a socket")
    sock_dir = Path(long_launcher.sock_dir)
    sock_dir.parent.mkdir(mode=0o700)
    sock_dir.symlink_to(victim)
    long_launcher.nudge()
    assert sorted(p.name for p in victim.iterdir()) == ["notes.sock", "service.sock"]
    assert long_launcher.bind() is None


def test_nudge_removes_stale_sockets_and_only_sockets_from_a_private_folder(
    tmp_path: Path,
) -> None:
    launcher = Launcher(str(tmp_path / "instance"), URI)
    listening = launcher.bind()
    assert listening is not None
    sock_dir = Path(launcher.sock_dir)
    stale_socket(sock_dir / "999999.sock")
    (sock_dir / "notes.sock").write_text("not a socket")
    launcher.nudge()
    assert sorted(p.name for p in sock_dir.iterdir()) == sorted(
        [Path(listening[1]).name, "notes.sock"]
    )
    assert listening[0].recv(8) == b"e"
    launcher.unbind(*listening)


def test_unbind_deletes_nothing_through_a_socket_folder_swapped_after_bind(
    tmp_path: Path,
) -> None:
    launcher = Launcher(str(tmp_path / "instance"), URI)
    bound = launcher.bind()
    assert bound is not None
    sock, path = bound
    sock_dir = Path(launcher.sock_dir)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    stale_socket(victim / Path(path).name)
    sock_dir.rename(tmp_path / "moved-away")
    sock_dir.symlink_to(victim)
    launcher.unbind(sock, path)
    assert (victim / Path(path).name).exists()
    assert sock.fileno() == -1
