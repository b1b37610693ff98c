"""flask-bgjobs benchmark: 10,000 jobs through one ``enqueue_many`` call vs a loop.

    .venv/bin/python bench/enqueue_many.py                 # SQLite, 10,000 jobs, 5 trials
    .venv/bin/python bench/enqueue_many.py --jobs 2000 --trials 5
    .venv/bin/python bench/enqueue_many.py --postgres postgresql+psycopg://user@host/db

Each trial runs in a fresh interpreter on a fresh database (SQLite: a temporary file; the
PostgreSQL database's job tables are dropped first) with the bench app (``benchapp.Noop.run``),
``BGJOBS_AUTOSTART=false`` and no runner, so only the enqueue is measured: ``n`` calls of
``run_background_job`` in a loop (one insert and commit each), then one
``bgjobs.enqueue_many`` call with ``n`` specs (every spec checked, then multi-row inserts in one
transaction). The specs are built before the clock starts; the check of each one is inside the
measured call. Prints jobs/s of each (the median trial) and their ratio.

Nothing here is imported by the package or collected by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
JOB = ("benchapp.Noop", "run")


def measure(kind: str, n: int) -> float:
    """In this (fresh) process: seconds to enqueue `n` jobs one way."""
    from benchapp import bgjobs, create_app

    from flask_bgjobs import run_background_job

    app = create_app()
    with app.app_context():
        bgjobs.init_db()
        run_background_job(*JOB, [0])  # connections and statements warm, as in a live app
        if kind == "loop":
            start = time.perf_counter()
            for i in range(n):
                run_background_job(*JOB, [i])
            took = time.perf_counter() - start
        else:
            specs = [{"class_name": JOB[0], "method_name": JOB[1], "params": [i]} for i in range(n)]
            start = time.perf_counter()
            jobs = bgjobs.enqueue_many(specs)
            took = time.perf_counter() - start
            assert len(jobs) == n and jobs[-1].params == [n - 1]
        assert bgjobs.counts()["pending"] == n + 1
    return took


def trial(kind: str, n: int, database: str | None) -> float:
    """One measurement in a fresh interpreter on a fresh database."""
    with tempfile.TemporaryDirectory(prefix="bgjobs-bench-many-") as tmp:
        uri = database or f"sqlite:///{tmp}/bench.db"
        if database:
            drop_tables(database)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BGJOBS_", "FLASK_"))} | {
            "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)]),
            "BENCHAPP_INSTANCE": f"{tmp}/instance",
            "BGJOBS_DATABASE_URI": uri,
            "BGJOBS_ALLOWED_JOBS": f"{JOB[0]}:{JOB[1]}",
            "BGJOBS_AUTOSTART": "false",
            "BGJOBS_DASHBOARD": "false",
            "BGJOBS_DOTENV_PATH": str(Path(tmp) / "empty.env"),
        }
        (Path(tmp) / "empty.env").write_text("")
        out = subprocess.run(
            [sys.executable, __file__, "--measure", kind, "--jobs", str(n)],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
        return float(json.loads(out.strip().splitlines()[-1])["seconds"])


def drop_tables(uri: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "DROP TABLE IF EXISTS bgjobs_events, bgjobs_jobs, bgjobs_queues, "
                "bgjobs_schedules, bgjobs_alembic_version CASCADE"
            )
        )
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=10_000, help="jobs per measurement (10000)")
    p.add_argument("--trials", type=int, default=5, help="trials of each (median shown)")
    p.add_argument("--postgres", help="a PostgreSQL URL to measure on instead of SQLite")
    p.add_argument("--measure", choices=("loop", "many"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps({"seconds": measure(args.measure, args.jobs)}))
        return 0
    n = args.jobs
    times: dict[str, list[float]] = {"loop": [], "many": []}
    for _ in range(args.trials):  # interleaved: a busy moment of the machine hits both
        for kind in times:
            times[kind].append(trial(kind, n, args.postgres))
    rates = {}
    for kind, taken in times.items():
        rates[kind] = n / statistics.median(taken)
        shown = ", ".join(f"{t:.3f}" for t in taken)
        print(f"{kind:>5}: {rates[kind]:>9,.0f} jobs/s  (seconds per trial: {shown})")
    backend = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"{n:,} jobs on {backend}: enqueue_many is {rates['many'] / rates['loop']:.1f}x "
        "run_background_job in a loop (target: >= 5x on SQLite)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
