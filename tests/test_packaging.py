"""The package as users get it: `python -m build` makes a wheel and an sdist that carry what
they should, and the installed version is readable through `importlib.metadata`."""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import copy_tree

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = "flask_bgjobs/dashboard"


def declared_version() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return cfg["metadata"]["version"]


def test_version_is_readable_through_importlib_metadata() -> None:
    version = importlib.metadata.version("flask-bgjobs")
    assert version == declared_version()
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"\n## {version} " in changelog, "CHANGELOG.md has no entry for this version"


# -- python -m build -------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    source: Path  # the tree it was built from
    wheel: Path
    sdist: Path
    log: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Build from a clean copy, so no egg-info or build/ folder of the working tree leaks in."""
    tmp = tmp_path_factory.mktemp("build")
    source = tmp / "src"
    copy_tree(source)
    # Local state a developer's tree has, which must never ship.
    (source / "demo_app" / ".env").write_text("BGJOBS_DASHBOARD_PASSWORD=local-secret\n")
    (source / "tests" / "__pycache__").mkdir(exist_ok=True)
    (source / "tests" / "__pycache__" / "conftest.cpython-311.pyc").write_bytes(b"\0")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(source)],
        cwd=tmp,  # not the repository: a build/ folder there would shadow the `build` package
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    [wheel] = (tmp / "dist").glob("flask_bgjobs-*.whl")
    [sdist] = (tmp / "dist").glob("flask_bgjobs-*.tar.gz")
    return Built(source, wheel, sdist, log)


def files_under(source: Path, folder: str) -> set[str]:
    return {
        p.relative_to(source).as_posix()
        for p in (source / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.mark.slow
def test_build_is_free_of_packaging_warnings(built: Built) -> None:
    # include_package_data would take templates/ and static/ for undeclared packages.
    assert "is absent from the `packages` configuration" not in built.log
    # MANIFEST.in lines that match nothing point at moved or renamed files.
    assert "no directories found matching" not in built.log
    assert "no files found matching" not in built.log
    assert "License classifiers are deprecated" not in built.log


@pytest.mark.slow
def test_wheel_ships_modules_templates_static_and_py_typed(built: Built) -> None:
    names = set(zipfile.ZipFile(built.wheel).namelist())
    package = {
        p.relative_to(built.source).as_posix()
        for p in (built.source / "flask_bgjobs").rglob("*.py")
    }
    assert package <= names
    assert "flask_bgjobs/py.typed" in names
    data = files_under(built.source, f"{DASHBOARD}/templates") | files_under(
        built.source, f"{DASHBOARD}/static"
    )
    assert f"{DASHBOARD}/templates/bgjobs/base.html" in data
    assert f"{DASHBOARD}/static/bgjobs/dashboard.js" in data
    assert data <= names, sorted(data - names)
    # Only the package: no tests, demo or docs in site-packages.
    assert {n.split("/")[0] for n in names} == {
        "flask_bgjobs",
        f"flask_bgjobs-{declared_version()}.dist-info",
    }


@pytest.mark.slow
def test_wheel_metadata_has_version_requirements_and_classifiers(built: Built) -> None:
    wheel = zipfile.ZipFile(built.wheel)
    [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    text = wheel.read(metadata).decode()
    assert f"Version: {declared_version()}\n" in text
    for requirement in (
        "flask>=3",
        "flask-sqlalchemy>=3.1",
        "SQLAlchemy>=2",
        "python-dotenv",
        "click",
    ):
        assert f"Requires-Dist: {requirement}".lower() in text.lower()
    assert "Provides-Extra: postgres" in text
    assert "License: MIT" in text
    assert "Classifier: Framework :: Flask" in text
    assert "Classifier: Typing :: Typed" in text
    assert "Requires-Python: >=3.10" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel.namelist())


@pytest.mark.slow
def test_sdist_carries_docs_tests_license_changelog_templates_and_static(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        top = f"flask_bgjobs-{declared_version()}/"
        names = {m.name.removeprefix(top) for m in tar.getmembers() if m.isfile()}
    for name in ("README.md", "CHANGELOG.md", "LICENSE", "pyproject.toml", "setup.cfg"):
        assert name in names
    assert "flask_bgjobs/py.typed" in names
    for folder in ("docs", "tests", f"{DASHBOARD}/templates", f"{DASHBOARD}/static"):
        expected = files_under(built.source, folder)
        assert expected, folder
        assert expected <= names, sorted(expected - names)
    assert "docs/img/dashboard-overview.png" in names
    # The demo the README's first command runs, and what test_demo.py needs.
    assert {"scripts/demo", "demo_app/__init__.py", "demo_app/.env.example"} <= names
    assert "demo_app/templates/index.html" in names
    # Never a developer's local state.
    assert "demo_app/.env" not in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.slow
def test_installed_wheel_serves_the_dashboard_and_reports_its_version(
    built: Built, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"),
            *("--no-deps", "--target", str(site), str(built.wheel)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = """
import importlib.metadata, sys
import flask_bgjobs
from flask import Flask

assert flask_bgjobs.__file__.startswith(sys.argv[1]), flask_bgjobs.__file__
app = Flask("probe", instance_path=sys.argv[2])
app.config.update(TESTING=True)
flask_bgjobs.BackgroundJobs(app)
client = app.test_client()
page = client.get("/bgjobs/")
assert page.status_code == 200, page.status_code
assert client.get("/bgjobs/static/bgjobs/dashboard.js").status_code == 200
print(importlib.metadata.version("flask-bgjobs"))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BGJOBS_", "FLASK_"))}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install of this checkout
    result = subprocess.run(
        [sys.executable, "-c", probe, str(site), str(tmp_path / "instance")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip() == declared_version()
