"""Every reader survives any stored row (issue 12, item 6): rows written straight into the real
SQLite file or PostgreSQL database with SQL, as someone with write access to the tables could,
then every page, the JSON API and ``flask bgjobs list``/``show`` loaded over them.

Params or a result that are not strict JSON within the limits (100,000 levels of nesting,
``NaN``, a 5,000-digit integer, a lone surrogate, a repeated key, no JSON at all) show as their
stored text, cut; times and progress that are no number (NaN, infinity) show as none; and the
JSON answers stay JSON that a strict parser reads.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import jobapp
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from flask_bgjobs import models

from .conftest import PREFIX, J

DEEP = "[" * 100_000 + "]" * 100_000
#: The stored text of each column that no reader may choke on, by row label.
ROWS: dict[str, dict[str, Any]] = {
    "deep params": {"params": DEEP},
    "deep object params": {"params": '{"a":' * 100_000 + "1" + "}" * 100_000},
    "params not JSON": {"params": "not json at all"},
    "params with a repeated key": {"params": '{"a": 1, "a": 2}'},
    "params NaN": {"params": "[NaN, Infinity]"},
    "params a string": {"params": '"text"'},
    "result NaN": {"status": "succeeded", "result": "[NaN]"},
    "result -Infinity": {"status": "succeeded", "result": "-Infinity"},
    "deep result": {"status": "succeeded", "result": DEEP},
    "result 5000 digits": {"status": "succeeded", "result": "[" + "7" * 5000 + "]"},
    "result lone surrogate": {"status": "succeeded", "result": '["\\ud800"]'},
    "result not JSON": {"status": "succeeded", "result": "{'a': 1}"},
    "result 1 MB of text": {"status": "succeeded", "result": "x" * 1_000_000},
    "running, no-number times": {
        "status": "running",
        "progress": math.nan,
        "started_at": math.inf,
        "run_at": 1e300,
    },
    "failed, no-number times": {
        "status": "failed",
        "finished_at": -math.inf,
        "started_at": math.nan,
        "error": "ValueError: x",
    },
}


def strict_json(text: str) -> Any:
    """Parse `text` as JSON that any parser reads: no NaN or Infinity."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a JSON answer")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def rows(web: Flask) -> Iterator[dict[str, int]]:
    """Insert `ROWS` with plain SQL (plus one sane job first); return their ids by label."""
    now = time.time()
    ids: dict[str, int] = {}
    with web.app_context():
        jobapp.bgjobs.init_db()
    with web.extensions["bgjobs"].store.engine.begin() as conn:
        for label, values in ROWS.items():
            row = {
                "class_name": J,
                "method_name": "add",
                "params": "[1, 2]",
                "status": "pending",
                "priority": 1,
                "attempts": 1,
                "max_attempts": 1,
                "run_at": now,
                "created_at": now,
                "finished_at": now if values.get("status") == "succeeded" else None,
            } | values
            ids[label] = conn.execute(
                sa.insert(models.jobs).values(**row).returning(models.jobs.c.id)
            ).scalar_one()
            conn.execute(
                sa.insert(models.events).values(
                    job_id=ids[label], at=math.inf, kind="started", message="runner", attempt=1
                )
            )
    yield ids


def test_pages_and_the_api_survive_any_stored_params_result_or_time(
    client: FlaskClient, rows: dict[str, int]
) -> None:
    for url in ("/", "/jobs", "/jobs?per_page=200", "/jobs?status=running", "/jobs?q=add"):
        page = client.get(PREFIX + url)
        assert page.status_code == 200, url
        assert "Traceback" not in page.get_data(as_text=True)

    listed = client.get(PREFIX + "/api/jobs?per_page=200")
    assert listed.status_code == 200
    jobs = {j["id"]: j for j in strict_json(listed.get_data(as_text=True))["jobs"]}
    assert set(jobs) == set(rows.values())
    assert strict_json(client.get(PREFIX + "/api/stats").get_data(as_text=True))["counts"]

    for label, job_id in rows.items():
        page = client.get(PREFIX + f"/jobs/{job_id}")
        assert page.status_code == 200, label
        html = page.get_data(as_text=True)
        api = client.get(PREFIX + f"/api/jobs/{job_id}")
        assert api.status_code == 200, label
        one = strict_json(api.get_data(as_text=True))
        single = {"events": None, "output": None}  # only the single-job view has them
        assert one | single == jobs[job_id] | single, label
        # Whatever is not strict JSON is its stored text, cut short, and the page says so.
        stored = ROWS[label]
        for key in ("params", "result"):
            if key in stored:
                assert isinstance(one[key], str), (label, key)
                assert len(one[key]) <= models.RAW_SHOWN_CHARS + 40, (label, key)
                assert one[key][:20] == stored[key][:20], (label, key)
                assert f"The stored {key} {'are' if key == 'params' else 'is'} not strict" in html
        if "progress" in stored:
            assert one["progress"] is None
        if label == "running, no-number times":
            assert one["started_at"] is None and one["run_at"] is None
            assert one["events"][0]["at"] is None
    # The sane value still reads as JSON, not as text.
    assert jobs[rows["result NaN"]]["params"] == [1, 2]


def test_the_cli_lists_and_shows_any_stored_row(web: Flask, rows: dict[str, int]) -> None:
    cli = web.test_cli_runner()
    for args in (["list", "--limit", "100"], ["list", "--limit", "100", "--json"], ["stats"]):
        done = cli.invoke(args=["bgjobs", *args])
        assert done.exit_code == 0, (args, done.output)
    listed = strict_json(cli.invoke(args=["bgjobs", "list", "--limit", "100", "--json"]).output)
    assert {j["id"] for j in listed} == set(rows.values())

    for label, job_id in rows.items():
        shown = cli.invoke(args=["bgjobs", "show", str(job_id)])
        assert shown.exit_code == 0, (label, shown.output)
        assert len(shown.output) < 3 * models.RAW_SHOWN_CHARS, label
        as_json = cli.invoke(args=["bgjobs", "show", str(job_id), "--json"])
        assert as_json.exit_code == 0, (label, as_json.output)
        data = strict_json(as_json.output)
        assert data["id"] == job_id
        for key in ("params", "result"):
            if key in ROWS[label]:
                assert "not strict JSON" in shown.output, (label, key)
                assert isinstance(data[key], str), (label, key)
