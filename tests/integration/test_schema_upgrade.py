"""A database written by 0.1.0 upgrades in place, every job, event and status kept.

0.1.0 is taken from this repository's own history (`RELEASE_0_1_0`), unpacked into a temporary
folder and put first on ``PYTHONPATH``: its own code creates the tables, enqueues jobs and
runs a burst worker over them, on SQLite and PostgreSQL. Then the current code opens the same
database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import APP_IMPORT, ROOT, TESTS, Env

from flask_bgjobs import SchemaError, models
from flask_bgjobs.store import Store

#: The last commit of 0.1.0 on main: what users run today.
RELEASE_0_1_0 = "d15567b"

# Run by 0.1.0's own code: enqueue jobs that end in every status, then drain what is due.
FILL = """
import os, sys
from jobapp import create_app
from flask_bgjobs import run_background_job
import flask_bgjobs
assert "0.1.0-tree" in flask_bgjobs.__file__, flask_bgjobs.__file__
app = create_app()
with app.app_context():
    ext = app.extensions["bgjobs"].ext
    ids = {
        "succeeded": run_background_job("jobapp.jobs.Jobs", "add", [2, 3]),
        "failed": run_background_job("jobapp.jobs.Jobs", "fail", ["old"], retry_attempts=0),
        "progress": run_background_job("jobapp.jobs.Jobs", "progress", [2]),
        "pending": run_background_job("jobapp.jobs.Jobs", "add", [4, 5], delay=3600),
        "cancelled": run_background_job("jobapp.jobs.Jobs", "noop", delay=3600),
        "due": run_background_job("jobapp.jobs.Jobs", "add", [1, 1], delay=2),
    }
    ext.cancel(ids["cancelled"].id)
    print(" ".join(f"{k}={v.id}" for k, v in ids.items()))
"""


@pytest.fixture
def release_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """0.1.0's package, from git history."""
    try:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", RELEASE_0_1_0, "flask_bgjobs"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"0.1.0 is not in this checkout's history: {exc}")
    tree = tmp_path_factory.mktemp("0.1.0-tree")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def old_env(release_tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(release_tree), str(TESTS)])
    return env


