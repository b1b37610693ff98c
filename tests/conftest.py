"""Fixtures shared by every tier: a test app on a real SQLite file (or the real PostgreSQL),
real runner processes, and a teardown that kills every process a test started by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # the `jobapp` test package

PG_URI = os.environ.get(
    "BGJOBS_TEST_POSTGRES_URI", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
APP_IMPORT = "jobapp:create_app()"
ALLOWED = "jobapp.jobs.Jobs:*,jobapp.jobs:module_function"

#: SPEC §9: the keys of the job JSON (API, ``show --json``, ``list --json``), exactly;
#: ``events`` comes on top in the single-job view.
SPEC_JOB_KEYS = frozenset(
    {
        "id", "class_name", "method_name", "params", "status", "priority", "attempts",
        "max_attempts", "run_at", "created_at", "started_at", "finished_at", "progress",
        "progress_message", "result", "error", "runner_id", "pid",
        # SPEC §10 (0.2.0)
        "queue", "unique_key", "concurrency_key", "expires_at", "schedule", "scheduled_for",
    }
)  # fmt: skip

#: The single-job view adds ``events`` (SPEC §9) and the latest attempt's ``output`` (§13).
SPEC_SINGLE_JOB_KEYS = SPEC_JOB_KEYS | {"events", "output"}

#: SPEC §9: an event's keys; one that ends an attempt also carries its usage (SPEC §13).
SPEC_EVENT_KEYS = frozenset({"at", "kind", "message", "attempt"})
SPEC_END_EVENT_KEYS = SPEC_EVENT_KEYS | {"max_rss_kb", "cpu_s"}


def spec_event_keys(event: dict[str, Any]) -> frozenset[str]:
    """The keys SPEC gives this event in the JSON."""
    from flask_bgjobs.models import END_REASONS

    ends = event.get("attempt") is not None and event.get("kind") in END_REASONS
    return SPEC_END_EVENT_KEYS if ends else SPEC_EVENT_KEYS


T = TypeVar("T")


def copy_tree(dest: Path) -> None:
    """Copy what a fresh clone has: tracked and untracked-but-not-ignored files.

    Outside a git checkout (an unpacked sdist), copy everything but local state.
    """
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(
            ROOT,
            dest,
            ignore=shutil.ignore_patterns(
                ".git", ".venv", "instance", "build", "dist", "*.egg-info", "__pycache__", ".env"
            ),
        )
        return
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def wait_for(
    probe: Callable[[], T],
    *,
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.02,
) -> T:
    """Poll `probe` until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its process group, ignoring ones already gone."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def runner_pids(instance: Path, database_uri: str | None = None) -> set[int]:
    """PIDs of runners: lock-file contents in the instance folder, and socket names."""
    from flask_bgjobs.launcher import Launcher

    pids: set[int] = set()
    run_dir = instance / "bgjobs-run"
    for lock in run_dir.glob("*.lock") if run_dir.exists() else ():
        text = lock.read_text().strip()
        if text.isdigit():
            pids.add(int(text))
    sockets = list(run_dir.glob("*/*.sock")) if run_dir.exists() else []
    if database_uri:  # long instance paths put sockets under the temp folder instead
        sockets += Path(Launcher(str(instance), database_uri).sock_dir).glob("*.sock")
    pids.update(int(sock.stem) for sock in sockets if sock.stem.isdigit())
    return pids


def _postgres_reachable() -> str | None:
    try:
        import psycopg
        import sqlalchemy as sa

        url = sa.engine.make_url(PG_URI).set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False), connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def _pg_admin(sql: str) -> None:
    import psycopg
    import sqlalchemy as sa

    url = sa.engine.make_url(PG_URI).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_session_uri() -> Iterator[str]:
    """A database of this test session's own, so parallel runs never drop each other's tables."""
    import sqlalchemy as sa

    name = f"bgjobs_test_{os.getpid()}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{name}"')
    yield sa.engine.make_url(PG_URI).set(database=name).render_as_string(hide_password=False)
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_postgres(uri: str) -> None:
    """Drop the job tables so each test starts from an empty database."""
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "DROP TABLE IF EXISTS bgjobs_events, bgjobs_jobs, bgjobs_queues, "
                    "bgjobs_schedules, bgjobs_alembic_version CASCADE"
                )
            )
    finally:
        engine.dispose()


