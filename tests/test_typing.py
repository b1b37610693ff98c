"""A type checker sees a typed job's parameters: mypy flags a wrong argument to ``.enqueue``
where the job is enqueued (SPEC §12), and accepts a right one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SNIPPET = """
from flask_bgjobs import BackgroundJobs, Job

bgjobs = BackgroundJobs()


@bgjobs.job(queue="mail")
def send_confirmation(order_id: int, *, urgent: bool = False) -> str:
    return f"order {order_id}"


job: Job = send_confirmation.enqueue(7, urgent=True)
later: Job = send_confirmation.with_options(priority=5).enqueue(8)
text: str = send_confirmation(9)  # still the function, with its own return type
send_confirmation.enqueue("7")  # line 14: wrong type
send_confirmation.enqueue(7, urgnet=True)  # line 15: no such parameter
send_confirmation.enqueue()  # line 16: missing the order id
send_confirmation.with_options(prority=5)  # line 17: no such option
bgjobs.job(queue=5)  # line 18: a queue is a name
"""


def test_mypy_flags_wrong_arguments_to_a_typed_jobs_enqueue(tmp_path: Path) -> None:
    snippet = tmp_path / "enqueue_orders.py"
    snippet.write_text(textwrap.dedent(SNIPPET).lstrip("\n"), encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(snippet),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    errors = [line for line in result.stdout.splitlines() if ": error: " in line]
    lines = sorted(int(line.split(":")[1]) for line in errors)
    assert lines == [14, 15, 16, 17, 18], result.stdout + result.stderr
    text = "\n".join(errors)
    assert (
        'Argument 1 to "enqueue" of "JobFunction" has incompatible type "str"; expected "int"'
        in text
    )
    assert 'Unexpected keyword argument "urgnet" for "enqueue" of "JobFunction"' in text
    assert 'Missing positional argument "order_id" in call to "enqueue" of "JobFunction"' in text
    assert 'Unexpected keyword argument "prority" for "with_options"' in text
    assert 'Argument "queue" to "job" of "BackgroundJobs" has incompatible type "int"' in text
