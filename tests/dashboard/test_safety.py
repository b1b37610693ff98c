"""FAULTS 21, 22 and 24 against the dashboard: escaping and CSP, CSRF, and the log viewer's
refusal to read anything but the two configured files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from html import escape as html_escape
from pathlib import Path
from typing import Any

import jobapp
import pytest
import sqlalchemy as sa
from conftest import Env
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import URLSafeTimedSerializer
from markupsafe import escape as markup_escape
from werkzeug.routing import Rule

from flask_bgjobs import models, run_background_job

from .conftest import PREFIX, J, Seeded, csrf_token_of

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

SCRIPT = "<script>alert('xss')</script>"
IMG = '<img src=x onerror="alert(1)">'
QUOTE = "\" onmouseover=\"alert('q')"
TEMPLATE = "{{7*7}}"
RAW = (SCRIPT, IMG, "<script>alert", "<img src=x", 'onerror="alert', '" onmouseover="')


def text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def assert_escaped(html: str, where: str) -> None:
    """No payload reaches the page as markup; each shows as text."""
    for raw in RAW:
        assert raw not in html, f"{raw!r} unescaped on {where}"
    assert "&lt;script&gt;alert(" in html, where
    assert TEMPLATE in html, f"{{{{7*7}}}} missing (evaluated?) on {where}"


def dashboard_rules(app: Flask) -> list[Rule]:
    return [r for r in app.url_map.iter_rules() if r.endpoint.startswith("bgjobs.")]


def url_of(rule: Rule, job_id: int) -> str:
    """A concrete URL for a rule of the dashboard (sample values for its arguments)."""
    samples = {
        "job_id": str(job_id),
        "filename": "bgjobs/dashboard.css",
        "queue": "default",
        "name": "no-such-schedule",  # a 404 from the view: headers on that too
    }
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: samples[m.group(1)], rule.rule)


def job_status(app: Flask, job_id: int) -> str:
    with app.app_context():
        return str(jobapp.bgjobs.get_job(job_id).status)


# -- FAULTS 21: escaping, {{7*7}}, CSP --------------------------------------------------------


def test_payloads_in_params_errors_names_and_logs_show_as_text_everywhere(
    env: Env, web: Flask, client: FlaskClient
) -> None:
    payload = f"{TEMPLATE}{SCRIPT}{IMG}{QUOTE}"
    with web.app_context():
        failed = run_background_job(J, "fail", [payload], retry_attempts=0)
        pending = run_background_job(J, "greet", {"name": payload}, delay=3600)
    env.burst()
    # A row edited behind the extension's back: names that the enqueue checks never allowed.
    with web.extensions["bgjobs"].store.engine.begin() as conn:
        conn.execute(
            models.jobs.update()
            .where(models.jobs.c.id == pending.id)
            .values(class_name=f"evil.{SCRIPT}", method_name=IMG, progress_message=payload)
        )
    env.main_log.parent.mkdir(parents=True, exist_ok=True)
    with open(env.main_log, "a", encoding="utf-8") as fh:
        fh.write(f"[2026-01-01 00:00:00] ERROR: {payload}\n  {payload}\n")

    pages = {
        "overview": PREFIX + "/",
        "list": PREFIX + "/jobs",
        "failed job": PREFIX + f"/jobs/{failed.id}",
        "edited job": PREFIX + f"/jobs/{pending.id}",
        "main log": PREFIX + "/logs",
        "error log": PREFIX + "/logs?log=errors",
        "search": PREFIX + "/jobs?q=" + payload.replace("#", ""),
        "log search": PREFIX + "/logs?q=" + "%3Cscript%3E",
    }
    for where, url in pages.items():
        page = client.get(url)
        assert page.status_code == 200, where
        assert page.mimetype == "text/html"
        html = text(page)
        if where == "log search":
            assert SCRIPT not in html and "&lt;script&gt;" in html
            continue
        assert_escaped(html, where)

    # JSON is JSON (never sniffed as HTML): the payload is a string value, as stored.
    api = client.get(PREFIX + f"/api/jobs/{failed.id}")
    assert api.mimetype == "application/json"
    assert api.headers["X-Content-Type-Options"] == "nosniff"
    assert api.get_json()["params"] == [payload]
    logs = client.get(PREFIX + "/api/logs?q=onerror").get_json()
    assert any(payload in e["message"] for e in logs["entries"])


def test_an_error_page_echoes_bad_input_only_as_text(client: FlaskClient) -> None:
    page = client.get(PREFIX + "/jobs?status=" + SCRIPT)
    assert page.status_code == 400
    assert SCRIPT not in text(page)
    page = client.get(PREFIX + "/nowhere/" + "%3Cscript%3E")
    assert page.status_code == 404 and "<script>" not in text(page).split("</head>")[1]


@sqlite_only
def test_every_response_carries_the_csp_and_cache_headers(web: Flask, client: FlaskClient) -> None:
    web.add_url_rule("/hello", "hello", lambda: "hi")
    web.add_url_rule(PREFIX + "-elsewhere", "elsewhere", lambda: "hi")
    with web.app_context():
        job = run_background_job(J, "noop", delay=3600)
    urls: list[tuple[str, str]] = []
    for rule in dashboard_rules(web):
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            urls.append((method, url_of(rule, job.id)))
    urls += [
        ("GET", PREFIX + "/no/such/page"),  # 404 from routing
        ("GET", PREFIX + f"/jobs/{job.id}/retry"),  # 405 from routing
        ("GET", PREFIX + "/jobs/123456789"),  # 404 from the view
        ("GET", PREFIX + "/logs?log=passwd"),  # 404 from the view
        ("GET", PREFIX + "/jobs?status=nope"),  # 400
        ("GET", PREFIX + "/static/bgjobs/dashboard.js"),
        ("GET", PREFIX),  # the redirect to PREFIX/
    ]
    assert len(urls) >= 16
    for method, url in urls:
        response = client.open(url, method=method)
        where = f"{method} {url} -> {response.status_code}"
        csp = response.headers.get("Content-Security-Policy", "")
        assert "default-src 'self'" in csp, where
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, where
        assert "frame-ancestors 'none'" in csp, where
        assert "script-src 'self'" in csp and "style-src 'self'" in csp, where
        assert response.headers.get("Cache-Control") == "no-store", where
        assert response.headers.get("X-Content-Type-Options") == "nosniff", where
        assert response.headers.get("X-Frame-Options") == "DENY", where
        assert response.headers.get("Referrer-Policy"), where

    # The host app's own pages are left alone, even one whose path starts like the prefix.
    for url in ("/hello", PREFIX + "-elsewhere", "/no-such-page"):
        assert "Content-Security-Policy" not in client.get(url).headers, url


@sqlite_only
def test_pages_have_no_inline_script_style_or_event_handler(
    client: FlaskClient, seeded: Seeded
) -> None:
    pages = ("/", "/jobs", f"/jobs/{seeded.failed.id}", f"/jobs/{seeded.pending.id}", "/logs")
    for url in (*pages, "/queues", "/schedules", "/jobs?queue=default"):
        html = text(client.get(PREFIX + url))
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), url
        assert "<style" not in html and " style=" not in html, url
        assert not re.search(r"\son[a-z]+=", html), url
        assert "javascript:" not in html, url
        assert not re.search(r'(?:src|href)="(?:https?:)?//', html), url  # no CDN, no fonts


# -- FAULTS 22: CSRF --------------------------------------------------------------------------


def test_actions_refuse_get_missing_foreign_forged_and_cross_site_tokens(
    web: Flask, client: FlaskClient, seeded: Seeded
) -> None:
    job = seeded.failed.id
    retry = PREFIX + f"/jobs/{job}/retry"
    token = csrf_token_of(client)

    other = web.test_client()
    foreign = csrf_token_of(other)  # valid, but for another session
    forged = URLSafeTimedSerializer("not-the-key", salt="flask-bgjobs.dashboard.csrf").dumps("x")
    with client.session_transaction() as session:
        mine = session["_bgjobs_csrf"]
    unsalted = URLSafeTimedSerializer(web.secret_key).dumps(mine)  # the key, not the purpose

    assert client.get(retry).status_code == 405
    assert client.get(PREFIX + "/jobs/retry-failed").status_code == 405
    for data in ({}, {"bgjobs_csrf": ""}, {"bgjobs_csrf": "junk"}, {"bgjobs_csrf": foreign}):
        assert client.post(retry, data=data).status_code == 400, data
    for bad in (forged, unsalted, mine):
        assert client.post(retry, data={"bgjobs_csrf": bad}).status_code == 400
    cross_site = [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ]
    for headers in cross_site:
        response = client.post(retry, data={"bgjobs_csrf": token}, headers=headers)
        assert response.status_code == 403, headers
    for url in (PREFIX + "/jobs/retry-failed", PREFIX + f"/api/jobs/{job}/retry"):
        assert client.post(url).status_code == 400
        assert client.post(url, headers={"X-BgJobs-CSRF": foreign}).status_code == 400
    assert job_status(web, job) == "failed"  # nothing changed

    same_origin = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    response = client.post(retry, data={"bgjobs_csrf": token}, headers=same_origin)
    assert response.status_code == 303
    assert job_status(web, job) == "pending"


def test_the_api_actions_take_the_token_in_a_header(
    web: Flask, client: FlaskClient, seeded: Seeded
) -> None:
    token = csrf_token_of(client)
    response = client.post(
        PREFIX + f"/api/jobs/{seeded.pending.id}/cancel", headers={"X-BgJobs-CSRF": token}
    )
    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled"


@sqlite_only
def test_an_expired_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, web: Flask, client: FlaskClient
) -> None:
    from flask_bgjobs.dashboard import csrf

    with web.app_context():
        job = run_background_job(J, "noop", delay=3600)
    token = csrf_token_of(client)
    monkeypatch.setattr(csrf, "MAX_AGE", -1)
    response = client.post(PREFIX + f"/jobs/{job.id}/cancel", data={"bgjobs_csrf": token})
    assert response.status_code == 400
    assert "expired" in text(response)
    assert job_status(web, job.id) == "pending"


@sqlite_only
def test_without_a_secret_key_pages_work_and_actions_say_what_is_missing(app: Flask) -> None:
    with app.app_context():
        job = run_background_job(J, "noop", delay=3600)
    client = app.test_client()
    page = client.get(PREFIX + f"/jobs/{job.id}")
    assert page.status_code == 200
    assert "Actions need the app's SECRET_KEY." in text(page)
    response = client.post(PREFIX + f"/jobs/{job.id}/cancel")
    assert response.status_code == 400 and "SECRET_KEY" in text(response)
    assert job_status(app, job.id) == "pending"


@sqlite_only
def test_the_session_cookie_is_httponly_and_samesite_lax_in_the_served_app(env: Env) -> None:
    from jobapp.web import create_app

    app = create_app()
    try:
        response = app.test_client().get(PREFIX + "/jobs")
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie
    finally:
        app.extensions["bgjobs"].store.close()


# -- FAULTS 24: the log viewer reads the two configured files, nothing else -------------------

TRAVERSALS = [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252F..%252Fetc%252Fpasswd",
    "/etc/passwd",
    "file:///etc/passwd",
    "main/../../../../etc/passwd",
    "main%00",
    "main%2F..%2F..%2Fetc%2Fpasswd",
    "..\\..\\etc\\passwd",
    "MAIN",
    "errors%20",
    "",
    "background_jobs.log",
    "secret",
]


@sqlite_only
@pytest.mark.parametrize("value", TRAVERSALS)
def test_a_log_key_other_than_main_or_errors_is_a_404_with_no_file_contents(
    env: Env, client: FlaskClient, value: str
) -> None:
    env.main_log.parent.mkdir(parents=True, exist_ok=True)
    (env.main_log.parent / "secret").write_text("TOP-SECRET\n")
    for url in (PREFIX + "/logs?log=" + value, PREFIX + "/api/logs?log=" + value):
        response = client.get(url)
        assert response.status_code == 404, url
        body = text(response)
        assert "root:" not in body and "TOP-SECRET" not in body, url


@sqlite_only
def test_paths_under_the_prefix_never_serve_files_outside_the_static_folder(
    client: FlaskClient,
) -> None:
    for path in (
        "/static/../../../../etc/passwd",
        "/static/bgjobs/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/%2e%2e/%2e%2e/__init__.py",
        "/logs/../../etc/passwd",
        "/static//etc/passwd",
    ):
        response = client.get(PREFIX + path, follow_redirects=True)
        assert response.status_code in (400, 404), path
        assert "root:" not in text(response) and "import" not in text(response), path


@sqlite_only
@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_a_log_path_replaced_by_a_symlink_fifo_or_directory_is_refused(
    env: Env, client: FlaskClient, tmp_path: Path, kind: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET\n[2026-01-01 00:00:00] INFO: TOP-SECRET\n")
    env.error_log.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink":
        env.error_log.symlink_to(secret)
    elif kind == "fifo":
        os.mkfifo(env.error_log)  # opening it would block until a writer comes
    else:
        env.error_log.mkdir()
    for url in (PREFIX + "/logs?log=errors", PREFIX + "/api/logs?log=errors"):
        response = client.get(url)
        assert response.status_code == 403, url
        assert "TOP-SECRET" not in text(response), url
    # The other log is unaffected.
    assert client.get(PREFIX + "/logs?log=main").status_code == 200


@sqlite_only
def test_log_lines_with_control_characters_are_shown_escaped(env: Env, client: FlaskClient) -> None:
    env.main_log.parent.mkdir(parents=True, exist_ok=True)
    env.main_log.write_bytes(b"[2026-01-01 00:00:00] INFO: bell\x07 esc\x1b[31m red \xff\n")
    html = text(client.get(PREFIX + "/logs"))
    assert "\x07" not in html and "\x1b" not in html
    assert "bell\\x07 esc\\x1b[31m red \ufffd" in html


# Issue 12, item 9 (FAULTS 18): each control character a job's text may carry, and the visible
# escape the pages must show instead (as the logs and the CLI do), spelled out independently.
CONTROLS = {
    "ESC": ("\x1b", "\\x1b"),
    "BEL": ("\x07", "\\x07"),
    "CSI": ("\x9b", "\\x9b"),
    "LINE SEPARATOR": ("\u2028", "\\u2028"),
    "NEL": ("\x85", "\\x85"),
}
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _insert_job(conn: Any, **values: Any) -> int:
    now = time.time()
    row = {
        "class_name": J,
        "method_name": "add",
        "params": "[]",
        "status": "pending",
        "priority": 1,
        "attempts": 1,
        "max_attempts": 1,
        "run_at": now,
        "created_at": now,
    } | values
    return int(
        conn.execute(sa.insert(models.jobs).values(**row).returning(models.jobs.c.id)).scalar_one()
    )


@pytest.mark.parametrize("char", CONTROLS.values(), ids=CONTROLS.keys())
def test_control_characters_in_any_job_text_show_as_visible_escapes(
    web: Flask, client: FlaskClient, char: tuple[str, str]
) -> None:
    raw, esc = char
    now = time.time()
    with web.app_context():
        jobapp.bgjobs.init_db()
    # Rows as a job (or someone with write access) could leave them: every text field carries
    # the character, each behind its own label so the test can tell which field is shown how.
    texts = {
        "class_name": f"jobapp.jobs.Cls{raw}x",
        "method_name": f"meth{raw}x",
        "params": json.dumps({"p": f"params{raw}x"}, ensure_ascii=False),
        "progress_message": f"progress{raw}x",
        "runner_id": f"runner{raw}x",
        "error": f"ValueError: error{raw}x",
        "traceback": f"Traceback (most recent call last):\n  tb{raw}x\nValueError: error",
        "end_reason": f"reason{raw}x",
    }
    with web.extensions["bgjobs"].store.engine.begin() as conn:
        running = _insert_job(
            conn, **texts, status="running", progress=40.0, started_at=now, pid=4242
        )
        failed = _insert_job(conn, **texts, status="failed", started_at=now, finished_at=now)
        succeeded = _insert_job(
            conn,
            **texts,
            status="succeeded",
            started_at=now,
            finished_at=now,
            result=json.dumps(f"result{raw}x", ensure_ascii=False),
        )
        for job_id in (running, failed, succeeded):
            for kind, message in (
                ("started", f"started on attempt-runner{raw}x"),
                ("progress", f"event-progress{raw}x"),
                (f"kind{raw}x", f"event{raw}x"),
                ("exception", f"ended{raw}x"),
            ):
                conn.execute(
                    sa.insert(models.events).values(
                        job_id=job_id, at=now, kind=kind, message=message, attempt=1
                    )
                )

    expected_on_job_page = [
        f"Cls{esc}x",
        f"meth{esc}x",
        f"params{esc}x",
        f"runner{esc}x",
        f"error{esc}x",
        f"tb{esc}x",
        f"reason{esc}x",
        f"attempt-runner{esc}x",
        f"event-progress{esc}x",
        f"kind{esc}x",
        f"event{esc}x",
        f"ended{esc}x",
    ]
    pages = {
        f"job page (running) {running}": (
            PREFIX + f"/jobs/{running}",
            [*expected_on_job_page, f"progress{esc}x"],
        ),
        f"job page (failed) {failed}": (PREFIX + f"/jobs/{failed}", expected_on_job_page),
        f"job page (succeeded) {succeeded}": (
            PREFIX + f"/jobs/{succeeded}",
            [*expected_on_job_page, f"result{esc}x"],
        ),
        "job list": (
            PREFIX + "/jobs",
            [f"Cls{esc}x", f"meth{esc}x", f"error{esc}x", f"result{esc}x"],
        ),
        "overview": (
            PREFIX + "/",
            [f"Cls{esc}x", f"meth{esc}x", f"progress{esc}x", f"runner{esc}x", f"error{esc}x"],
        ),
    }
    for where, (url, expected) in pages.items():
        page = client.get(url)
        assert page.status_code == 200, where
        html = text(page)
        found = RAW_CONTROL.search(html)
        assert found is None, f"raw {found.group()!r} on the {where}" if found else ""
        for fragment in expected:
            # Inside JSON (params, result) a C0 control already shows as JSON's own \\u001b.
            as_json = fragment.replace(esc, json.dumps(raw)[1:-1])
            assert html_escape(fragment, quote=False) in html or (
                fragment.startswith(("params", "result")) and as_json in html
            ), f"{fragment!r} not on the {where}"
    # The API keeps the data as stored: JSON has its own escapes.
    assert client.get(PREFIX + f"/api/jobs/{failed}").get_json()["error"] == texts["error"]


def _node() -> str | None:
    """A Node.js binary: the system's, else the one the playwright package ships."""
    found = shutil.which("node")
    if found:
        return found
    try:
        import playwright
    except ImportError:
        return None
    bundled = Path(playwright.__file__).parent / "driver" / "node"
    return str(bundled) if bundled.is_file() else None


