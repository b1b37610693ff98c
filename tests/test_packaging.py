"""The package as users install it: a wheel with its typing marker and dependencies."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_every_module_and_py_typed(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("flask_bgjobs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "flask_bgjobs").rglob("*.py")}
    assert package <= names
    assert "flask_bgjobs/py.typed" in names
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    for requirement in (
        "flask>=3",
        "flask-sqlalchemy>=3.1",
        "SQLAlchemy>=2",
        "python-dotenv",
        "click",
    ):
        assert f"Requires-Dist: {requirement}".lower() in text.lower()
    assert "Provides-Extra: postgres" in text
