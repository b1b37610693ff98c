"""Setting the extension up, configuring it and enqueueing (SPEC §1-§3, §9), on both backends.

Tests that need their own configuration build their own Flask apps (``make_app``) or their own
`BackgroundJobs`, so the ``jobapp.bgjobs`` object the other tests share is never changed.
"""

from __future__ import annotations

import inspect
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from conftest import SPEC_JOB_KEYS, Env, spec_event_keys
from flask import Flask, has_app_context

from flask_bgjobs import (
    BackgroundJobs,
    BgJobsError,
    ConfigError,
    InvalidJob,
    Job,
    JobNotAllowed,
    run_background_job,
)

J = "jobapp.jobs.Jobs"
TABLES = {"bgjobs_jobs", "bgjobs_events"}
#: SPEC §9; ``events`` only on the single-job view.
SPEC_KEYS = tuple(sorted(SPEC_JOB_KEYS))
CLI_COMMANDS = {
    "worker",
    "enqueue",
    "list",
    "show",
    "retry",
    "cancel",
    "prune",
    "stats",
    "sweep",
    "init-db",
}


# --- helpers ----------------------------------------------------------------------------------

MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(env: Env) -> Iterator[MakeApp]:
    """Build bare Flask apps (own instance folders, no extension yet); close their stores after."""
    apps: list[Flask] = []

    def make(name: str = "web", **config: Any) -> Flask:
        app = Flask("jobapp", instance_path=str(env.tmp / f"instance-{name}"))
        app.config["TESTING"] = True
        app.config.update(config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        state = app.extensions.get("bgjobs")
        if state is not None:
            state.store.close()


@pytest.fixture
def jobapp_factory(env: Env) -> Iterator[Callable[[], Flask]]:
    """``jobapp.create_app`` after the test has set its environment; stores closed after."""
    from jobapp import create_app

    apps: list[Flask] = []

    def make() -> Flask:
        apps.append(create_app())
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["bgjobs"].store.close()


def table_names(uri: str) -> set[str]:
    engine = sa.create_engine(uri)
    try:
        return set(sa.inspect(engine).get_table_names()) & TABLES
    finally:
        engine.dispose()


def sqlite_count(path: Path, table: str = "bgjobs_jobs") -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def total_jobs(app: Flask) -> int:
    return sum(app.extensions["bgjobs"].store.counts().values())


def write_dotenv(path: Path, values: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


# --- registration -----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["constructor", "init_app"])
def test_the_constructor_and_init_app_both_keep_the_state_in_app_extensions(
    env: Env, make_app: MakeApp, style: str
) -> None:
    app = make_app()
    if style == "constructor":
        ext = BackgroundJobs(app)
    else:
        ext = BackgroundJobs()
        assert "bgjobs" not in app.extensions
        ext.init_app(app)
    state = app.extensions["bgjobs"]
    assert state.registry is ext.registry
    assert state.settings.database_uri == env.database_uri
    assert not hasattr(ext, "app"), "the extension must not hold on to one app"
    with app.app_context():
        assert ext.state() is state
        job = run_background_job(J, "add", [1, 2])
        assert ext.get_job(job.id).class_name == J


def test_registering_twice_on_one_app_raises_runtime_error(env: Env, make_app: MakeApp) -> None:
    app = make_app()
    ext = BackgroundJobs(app)
    state = app.extensions["bgjobs"]
    with pytest.raises(RuntimeError, match="already been registered"):
        ext.init_app(app)
    with pytest.raises(RuntimeError, match="already been registered"):
        BackgroundJobs(app)
    assert app.extensions["bgjobs"] is state


def test_one_object_serves_several_apps_each_with_its_own_database(
    env: Env, make_app: MakeApp
) -> None:
    ext = BackgroundJobs()
    first = make_app("first")
    # A relative SQLite path lives in that app's own instance folder.
    second = make_app("second", BGJOBS_DATABASE_URI="sqlite:///second.db")
    ext.init_app(first)
    ext.init_app(second)
    second_db = Path(second.instance_path) / "second.db"
    assert first.extensions["bgjobs"].registry is ext.registry
    assert second.extensions["bgjobs"].registry is ext.registry
    assert first.extensions["bgjobs"].settings.database_uri == env.database_uri
    assert second.extensions["bgjobs"].settings.database_uri == f"sqlite:///{second_db}"

    with first.app_context():
        run_background_job(J, "greet", ["first 1"])
        run_background_job(J, "greet", ["first 2"])
        with second.app_context():  # the innermost context decides
            run_background_job(J, "greet", ["second 1"])
    with first.app_context():
        jobs, total = ext.list_jobs()
        assert (total, [j.params for j in jobs]) == (2, [["first 2"], ["first 1"]])
    with second.app_context():
        jobs, total = ext.list_jobs()
        assert (total, [j.params for j in jobs]) == (1, [["second 1"]])
    assert sqlite_count(second_db) == 1


def test_init_app_registers_the_bgjobs_cli_group(env: Env, make_app: MakeApp) -> None:
    ext = BackgroundJobs()
    apps = [make_app("one"), make_app("two", BGJOBS_DATABASE_URI="sqlite:///two.db")]
    for app in apps:
        assert "bgjobs" not in app.cli.commands
        ext.init_app(app)
        group = app.cli.commands["bgjobs"]
        assert isinstance(group, click.Group)
        assert set(group.commands) >= CLI_COMMANDS

    runner = apps[1].test_cli_runner()
    help_text = runner.invoke(args=["bgjobs", "--help"])
    assert help_text.exit_code == 0, help_text.output
    enqueued = runner.invoke(args=["bgjobs", "enqueue", J, "add", "--params", "[4, 5]"])
    assert enqueued.exit_code == 0, enqueued.output
    job_id = int(enqueued.stdout.strip())
    with apps[1].app_context():
        assert ext.get_job(job_id).params == [4, 5]
    assert sqlite_count(Path(apps[1].instance_path) / "two.db") == 1


# --- Flask-SQLAlchemy -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["constructor", "init_app", "db-initialised-after"])
def test_db_keeps_the_job_tables_in_the_apps_flask_sqlalchemy_database(
    env: Env, backend: str, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    from flask_sqlalchemy import SQLAlchemy

    monkeypatch.delenv("BGJOBS_DATABASE_URI")  # the environment would beat the db's database
    db = SQLAlchemy()

    class Note(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bgjobs_test_notes"
        id = db.Column(db.Integer, primary_key=True)

    uri = env.database_uri if backend == "postgresql" else "sqlite:///app.db"
    app = make_app(SQLALCHEMY_DATABASE_URI=uri)
    if how == "constructor":
        db.init_app(app)
        ext = BackgroundJobs(app, db=db)
    elif how == "init_app":
        db.init_app(app)
        ext = BackgroundJobs()
        ext.init_app(app, db=db)
    else:
        ext = BackgroundJobs(db=db)
        ext.init_app(app)
        db.init_app(app)

    try:
        with app.app_context():
            db.drop_all()  # a notes table left behind on PostgreSQL by an interrupted run
            db.create_all()
            db.session.add(Note())
            db.session.commit()
            job = run_background_job(J, "add", [1, 2])
            assert ext.state().store.engine.url == db.engine.url
            seen = db.session.execute(
                sa.text("SELECT class_name FROM bgjobs_jobs WHERE id = :id"), {"id": job.id}
            ).scalar_one()
            assert seen == J
            assert db.session.execute(sa.select(sa.func.count()).select_from(Note)).scalar() == 1
            db.session.rollback()  # end the read transaction before DROP TABLE needs its lock
            assert table_names(db.engine.url.render_as_string(hide_password=False)) == TABLES
    finally:
        with app.app_context():
            db.session.remove()
            db.drop_all()  # the notes table only: the job tables are not in db.metadata
            for engine in db.engines.values():
                engine.dispose()
    instance = Path(app.instance_path)
    assert not (instance / "bgjobs.db").exists(), "the default database must not be used"
    if backend == "sqlite":
        assert sqlite_count(instance / "app.db") == 1


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dotenv", "environ", "config", "expected"),
    [
        pytest.param({"DEFAULT_PRIORITY": "7"}, {}, {}, 7, id="dotenv-alias"),
        pytest.param(
            {"BGJOBS_DEFAULT_PRIORITY": "9", "DEFAULT_PRIORITY": "7"},
            {},
            {},
            9,
            id="dotenv-canonical-beats-dotenv-alias",
        ),
        pytest.param(
            {"BGJOBS_DEFAULT_PRIORITY": "9"},
            {"DEFAULT_PRIORITY": "4"},
            {},
            4,
            id="environment-alias-beats-dotenv",
        ),
        pytest.param(
            {"BGJOBS_DEFAULT_PRIORITY": "9"},
            {"BGJOBS_DEFAULT_PRIORITY": "5", "DEFAULT_PRIORITY": "4"},
            {},
            5,
            id="environment-canonical-beats-environment-alias",
        ),
        pytest.param(
            {"DEFAULT_PRIORITY": "9"},
            {"BGJOBS_DEFAULT_PRIORITY": "5"},
            {"BGJOBS_DEFAULT_PRIORITY": 3},
            3,
            id="app-config-beats-all",
        ),
        pytest.param(
            {}, {}, {"DEFAULT_PRIORITY": 99}, 1, id="aliases-are-not-read-from-app-config"
        ),
        pytest.param({"DEFAULT_PRIORITY": "-20"}, {}, {}, -20, id="negative-priority"),
    ],
)
def test_configuration_precedence_decides_the_stored_priority(
    env: Env,
    make_app: MakeApp,
    monkeypatch: pytest.MonkeyPatch,
    dotenv: dict[str, str],
    environ: dict[str, str],
    config: dict[str, Any],
    expected: int,
) -> None:
    project = env.tmp / "project"
    write_dotenv(project / ".env", dotenv)
    monkeypatch.chdir(project)  # the default .env is the one in the current directory
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    app = make_app(**config)
    ext = BackgroundJobs(app)
    assert app.extensions["bgjobs"].settings.dotenv_path == str(project / ".env")
    with app.app_context():
        job = run_background_job(J, "add", [1, 2])
        assert ext.get_job(job.id).priority == expected
    for name in dotenv:
        assert os.environ.get(name) == environ.get(name), ".env must not change os.environ"


def test_dotenv_path_names_the_file_and_its_aliases_set_retries_and_delay(
    env: Env, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv = write_dotenv(
        env.tmp / "elsewhere" / "bgjobs.env",
        {"DEFAULT_RETRY_ATTEMPTS": "0", "DEFAULT_DELAY": "120", "BGJOBS_JOB_TIMEOUT": "9"},
    )
    monkeypatch.setenv("BGJOBS_DOTENV_PATH", str(dotenv))
    app = make_app()
    ext = BackgroundJobs(app)
    with app.app_context():
        job = ext.get_job(run_background_job(J, "add", [1, 2]).id)
    assert (job.max_attempts, job.run_at - job.created_at, job.timeout) == (1, 120, 9)


@pytest.mark.parametrize(
    ("source", "name", "value", "key"),
    [
        ("config", "BGJOBS_DEFAULT_PRIORITY", "high", "BGJOBS_DEFAULT_PRIORITY"),
        ("config", "BGJOBS_DEFAULT_PRIORITY", True, "BGJOBS_DEFAULT_PRIORITY"),
        ("environ", "BGJOBS_DEFAULT_RETRY_ATTEMPTS", "-1", "BGJOBS_DEFAULT_RETRY_ATTEMPTS"),
        ("environ", "DEFAULT_RETRY_ATTEMPTS", "three", "BGJOBS_DEFAULT_RETRY_ATTEMPTS"),
        ("dotenv", "DEFAULT_PRIORITY", "high", "BGJOBS_DEFAULT_PRIORITY"),
        ("dotenv", "DEFAULT_DELAY", "-5", "BGJOBS_DEFAULT_DELAY"),
        ("config", "BGJOBS_JOB_TIMEOUT", "soon", "BGJOBS_JOB_TIMEOUT"),
        ("config", "BGJOBS_AUTOSTART", "maybe", "BGJOBS_AUTOSTART"),
        ("environ", "BGJOBS_ALLOWED_JOBS", "os.system", "BGJOBS_ALLOWED_JOBS"),
        ("config", "BGJOBS_ALLOWED_JOBS", {"os": ["_exit"]}, "BGJOBS_ALLOWED_JOBS"),
        ("config", "BGJOBS_DATABASE_URI", "sqlite://", "BGJOBS_DATABASE_URI"),
        ("environ", "BGJOBS_MAX_CONCURRENCY", "0", "BGJOBS_MAX_CONCURRENCY"),
    ],
)
def test_a_malformed_value_stops_init_app_with_a_config_error_naming_the_key(
    env: Env,
    make_app: MakeApp,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    name: str,
    value: Any,
    key: str,
) -> None:
    if source == "environ":
        monkeypatch.setenv(name, value)
    elif source == "dotenv":
        monkeypatch.setenv("BGJOBS_DOTENV_PATH", str(write_dotenv(env.tmp / ".env", {name: value})))
    app = make_app(**({name: value} if source == "config" else {}))
    ext = BackgroundJobs()
    with pytest.raises(ConfigError) as exc_info:
        ext.init_app(app)
    assert isinstance(exc_info.value, BgJobsError)
    assert exc_info.value.key == key
    assert key in str(exc_info.value)
    if name != key:
        assert name in str(exc_info.value), "say which alias held the bad value"
    # Nothing half-registered: fixing the value lets init_app run.
    assert "bgjobs" not in app.extensions
    assert "bgjobs" not in app.cli.commands
    if source == "config":
        del app.config[name]
    else:
        monkeypatch.delenv("BGJOBS_DOTENV_PATH" if source == "dotenv" else name)
    ext.init_app(app)
    assert app.extensions["bgjobs"].registry is ext.registry


def test_relative_log_paths_land_in_the_instance_folder_for_the_web_app_and_the_runner(
    env: Env, jobapp_factory: Callable[[], Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKGROUND_JOB_LOG", "joblogs/main.log")
    monkeypatch.setenv("ERROR_LOG", "joblogs/errors.log")
    app = jobapp_factory()
    settings = app.extensions["bgjobs"].settings
    assert settings.log_file == str(env.instance / "joblogs" / "main.log")
    assert settings.error_log_file == str(env.instance / "joblogs" / "errors.log")
    with app.app_context():
        job = run_background_job(J, "add", [1, 2])
        with pytest.raises(JobNotAllowed):
            run_background_job("os", "system", ["true"])
    env.burst()  # runs in env.tmp: a path resolved against the cwd would land there
    main = (env.instance / "joblogs" / "main.log").read_text()
    assert f"INFO: Job completed successfully for {J}::add (job {job.id}, " in main
    errors = (env.instance / "joblogs" / "errors.log").read_text()
    assert "ERROR: Job rejected for os::system. Error: JobNotAllowed" in errors
    assert not env.main_log.exists() and not env.error_log.exists()
    assert not (env.tmp / "joblogs").exists() and not Path("joblogs").exists()


def test_relative_log_paths_in_app_config_land_in_the_instance_folder(
    env: Env, make_app: MakeApp
) -> None:
    app = make_app(BGJOBS_LOG_FILE="a/main.log", BGJOBS_ERROR_LOG_FILE="../outside-logs/err.log")
    BackgroundJobs(app)
    instance = Path(app.instance_path)
    settings = app.extensions["bgjobs"].settings
    assert settings.log_file == str(instance / "a" / "main.log")
    assert settings.error_log_file == str(instance.parent / "outside-logs" / "err.log")
    with app.app_context(), pytest.raises(JobNotAllowed):
        run_background_job("os", "system")
    assert (
        "Job rejected for os::system" in (instance.parent / "outside-logs" / "err.log").read_text()
    )


# --- enqueue ----------------------------------------------------------------------------------


def test_enqueueing_outside_an_app_context_raises_runtime_error(
    env: Env, app: Flask, bgjobs: BackgroundJobs, make_app: MakeApp
) -> None:
    assert not has_app_context()
    with pytest.raises(RuntimeError, match="application context"):
        run_background_job(J, "add", [1, 2])
    with pytest.raises(RuntimeError, match="application context"):
        bgjobs.run(J, "add", [1, 2])
    with app.app_context():
        assert total_jobs(app) == 0
    # An app context of an app without the extension is no better.
    with make_app("plain").app_context(), pytest.raises(RuntimeError, match="init_app"):
        run_background_job(J, "add", [1, 2])


def test_bgjobs_run_takes_the_same_arguments_as_run_background_job(
    env: Env, app: Flask, ctx: None, bgjobs: BackgroundJobs
) -> None:
    def params_of(func: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
        sig = inspect.signature(func)
        return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name != "self"]

    assert params_of(bgjobs.run) == params_of(run_background_job)
    by_function = run_background_job(J, "add", [2, 3], 0, 60, 7, timeout=5)
    by_method = bgjobs.run(
        class_name=J,
        method_name="add",
        params=[2, 3],
        retry_attempts=0,
        delay=60,
        priority=7,
        timeout=5,
    )
    for job in (by_function, by_method):
        stored = bgjobs.get_job(job.id, with_events=False)
        assert stored == job, "the returned Job is the persisted one"
        assert (job.class_name, job.method_name, job.params) == (J, "add", [2, 3])
        assert (job.max_attempts, job.priority, job.timeout) == (1, 7, 5)
        assert job.run_at - job.created_at == pytest.approx(60)
    with pytest.raises(TypeError):
        run_background_job(J, "add", [2, 3], 0, 60, 7, 5)  # timeout is keyword-only


@pytest.mark.parametrize("configured", [False, True], ids=["built-in", "configured"])
def test_none_arguments_take_the_configured_defaults(
    env: Env, jobapp_factory: Callable[[], Flask], monkeypatch: pytest.MonkeyPatch, configured: bool
) -> None:
    if configured:
        monkeypatch.setenv("BGJOBS_DEFAULT_RETRY_ATTEMPTS", "5")
        monkeypatch.setenv("BGJOBS_DEFAULT_DELAY", "30")
        monkeypatch.setenv("BGJOBS_DEFAULT_PRIORITY", "-4")
        monkeypatch.setenv("BGJOBS_JOB_TIMEOUT", "77")
        expected = (6, 30.0, -4, 77.0)
    else:
        expected = (4, 0.0, 1, 3600.0)  # SPEC §2 defaults
    app = jobapp_factory()
    import jobapp

    ext = jobapp.bgjobs
    with app.app_context():
        jobs = [
            run_background_job(J, "add", [1, 2]),
            run_background_job(J, "add", [1, 2], None, None, None, timeout=None),
            ext.run(J, "add", [1, 2], retry_attempts=None, priority=None),
        ]
        for job in jobs:
            stored = ext.get_job(job.id, with_events=False)
            assert stored == job
            got = (job.max_attempts, job.run_at - job.created_at, job.priority, job.timeout)
            assert got == pytest.approx(expected)
        # Zero is a value, not "use the default".
        zero = run_background_job(J, "add", [1, 2], 0, 0, 0, timeout=0)
        assert (zero.max_attempts, zero.run_at - zero.created_at, zero.priority, zero.timeout) == (
            1,
            0,
            0,
            0,
        )


def test_the_configured_job_timeout_limits_an_attempt(
    env: Env, jobapp_factory: Callable[[], Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGJOBS_JOB_TIMEOUT", "1")  # the runner reads it too, from the job row
    app = jobapp_factory()
    import jobapp

    ext = jobapp.bgjobs
    with app.app_context():
        job = run_background_job(J, "sleep", [60], retry_attempts=0)
        env.burst()
        done = ext.get_job(job.id)
    assert (done.status, done.end_reason, done.timeout) == ("failed", "timeout", 1)


def test_list_params_are_positional_and_dict_params_are_keyword_arguments(
    env: Env, app: Flask, ctx: None, bgjobs: BackgroundJobs
) -> None:
    cases = {
        run_background_job(J, "greet", ["Ada", "Hi"]).id: ("Hi, Ada!", ["Ada", "Hi"]),
        run_background_job(J, "greet", {"name": "Ada"}).id: ("Hello, Ada!", {"name": "Ada"}),
        run_background_job(J, "greet", {"greeting": "Yo", "name": "Bo"}).id: (
            "Yo, Bo!",
            {"greeting": "Yo", "name": "Bo"},
        ),
        run_background_job(J, "add", [2, 3]).id: (5, [2, 3]),
        run_background_job(J, "noop").id: (None, []),
        run_background_job("jobapp.jobs", "module_function", {"x": 21}).id: (42, {"x": 21}),
    }
    env.burst()
    for job_id, (result, params) in cases.items():
        done = bgjobs.get_job(job_id)
        assert (done.status, done.result, done.params) == ("succeeded", result, params)
        assert type(done.params) is type(params)


def test_the_returned_job_is_truthy_and_keeps_its_attributes_after_the_context_ends(
    env: Env, app: Flask
) -> None:
    before = time.time()
    with app.app_context():
        job = run_background_job(J, "greet", {"name": "Ada"}, 2, 5, 3, timeout=9)
    assert not has_app_context()
    assert isinstance(job, Job)
    assert job
    assert job.id >= 1
    assert (job.class_name, job.method_name, job.name) == (J, "greet", f"{J}::greet")
    assert job.params == {"name": "Ada"}
    assert (job.status, job.priority, job.attempts, job.max_attempts) == ("pending", 3, 0, 3)
    assert (job.delay, job.timeout) == (5, 9)
    assert before <= job.created_at <= time.time()
    assert job.run_at == pytest.approx(job.created_at + 5)
    assert (job.started_at, job.finished_at, job.result, job.error) == (None, None, None, None)
    assert job.to_dict()["params"] == {"name": "Ada"}


def _assert_iso_utc(value: str, near: float) -> None:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.utcoffset() == timedelta(0), value
    assert abs(moment.timestamp() - near) < 1, value


def test_job_to_dict_has_every_spec_key_with_iso_utc_times(
    env: Env, app: Flask, ctx: None, bgjobs: BackgroundJobs
) -> None:
    job = run_background_job(J, "progress", [2])
    fresh = job.to_dict()
    assert set(SPEC_KEYS) <= set(fresh)
    assert "events" not in fresh  # only on the single-job view
    assert fresh["id"] == job.id
    assert (fresh["class_name"], fresh["method_name"], fresh["params"]) == (J, "progress", [2])
    assert (fresh["status"], fresh["attempts"], fresh["max_attempts"]) == ("pending", 0, 4)
    assert fresh["progress"] is None and fresh["result"] is None and fresh["pid"] is None
    _assert_iso_utc(fresh["created_at"], job.created_at)
    _assert_iso_utc(fresh["run_at"], job.run_at)
    assert fresh["started_at"] is None and fresh["finished_at"] is None

    env.burst()
    done = bgjobs.get_job(job.id).to_dict()
    assert set(SPEC_KEYS) | {"events"} <= set(done)
    assert (done["status"], done["result"], done["progress"]) == ("succeeded", "done", 100.0)
    assert done["progress_message"] == "step 2 of 2"
    assert done["runner_id"] and isinstance(done["pid"], int)
    for key in ("started_at", "finished_at"):
        _assert_iso_utc(done[key], time.time() - 0.5)  # within the last ~1.5 s
    assert done["events"], "the single-job view carries the history"
    for event in done["events"]:
        assert set(event) == spec_event_keys(event)
        _assert_iso_utc(event["at"], time.time() - 0.5)
    assert [e["kind"] for e in done["events"]][-1] == "succeeded"


def test_job_to_dict_has_exactly_the_spec_keys(
    env: Env, app: Flask, ctx: None, bgjobs: BackgroundJobs
) -> None:
    job = run_background_job(J, "add", [1, 2])
    assert set(job.to_dict()) == set(SPEC_KEYS)
    assert set(bgjobs.get_job(job.id).to_dict()) == {*SPEC_KEYS, "events", "output"}


def test_tables_are_created_on_first_use(env: Env, jobapp_factory: Callable[[], Flask]) -> None:
    assert table_names(env.database_uri) == set()
    app = jobapp_factory()
    with app.app_context():
        run_background_job(J, "add", [1, 2])
    assert table_names(env.database_uri) == TABLES


def test_flask_bgjobs_init_db_creates_the_tables_explicitly(env: Env) -> None:
    assert table_names(env.database_uri) == set()
    for _ in range(2):  # idempotent
        result = env.flask("bgjobs", "init-db")
        assert result.returncode == 0, result.stderr
        assert table_names(env.database_uri) == TABLES


# --- the allowlist in code --------------------------------------------------------------------


def test_allow_in_code_lets_a_job_be_enqueued_on_every_app_of_the_object(
    env: Env, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobapp

    monkeypatch.delenv("BGJOBS_ALLOWED_JOBS")  # empty: nothing may run
    ext = BackgroundJobs()
    first = make_app("first")
    ext.init_app(first)
    with first.app_context(), pytest.raises(JobNotAllowed):
        run_background_job(J, "add", [1, 2])

    ext.allow(J, "add")
    second = make_app("second", BGJOBS_DATABASE_URI="sqlite:///second.db")
    ext.init_app(second)  # after the allow: sees it too
    for app in (first, second):
        with app.app_context():
            job = run_background_job(J, "add", [1, 2])
            assert ext.get_job(job.id).name == f"{J}::add"
            with pytest.raises(JobNotAllowed):
                run_background_job(J, "greet", ["Ada"])

    ext.allow(J)  # every public method
    with second.app_context():
        assert run_background_job(J, "greet", ["Ada"]).method_name == "greet"
        with pytest.raises(InvalidJob):
            run_background_job(J, "_mark", ["x"])
    assert J in ext.allowed

    for bad in (("os.system; rm -rf /", "x"), (J, "_private"), (J, "__init__"), ("", "x")):
        with pytest.raises(InvalidJob):
            ext.allow(*bad)
    assert jobapp.bgjobs.allowed == {}, "the object the other tests share is untouched"
