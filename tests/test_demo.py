"""The README's first command, run as a new user would (in a copy of the tree)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_command_runs_the_sample_jobs_to_success_and_stops_everything(
    tmp_path: Path,
) -> None:
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    copy = tmp_path / "repo"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    # The same interpreter and packages as this test run, instead of a second install; the
    # stamp tells scripts/demo its packages are in (so it never re-points the editable install
    # of this venv at the copy).
    (copy / ".venv").symlink_to(Path(sys.prefix))
    stamp = hashlib.sha1((ROOT / "setup.cfg").read_bytes() + (ROOT / "pyproject.toml").read_bytes())
    (Path(sys.prefix) / ".bgjobs-demo-stamp").write_text(stamp.hexdigest() + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BGJOBS_", "FLASK_"))}
    result = subprocess.run(
        ["bash", "scripts/demo", "--check"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "demo check passed" in output
    for job in ("word_count", "Reports::process_data", "Flaky::call", "Slow::crunch"):
        assert any(job in line and "succeeded" in line for line in output.splitlines()), job
    leftovers = subprocess.run(
        ["pgrep", "-f", str(copy)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == [], f"processes left running: {leftovers}"
