"""The Queues and Schedules pages, the job list filtered by queue and the job page's new fields
(SPEC §10, §11), on both backends: real jobs, real burst workers, state read back through the
service functions, and the same refusals as every other action (CSRF, bad names)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import jobapp
import pytest
from conftest import Env, wait_for
from flask import Flask
from flask.testing import FlaskClient

from flask_bgjobs import Job, models, run_background_job, service

from .conftest import PREFIX, J, csrf_token_of

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


@pytest.fixture
def with_schedules(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """`SCHEDULE` in the environment; used with ``usefixtures``, so it is set before the app."""
    monkeypatch.setenv("BGJOBS_SCHEDULE", json.dumps(SCHEDULE))


uses_schedules = pytest.mark.usefixtures("with_schedules")


def text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def jobs_of(web: Flask, ids: list[int]) -> list[Job]:
    with web.app_context():
        return [jobapp.bgjobs.get_job(i) for i in ids]


def queues_of(web: Flask) -> dict[str, models.QueueInfo]:
    with web.app_context():
        return {q.name: q for q in service.queues(web.extensions["bgjobs"])}


def schedules_of(web: Flask) -> dict[str, models.ScheduleInfo]:
    with web.app_context():
        return {s.name: s for s in service.schedules(web.extensions["bgjobs"])}


def row_of(html: str, attr: str, name: str) -> str:
    """The ``<tr>`` of one queue or schedule on its page."""
    found = re.search(rf'<tr data-{attr}="{re.escape(name)}".*?</tr>', html, re.S)
    assert found, f"no row for {name!r}"
    return found.group()


class Operator:
    """A dashboard session that posts with its CSRF token (form field or header)."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.token = csrf_token_of(client)

    def post(self, path: str, *, follow: bool = False) -> Any:
        return self.client.post(
            PREFIX + path, data={"bgjobs_csrf": self.token}, follow_redirects=follow
        )

    def api(self, path: str) -> Any:
        return self.client.post(PREFIX + path, headers={"X-BgJobs-CSRF": self.token})


@pytest.fixture
def ops(client: FlaskClient) -> Operator:
    return Operator(client)


# -- the Queues page --------------------------------------------------------------------------


def test_the_queues_page_shows_waiting_running_oldest_wait_and_limit_per_queue(
    web: Flask, client: FlaskClient
) -> None:
    with web.app_context():
        for i in range(3):
            run_background_job(J, "add", [i, i], queue="mail")
        run_background_job(J, "noop", queue="reports", delay=3600)  # waiting, not due
        run_background_job(J, "noop")

    page = client.get(PREFIX + "/queues")
    assert page.status_code == 200
    html = text(page)
    assert '<a href="' + PREFIX + '/queues" aria-current="page">Queues</a>' in html
    assert f'<a href="{PREFIX}/schedules">Schedules</a>' in html

    mail = row_of(html, "queue", "mail")
    assert f'href="{PREFIX}/jobs?queue=mail"' in mail
    assert re.search(r'data-field="pending">3<', mail)
    assert re.search(r'data-field="running">0<', mail)
    assert re.search(r'data-field="waited" title="[^"]+ since it fell due">\d+ s<', mail)
    assert "limit </span>2<" in mail
    assert "pill-active" in mail and 'data-action="pause-queue"' in mail
    assert f'action="{PREFIX}/queues/mail/pause"' in mail

    reports = row_of(html, "queue", "reports")
    assert re.search(r'data-field="pending">1<', reports)
    assert 'data-field="waited">—<' in reports  # nothing due yet: no wait to show
    assert "limit </span>—<" in reports
    assert re.search(r'data-field="pending">1<', row_of(html, "queue", "default"))

    api = client.get(PREFIX + "/api/queues")
    assert api.status_code == 200 and api.mimetype == "application/json"
    by_name = {q["name"]: q for q in api.get_json()["queues"]}
    assert set(by_name) == {"default", "mail", "reports"}
    assert set(by_name["mail"]) == {
        "name",
        "pending",
        "running",
        "paused",
        "limit",
        "oldest_waiting_seconds",
    }
    assert (by_name["mail"]["pending"], by_name["mail"]["limit"]) == (3, 2)
    assert by_name["reports"]["oldest_waiting_seconds"] is None