def test_the_scripts_printable_escapes_exactly_what_the_server_escapes() -> None:
    # Live refresh writes progress messages, names, runners and errors from the API into the
    # page: it must escape the same characters security.printable() does, and the same way.
    node = _node()
    if node is None:
        pytest.skip("no Node.js to run dashboard.js's printable() with")
    from flask_bgjobs.dashboard import __file__ as package_file
    from flask_bgjobs.security import printable

    source = (Path(package_file).parent / "static" / "bgjobs" / "dashboard.js").read_text()
    found = re.search(r"\n  var UNPRINTABLE = .*?\n  function printable\(.*?\n  }\n", source, re.S)
    assert found, "printable() not found in dashboard.js"
    script = found.group() + (
        "var out = [];"
        "for (var i = 0; i < 0x10000; i++) {"
        "  var c = String.fromCharCode(i);"
        "  var p = printable(c);"
        "  if (p !== c) out.push([i, p]);"
        "}"
        "out.push([0x1f600, printable('\\ud83d\\ude00')]);"  # a pair stays as it is
        "process.stdout.write(JSON.stringify(out));"
    )
    done = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    escaped_by_js = {i: p for i, p in json.loads(done.stdout)}
    assert escaped_by_js.pop(0x1F600) == "\U0001f600"
    escaped_by_python = {
        i: printable(chr(i)) for i in range(0x10000) if printable(chr(i)) != chr(i)
    }
    assert escaped_by_js == escaped_by_python