def _processes_under(folder: Path) -> list[tuple[int, str]]:
    """Live processes whose environment points into `folder` (runners and jobs we started)."""
    found = []
    needle = str(folder).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if b"JOBAPP_INSTANCE=" + needle in environ and pid_alive(int(entry.name)):
            found.append((int(entry.name), cmdline.strip()))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole session, no runner or job process started by a test may survive."""
    yield
    base = tmp_path_factory.getbasetemp()
    leftovers = _processes_under(base)
    for pid, _ in leftovers:
        kill_tree(pid)
    assert not leftovers, f"processes left behind by tests: {leftovers}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Each integration test runs on SQLite and on PostgreSQL."""
    if request.param == "postgresql":
        problem = _postgres_reachable()
        if problem:
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL is required in CI but unreachable: {problem}")
            pytest.skip(f"PostgreSQL unreachable: {problem}")
    return str(request.param)


@pytest.fixture
def database_uri(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgresql":
        uri: str = request.getfixturevalue("pg_session_uri")
        reset_postgres(uri)
        return uri
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@dataclass
class Env:
    """Paths and helpers of one test's environment."""

    tmp: Path
    instance: Path
    marks: Path
    database_uri: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def main_log(self) -> Path:
        return self.instance / "logs" / "background_jobs.log"

    @property
    def error_log(self) -> Path:
        return self.instance / "logs" / "background_jobs_errors.log"

    def runner_sockets(self) -> list[Path]:
        """The wake-up sockets of live runners of this database."""
        from flask_bgjobs.launcher import Launcher

        return list(Path(Launcher(str(self.instance), self.database_uri).sock_dir).glob("*.sock"))

    def marks_of(self, tag: str) -> list[str]:
        path = self.marks / tag
        return path.read_text().splitlines() if path.exists() else []

    def flask(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``flask --app jobapp:create_app() <args>`` to completion."""
        kwargs.setdefault("timeout", 120)
        return subprocess.run(
            [sys.executable, "-m", "flask", "--app", APP_IMPORT, *args],
            capture_output=True,
            text=True,
            cwd=self.tmp,
            check=False,
            **kwargs,
        )

    def start_worker(
        self, *args: str, env: dict[str, str] | None = None, app: str = APP_IMPORT
    ) -> subprocess.Popen[bytes]:
        """Start ``flask bgjobs worker <args>`` in the background; killed at teardown."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", app, "bgjobs", "worker", *args],
            cwd=self.tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def burst(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a burst worker: everything due now, then exit."""
        result = self.flask("bgjobs", "worker", "--burst", *args, timeout=timeout)
        assert result.returncode == 0, result.stderr
        return result


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_uri: str) -> Iterator[Env]:
    """Environment variables for the test app and every runner it starts."""
    for name in list(os.environ):
        if name.startswith(("BGJOBS_TEST_", "BGJOBS_FAULTS_")):
            continue  # the test suite's own knobs (DEVELOPERS.md), not the app's configuration
        if name.startswith("BGJOBS_") or name in (
            "FLASK_APP",
            "BACKGROUND_JOB_LOG",
            "ERROR_LOG",
            "DEFAULT_RETRY_ATTEMPTS",
            "DEFAULT_DELAY",
            "DEFAULT_PRIORITY",
        ):
            monkeypatch.delenv(name)
    instance = tmp_path / "instance"
    marks = tmp_path / "marks"
    pythonpath = os.pathsep.join(
        p for p in (str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    settings = {
        "PYTHONPATH": pythonpath,
        "JOBAPP_INSTANCE": str(instance),
        "JOBAPP_MARKS": str(marks),
        "BGJOBS_APP": APP_IMPORT,
        "BGJOBS_DATABASE_URI": database_uri,
        "BGJOBS_ALLOWED_JOBS": ALLOWED,
        "BGJOBS_AUTOSTART": "false",
        "BGJOBS_RETRY_DELAY": "0.05",
        "BGJOBS_IDLE_TIMEOUT": "2",
        "BGJOBS_MAX_CONCURRENCY": "2",
        "BGJOBS_SHUTDOWN_GRACE": "10",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    e = Env(tmp_path, instance, marks, database_uri)
    yield e
    # Teardown: every process this test started, detached runners included, by PID.
    for proc in e.procs:
        if proc.poll() is None:
            kill_tree(proc.pid)
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    for pid in runner_pids(instance, database_uri):
        if pid != os.getpid():
            kill_tree(pid)
    for pid in runner_pids(instance, database_uri):
        wait_for(lambda p=pid: not pid_alive(p), timeout=10, what=f"runner {pid} to exit")


@pytest.fixture
def app(env: Env) -> Iterator[Any]:
    """The test app, built from the environment exactly as runners build it."""
    from jobapp import create_app

    app = create_app()
    yield app
    app.extensions["bgjobs"].store.close()


@pytest.fixture
def ctx(app: Any) -> Iterator[None]:
    """An application context for the test body."""
    with app.app_context():
        yield


@pytest.fixture
def bgjobs(app: Any) -> Any:
    """The `BackgroundJobs` object of the test app."""
    import jobapp

    return jobapp.bgjobs