def test_a_queue_paused_from_the_page_is_not_claimed_until_resumed_from_the_page(
    env: Env, web: Flask, ops: Operator
) -> None:
    with web.app_context():
        mail = [run_background_job(J, "add", [i, 1], queue="mail", priority=9).id for i in range(3)]
        other = [
            run_background_job(J, "noop", queue="reports").id,
            run_background_job(J, "noop").id,
        ]

    done = ops.post("/queues/mail/pause")
    assert done.status_code == 303
    assert done.headers["Location"].endswith(PREFIX + "/queues")
    page = text(ops.client.get(done.headers["Location"]))
    assert "Queue mail paused: no runner claims its jobs until it is resumed." in page
    row = row_of(page, "queue", "mail")
    assert "pill-paused" in row and 'data-action="resume-queue"' in row
    assert f'action="{PREFIX}/queues/mail/resume"' in row
    assert "1 paused" in page
    assert queues_of(web)["mail"].paused
    assert not queues_of(web)["reports"].paused

    # A real runner: the paused queue holds nothing else up, and its jobs, first in line
    # (enqueued first, higher priority), are not claimed. (Not a burst worker: it counts the
    # paused queue's jobs as due and would never exit.)
    env.start_worker()
    wait_for(
        lambda: {j.status for j in jobs_of(web, other)} == {"succeeded"},
        what="the other queues' jobs to run",
    )
    assert [j.status for j in jobs_of(web, mail)] == ["pending"] * 3
    assert [j.attempts for j in jobs_of(web, mail)] == [0] * 3

    # A pending job of a paused queue says why it waits.
    job_page = text(ops.client.get(PREFIX + f"/jobs/{mail[0]}"))
    assert "data-queue-paused" in job_page and "is paused: no runner starts it" in job_page

    done = ops.post("/queues/mail/resume", follow=True)
    assert "Queue mail resumed." in text(done)
    assert not queues_of(web)["mail"].paused
    wait_for(
        lambda: [j.result for j in jobs_of(web, mail)] == [1, 2, 3],
        what="the resumed queue's jobs to run",
    )


def test_the_api_pauses_and_resumes_a_queue_and_answers_with_the_queue(
    web: Flask, ops: Operator
) -> None:
    paused = ops.api("/api/queues/mail/pause")
    assert paused.status_code == 200
    assert paused.get_json() | {"oldest_waiting_seconds": None} == {
        "name": "mail",
        "pending": 0,
        "running": 0,
        "paused": True,
        "limit": 2,
        "oldest_waiting_seconds": None,
    }
    assert queues_of(web)["mail"].paused
    # Any name that follows the rule may be paused before its first job, as with the CLI.
    assert ops.api("/api/queues/later.v2/pause").get_json()["paused"] is True
    assert queues_of(web)["later.v2"].paused
    resumed = ops.api("/api/queues/mail/resume")
    assert resumed.status_code == 200 and resumed.get_json()["paused"] is False
    assert not queues_of(web)["mail"].paused


@sqlite_only
@pytest.mark.parametrize(
    "name",
    ["%3Cscript%3E", "a" * 65, "mail%20box", "m%C3%A4il", "mail%00", "mail:x", "%E2%80%A8"],
)
def test_a_queue_name_no_queue_can_have_is_a_404(web: Flask, ops: Operator, name: str) -> None:
    for action in ("pause", "resume"):
        page = ops.post(f"/queues/{name}/{action}")
        assert page.status_code == 404, (name, action)
        assert "<script>" not in text(page).split("</head>")[1]
        api = ops.api(f"/api/queues/{name}/{action}")
        assert api.status_code == 404 and "error" in api.get_json()
    assert ops.post("/queues/a/b/pause").status_code == 404  # a slash never reaches the view
    assert set(queues_of(web)) == {"default", "mail"}  # nothing stored for any of them


# -- the Schedules page -----------------------------------------------------------------------


@uses_schedules
def test_the_schedules_page_shows_each_recurring_job_and_its_last_job(
    env: Env, web: Flask, client: FlaskClient
) -> None:
    env.start_worker()
    last = wait_for(
        lambda: (s := schedules_of(web)["beat"]).last_status == "succeeded" and s,
        what="beat's first job to run",
    )

    html = text(client.get(PREFIX + "/schedules"))
    assert '<a href="' + PREFIX + '/schedules" aria-current="page">Schedules</a>' in html
    beat = row_of(html, "schedule", "beat")
    assert "every 1 s" in beat and "every: 1<" in beat
    assert f"{J}::noop" in beat
    assert f'href="{PREFIX}/jobs?queue=default">default</a> · overlap skip' in beat
    assert f'href="{PREFIX}/jobs/{last.last_job_id}">#{last.last_job_id}</a>' in beat
    assert 'class="badge st-succeeded"' in beat
    assert re.search(r"<time datetime=\"[^\"]+Z\"", beat)  # the next run, in UTC
    assert "pill-active" in beat and 'data-action="pause-schedule"' in beat

    nightly = row_of(html, "schedule", "nightly:report")
    words = schedules_of(web)["nightly:report"].words
    assert words.startswith("At 02:00") and "Europe/Berlin" in words
    assert words in nightly
    assert "cron: 0 2 * * * · timezone: Europe/Berlin" in nightly
    assert f'href="{PREFIX}/jobs?queue=reports">reports</a>' in nightly
    assert "none yet" in nightly
    assert f'action="{PREFIX}/schedules/nightly:report/pause"' in nightly

    # The job it made says where it came from.
    job_html = text(client.get(PREFIX + f"/jobs/{last.last_job_id}"))
    assert re.search(
        rf'<dt>Schedule</dt><dd><a class="mono" href="{PREFIX}/schedules">beat</a>', job_html
    )
    assert "tick of" in job_html

    api = client.get(PREFIX + "/api/schedules").get_json()
    by_name = {s["name"]: s for s in api["schedules"]}
    assert set(by_name) == set(SCHEDULE)
    assert by_name["beat"]["last_job_id"] == last.last_job_id
    assert by_name["nightly:report"] == schedules_of(web)["nightly:report"].to_dict()


