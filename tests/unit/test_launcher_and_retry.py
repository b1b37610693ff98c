"""Pure parts of the launcher and the retry policy: no processes, no database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flask_bgjobs import launcher, retry
from flask_bgjobs.models import Job


def test_posix_runner_starts_in_a_new_session() -> None:
    kwargs = launcher.popen_kwargs("posix")
    assert kwargs["start_new_session"] is True
    assert "creationflags" not in kwargs


def test_windows_runner_is_detached_in_its_own_process_group() -> None:
    kwargs = launcher.popen_kwargs("nt")
    detached = getattr(subprocess, "DETACHED_PROCESS", 0x00000008)
    new_group = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
    assert kwargs["creationflags"] == detached | new_group == 0x00000208
    assert "start_new_session" not in kwargs


def test_runner_command_line_carries_no_job_data() -> None:
    assert launcher.runner_command() == [sys.executable, "-P", "-m", "flask_bgjobs.runner"]


def test_each_database_gets_its_own_runner_key() -> None:
    assert launcher.key_for("sqlite:////a.db") != launcher.key_for("sqlite:////b.db")
    assert launcher.key_for("sqlite:////a.db") == launcher.key_for("sqlite:////a.db")


@pytest.mark.parametrize(
    "other",
    [
        "postgresql+psycopg://app:pw@db2.internal/app",
        "postgresql+psycopg://app:pw@db.internal:5433/app",
        "postgresql+psycopg://reports:pw@db.internal/app",
        "postgresql+psycopg://app:pw@db.internal/other",
        "postgresql+psycopg://app:pw@/app?host=/run/postgresql",
    ],
)
def test_another_server_user_or_database_gets_another_runner_key(other: str) -> None:
    assert launcher.key_for("postgresql+psycopg://app:pw@db.internal/app") != launcher.key_for(
        other
    )


@pytest.mark.parametrize(
    "same",
    [
        "postgresql+psycopg://app:another-password@db.internal/app",
        "postgresql+psycopg://app@db.internal/app",
        "postgresql+psycopg://app@db.internal/app?password=s3cret",
    ],
)
def test_the_runner_key_leaves_the_database_password_out(same: str) -> None:
    # The key names a world-listable lock file: a hash over the password would let anyone
    # on the host test password guesses offline.
    assert launcher.key_for("postgresql+psycopg://app:s3cret@db.internal/app") == launcher.key_for(
        same
    )


def test_every_spelling_of_one_sqlite_file_gets_the_same_runner_key(tmp_path: Path) -> None:
    real = tmp_path / "data"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    spellings = [
        f"sqlite:///{real}/jobs.db",
        f"sqlite:///{tmp_path}/link/jobs.db",
        f"sqlite:///{real}/../data/./jobs.db",
        f"sqlite:///file:{real}/jobs.db?uri=true",
    ]
    assert len({launcher.key_for(uri) for uri in spellings}) == 1
    assert launcher.key_for(f"sqlite:///{real}/other.db") != launcher.key_for(spellings[0])


def test_socket_folder_moves_to_the_temp_folder_when_the_instance_path_is_too_long() -> None:
    short = launcher.Launcher("/srv/app/instance", "sqlite:////x.db")
    assert short.sock_dir.startswith("/srv/app/instance/bgjobs-run/")
    long = launcher.Launcher("/srv/" + "a" * 120 + "/instance", "sqlite:////x.db")
    assert len(long.sock_dir) < 90
    assert long.lock_path.startswith("/srv/" + "a" * 120)


def _job(attempts: int, max_attempts: int = 4, delay: float = 0.0) -> Job:
    return Job(
        id=1,
        class_name="a.B",
        method_name="c",
        params_json="[]",
        status="running",
        priority=1,
        attempts=attempts,
        max_attempts=max_attempts,
        delay=delay,
        timeout=0,
        run_at=0,
        created_at=0,
    )


def test_fixed_backoff_waits_the_retry_delay_every_time() -> None:
    assert retry.retry_in(_job(1), retry_delay=10, kind="fixed") == 10
    assert retry.retry_in(_job(3), retry_delay=10, kind="fixed") == 10


def test_retry_delay_defaults_to_the_jobs_own_delay_or_one_second() -> None:
    assert retry.retry_in(_job(1, delay=7), retry_delay=None, kind="fixed") == 7
    assert retry.retry_in(_job(1, delay=0), retry_delay=None, kind="fixed") == 1


def test_no_retry_once_attempts_are_used_up() -> None:
    assert retry.retry_in(_job(4, max_attempts=4), retry_delay=1, kind="fixed") is None
    assert retry.retry_in(_job(1, max_attempts=1), retry_delay=1, kind="exponential") is None


@pytest.mark.parametrize(("attempt", "expected"), [(1, 2), (2, 4), (3, 8), (4, 16)])
def test_exponential_backoff_doubles_within_its_jitter(attempt: int, expected: float) -> None:
    assert retry.backoff(attempt, 2, "exponential", rand=lambda: 0.5) == expected
    low = retry.backoff(attempt, 2, "exponential", rand=lambda: 0.0)
    high = retry.backoff(attempt, 2, "exponential", rand=lambda: 1.0)
    assert low == pytest.approx(expected * 0.9)
    assert high == pytest.approx(expected * 1.1)


def test_exponential_backoff_is_capped() -> None:
    assert retry.backoff(500, 2, "exponential", rand=lambda: 1.0) == retry.MAX_BACKOFF
