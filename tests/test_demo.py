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
    # Release 0.2.0: one button per feature.
    "mail": ("demo_app.jobs.Mail::welcome", "succeeded (attempt 1/"),
    "unique": ("demo_app.jobs.Digest::build", "succeeded (attempt 1/"),
    "concurrency": ("demo_app.jobs.Printer::print_page", "succeeded (attempt 1/"),
    "run_at": ("demo_app.jobs.Reminders::send", "pending"),
    "expires": ("demo_app.jobs.Sms::send_code", "cancelled (attempt 0/"),
    "prints": ("demo_app.jobs.Limits::chatty", "succeeded (attempt 1/1)"),
    "memory": ("demo_app.jobs.Limits::hog_memory", "failed (attempt 1/1, ended by memory)"),
    "cpu": ("demo_app.jobs.Limits::burn_cpu", "failed (attempt 1/1, ended by cpu)"),
    "discard": ("demo_app.jobs.Control::discard", "failed (attempt 1/4, ended by discarded)"),
    "retry": ("demo_app.jobs.Control::retry_later", "succeeded (attempt 2/2)"),
    "order": ("demo_app.orders::confirm_order", "succeeded (attempt 1/"),
}

#: What `scripts/demo --check` says of each 0.2.0 button once it checked the outcome.
CHECKED = {
    "mail": "3 jobs ran one at a time (queue limit mail:1), each on its first attempt; "
    "none before the queue was resumed",
    "pause_mail": "no job of its own",
    "resume_mail": "no job of its own",
    "unique": "two enqueues, one job (",
    "concurrency": "3 jobs ran one at a time (concurrency key printer-1, limit 1)",
    "run_at": "pending, due 30 s after it was enqueued",
    "expires": "expired, never ran",
    "prints": "output kept: 4 lines, stdout and stderr",
    "memory": "stopped: MemoryError (memory limit 64 MiB)",
    "cpu": "stopped: CPU limit of 1 s exceeded",
    "discard": "discarded on attempt 1 of 4: DiscardJob: order 7 was deleted: nothing to do; "
    "job_failed signal seen",
    "retry": "then done on attempt 2",
    "order": "committed with job",
    "rollback": "and its job rolled back: no order, no job",
    "queues": "mail (limit 1, 0 pending)",
    "schedules": "heartbeat every 30 s, next in",
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
    for key, said in CHECKED.items():
        assert any(line.startswith(f"  {key}: ") and said in line for line in summary), (
            key,
            output[-4000:],
        )
    assert "nightly-report At 02:30 every day (Europe/Berlin)" in output
    assert "dashboard OK" in output and "queues, schedules" in output
    leftovers = subprocess.run(
        ["pgrep", "-f", str(copy)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == [], f"processes left running: {leftovers}"
