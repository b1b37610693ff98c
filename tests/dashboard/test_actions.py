"""Retry and cancel from the dashboard, on both backends: the same rules as the CLI (through
the extension object), state checked in the database, refusals as a message on the page and
HTTP 409 from the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jobapp
import pytest
from conftest import Env, pid_alive, wait_for
from flask import Flask
from flask.testing import FlaskClient

from flask_bgjobs import Job, run_background_job

from .conftest import PREFIX, J, S, Seeded, csrf_token_of


def text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def get(app: Flask, job_id: int) -> Job:
    with app.app_context():
        job: Job = jobapp.bgjobs.get_job(job_id)
        return job


class Dashboard:
    """A logged-in operator: posts forms with this session's CSRF token."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.token = csrf_token_of(client)

    def post(self, path: str, *, follow: bool = True) -> Any:
        return self.client.post(
            PREFIX + path, data={"bgjobs_csrf": self.token}, follow_redirects=follow
        )

    def api(self, path: str) -> Any:
        return self.client.post(PREFIX + path, headers={"X-BgJobs-CSRF": self.token})


@pytest.fixture
def ops(client: FlaskClient) -> Dashboard:
    return Dashboard(client)


def test_retry_from_the_job_page_runs_a_failed_job_again_until_it_succeeds(
    env: Env, web: Flask, ops: Dashboard, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    with web.app_context():
        job = run_background_job(S, "fail_until", [str(ready)], retry_attempts=0)
    env.burst()
    assert get(web, job.id).status == "failed"

    ready.touch()
    redirect = ops.post(f"/jobs/{job.id}/retry", follow=False)
    assert redirect.status_code == 303
    assert redirect.headers["Location"].endswith(f"{PREFIX}/jobs/{job.id}")
    page = ops.client.get(redirect.headers["Location"])
    assert f"Job {job.id} is pending again, with 1 fresh attempt(s)." in text(page)
    after = get(web, job.id)
    assert (after.status, after.attempts) == ("pending", 0)
    assert [e.kind for e in after.events or ()][-1] == "retry"  # history kept

    env.burst()
    done = get(web, job.id)
    assert (done.status, done.result) == ("succeeded", "recovered")
    html = text(ops.client.get(PREFIX + f"/jobs/{job.id}"))
    assert "raised an exception" in html and "succeeded" in html  # both attempts listed


def test_a_retry_the_status_forbids_is_refused_with_a_message_and_409(
    web: Flask, ops: Dashboard, seeded: Seeded
) -> None:
    for job in (seeded.succeeded, seeded.pending):
        page = ops.post(f"/jobs/{job.id}/retry")
        assert page.status_code == 200
        assert f"Not retried: job {job.id} is {job.status}" in text(page)
        api = ops.api(f"/api/jobs/{job.id}/retry")
        assert api.status_code == 409
        assert f"job {job.id} is {job.status}" in api.get_json()["error"]
        assert get(web, job.id).status == job.status


def test_a_retry_rechecks_the_allowlist(
    env: Env, web: Flask, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobapp import create_app

    monkeypatch.setenv("BGJOBS_ALLOWED_JOBS", "jobapp.jobs:module_function")
    strict = create_app()  # the same database, a narrower allowlist
    strict.config["SECRET_KEY"] = "strict"
    try:
        ops = Dashboard(strict.test_client())
        page = ops.post(f"/jobs/{seeded.failed.id}/retry")
        assert "Not retried: JobNotAllowed" in text(page)
        api = ops.api(f"/api/jobs/{seeded.failed.id}/retry")
        assert api.status_code == 409 and "JobNotAllowed" in api.get_json()["error"]
        assert get(web, seeded.failed.id).status == "failed"

        page = ops.post("/jobs/retry-failed")
        assert "Retried 0 failed job(s). 1 stayed failed" in text(page)
        assert get(web, seeded.failed.id).status == "failed"
    finally:
        strict.extensions["bgjobs"].store.close()


def test_cancel_from_the_job_page_and_refusal_once_finished(
    web: Flask, ops: Dashboard, seeded: Seeded
) -> None:
    job = seeded.pending
    page = ops.post(f"/jobs/{job.id}/cancel")
    assert f"Job {job.id} cancelled." in text(page)
    assert get(web, job.id).status == "cancelled"

    again = ops.post(f"/jobs/{job.id}/cancel")
    assert f"Not cancelled: job {job.id} is cancelled" in text(again)
    api = ops.api(f"/api/jobs/{seeded.succeeded.id}/cancel")
    assert api.status_code == 409
    assert get(web, seeded.succeeded.id).status == "succeeded"

    # A cancelled job can be retried from the page.
    ops.post(f"/jobs/{job.id}/retry")
    assert get(web, job.id).status == "pending"


def test_cancelling_a_running_job_kills_its_process(
    env: Env, web: Flask, ops: Dashboard, tmp_path: Path
) -> None:
    with web.app_context():
        job = run_background_job(J, "wait_for_file", [str(tmp_path / "never"), "run"])
    env.start_worker()
    started = wait_for(lambda: env.marks_of("run"), what="the job to start")
    pid = int(started[0].split()[1])
    assert get(web, job.id).status == "running"

    page = ops.post(f"/jobs/{job.id}/cancel")
    assert f"Job {job.id} cancelled." in text(page)
    assert get(web, job.id).status == "cancelled"
    wait_for(lambda: not pid_alive(pid), what=f"job process {pid} to be killed")


def test_retry_all_failed_shows_the_count_and_retries_every_failed_job(
    env: Env, web: Flask, ops: Dashboard
) -> None:
    with web.app_context():
        failed = [run_background_job(J, "fail", [f"n{i}"], retry_attempts=0).id for i in range(3)]
        ok = run_background_job(J, "noop").id
    env.burst()

    html = text(ops.client.get(PREFIX + "/jobs"))
    assert "Retry all failed (3)…" in html
    assert "Make all 3 failed jobs pending again" in html
    assert "Retry 3 failed jobs" in html

    page = ops.post("/jobs/retry-failed")
    assert "Retried 3 failed job(s)." in text(page)
    assert [get(web, i).status for i in failed] == ["pending"] * 3
    assert get(web, ok).status == "succeeded"
    assert "Retry all failed" not in text(ops.client.get(PREFIX + "/jobs"))

    api = ops.api("/api/jobs/retry-failed")
    assert api.status_code == 200 and api.get_json() == {"retried": 0}
    assert "No failed jobs to retry." in text(ops.post("/jobs/retry-failed"))


def test_actions_on_an_unknown_job_are_404(ops: Dashboard) -> None:
    for action in ("retry", "cancel"):
        page = ops.post(f"/jobs/424242/{action}")
        assert page.status_code == 404 and "No job with id 424242." in text(page)
        api = ops.api(f"/api/jobs/424242/{action}")
        assert api.status_code == 404 and api.get_json() == {"error": "No job with id 424242."}
        assert ops.post(f"/jobs/abc/{action}").status_code == 404
