"""Configuration: sources and their precedence, seed aliases, defaults, and malformed values."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy.engine import make_url

from flask_bgjobs import config
from flask_bgjobs.config import KEY_NAMES, KEYS, Settings, load_settings
from flask_bgjobs.errors import ConfigError

SEED_ALIASES = {
    "BACKGROUND_JOB_LOG": "BGJOBS_LOG_FILE",
    "ERROR_LOG": "BGJOBS_ERROR_LOG_FILE",
    "DEFAULT_RETRY_ATTEMPTS": "BGJOBS_DEFAULT_RETRY_ATTEMPTS",
    "DEFAULT_DELAY": "BGJOBS_DEFAULT_DELAY",
    "DEFAULT_PRIORITY": "BGJOBS_DEFAULT_PRIORITY",
}

# For each alias: a raw value and the Settings attribute/value it must produce.
ALIAS_CASES = [
    ("BACKGROUND_JOB_LOG", "main.log", "log_file", "main.log"),
    ("ERROR_LOG", "err.log", "error_log_file", "err.log"),
    ("DEFAULT_RETRY_ATTEMPTS", "7", "default_retry_attempts", 7),
    ("DEFAULT_DELAY", "2.5", "default_delay", 2.5),
    ("DEFAULT_PRIORITY", "-4", "default_priority", -4),
]


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """An app whose instance folder, root path and working directory are all under tmp_path."""
    cwd = tmp_path / "cwd"
    root = tmp_path / "root"
    cwd.mkdir()
    root.mkdir()
    monkeypatch.chdir(cwd)
    app = Flask(__name__, instance_path=str(tmp_path / "instance"), root_path=str(root))
    return app


def instance(app: Flask, *parts: str) -> str:
    return os.path.join(app.instance_path, *parts)


def expected(attr: str, value: object, app: Flask) -> object:
    """Log file values come back resolved against the instance folder."""
    if attr in ("log_file", "error_log_file"):
        return instance(app, str(value))
    return value


def write_env(path: Path, **values: str) -> Path:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


def load(app: Flask, **environ: str) -> Settings:
    return load_settings(app, environ=environ)


def config_error(app: Flask, **environ: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(app, **environ)
    return info.value


# --- the declaration -------------------------------------------------------------------------


def test_every_settings_field_is_declared_once_as_a_key() -> None:
    attrs = [key.attr for key in KEYS]
    assert sorted(attrs) == sorted(f.name for f in dataclasses.fields(Settings))
    assert len(set(KEY_NAMES)) == len(KEY_NAMES) == len(KEYS)
    assert all(name.startswith("BGJOBS_") for name in KEY_NAMES)
    assert all(key.doc for key in KEYS)


def test_seed_aliases_are_declared_on_their_keys() -> None:
    declared = {key.alias: key.name for key in KEYS if key.alias}
    assert declared == SEED_ALIASES


def test_idle_timeout_is_a_key() -> None:
    assert "BGJOBS_IDLE_TIMEOUT" in KEY_NAMES


# --- defaults --------------------------------------------------------------------------------


def test_defaults(app: Flask) -> None:
    s = load(app)
    assert s.database_uri == "sqlite:///" + instance(app, "bgjobs.db")
    assert s.log_file == instance(app, "logs", "background_jobs.log")
    assert s.error_log_file == instance(app, "logs", "background_jobs_errors.log")
    assert s.default_retry_attempts == 3
    assert s.default_delay == 0
    assert s.default_priority == 1
    assert s.retry_backoff == "fixed"
    assert s.retry_delay is None
    assert dict(s.allowed_jobs) == {}
    assert s.max_concurrency == (os.cpu_count() or 1)
    assert s.job_timeout == 3600
    assert s.lease_seconds == 30
    assert s.shutdown_grace == 30
    assert s.runner_id is None
    assert s.autostart is True
    assert s.app_import is None
    assert s.dashboard is True
    assert s.dashboard_url_prefix == "/bgjobs"
    assert s.dashboard_username is None
    assert s.dashboard_password is None
    assert s.max_params_bytes == 1048576
    assert s.dotenv_path is None
    assert s.create_tables is True
    assert s.idle_timeout == 60


def test_loading_creates_no_directories(app: Flask) -> None:
    load(app)
    assert not os.path.exists(app.instance_path)


def test_settings_are_frozen(app: Flask) -> None:
    s = load(app)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.default_priority = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.allowed_jobs["x.Y"] = "*"  # type: ignore[index]


def test_os_environ_is_the_default_environment(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGJOBS_DEFAULT_PRIORITY", "9")
    assert load_settings(app).default_priority == 9


def test_loading_leaves_os_environ_untouched(app: Flask) -> None:
    write_env(Path(".env"), BGJOBS_DEFAULT_PRIORITY="9", FLASK_APP="x:y")
    before = dict(os.environ)
    load(app)
    assert dict(os.environ) == before


# --- precedence ------------------------------------------------------------------------------


def test_app_config_beats_environment(app: Flask) -> None:
    app.config["BGJOBS_DEFAULT_PRIORITY"] = 5
    assert load(app, BGJOBS_DEFAULT_PRIORITY="6").default_priority == 5


def test_environment_beats_dotenv(app: Flask) -> None:
    write_env(Path(".env"), BGJOBS_DEFAULT_PRIORITY="7")
    assert load(app, BGJOBS_DEFAULT_PRIORITY="6").default_priority == 6


def test_dotenv_beats_default(app: Flask) -> None:
    write_env(Path(".env"), BGJOBS_DEFAULT_PRIORITY="7")
    s = load(app)
    assert s.default_priority == 7
    assert s.dotenv_path == os.path.abspath(".env")


def test_app_config_beats_dotenv(app: Flask) -> None:
    write_env(Path(".env"), BGJOBS_DEFAULT_PRIORITY="7")
    app.config["BGJOBS_DEFAULT_PRIORITY"] = 5
    assert load(app).default_priority == 5


def test_none_in_app_config_means_not_set(app: Flask) -> None:
    app.config["BGJOBS_DEFAULT_PRIORITY"] = None
    assert load(app, BGJOBS_DEFAULT_PRIORITY="6").default_priority == 6


def test_app_config_strings_are_parsed(app: Flask) -> None:
    app.config.update(
        BGJOBS_DEFAULT_PRIORITY="4", BGJOBS_AUTOSTART="off", BGJOBS_JOB_TIMEOUT="12.5"
    )
    s = load(app)
    assert (s.default_priority, s.autostart, s.job_timeout) == (4, False, 12.5)


def test_app_config_native_values(app: Flask) -> None:
    app.config.update(
        BGJOBS_DEFAULT_RETRY_ATTEMPTS=0,
        BGJOBS_DEFAULT_DELAY=2,
        BGJOBS_LEASE_SECONDS=1.5,
        BGJOBS_DASHBOARD=False,
        BGJOBS_CREATE_TABLES=False,
        BGJOBS_LOG_FILE=Path("custom.log"),
    )
    s = load(app)
    assert s.default_retry_attempts == 0
    assert s.default_delay == 2.0 and isinstance(s.default_delay, float)
    assert s.lease_seconds == 1.5
    assert s.dashboard is False
    assert s.create_tables is False
    assert s.log_file == instance(app, "custom.log")


# --- seed aliases ----------------------------------------------------------------------------


@pytest.mark.parametrize(("alias", "raw", "attr", "value"), ALIAS_CASES)
def test_alias_in_environment(app: Flask, alias: str, raw: str, attr: str, value: object) -> None:
    assert getattr(load(app, **{alias: raw}), attr) == expected(attr, value, app)


@pytest.mark.parametrize(("alias", "raw", "attr", "value"), ALIAS_CASES)
def test_alias_in_dotenv(app: Flask, alias: str, raw: str, attr: str, value: object) -> None:
    write_env(Path(".env"), **{alias: raw})
    assert getattr(load(app), attr) == expected(attr, value, app)


@pytest.mark.parametrize(("alias", "raw", "attr", "value"), ALIAS_CASES)
def test_alias_ignored_in_app_config(
    app: Flask, alias: str, raw: str, attr: str, value: object
) -> None:
    default = getattr(load(app), attr)
    app.config[alias] = raw
    assert getattr(load(app), attr) == default != expected(attr, value, app)


def test_canonical_key_beats_alias_in_environment(app: Flask) -> None:
    s = load(app, DEFAULT_PRIORITY="2", BGJOBS_DEFAULT_PRIORITY="3")
    assert s.default_priority == 3


def test_canonical_key_beats_alias_in_dotenv(app: Flask) -> None:
    write_env(Path(".env"), DEFAULT_PRIORITY="2", BGJOBS_DEFAULT_PRIORITY="3")
    assert load(app).default_priority == 3


def test_environment_alias_beats_dotenv_canonical_key(app: Flask) -> None:
    write_env(Path(".env"), BGJOBS_DEFAULT_PRIORITY="3")
    assert load(app, DEFAULT_PRIORITY="2").default_priority == 2


def test_app_config_canonical_key_beats_environment_alias(app: Flask) -> None:
    app.config["BGJOBS_DEFAULT_PRIORITY"] = 8
    assert load(app, DEFAULT_PRIORITY="2").default_priority == 8


# --- the .env file ---------------------------------------------------------------------------


def test_dotenv_path_from_environment_relative_to_cwd(app: Flask) -> None:
    Path("conf").mkdir()
    write_env(Path("conf/prod.env"), BGJOBS_DEFAULT_PRIORITY="11")
    write_env(Path(".env"), BGJOBS_DEFAULT_PRIORITY="7")
    s = load(app, BGJOBS_DOTENV_PATH="conf/prod.env")
    assert s.default_priority == 11
    assert s.dotenv_path == os.path.abspath("conf/prod.env")


def test_dotenv_path_from_app_config(app: Flask, tmp_path: Path) -> None:
    env = write_env(tmp_path / "elsewhere.env", BGJOBS_DEFAULT_PRIORITY="12")
    app.config["BGJOBS_DOTENV_PATH"] = str(env)
    assert load(app).default_priority == 12


def test_missing_dotenv_path_is_an_error(app: Flask) -> None:
    error = config_error(app, BGJOBS_DOTENV_PATH="nope.env")
    assert error.key == "BGJOBS_DOTENV_PATH"
    assert "nope.env" in str(error)


def test_dotenv_in_root_path_when_cwd_has_none(app: Flask) -> None:
    write_env(Path(app.root_path) / ".env", BGJOBS_DEFAULT_PRIORITY="13")
    s = load(app)
    assert s.default_priority == 13
    assert s.dotenv_path == os.path.join(app.root_path, ".env")


def test_dotenv_in_cwd_beats_root_path(app: Flask) -> None:
    write_env(Path(app.root_path) / ".env", BGJOBS_DEFAULT_PRIORITY="13")
    write_env(Path(".env"), BGJOBS_DEFAULT_PRIORITY="14")
    assert load(app).default_priority == 14


def test_dotenv_line_without_value_is_not_set(app: Flask) -> None:
    Path(".env").write_text("BGJOBS_RUNNER_ID\n")
    assert load(app).runner_id is None


# --- paths -----------------------------------------------------------------------------------


def test_relative_log_paths_resolve_against_instance_folder(app: Flask) -> None:
    s = load(app, BGJOBS_LOG_FILE="a/main.log", BGJOBS_ERROR_LOG_FILE="err.log")
    assert s.log_file == instance(app, "a", "main.log")
    assert s.error_log_file == instance(app, "err.log")


def test_absolute_log_path_is_kept(app: Flask, tmp_path: Path) -> None:
    path = str(tmp_path / "var" / "main.log")
    assert load(app, BGJOBS_LOG_FILE=path).log_file == path


def test_relative_sqlite_path_resolves_against_instance_folder(app: Flask) -> None:
    s = load(app, BGJOBS_DATABASE_URI="sqlite:///jobs.db")
    assert s.database_uri == "sqlite:///" + instance(app, "jobs.db")


def test_sqlite_uri_filename_resolves_against_instance_folder(app: Flask) -> None:
    s = load(app, BGJOBS_DATABASE_URI="sqlite:///file:jobs.db?uri=true")
    url = make_url(s.database_uri)
    assert url.database == "file:" + instance(app, "jobs.db")
    assert url.query == {"uri": "true"}


def test_absolute_sqlite_and_server_uris_are_kept(app: Flask, tmp_path: Path) -> None:
    absolute = f"sqlite:///{tmp_path}/x.db"
    assert load(app, BGJOBS_DATABASE_URI=absolute).database_uri == absolute
    pg = "postgresql+psycopg://u:p@db.example/jobs"
    assert load(app, BGJOBS_DATABASE_URI=pg).database_uri == pg


def test_db_uri_argument_is_the_default_database(app: Flask) -> None:
    pg = "postgresql+psycopg://u@db.example/app"
    assert load_settings(app, db_uri=pg, environ={}).database_uri == pg
    relative = load_settings(app, db_uri="sqlite:///app.db", environ={})
    assert relative.database_uri == "sqlite:///" + instance(app, "app.db")


def test_configured_database_beats_db_uri_argument(app: Flask) -> None:
    s = load_settings(
        app, db_uri="sqlite:///app.db", environ={"BGJOBS_DATABASE_URI": "sqlite:///jobs.db"}
    )
    assert s.database_uri == "sqlite:///" + instance(app, "jobs.db")


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file::memory:?uri=true",
        "sqlite:///file:x?mode=memory&uri=true",
    ],
)
def test_in_memory_sqlite_is_an_error(app: Flask, uri: str) -> None:
    error = config_error(app, BGJOBS_DATABASE_URI=uri)
    assert error.key == "BGJOBS_DATABASE_URI"
    assert "in-memory" in str(error)


def test_in_memory_db_uri_argument_is_an_error(app: Flask) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(app, db_uri="sqlite://", environ={})
    assert info.value.key == "BGJOBS_DATABASE_URI"
    assert "db passed to BackgroundJobs" in str(info.value)


def test_unparseable_database_uri_is_an_error_without_echoing_it(app: Flask) -> None:
    error = config_error(app, BGJOBS_DATABASE_URI="not a url secret")
    assert error.key == "BGJOBS_DATABASE_URI"
    assert "secret" not in str(error)


# --- app import ------------------------------------------------------------------------------


def test_app_import_falls_back_to_flask_app_in_environment(app: Flask) -> None:
    assert load(app, FLASK_APP="demo:create_app()").app_import == "demo:create_app()"


def test_app_import_falls_back_to_flask_app_in_dotenv(app: Flask) -> None:
    write_env(Path(".env"), FLASK_APP="demo.wsgi")
    assert load(app).app_import == "demo.wsgi"


def test_flask_app_in_environment_beats_flask_app_in_dotenv(app: Flask) -> None:
    write_env(Path(".env"), FLASK_APP="from_dotenv")
    assert load(app, FLASK_APP="from_env").app_import == "from_env"


def test_bgjobs_app_beats_flask_app(app: Flask) -> None:
    write_env(Path(".env"), BGJOBS_APP="worker:make()")
    assert load(app, FLASK_APP="demo").app_import == "worker:make()"


def test_empty_optional_strings_are_unset(app: Flask) -> None:
    s = load(app, BGJOBS_RUNNER_ID="", BGJOBS_APP="", BGJOBS_RETRY_DELAY="")
    assert (s.runner_id, s.app_import, s.retry_delay) == (None, None, None)


def test_empty_environment_value_overrides_dotenv(app: Flask) -> None:
    write_env(Path(".env"), BGJOBS_RUNNER_ID="box-1")
    assert load(app).runner_id == "box-1"
    assert load(app, BGJOBS_RUNNER_ID="").runner_id is None


# --- allowed jobs ----------------------------------------------------------------------------


def test_allowed_jobs_dict_form(app: Flask) -> None:
    app.config["BGJOBS_ALLOWED_JOBS"] = {
        "pkg.mod.Reports": ["process", "summarise"],
        "pkg.tasks": "*",
        "pkg.Other": ("run",),
    }
    assert dict(load(app).allowed_jobs) == {
        "pkg.mod.Reports": ("process", "summarise"),
        "pkg.tasks": "*",
        "pkg.Other": ("run",),
    }


def test_allowed_jobs_string_form(app: Flask) -> None:
    s = load(app, BGJOBS_ALLOWED_JOBS=" pkg.mod.Reports : process | summarise , pkg.tasks:* ,")
    assert dict(s.allowed_jobs) == {"pkg.mod.Reports": ("process", "summarise"), "pkg.tasks": "*"}


def test_allowed_jobs_string_in_app_config(app: Flask) -> None:
    app.config["BGJOBS_ALLOWED_JOBS"] = "pkg.A:run"
    assert dict(load(app).allowed_jobs) == {"pkg.A": ("run",)}


def test_allowed_jobs_from_dotenv(app: Flask) -> None:
    write_env(Path(".env"), BGJOBS_ALLOWED_JOBS="pkg.A:run|stop")
    assert dict(load(app).allowed_jobs) == {"pkg.A": ("run", "stop")}


def test_empty_allowed_jobs_allows_nothing(app: Flask) -> None:
    assert dict(load(app, BGJOBS_ALLOWED_JOBS="").allowed_jobs) == {}
    assert dict(load(app, BGJOBS_ALLOWED_JOBS="  ").allowed_jobs) == {}


def test_allowed_jobs_repeated_class_is_merged(app: Flask) -> None:
    s = load(app, BGJOBS_ALLOWED_JOBS="pkg.A:run,pkg.A:stop|run,pkg.B:x,pkg.B:*")
    assert dict(s.allowed_jobs) == {"pkg.A": ("run", "stop"), "pkg.B": "*"}


@pytest.mark.parametrize(
    "raw",
    [
        "pkg.A",  # no methods part
        "pkg.A:",  # empty methods
        "pkg..A:run",
        "1pkg.A:run",
        "pkg.A-b:run",
        "pkg.A:_private",
        "pkg.A:run now",
        "pkg.A:ru-n",
        "pkg.Ä:run",  # ASCII only
        "pkg.A:rün",
        "a" * 256 + ":run",
        "pkg.A:" + "m" * 101,
    ],
)
def test_bad_allowed_jobs_entry_is_an_error(app: Flask, raw: str) -> None:
    error = config_error(app, BGJOBS_ALLOWED_JOBS=raw)
    assert error.key == "BGJOBS_ALLOWED_JOBS"
    assert len(str(error)) < 400


def test_allowed_jobs_length_limits_are_inclusive(app: Flask) -> None:
    cls, method = "a" * 255, "m" * 100
    assert dict(load(app, BGJOBS_ALLOWED_JOBS=f"{cls}:{method}").allowed_jobs) == {cls: (method,)}


@pytest.mark.parametrize(
    "value",
    [
        {"pkg.A": "run"},  # a bare method string is ambiguous: list it or use "*"
        {"pkg.A": []},
        {"pkg.A": ["_hidden"]},
        {"pkg.A": [3]},
        {"pkg.A ": ["run"]},  # names are not stripped in the dict form
        {7: ["run"]},
        ["pkg.A:run"],
        42,
    ],
)
def test_bad_allowed_jobs_in_app_config_is_an_error(app: Flask, value: object) -> None:
    app.config["BGJOBS_ALLOWED_JOBS"] = value
    assert config_error(app).key == "BGJOBS_ALLOWED_JOBS"


# --- malformed values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("BGJOBS_DEFAULT_PRIORITY", "high"),
        ("BGJOBS_DEFAULT_PRIORITY", "1.5"),
        ("BGJOBS_DEFAULT_PRIORITY", ""),
        ("BGJOBS_DEFAULT_RETRY_ATTEMPTS", "-1"),
        ("BGJOBS_DEFAULT_RETRY_ATTEMPTS", "three"),
        ("BGJOBS_DEFAULT_DELAY", "-0.5"),
        ("BGJOBS_DEFAULT_DELAY", "soon"),
        ("BGJOBS_DEFAULT_DELAY", "nan"),
        ("BGJOBS_DEFAULT_DELAY", "inf"),
        ("BGJOBS_RETRY_BACKOFF", "linear"),
        ("BGJOBS_RETRY_DELAY", "-1"),
        ("BGJOBS_MAX_CONCURRENCY", "0"),
        ("BGJOBS_JOB_TIMEOUT", "-1"),
        ("BGJOBS_LEASE_SECONDS", "0.5"),
        ("BGJOBS_SHUTDOWN_GRACE", "-3"),
        ("BGJOBS_AUTOSTART", "maybe"),
        ("BGJOBS_DASHBOARD", "2"),
        ("BGJOBS_CREATE_TABLES", ""),
        ("BGJOBS_DASHBOARD_URL_PREFIX", "bgjobs"),
        ("BGJOBS_DASHBOARD_URL_PREFIX", ""),
        ("BGJOBS_MAX_PARAMS_BYTES", "0"),
        ("BGJOBS_MAX_PARAMS_BYTES", "1MB"),
        ("BGJOBS_IDLE_TIMEOUT", "-1"),
        ("BGJOBS_LOG_FILE", ""),
    ],
)
def test_malformed_environment_value_names_the_key(app: Flask, key: str, raw: str) -> None:
    error = config_error(app, **{key: raw})
    assert error.key == key
    assert str(error).startswith(f"{key}: ")
    assert "in the environment" in str(error)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("BGJOBS_DEFAULT_PRIORITY", True),  # bool is not an int here
        ("BGJOBS_DEFAULT_PRIORITY", 1.5),
        ("BGJOBS_DEFAULT_RETRY_ATTEMPTS", -1),
        ("BGJOBS_MAX_CONCURRENCY", False),
        ("BGJOBS_DEFAULT_DELAY", True),
        ("BGJOBS_DEFAULT_DELAY", [1]),
        ("BGJOBS_AUTOSTART", 1),
        ("BGJOBS_RETRY_BACKOFF", 1),
        ("BGJOBS_RUNNER_ID", 5),
        ("BGJOBS_DASHBOARD_URL_PREFIX", "/a b"),
        ("BGJOBS_LOG_FILE", 3),
    ],
)
def test_malformed_app_config_value_names_the_key(app: Flask, key: str, value: object) -> None:
    app.config[key] = value
    error = config_error(app)
    assert error.key == key
    assert "in app.config" in str(error)


def test_error_from_alias_names_key_alias_and_file(app: Flask) -> None:
    write_env(Path(".env"), DEFAULT_PRIORITY="high")
    message = str(config_error(app))
    assert message.startswith("BGJOBS_DEFAULT_PRIORITY: expected an integer, got 'high'")
    assert "from DEFAULT_PRIORITY in .env file" in message
    assert os.path.abspath(".env") in message


def test_error_from_environment_alias_names_the_alias(app: Flask) -> None:
    error = config_error(app, DEFAULT_RETRY_ATTEMPTS="-2")
    assert error.key == "BGJOBS_DEFAULT_RETRY_ATTEMPTS"
    assert "from DEFAULT_RETRY_ATTEMPTS in the environment" in str(error)


def test_huge_value_is_not_echoed_in_full(app: Flask) -> None:
    error = config_error(app, BGJOBS_DEFAULT_PRIORITY="x" * 10_000)
    assert len(str(error)) < 200


def test_password_value_is_never_echoed(app: Flask) -> None:
    app.config["BGJOBS_DASHBOARD_PASSWORD"] = 123456789
    error = config_error(app)
    assert error.key == "BGJOBS_DASHBOARD_PASSWORD"
    assert "123456789" not in str(error)


# --- accepted spellings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("true", True),
        ("YES", True),
        ("On", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("OFF", False),
        ("0", False),
        (" true ", True),
    ],
)
def test_boolean_spellings(app: Flask, raw: str, value: bool) -> None:
    assert load(app, BGJOBS_AUTOSTART=raw).autostart is value


def test_numbers_tolerate_surrounding_whitespace_and_signs(app: Flask) -> None:
    s = load(app, BGJOBS_DEFAULT_PRIORITY=" -3 ", BGJOBS_DEFAULT_DELAY=" 1e1 ")
    assert (s.default_priority, s.default_delay) == (-3, 10.0)


def test_zero_means_no_timeout_and_is_accepted(app: Flask) -> None:
    s = load(app, BGJOBS_JOB_TIMEOUT="0", BGJOBS_SHUTDOWN_GRACE="0", BGJOBS_IDLE_TIMEOUT="0")
    assert (s.job_timeout, s.shutdown_grace, s.idle_timeout) == (0, 0, 0)


def test_backoff_is_case_insensitive(app: Flask) -> None:
    assert load(app, BGJOBS_RETRY_BACKOFF="Exponential").retry_backoff == "exponential"


def test_retry_delay_set(app: Flask) -> None:
    assert load(app, BGJOBS_RETRY_DELAY="2.5").retry_delay == 2.5
    assert load(app, BGJOBS_RETRY_DELAY="0").retry_delay == 0.0  # SPEC §2: retries at once


@pytest.mark.parametrize(
    ("raw", "prefix"), [("/jobs/", "/jobs"), ("/admin/bgjobs", "/admin/bgjobs"), ("/", "/")]
)
def test_dashboard_url_prefix_drops_one_trailing_slash(app: Flask, raw: str, prefix: str) -> None:
    assert load(app, BGJOBS_DASHBOARD_URL_PREFIX=raw).dashboard_url_prefix == prefix


def test_dashboard_credentials(app: Flask) -> None:
    s = load(app, BGJOBS_DASHBOARD_USERNAME="admin", BGJOBS_DASHBOARD_PASSWORD="s3cret")
    assert (s.dashboard_username, s.dashboard_password) == ("admin", "s3cret")


def test_dashboard_username_without_password_is_an_error(app: Flask) -> None:
    error = config_error(app, BGJOBS_DASHBOARD_USERNAME="admin")
    assert error.key == "BGJOBS_DASHBOARD_PASSWORD"


def test_dashboard_password_without_username_is_an_error(app: Flask) -> None:
    app.config["BGJOBS_DASHBOARD_PASSWORD"] = "s3cret"
    error = config_error(app)
    assert error.key == "BGJOBS_DASHBOARD_USERNAME"
    assert "s3cret" not in str(error)


def test_runner_id_and_max_concurrency(app: Flask) -> None:
    s = load(app, BGJOBS_RUNNER_ID="box-1:worker", BGJOBS_MAX_CONCURRENCY="4")
    assert (s.runner_id, s.max_concurrency) == ("box-1:worker", 4)


def test_computed_defaults_describe_themselves() -> None:
    database = next(key for key in KEYS if key.name == "BGJOBS_DATABASE_URI")
    assert isinstance(database.default, config.Computed)
    assert "bgjobs.db" in str(database.default)


@pytest.mark.parametrize(
    ("raw", "says"),
    [("-1", "a number of days >= 0, got -1"), ("soon", "a number of days, got 'soon'")],
)
def test_a_bad_retention_is_refused_in_days(app: Flask, raw: str, says: str) -> None:
    error = config_error(app, BGJOBS_RETENTION_DAYS=raw)
    assert error.key == "BGJOBS_RETENTION_DAYS"
    assert says in str(error)
