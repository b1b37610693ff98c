"""The wheel ships the dashboard: every template and static file, next to its modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT


def test_the_wheel_contains_every_dashboard_template_and_static_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("flask_bgjobs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = ROOT / "flask_bgjobs" / "dashboard"
    shipped = {
        p.relative_to(ROOT).as_posix()
        for sub in ("templates", "static")
        for p in (folder / sub).rglob("*")
        if p.is_file()
    }
    assert {
        "flask_bgjobs/dashboard/templates/bgjobs/base.html",
        "flask_bgjobs/dashboard/templates/bgjobs/overview.html",
        "flask_bgjobs/dashboard/static/bgjobs/dashboard.css",
        "flask_bgjobs/dashboard/static/bgjobs/dashboard.js",
    } <= shipped
    assert shipped <= names, sorted(shipped - names)
    assert {p.relative_to(ROOT).as_posix() for p in folder.glob("*.py")} <= names