@uses_schedules
def test_a_schedule_paused_and_resumed_from_the_page_and_the_api(web: Flask, ops: Operator) -> None:
    done = ops.post("/schedules/nightly:report/pause")
    assert done.status_code == 303 and done.headers["Location"].endswith(PREFIX + "/schedules")
    page = text(ops.client.get(done.headers["Location"]))
    assert "Recurring job nightly:report paused" in page
    row = row_of(page, "schedule", "nightly:report")
    assert "pill-paused" in row and "— (paused)" in row
    assert 'data-action="resume-schedule"' in row
    found = schedules_of(web)["nightly:report"]
    assert found.paused and found.next_run is None
    assert not schedules_of(web)["beat"].paused

    done = ops.post("/schedules/nightly:report/resume", follow=True)
    assert "Recurring job nightly:report resumed" in text(done)
    assert not schedules_of(web)["nightly:report"].paused

    api = ops.api("/api/schedules/beat/pause")
    assert api.status_code == 200
    assert api.get_json() == schedules_of(web)["beat"].to_dict()
    assert api.get_json()["paused"] is True and api.get_json()["next_run"] is None
    assert ops.api("/api/schedules/beat/resume").get_json()["paused"] is False


@sqlite_only
@uses_schedules
@pytest.mark.parametrize("name", ["unknown", "%3Cscript%3E", "beat%0A", "b" * 201, "beat%20"])
def test_an_unknown_or_malformed_schedule_name_is_a_404(
    web: Flask, ops: Operator, name: str
) -> None:
    for action in ("pause", "resume"):
        page = ops.post(f"/schedules/{name}/{action}")
        assert page.status_code == 404, (name, action)
        assert "<script>" not in text(page).split("</head>")[1]
        assert "No recurring job named" in text(page)
        api = ops.api(f"/api/schedules/{name}/{action}")
        assert api.status_code == 404 and "No recurring job named" in api.get_json()["error"]
    assert not any(s.paused for s in schedules_of(web).values())


@sqlite_only
def test_the_schedules_page_without_any_recurring_job_says_how_to_add_one(
    client: FlaskClient,
) -> None:
    page = client.get(PREFIX + "/schedules")
    assert page.status_code == 200
    assert "No recurring jobs." in text(page) and "BGJOBS_SCHEDULE" in text(page)
    assert client.get(PREFIX + "/api/schedules").get_json() == {"schedules": []}


# -- CSRF on the new actions ------------------------------------------------------------------


@sqlite_only
@uses_schedules
def test_pause_and_resume_refuse_get_missing_foreign_and_cross_site_tokens(
    web: Flask, client: FlaskClient
) -> None:
    token = csrf_token_of(client)
    foreign = csrf_token_of(web.test_client())
    actions = [
        f"{PREFIX}/queues/mail/pause",
        f"{PREFIX}/queues/mail/resume",
        f"{PREFIX}/schedules/beat/pause",
        f"{PREFIX}/schedules/beat/resume",
    ]
    for url in actions:
        assert client.get(url).status_code == 405, url
        for data in ({}, {"bgjobs_csrf": "junk"}, {"bgjobs_csrf": foreign}):
            assert client.post(url, data=data).status_code == 400, (url, data)
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
            response = client.post(url, data={"bgjobs_csrf": token}, headers=headers)
            assert response.status_code == 403, (url, headers)
        api = url.replace(PREFIX, PREFIX + "/api", 1)
        assert client.get(api).status_code == 405, api
        assert client.post(api).status_code == 400, api
        assert client.post(api, headers={"X-BgJobs-CSRF": foreign}).status_code == 400, api
        refused = client.post(api, headers={"X-BgJobs-CSRF": token, "Sec-Fetch-Site": "cross-site"})
        assert refused.status_code == 403, api
    assert not queues_of(web)["mail"].paused
    assert not any(s.paused for s in schedules_of(web).values())

    # The same token, from the same site, is accepted.
    ok = client.post(
        actions[0], data={"bgjobs_csrf": token}, headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert ok.status_code == 303 and queues_of(web)["mail"].paused


@sqlite_only
@uses_schedules
def test_without_a_secret_key_the_pages_show_and_say_what_the_buttons_need(app: Flask) -> None:
    client = app.test_client()
    for url in ("/queues", "/schedules"):
        page = client.get(PREFIX + url)
        assert page.status_code == 200
        assert "Actions need the app's SECRET_KEY." in text(page)
        assert "data-action=" not in text(page)
    assert client.post(PREFIX + "/queues/mail/pause").status_code == 400


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
