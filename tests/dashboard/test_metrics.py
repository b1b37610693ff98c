"""``GET <prefix>/metrics`` (SPEC §12): the Prometheus text format, values computed from the
database (so any process answers the same) and checked against jobs a real runner ran; open
to the dashboard's access rule or to ``Authorization: Bearer <BGJOBS_METRICS_TOKEN>``."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Env
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from flask_bgjobs import BackgroundJobs, run_background_job

from .conftest import PREFIX, J

URL = PREFIX + "/metrics"
MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(env: Env) -> Iterator[MakeApp]:
    made: list[Flask] = []

    def make(*, testing: bool = False, **config: Any) -> Flask:
        app = Flask("jobapp", instance_path=str(env.instance))
        app.config.update(TESTING=testing, SECRET_KEY="metrics-test", **config)
        BackgroundJobs(app)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["bgjobs"].store.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) → value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_metrics_count_the_jobs_and_attempts_a_runner_left(
    env: Env, make_app: MakeApp, backend: str
) -> None:
    app = make_app(testing=True)
    with app.app_context():
        for i in range(3):
            run_background_job(J, "add", [i, i])
        run_background_job(J, "fail", ["bad row"], retry_attempts=0)
        run_background_job(J, "discard", ["gone"])
        run_background_job(J, "noop", queue="mail", delay=3600)
        waiting = run_background_job(J, "noop", queue="reports")
    env.burst("--queues", "default")
    with app.app_context():
        run_background_job(J, "noop", queue="mail")  # due now, no runner serves mail
        app.extensions["bgjobs"].store.set_queue_paused("reports", True)
    before = time.time()
    response = app.test_client().get(URL)
    after = time.time()
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert response.headers["Cache-Control"] == "no-store"
    found = samples(response.get_data(as_text=True))

    def jobs(status: str, queue: str) -> float:
        return found[("bgjobs_jobs", (("queue", queue), ("status", status)))]

    assert (jobs("succeeded", "default"), jobs("failed", "default")) == (3, 2)
    assert (jobs("pending", "mail"), jobs("pending", "reports")) == (2, 1)
    assert jobs("running", "default") == 0 and jobs("cancelled", "mail") == 0
    attempts = {k[1][0][1]: v for k, v in found.items() if k[0] == "bgjobs_attempts_total"}
    assert attempts["succeeded"] == 3 and attempts["exception"] == 1
    assert attempts["discarded"] == 1 and attempts["timeout"] == 0
    assert found[("bgjobs_attempt_duration_seconds_count", ())] == 5
    assert found[("bgjobs_attempt_duration_seconds_bucket", (("le", "+Inf"),))] == 5
    assert found[("bgjobs_attempt_duration_seconds_bucket", (("le", "3600.0"),))] == 5
    assert 0 < found[("bgjobs_attempt_duration_seconds_sum", ())] < 60
    oldest = found[("bgjobs_oldest_pending_seconds", (("queue", "reports"),))]
    assert before - waiting.run_at <= oldest <= after - waiting.run_at  # due since enqueued
    assert found[("bgjobs_oldest_pending_seconds", (("queue", "default"),))] == 0
    assert found[("bgjobs_queue_paused", (("queue", "reports"),))] == 1


def test_another_process_reads_the_same_values(env: Env, make_app: MakeApp) -> None:
    app = make_app(testing=True)
    with app.app_context():
        run_background_job(J, "add", [1, 2])
    env.burst()
    ours = app.test_client().get(URL).get_data(as_text=True)
    code = (
        "import jobapp; app = jobapp.create_app(); "
        f"import sys; sys.stdout.write(app.test_client().get({URL!r}).get_data(as_text=True))"
    )
    theirs = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=env.tmp
    ).stdout
    assert samples(ours) == samples(theirs)


def test_metrics_are_closed_without_access_and_open_to_the_bearer_token(
    make_app: MakeApp,
) -> None:
    app = make_app(BGJOBS_METRICS_TOKEN="scrape-Me-123")
    client = app.test_client()
    assert client.get(URL).status_code == 403
    for wrong in ("Bearer scrape-me-123", "Bearer ", "Basic scrape-Me-123", "scrape-Me-123"):
        assert client.get(URL, headers={"Authorization": wrong}).status_code == 403, wrong
    ok = client.get(URL, headers={"Authorization": "Bearer scrape-Me-123"})
    assert ok.status_code == 200 and b"bgjobs_jobs" in ok.data
    # The token opens the metrics, nothing else.
    token = {"Authorization": "Bearer scrape-Me-123"}
    for other in ("/", "/api/stats", "/api/jobs", "/metrics/x"):
        assert client.get(PREFIX + other, headers=token).status_code == 403, other


def test_the_dashboards_own_login_opens_the_metrics_too(make_app: MakeApp) -> None:
    app = make_app(
        BGJOBS_DASHBOARD_USERNAME="ops",
        BGJOBS_DASHBOARD_PASSWORD="pw",
        BGJOBS_METRICS_TOKEN="tok",
    )
    client = app.test_client()
    login = "Basic " + base64.b64encode(b"ops:pw").decode()
    assert client.get(URL, headers={"Authorization": login}).status_code == 200
    assert client.get(URL, headers={"Authorization": "Bearer tok"}).status_code == 200
    assert client.get(URL).status_code == 401
    assert client.get(URL, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_without_prometheus_client_the_answer_says_what_to_install(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(testing=True)
    for name in [m for m in sys.modules if m.startswith("prometheus_client")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import raises ImportError
    response = app.test_client().get(URL)
    assert response.status_code == 501
    assert "pip install 'flask-bgjobs[metrics]'" in response.get_data(as_text=True)
