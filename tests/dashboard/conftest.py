"""Fixtures of the dashboard tests: the test app with a secret key, a client that knows the
dashboard's CSRF token, and jobs in every state made by the real runner."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jobapp
import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_bgjobs import Job, run_background_job

J = "jobapp.jobs.Jobs"
S = "jobapp.dashboard_jobs.Stepper"
PREFIX = "/bgjobs"
_TOKEN = re.compile(r'<meta name="bgjobs-csrf" content="([^"]+)">')


def csrf_token_of(client: FlaskClient, url: str = PREFIX + "/jobs") -> str:
    """The CSRF token a dashboard page gives this client's session."""
    page = client.get(url)
    assert page.status_code == 200, page.status_code
    found = _TOKEN.search(page.get_data(as_text=True))
    assert found, f"no CSRF token on {url}"
    return found.group(1)


@pytest.fixture
def allow_stepper(monkeypatch: pytest.MonkeyPatch, env: Any) -> None:
    """Allow the dashboard's own test jobs too (before the app and any worker are built)."""
    from conftest import ALLOWED

    monkeypatch.setenv("BGJOBS_ALLOWED_JOBS", f"{ALLOWED},{S}:*")


@pytest.fixture
def web(allow_stepper: None, app: Flask) -> Flask:
    """The test app as a web server runs it: with a ``SECRET_KEY`` (sessions, CSRF)."""
    app.config["SECRET_KEY"] = "dashboard-test-secret"
    return app


@pytest.fixture
def client(web: Flask) -> Iterator[FlaskClient]:
    """A test client of the app (TESTING is on, so no login is needed)."""
    with web.test_client() as c:
        yield c


@dataclass
class Seeded:
    """One job in each state the pages distinguish, made by a real burst worker."""

    succeeded: Job
    failed: Job
    cancelled: Job
    pending: Job


@pytest.fixture
def seeded(env: Any, web: Flask) -> Seeded:
    """Jobs that succeeded, failed, were cancelled, and one still pending (delayed an hour)."""
    with web.app_context():
        ok = run_background_job(J, "add", [2, 3])
        bad = run_background_job(J, "fail", ["bad row"], retry_attempts=0)
        gone = run_background_job(J, "noop", delay=3600)
        waiting = run_background_job(J, "greet", {"name": "Ada"}, delay=3600)
        jobapp.bgjobs.cancel(gone.id)
    env.burst()
    with web.app_context():
        get = jobapp.bgjobs.get_job
        return Seeded(get(ok.id), get(bad.id), get(gone.id), get(waiting.id))
