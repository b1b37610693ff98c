"""Who may open the dashboard (SPEC §8, FAULTS 23): HTTP Basic, the ``dashboard_auth``
callable, both, or neither — and then every route of the blueprint, found by walking
``app.url_map``, answers 403 unless the app is in debug or testing mode. Also where the
dashboard is mounted and how a host app overrides its templates."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Env
from flask import Flask, request
from werkzeug.routing import Rule

from flask_bgjobs import BackgroundJobs, run_background_job, service
from flask_bgjobs.dashboard import auth

from .conftest import PREFIX, J

# Access does not depend on the database: SQLite is enough.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

MakeApp = Callable[..., tuple[Flask, BackgroundJobs]]
#: A recurring job, so that the routes that act on one have something to act on.
BEAT = {"beat": {"job": "jobapp.jobs.Jobs:noop", "every": 60}}


@pytest.fixture
def make_app(env: Env, tmp_path: Path) -> Iterator[MakeApp]:
    """A fresh app and extension object (never the shared ``jobapp.bgjobs``)."""
    made: list[Flask] = []

    def make(
        *,
        testing: bool = False,
        debug: bool = False,
        template_folder: str | None = None,
        **config: Any,
    ) -> tuple[Flask, BackgroundJobs]:
        app = Flask(
            "jobapp",
            instance_path=str(env.instance),
            template_folder=template_folder or "templates",
        )
        app.config.update(TESTING=testing, DEBUG=debug, SECRET_KEY="access-test", **config)
        ext = BackgroundJobs()
        ext.init_app(app)
        made.append(app)
        return app, ext

    yield make
    for app in made:
        app.extensions["bgjobs"].store.close()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def dashboard_rules(app: Flask) -> list[Rule]:
    return [r for r in app.url_map.iter_rules() if r.endpoint.startswith("bgjobs.")]


def requests_for_every_route(app: Flask, job_id: int) -> list[tuple[str, str]]:
    """(method, url) for every method of every dashboard route, plus unrouted paths."""
    samples = {
        "job_id": str(job_id),
        "filename": "bgjobs/dashboard.css",
        "queue": "default",
        "name": "beat",
    }
    found: list[tuple[str, str]] = []
    for rule in dashboard_rules(app):
        url = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: samples[m.group(1)], rule.rule)
        for method in sorted(rule.methods or ()):
            found.append((method, url))
    prefix = app.extensions["bgjobs"].settings.dashboard_url_prefix
    for extra in ("/no/such/page", "/jobs/abc", "/api/jobs/abc", f"/jobs/{job_id}/nothing"):
        found.append(("GET", prefix + extra))
    found.append(("GET", f"{prefix}/jobs/{job_id}/retry"))  # a 405 for anyone admitted
    return found


# -- HTTP Basic -------------------------------------------------------------------------------


def test_basic_auth_admits_the_configured_login_and_challenges_everything_else(
    make_app: MakeApp,
) -> None:
    app, _ = make_app(
        testing=True, BGJOBS_DASHBOARD_USERNAME="ops", BGJOBS_DASHBOARD_PASSWORD="pässword:1"
    )
    client = app.test_client()
    assert client.get(PREFIX + "/", headers=basic("ops", "pässword:1")).status_code == 200
    for headers in (
        {},
        basic("ops", "wrong"),
        basic("OPS", "pässword:1"),
        basic("ops", "pässword:1 "),
        basic("", ""),
        {"Authorization": "Bearer pässword"},
        {"Authorization": "Basic !!!not-base64"},
    ):
        for url in (PREFIX + "/", PREFIX + "/api/stats", PREFIX + "/nowhere"):
            response = client.get(url, headers=headers)
            assert response.status_code == 401, (headers, url)
            challenge = response.headers["WWW-Authenticate"]
            assert challenge.startswith("Basic ") and 'realm="' in challenge
            assert "BGJOBS_DASHBOARD_USERNAME" in response.get_data(as_text=True)
            assert response.headers["Cache-Control"] == "no-store"
            assert "unsafe-inline" not in response.headers["Content-Security-Policy"]


def test_basic_auth_compares_in_constant_time(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = make_app(BGJOBS_DASHBOARD_USERNAME="ops", BGJOBS_DASHBOARD_PASSWORD="pw")
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert app.test_client().get(PREFIX + "/", headers=basic("x", "pw")).status_code == 401
    # Both the user name and the password were compared, as equal-length digests.
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)


# -- the callable -----------------------------------------------------------------------------


def test_the_dashboard_auth_callable_decides_from_the_request(make_app: MakeApp) -> None:
    app, ext = make_app()
    seen: list[str] = []

    @ext.dashboard_auth
    def ops_only() -> bool:
        seen.append(request.path)
        return request.headers.get("X-Ops") == "yes"

    client = app.test_client()
    assert client.get(PREFIX + "/jobs", headers={"X-Ops": "yes"}).status_code == 200
    refused = client.get(PREFIX + "/jobs")
    assert refused.status_code == 403
    assert auth.REFUSED in refused.get_data(as_text=True)
    assert seen == [PREFIX + "/jobs", PREFIX + "/jobs"]


def test_with_basic_and_a_callable_both_must_admit(make_app: MakeApp) -> None:
    app, ext = make_app(BGJOBS_DASHBOARD_USERNAME="ops", BGJOBS_DASHBOARD_PASSWORD="pw")
    ext.dashboard_auth(lambda: request.remote_addr == "127.0.0.1")
    client = app.test_client()
    assert client.get(PREFIX + "/", headers=basic("ops", "pw")).status_code == 200
    assert client.get(PREFIX + "/").status_code == 401
    far = {"REMOTE_ADDR": "203.0.113.9"}
    assert client.get(PREFIX + "/", headers=basic("ops", "pw"), environ_base=far).status_code == 403


# -- neither: FAULTS 23 -----------------------------------------------------------------------


def test_with_no_access_configured_every_route_is_403_outside_debug_and_testing(
    make_app: MakeApp,
) -> None:
    app, ext = make_app(testing=False, debug=False, BGJOBS_SCHEDULE=BEAT)
    with app.app_context():
        job = run_background_job(J, "noop", delay=3600)
    client = app.test_client()
    pairs = requests_for_every_route(app, job.id)
    endpoints = {r.endpoint for r in dashboard_rules(app)}
    assert {"bgjobs.overview", "bgjobs.jobs", "bgjobs.job", "bgjobs.logs"} <= endpoints
    assert {"bgjobs.retry", "bgjobs.cancel", "bgjobs.retry_failed", "bgjobs.static"} <= endpoints
    assert {"bgjobs.api_jobs", "bgjobs.api_job", "bgjobs.api_stats", "bgjobs.metrics"} <= endpoints
    assert {"bgjobs.queues", "bgjobs.queue_pause", "bgjobs.queue_resume"} <= endpoints
    assert {"bgjobs.schedules", "bgjobs.schedule_pause", "bgjobs.schedule_resume"} <= endpoints
    assert {"bgjobs.api_queues", "bgjobs.api_queue_pause", "bgjobs.api_queue_resume"} <= endpoints
    assert {
        "bgjobs.api_schedules",
        "bgjobs.api_schedule_pause",
        "bgjobs.api_schedule_resume",
    } <= endpoints
    assert len(pairs) > 2 * len(endpoints)
    for method, url in pairs:
        response = client.open(url, method=method)
        assert response.status_code == 403, (method, url, response.status_code)
        if method != "HEAD":
            body = response.get_data(as_text=True)
            assert "BGJOBS_DASHBOARD_USERNAME" in body and "@bgjobs.dashboard_auth" in body
            assert "Nothing is running" not in body and "noop" not in body
        assert response.headers["Cache-Control"] == "no-store"
    with app.app_context():
        assert ext.get_job(job.id).status == "pending"  # the POSTs changed nothing
        state = app.extensions["bgjobs"]
        assert not any(q.paused for q in service.queues(state))
        assert not any(s.paused for s in service.schedules(state))

    app.debug = True
    assert client.get(PREFIX + "/").status_code == 200
    app.debug = False
    app.config["TESTING"] = True
    assert client.get(PREFIX + "/").status_code == 200


def test_the_host_apps_own_routes_are_not_guarded(make_app: MakeApp) -> None:
    app, _ = make_app()
    app.add_url_rule("/", "home", lambda: "home")
    app.add_url_rule("/bgjobsish", "near", lambda: "near")
    client = app.test_client()
    assert client.get("/").status_code == 200
    assert client.get("/bgjobsish").status_code == 200
    assert client.get("/missing").status_code == 404
    assert client.get(PREFIX + "/").status_code == 403


# -- mounting and overriding ------------------------------------------------------------------


def test_the_url_prefix_setting_moves_the_dashboard(make_app: MakeApp) -> None:
    app, _ = make_app(testing=True, BGJOBS_DASHBOARD_URL_PREFIX="/ops/queue/")
    client = app.test_client()
    page = client.get("/ops/queue/")
    assert page.status_code == 200
    assert 'href="/ops/queue/jobs"' in page.get_data(as_text=True)
    assert client.get("/ops/queue/api/stats").status_code == 200
    assert client.get(PREFIX + "/").status_code == 404


def test_bgjobs_dashboard_false_registers_no_route(make_app: MakeApp) -> None:
    app, _ = make_app(testing=True, BGJOBS_DASHBOARD=False)
    assert "bgjobs" not in app.blueprints
    assert dashboard_rules(app) == []


def test_a_host_template_of_the_same_name_overrides_the_packaged_one(
    make_app: MakeApp, tmp_path: Path
) -> None:
    folder = tmp_path / "host-templates"
    (folder / "bgjobs").mkdir(parents=True)
    (folder / "bgjobs" / "overview.html").write_text(
        '{% extends "bgjobs/base.html" %}{% block content %}<h1>Our queue</h1>'
        "{{ counts['pending'] }} waiting{% endblock %}"
    )
    app, _ = make_app(testing=True, template_folder=str(folder))
    client = app.test_client()
    html = client.get(PREFIX + "/").get_data(as_text=True)
    assert "<h1>Our queue</h1>0 waiting" in html
    assert "dashboard.css" in html  # the packaged base template still frames it
    assert "Filter by status" in client.get(PREFIX + "/jobs").get_data(as_text=True)


def test_one_extension_object_serves_a_dashboard_on_several_apps(env: Env, tmp_path: Path) -> None:
    ext = BackgroundJobs()
    apps = []
    for name, prefix in (("a", "/a-jobs"), ("b", "/b-jobs")):
        app = Flask("jobapp", instance_path=str(tmp_path / name))
        app.config.update(
            TESTING=True,
            BGJOBS_DASHBOARD_URL_PREFIX=prefix,
            BGJOBS_DATABASE_URI=f"sqlite:///{tmp_path / name}.db",
        )
        ext.init_app(app)
        apps.append(app)
    try:
        with apps[0].app_context():
            run_background_job(J, "noop", delay=3600)
        a = apps[0].test_client().get("/a-jobs/api/stats").get_json()
        b = apps[1].test_client().get("/b-jobs/api/stats").get_json()
        assert a["counts"]["pending"] == 1 and b["counts"]["pending"] == 0
        assert apps[0].test_client().get("/b-jobs/").status_code == 404
    finally:
        for app in apps:
            app.extensions["bgjobs"].store.close()