def test_a_refused_action_names_a_stored_status_with_visible_escapes(
    web: Flask, client: FlaskClient
) -> None:
    with web.app_context():
        jobapp.bgjobs.init_db()
    with web.extensions["bgjobs"].store.engine.begin() as conn:
        job_id = _insert_job(conn, status="odd\x1b[31m\u2028")
    token = csrf_token_of(client)
    for action in ("retry", "cancel"):
        response = client.post(
            PREFIX + f"/jobs/{job_id}/{action}", data={"bgjobs_csrf": token}, follow_redirects=True
        )
        html = text(response)
        assert response.status_code == 200
        assert RAW_CONTROL.search(html) is None, action
        assert f"job {job_id} is odd\\x1b[31m\\u2028" in html, action


def test_a_hostile_queue_name_in_a_stored_row_shows_as_text_with_no_button_or_link(
    web: Flask, client: FlaskClient
) -> None:
    # The enqueue checks refuse such a name; a row edited behind the extension's back has it.
    # (61 characters: PostgreSQL keeps at most 64 in the column.)
    hostile = f"{SCRIPT}{IMG}\x1b\u2028"
    shown = f"{SCRIPT}{IMG}\\x1b\\u2028"
    with web.app_context():
        jobapp.bgjobs.init_db()
    with web.extensions["bgjobs"].store.engine.begin() as conn:
        job_id = _insert_job(conn, queue=hostile, method_name="noop")
    pages = {
        "queues": PREFIX + "/queues",
        "list": PREFIX + "/jobs",
        "job": PREFIX + f"/jobs/{job_id}",
    }
    for where, url in pages.items():
        page = client.get(url)
        assert page.status_code == 200, where
        html = text(page)
        for raw in RAW:
            assert raw not in html, (raw, where)
        assert RAW_CONTROL.search(html) is None, where
        assert str(markup_escape(shown)) in html, where
        # No URL is built from it: its filter or its pause would be refused anyway.
        assert not re.search(r'(?:href|action)="[^"]*(?:script|%3C)', html, re.I), where
    queues = text(client.get(PREFIX + "/queues"))
    assert queues.count('data-action="pause-queue"') == 1  # the default queue's, not its
    assert 'Use <span class="mono">flask bgjobs pause</span>.' in queues
    assert '<option value="&lt;' not in text(client.get(PREFIX + "/jobs"))
    # The JSON API gives the name as stored (JSON escapes it itself).
    names = [q["name"] for q in client.get(PREFIX + "/api/queues").get_json()["queues"]]
    assert hostile in names


def test_the_dashboard_package_has_no_sql_of_its_own() -> None:
    import ast

    import flask_bgjobs.dashboard as dashboard

    folder = Path(dashboard.__file__).parent
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert not name.startswith(("sqlalchemy", "flask_sqlalchemy", "psycopg")), path
                assert name not in ("flask_bgjobs.store", "flask_bgjobs.models.jobs"), path
                assert name != "flask_bgjobs.runner", path
    assert sa  # the tests above use SQL to edit rows; the package must not
