"""The README's first command, run as a new user would (in a copy of the tree)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_tree

ROOT = Path(__file__).resolve().parent.parent

#: How each sample of the demo page must end, as `scripts/demo --check` reports it.
EXPECTED = {
    "report": ("demo_app.jobs.Reports::process_data", "succeeded"),
    "flaky": ("demo_app.jobs.Flaky::call", "succeeded (attempt 3/"),
    "reminder": ("demo_app.jobs.Reminders::send", "pending"),
    "timeout": ("demo_app.jobs.Stuck::wait", "failed (attempt 1/1, ended by timeout)"),
    "fail": ("demo_app.jobs.Broken::run", "failed (attempt 2/2, ended by exception)"),
    "slow": ("demo_app.jobs.Slow::crunch", "succeeded"),
    "words": ("demo_app.jobs::word_count", "succeeded"),
}


@pytest.mark.slow
def test_demo_command_runs_every_sample_to_its_outcome_and_stops_everything(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "repo"
    copy_tree(copy)
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
    summary = result.stdout.split("\nsummary:\n", 1)[-1].splitlines()
    for key, (name, outcome) in EXPECTED.items():
        assert any(
            line.split()[:1] == [key] and name in line and outcome in line for line in summary
        ), (key, output[-4000:])
    # Five bulk jobs and the urgent one queued after them: it started ahead of them.
    assert sum("Mailer::newsletter" in line and "succeeded" in line for line in summary) == 5
    assert any("Mailer::password_reset" in line and "succeeded" in line for line in summary)
    assert re.search(
        r"priority: urgent job \d+ \(priority 10, queued last\) started (first|before)", output
    ), output[-4000:]
    assert "dashboard OK" in output
    leftovers = subprocess.run(
        ["pgrep", "-f", str(copy)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == [], f"processes left running: {leftovers}"
