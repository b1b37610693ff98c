"""The job list filtered by queue and the job page's new fields (SPEC §10), on both backends:
real jobs, real burst workers, and the same refusals for bad input as the other filters."""

from __future__ import annotations

import re
import time
from typing import Any

import jobapp
import pytest
from conftest import Env, wait_for
from flask import Flask
from flask.testing import FlaskClient

from flask_bgjobs import Job, run_background_job

from .conftest import PREFIX, J

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

#: Two recurring jobs from the environment, as an operator would configure them; ``beat``
#: ticks every second so a worker enqueues its job within the test.
SCHEDULE = {
    "beat": {"job": f"{J}:noop", "every": 1},
    "nightly:report": {
        "job": f"{J}:noop",
        "cron": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "queue": "reports",
    },
}


@pytest.fixture(autouse=True)
def _queue_limits(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue limit, set before the app or any worker is built (autouse fixtures come first)."""
    monkeypatch.setenv("BGJOBS_QUEUE_LIMITS", "mail:2")


def text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def jobs_of(web: Flask, ids: list[int]) -> list[Job]:
    with web.app_context():
        return [jobapp.bgjobs.get_job(i) for i in ids]


# -- the job list, filtered by queue ----------------------------------------------------------


def test_the_job_list_filters_by_queue_and_keeps_the_filter_across_tabs_and_pages(
    env: Env, web: Flask, client: FlaskClient
) -> None:
    with web.app_context():
        mail = [run_background_job(J, "add", [i, 0], queue="mail").id for i in range(3)]
        failed = run_background_job(J, "fail", ["x"], queue="mail", retry_attempts=0).id
        elsewhere = [
            run_background_job(J, "noop", queue="reports").id,
            run_background_job(J, "fail", ["y"], retry_attempts=0).id,
        ]
    env.burst()

    html = text(client.get(PREFIX + "/jobs?queue=mail"))
    ids = [int(i) for i in re.findall(r'<tr data-job-id="(\d+)"', html)]
    assert sorted(ids) == sorted([*mail, failed])
    assert '4 jobs in queue <span class="mono">mail</span>' in html
    assert '<option value="mail" selected>mail</option>' in html
    # The select offers the queues of the Queues page (with jobs waiting or running, a setting
    # or a limit, and the default one); a queue whose jobs have all finished is reached from
    # the Queue column, and is offered once selected.
    assert '<option value="default">default</option>' in html
    assert '<option value="reports">' not in html
    reports = text(client.get(PREFIX + "/jobs?queue=reports"))
    assert '<option value="reports" selected>reports</option>' in reports
    # Each row names its queue, linking to the list of that queue.
    assert html.count(f'href="{PREFIX}/jobs?queue=mail">mail</a>') == 4
    # The status tabs count this queue's jobs and keep the filter...
    assert re.search(
        rf'href="{PREFIX}/jobs\?status=failed&amp;queue=mail".*?<span class="tab-n">1</span>',
        html,
        re.S,
    )
    assert re.search(r'>all <span class="tab-n">4</span>', html)
    # ...while "Retry all failed" still says what it does: every failed job, every queue.
    assert "Retry all failed (2)…" in html

    failed_only = text(client.get(PREFIX + "/jobs?queue=mail&status=failed"))
    assert re.findall(r'<tr data-job-id="(\d+)"', failed_only) == [str(failed)]
    assert '<input type="hidden" name="status" value="failed">' in failed_only

    # Pages keep the queue (and the status) in their links.
    first = text(client.get(PREFIX + "/jobs?queue=mail&per_page=1"))
    assert f'href="{PREFIX}/jobs?page=2&amp;queue=mail&amp;per_page=1"' in first
    second = text(client.get(PREFIX + "/jobs?queue=mail&per_page=1&page=2"))
    assert re.findall(r'<tr data-job-id="(\d+)"', second) == [str(sorted(ids)[-2])]

    api = client.get(PREFIX + "/api/jobs?queue=mail").get_json()
    assert api["total"] == 4 and {j["queue"] for j in api["jobs"]} == {"mail"}
    assert client.get(PREFIX + "/api/jobs?queue=reports").get_json()["total"] == 1
    assert client.get(PREFIX + "/api/jobs").get_json()["total"] == 6
    assert client.get(PREFIX + "/api/jobs?queue=none-here").get_json()["total"] == 0
    assert elsewhere


@sqlite_only
@pytest.mark.parametrize("value", ["<script>alert(1)</script>", "a" * 65, "mail box"])
def test_a_queue_filter_no_queue_can_have_is_a_400(client: FlaskClient, value: str) -> None:
    page = client.get(PREFIX + "/jobs", query_string={"queue": value})
    assert page.status_code == 400
    assert "<script>" not in text(page).split("</head>")[1]
    assert "queue names are 1 to 64 of" in text(page)
    api = client.get(PREFIX + "/api/jobs", query_string={"queue": value})
    assert api.status_code == 400 and "queue names" in api.get_json()["error"]


# -- the job page's new fields ----------------------------------------------------------------


def test_the_job_page_shows_queue_keys_limits_and_expiry_where_set(
    web: Flask, client: FlaskClient
) -> None:
    with web.app_context():
        full = run_background_job(
            J,
            "noop",
            queue="mail",
            delay=3600,
            expires_in=600,
            unique_key="invoice-42",
            concurrency_key="smtp",
            concurrency_limit=3,
            memory_limit=512 * 2**20,
            cpu_limit=90,
        )
        plain = run_background_job(J, "noop", delay=3600)

    html = text(client.get(PREFIX + f"/jobs/{full.id}"))
    assert (
        f'<dt>Queue</dt><dd><a class="mono" href="{PREFIX}/jobs?queue=mail">mail</a></dd>' in html
    )
    assert '<dt>Unique key</dt><dd class="mono">invoice-42</dd>' in html
    assert "<dt>Concurrency</dt>" in html and "smtp" in html
    assert "at most 3 running at once" in html
    assert "<dt>Expires at</dt>" in html and "unless it has started by then" in html
    assert "<dt>Memory limit</dt><dd>512 MiB</dd>" in html
    assert "<dt>CPU limit</dt><dd>1 min 30 s of CPU time</dd>" in html
    assert "data-queue-paused" not in html

    html = text(client.get(PREFIX + f"/jobs/{plain.id}"))
    assert f'href="{PREFIX}/jobs?queue=default">default</a>' in html
    for label in ("Unique key", "Concurrency", "Expires at", "Schedule", "Memory limit", "CPU"):
        assert f"<dt>{label}" not in html, label


def test_an_expired_job_says_so_where_the_page_explains_why_a_job_ended(
    env: Env, web: Flask, client: FlaskClient
) -> None:
    with web.app_context():
        job = run_background_job(J, "noop", expires_in=0.2)
    wait_for(lambda: time.time() > job.run_at + 0.5, what="the job's expiry")
    env.burst()  # the runner cancels it instead of running it
    [after] = jobs_of(web, [job.id])
    assert (after.status, after.end_reason, after.attempts) == ("cancelled", "expired", 0)

    html = text(client.get(PREFIX + f"/jobs/{job.id}"))
    assert "expired: not started within its expires_in, never run" in html
    assert '<span class="muted small mono">(expired)</span>' in html
    assert 'class="ev ev-expired"' in html  # its own colour on the timeline
    assert "No attempt has started yet." in html