def rows(uri: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the two 0.1.0 tables, the 0.1.0 columns only."""
    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn:
            jobs = [
                dict(r)
                for r in conn.execute(sa.text("SELECT * FROM bgjobs_jobs ORDER BY id")).mappings()
            ]
            evs = [
                dict(r)
                for r in conn.execute(sa.text("SELECT * FROM bgjobs_events ORDER BY id")).mappings()
            ]
    finally:
        engine.dispose()
    old_job_columns = {c.name for c in models.jobs.c} - NEW_JOB_COLUMNS
    old_event_columns = {c.name for c in models.events.c} - {"max_rss_kb", "cpu_s", "output"}
    return {
        "jobs": [{k: v for k, v in j.items() if k in old_job_columns} for j in jobs],
        "events": [{k: v for k, v in e.items() if k in old_event_columns} for e in evs],
    }


NEW_JOB_COLUMNS = {
    "queue", "unique_key", "concurrency_key", "concurrency_limit", "expires_at", "schedule",
    "scheduled_for", "memory_limit", "cpu_limit",
}  # fmt: skip


def fill_with_0_1_0(env: Env, release_tree: Path) -> dict[str, int]:
    made = subprocess.run(
        [sys.executable, "-c", FILL],
        cwd=env.tmp, env=old_env(release_tree), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    ids = dict(pair.split("=") for pair in made.stdout.split())
    burst = subprocess.run(
        [sys.executable, "-m", "flask", "--app", APP_IMPORT, "bgjobs", "worker", "--burst"],
        cwd=env.tmp, env=old_env(release_tree), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert burst.returncode == 0, burst.stderr
    return {k: int(v) for k, v in ids.items()}


def test_a_database_written_by_0_1_0_upgrades_in_place_keeping_every_job_and_event(
    env: Env, release_tree: Path, bgjobs: Any
) -> None:
    ids = fill_with_0_1_0(env, release_tree)
    store = Store(env.database_uri)
    assert store.schema_version() == "0001"
    before = rows(env.database_uri)
    assert {j["status"] for j in before["jobs"]} == {"succeeded", "failed", "pending", "cancelled"}

    from jobapp import create_app

    app = create_app()  # BGJOBS_CREATE_TABLES is true: the first use upgrades
    with app.app_context():
        _, total = bgjobs.list_jobs()
        assert total == len(ids)
        assert store.schema_version() == models.SCHEMA_VERSION
        assert rows(env.database_uri) == before, "a 0.1.0 value changed"
        old = bgjobs.get_job(ids["succeeded"])
        assert (old.status, old.result, old.queue, old.unique_key) == (
            "succeeded",
            5,
            "default",
            None,
        )
        assert [e.kind for e in old.events] == ["started", "succeeded"]
        assert bgjobs.get_job(ids["progress"]).progress == 100
    # The new release runs what 0.1.0 left waiting.
    due = Store(env.database_uri)
    with due.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE bgjobs_jobs SET run_at = 0 WHERE id = :id"), {"id": ids["due"]}
        )
    due.close()
    env.burst()
    with app.app_context():
        assert bgjobs.get_job(ids["due"]).result == 2
        assert bgjobs.get_job(ids["pending"]).status == "pending"
    app.extensions["bgjobs"].store.close()
    store.close()


def test_with_create_tables_off_an_old_schema_is_refused_until_upgrade_db(
    env: Env, release_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = fill_with_0_1_0(env, release_tree)
    monkeypatch.setenv("BGJOBS_CREATE_TABLES", "false")
    listed = env.flask("bgjobs", "list")
    assert listed.returncode == 1
    assert listed.stderr.count("\n") == 1
    assert "schema 0001" in listed.stderr and "flask bgjobs upgrade-db" in listed.stderr
    sql = env.flask("bgjobs", "upgrade-db", "--sql")
    assert sql.returncode == 0, sql.stderr
    assert "ALTER TABLE bgjobs_jobs ADD COLUMN queue" in sql.stdout
    assert "bgjobs_alembic_version" in sql.stdout
    assert Store(env.database_uri).schema_version() == "0001", "--sql changed the database"
    upgraded = env.flask("bgjobs", "upgrade-db")
    assert upgraded.stdout == "job tables upgraded from schema 0001 to 0002\n", upgraded.stderr
    shown = env.flask("bgjobs", "show", str(ids["succeeded"]))
    assert shown.returncode == 0 and "succeeded" in shown.stdout


def test_the_migrations_build_exactly_the_schema_the_models_describe(env: Env) -> None:
    """Walking every step from an empty database gives what a fresh create gives."""
    from flask_bgjobs.store import _migrations

    store = Store(env.database_uri)
    with store.engine.begin() as conn:
        _migrations(conn=conn).upgrade()  # 0001, then 0002, from nothing
    with store.engine.connect() as conn:
        ours = MigrationContext.configure(
            conn,
            opts={
                "include_name": lambda name, kind, _: kind != "table" or name.startswith("bgjobs_")
            },
        )  # the session's database may hold other tests' tables
        diff = compare_metadata(ours, models.metadata)
    assert diff == []
    assert store.schema_version() == models.SCHEMA_VERSION
    store.close()


def test_a_schema_newer_than_this_release_is_refused(env: Env) -> None:
    store = Store(env.database_uri)
    store.ensure_tables()
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {models.VERSION_TABLE} SET version_num = '0999'"))
    fresh = Store(env.database_uri)
    with pytest.raises(SchemaError, match="newer than this flask-bgjobs knows"):
        fresh.ensure_tables()
    with pytest.raises(SchemaError, match="newer"):
        fresh.counts()
    store.close()
    fresh.close()
