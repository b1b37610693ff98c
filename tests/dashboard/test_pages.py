"""The dashboard's pages and JSON API through Flask's test client, on both backends: what each
page shows, the exact JSON shapes of SPEC §9, and bad input (404, 400, the last page)."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jobapp
import pytest
from conftest import SPEC_JOB_KEYS, Env, spec_event_keys, wait_for
from flask import Flask
from flask.testing import FlaskClient

from flask_bgjobs import models, run_background_job

from .conftest import PREFIX, J, S, Seeded

#: SPEC §9: the job JSON; ``events`` only on the single-job view.
JOB_KEYS = SPEC_JOB_KEYS

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def row_ids(html: str) -> list[int]:
    """Job ids of the rows of a job table, top to bottom."""
    return [int(i) for i in re.findall(r'<tr data-job-id="(\d+)"', html)]


def utc(value: str) -> datetime:
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert when.utcoffset() == timedelta(0), value
    return when


# -- overview ---------------------------------------------------------------------------------


def test_overview_counts_every_status_and_lists_the_latest_failures(
    client: FlaskClient, seeded: Seeded
) -> None:
    page = client.get(PREFIX + "/")
    assert page.status_code == 200
    html = text(page)
    for status in models.STATUSES:
        assert f'data-count="{status}"' in html
        assert f">{status}</span>" in html  # the colour always comes with its label
    counts = dict(re.findall(r'data-count="(\w+)">(\d+)<', html))
    assert counts == {
        "pending": "1",
        "running": "0",
        "retrying": "0",
        "succeeded": "1",
        "failed": "1",
        "cancelled": "1",
    }
    assert "Nothing is running right now." in html
    assert f'href="{PREFIX}/jobs/{seeded.failed.id}"' in html
    assert "ValueError: bad row" in html
    # The chart is SVG rendered on the server: one bar pair per minute of the last hour.
    assert html.count('class="bar-ok"') == html.count('class="bar-bad"') >= 60
    throughput = client.get(PREFIX + "/api/stats").get_json()["throughput"]
    for kind in ("succeeded", "failed"):
        total = sum(b[kind] for b in throughput)
        assert f'data-chart-total="{kind}">{total}</span>' in html


def test_overview_shows_a_running_job_with_its_progress_and_elapsed_time(
    env: Env, web: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with web.app_context():
        job = run_background_job(S, "gated", [str(gate), 4])
    env.start_worker()
    (tmp_path / "gate.1").touch()
    ext = jobapp.bgjobs
    with web.app_context():
        wait_for(lambda: ext.get_job(job.id).progress == 25, what="25% reported")

    html = text(client.get(PREFIX + "/"))
    assert re.search(r'data-count="running">1<', html)
    assert f'<tr data-job-id="{job.id}">' in html
    assert '<progress max="100" value="25.0"' in html
    assert "step 1 of 4" in html
    assert re.search(r'data-elapsed-since="[0-9.]+">[0-9.]+ s<', html)

    running = client.get(PREFIX + "/api/jobs?status=running").get_json()
    assert [j["id"] for j in running["jobs"]] == [job.id]
    assert running["jobs"][0]["progress"] == 25
    for i in (2, 3, 4):
        (tmp_path / f"gate.{i}").touch()
    with web.app_context():
        wait_for(lambda: ext.get_job(job.id).status == "succeeded", what="the job to finish")


# -- the job list -----------------------------------------------------------------------------


def test_job_list_is_newest_first_and_filters_by_status_and_search(
    client: FlaskClient, seeded: Seeded
) -> None:
    html = text(client.get(PREFIX + "/jobs"))
    ids = [seeded.pending.id, seeded.cancelled.id, seeded.failed.id, seeded.succeeded.id]
    assert row_ids(html) == ids

    html = text(client.get(PREFIX + "/jobs?status=failed"))
    assert row_ids(html) == [seeded.failed.id]
    assert "ValueError: bad row" in html
    assert text(client.get(PREFIX + "/jobs?status=")).count("<tr data-job-id=") == 4

    assert row_ids(text(client.get(PREFIX + "/jobs?q=greet"))) == [seeded.pending.id]
    assert row_ids(text(client.get(PREFIX + f"/jobs?q={seeded.failed.id}"))) == [seeded.failed.id]
    assert row_ids(text(client.get(PREFIX + "/jobs?q=jobapp.jobs&status=cancelled"))) == [
        seeded.cancelled.id
    ]
    html = text(client.get(PREFIX + "/jobs?q=no-such-thing"))
    assert row_ids(html) == []
    assert "No jobs match “no-such-thing”." in html


def test_search_is_case_insensitive_and_literal_the_same_on_both_backends(
    web: Flask, client: FlaskClient
) -> None:
    with web.app_context():
        add = run_background_job(J, "add", [1, 2], delay=3600).id
        greet = run_background_job(J, "greet", {"name": "Ada"}, delay=3600).id
        func = run_background_job("jobapp.jobs", "module_function", {"x": 1}, delay=3600).id

    def found(q: str) -> list[int]:
        page = client.get(PREFIX + "/jobs", query_string={"q": q})
        assert page.status_code == 200, q
        api = client.get(PREFIX + "/api/jobs", query_string={"q": q})
        assert api.status_code == 200, q
        ids = [j["id"] for j in api.get_json()["jobs"]]
        assert row_ids(text(page)) == ids, q
        return ids

    assert found("GREET") == [greet]
    assert found("Jobs.JOBS") == [greet, add]
    assert found("MODULE_function") == [func]
    # LIKE's wildcards and escape character are plain characters in the search box.
    assert found("_") == [func]
    assert found("e_f") == [func]
    assert found("d%f") == []
    assert found("%") == []
    assert found("\\") == []
    assert found("e\\_f") == []
    # The display form "pkg.mod.Class::method" matches the end of the class and the start of
    # the method, whatever the case.
    assert found("JOBS.jobs::GR") == [greet]
    assert found("jobapp.JOBS::Module_") == [func]
    assert found("jobs.Jobs::%") == []
    assert found(str(add)) == [add]


@pytest.mark.parametrize("q", ["\x00", "gr\x00eet", "\x00" * 200, "²", "١٢", "３"])
def test_a_search_no_job_name_can_hold_is_an_empty_result_on_both_backends(
    web: Flask, client: FlaskClient, q: str
) -> None:
    # PostgreSQL refuses NUL in text outright: that must not become a 500, nor differ by backend.
    with web.app_context():
        run_background_job(J, "greet", {"name": "Ada"}, delay=3600)
        assert jobapp.bgjobs.list_jobs(q=q) == ([], 0)
    page = client.get(PREFIX + "/jobs", query_string={"q": q})
    assert page.status_code == 200
    assert row_ids(text(page)) == []
    api = client.get(PREFIX + "/api/jobs", query_string={"q": q})
    assert api.status_code == 200
    assert api.get_json()["jobs"] == [] and api.get_json()["total"] == 0


@sqlite_only
def test_an_invalid_status_filter_is_a_400_listing_the_allowed_values(
    client: FlaskClient,
) -> None:
    page = client.get(PREFIX + "/jobs?status=exploded")
    assert page.status_code == 400
    for status in models.STATUSES:
        assert status in text(page)

    api = client.get(PREFIX + "/api/jobs?status=exploded")
    assert api.status_code == 400
    body = api.get_json()
    assert body["allowed"] == list(models.STATUSES)
    assert "exploded" in body["error"]


@sqlite_only
def test_pages_past_the_end_show_the_last_page_and_bad_numbers_mean_page_one(
    web: Flask, client: FlaskClient
) -> None:
    with web.app_context():
        ids = [run_background_job(J, "noop", delay=3600).id for _ in range(5)]
    newest_first = ids[::-1]

    html = text(client.get(PREFIX + "/jobs?per_page=2&page=2"))
    assert row_ids(html) == newest_first[2:4]
    assert "Page 2 of 3" in html
    for past in ("3", "4", "999", "99999999999999999999999999"):
        html = text(client.get(PREFIX + f"/jobs?per_page=2&page={past}"))
        assert row_ids(html) == newest_first[4:], past
        assert "Page 3 of 3" in html
    for bad in ("0", "-1", "abc", "", "1.5", "٣"):
        html = text(client.get(PREFIX + f"/jobs?per_page=2&page={bad}"))
        assert row_ids(html) == newest_first[:2], bad

    data = client.get(PREFIX + "/api/jobs?per_page=2&page=50").get_json()
    assert (data["page"], data["per_page"], data["total"]) == (3, 2, 5)
    assert [j["id"] for j in data["jobs"]] == newest_first[4:]
    data = client.get(PREFIX + "/api/jobs?per_page=100000").get_json()
    assert data["per_page"] == 200 and data["total"] == 5


def test_an_empty_store_shows_empty_pages_not_errors(client: FlaskClient) -> None:
    assert "No jobs." in text(client.get(PREFIX + "/jobs"))
    assert client.get(PREFIX + "/jobs?page=7").status_code == 200
    assert client.get(PREFIX + "/").status_code == 200
    data = client.get(PREFIX + "/api/jobs?page=7").get_json()
    assert data == {"jobs": [], "total": 0, "page": 1, "per_page": 50}


# -- the job page -----------------------------------------------------------------------------


def test_a_failed_job_shows_params_error_traceback_attempts_and_a_retry_button(
    client: FlaskClient, seeded: Seeded
) -> None:
    job = seeded.failed
    html = text(client.get(PREFIX + f"/jobs/{job.id}"))
    assert "jobapp.jobs.Jobs" in html and ">fail<" in html
    assert "&#34;bad row&#34;" in html or "&quot;bad row&quot;" in html  # pretty JSON params
    assert "ValueError: bad row" in html
    assert "Traceback (most recent call last)" in html and "raise ValueError(message)" in html
    assert "raised an exception" in html  # the reason the attempt ended
    assert job.runner_id and job.runner_id in html
    assert str(job.pid) in html
    assert f'action="{PREFIX}/jobs/{job.id}/retry"' in html
    assert f'action="{PREFIX}/jobs/{job.id}/cancel"' not in html
    for kind in ("created", "started", "exception"):
        assert f'<span class="ev-kind">{kind}</span>' in html


def test_buttons_appear_only_where_the_action_is_allowed(
    client: FlaskClient, seeded: Seeded
) -> None:
    def actions(job_id: int) -> set[str]:
        html = text(client.get(PREFIX + f"/jobs/{job_id}"))
        return set(re.findall(rf'action="{PREFIX}/jobs/{job_id}/(\w+)"', html))

    assert actions(seeded.succeeded.id) == set()
    assert actions(seeded.failed.id) == {"retry"}
    assert actions(seeded.cancelled.id) == {"retry"}
    assert actions(seeded.pending.id) == {"cancel"}


def test_a_succeeded_job_shows_its_result_and_timestamps(
    client: FlaskClient, seeded: Seeded
) -> None:
    job = seeded.succeeded
    html = text(client.get(PREFIX + f"/jobs/{job.id}"))
    assert '<pre class="code" tabindex="0">5</pre>' in html  # the result, as JSON
    assert "succeeded" in html and "Traceback" not in html
    for ts in (job.created_at, job.started_at, job.finished_at):
        assert ts is not None
        assert time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) in html


@sqlite_only
def test_unknown_and_malformed_job_ids_are_404_pages_and_404_json(client: FlaskClient) -> None:
    for path in ("999999", "0", "abc", "-1", "1.0", "+1", "99999999999999999999999", "%31%00"):
        page = client.get(PREFIX + f"/jobs/{path}")
        assert page.status_code == 404, path
        assert page.mimetype == "text/html"
        api = client.get(PREFIX + f"/api/jobs/{path}")
        assert api.status_code == 404, path
        assert api.mimetype == "application/json"
        assert "error" in api.get_json()
    assert "No job with id 999999." in text(client.get(PREFIX + "/jobs/999999"))


# -- the JSON API -----------------------------------------------------------------------------


def test_api_jobs_job_and_stats_have_exactly_the_spec_shapes(
    client: FlaskClient, seeded: Seeded
) -> None:
    listing = client.get(PREFIX + "/api/jobs").get_json()
    assert set(listing) == {"jobs", "total", "page", "per_page"}
    assert (listing["total"], listing["page"], listing["per_page"]) == (4, 1, 50)
    for job in listing["jobs"]:
        assert set(job) == JOB_KEYS  # no events in lists

    one = client.get(PREFIX + f"/api/jobs/{seeded.failed.id}").get_json()
    assert set(one) == JOB_KEYS | {"events", "output"}
    assert (one["status"], one["params"], one["error"]) == (
        "failed",
        ["bad row"],
        "ValueError: bad row",
    )
    for key in ("run_at", "created_at", "started_at", "finished_at"):
        utc(one[key])
    assert [e["kind"] for e in one["events"]] == ["started", "exception"]
    for event in one["events"]:
        assert set(event) == spec_event_keys(event)
        utc(event["at"])
    assert one == seeded.failed.to_dict()

    stats = client.get(PREFIX + "/api/stats").get_json()
    assert set(stats) == {"counts", "throughput"}
    assert set(stats["counts"]) == set(models.STATUSES)
    assert stats["counts"]["failed"] == 1 and stats["counts"]["succeeded"] == 1
    assert len(stats["throughput"]) >= 60
    for bucket in stats["throughput"]:
        assert set(bucket) == {"at", "succeeded", "failed"}
        utc(bucket["at"])
    assert sum(b["succeeded"] for b in stats["throughput"]) == 1
    # The failed attempt; the engine counts the cancellation as a failure as well.
    assert sum(b["failed"] for b in stats["throughput"]) >= 1


# -- the log viewer ---------------------------------------------------------------------------


def test_the_log_viewer_shows_both_logs_filtered_by_level_and_text(
    client: FlaskClient, seeded: Seeded
) -> None:
    main = text(client.get(PREFIX + "/logs"))
    assert f"Job completed successfully for {J}::add (job {seeded.succeeded.id}" in main

    errors = text(client.get(PREFIX + "/logs?log=errors"))
    assert f"Job failed for {J}::fail (job {seeded.failed.id}, attempt 1/1)" in errors
    assert "raise ValueError(message)" in errors  # the traceback lines of the entry

    only_errors = text(client.get(PREFIX + "/logs?log=main&level=error"))
    assert "Job completed successfully" not in only_errors
    assert f"(job {seeded.failed.id}, attempt 1/1)" in only_errors

    found = text(client.get(PREFIX + f"/logs?q=job+{seeded.succeeded.id},"))
    assert f"(job {seeded.succeeded.id}," in found
    assert f"(job {seeded.failed.id}," not in found

    api = client.get(PREFIX + "/api/logs?log=errors&q=ValueError").get_json()
    assert set(api) == {"log", "path", "exists", "problem", "matched", "entries"}
    assert api["log"] == "errors" and api["matched"] == 1
    [entry] = api["entries"]
    assert set(entry) == {"at", "level", "message", "lines"}
    assert entry["level"] == "ERROR" and entry["lines"][0].startswith("  Traceback")

    assert client.get(PREFIX + "/logs?level=LOUD").status_code == 400


@sqlite_only
def test_a_log_not_written_yet_is_an_empty_page(client: FlaskClient) -> None:
    for key in ("main", "errors"):
        page = client.get(PREFIX + f"/logs?log={key}")
        assert page.status_code == 200
        assert "has not been written yet" in text(page)
