"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the app
served by ``flask run`` in a subprocess and a real ``flask bgjobs worker``.

Each test logs in with HTTP Basic, acts as an operator would (watch progress, open a failed
job, retry it, filter the list, follow the log) and ends by asserting that no page logged a
console error, a CSP violation or a failed request.

Chromium is ``/usr/bin/chromium`` (``apt-get install chromium``; ``scripts/test`` installs it
when it can), never a downloaded browser. With ``CI`` set a missing Chromium or Playwright
fails these tests; locally they skip and say why. ``BGJOBS_SCREENSHOTS=1`` writes the README's
screenshots to ``docs/img/``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jobapp
import pytest
import sqlalchemy as sa
from conftest import ROOT, Env, wait_for
from flask import Flask

from flask_bgjobs import models, run_background_job, service

from .conftest import PREFIX, J, S

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USER, PASSWORD = "ops", "correct horse"
WEB_APP = "jobapp.web:create_app()"
SHOTS = ROOT / "docs" / "img"
# Read at import: the `env` fixture clears every BGJOBS_* variable before a test runs.
WRITE_SHOTS = os.environ.get("BGJOBS_SCREENSHOTS") == "1"
TIMEOUT_MS = 20_000

#: Recurring jobs and queue limits for the Queues and Schedules pages: one recurring job ticks
#: during the test (into the default queue, which is always listed), one does not.
SCHEDULE = {
    "heartbeat": {"job": f"{J}:noop", "every": 2},
    "nightly-report": {
        "job": f"{J}:add",
        "cron": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "params": [1, 2],
        "queue": "reports",
    },
}

# Reported to the console, so the console check below catches CSP violations by name.
REPORT_CSP = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " " + e.blockedURI);
});
"""


def _ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if _ci():
        pytest.fail(f"browser tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, for every test of this module."""
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(
            f"Chromium not found at {CHROMIUM}: install it with 'apt-get install -y chromium' "
            "(./scripts/test does when run as root)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the 'playwright' package is missing: pip install -e '.[test]'")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(env: Env, web: Flask, monkeypatch: pytest.MonkeyPatch) -> str:
    """``flask run`` of the test app on a free port, with a dashboard login; its base URL."""
    monkeypatch.setenv("BGJOBS_DASHBOARD_USERNAME", USER)
    monkeypatch.setenv("BGJOBS_DASHBOARD_PASSWORD", PASSWORD)
    monkeypatch.setenv("JOBAPP_TESTING", "0")
    port = _free_port()
    log = open(env.tmp / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "flask", "--app", WEB_APP, "run"),
            *("--no-reload", "--no-debugger", "--with-threads"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        cwd=env.tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    env.procs.append(proc)
    log.close()
    url = f"http://127.0.0.1:{port}"

    def answers() -> int | None:
        assert proc.poll() is None, (env.tmp / "server.log").read_text()
        try:
            urllib.request.urlopen(url + PREFIX + "/", timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code  # 401: up, and asking for the login
        except OSError:
            return None
        return 200

    assert wait_for(answers, what="flask run to answer") == 401
    return url


class Watched:
    """A page whose console errors, page errors and failed requests are all recorded."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text} ({self.page.url})")

    def _failed(self, request: Any) -> None:
        # A poll cut short by a page load is the browser's doing, not an error.
        if request.failure not in ("net::ERR_ABORTED",):
            self.problems.append(f"request failed: {request.url} {request.failure}")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")
        elif PREFIX in response.url:
            csp = response.headers.get("content-security-policy", "")
            if "unsafe-inline" in csp or "default-src 'self'" not in csp:
                self.problems.append(f"weak CSP on {response.url}: {csp!r}")

    def assert_clean(self, server_log: Path) -> None:
        if self.problems:
            tail = server_log.read_text(errors="replace").splitlines()[-30:]
            raise AssertionError("\n".join([*self.problems, "-- server log:", *tail]))


@pytest.fixture
def watched(browser: Any, server: str, env: Env) -> Iterator[Watched]:
    """A logged-in (HTTP Basic) page 1280 px wide, checked for errors at the end."""
    context = browser.new_context(
        base_url=server,
        http_credentials={"username": USER, "password": PASSWORD},
        viewport={"width": 1280, "height": 860},
        device_scale_factor=1,
    )
    context.add_init_script(REPORT_CSP)
    page = Watched(context.new_page())
    try:
        yield page
        page.assert_clean(env.tmp / "server.log")
    finally:
        context.close()


@pytest.fixture
def queues_and_schedules(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """`SCHEDULE` and two queue limits for the app, the server and every worker (taken with
    ``usefixtures``, so it is set before any of them is built)."""
    monkeypatch.setenv("BGJOBS_SCHEDULE", json.dumps(SCHEDULE))
    monkeypatch.setenv("BGJOBS_QUEUE_LIMITS", "mail:2,reports:1")


def screenshot(page: Any, name: str, tmp_path: Path) -> Path:
    """Save a screenshot: to docs/img with BGJOBS_SCREENSHOTS=1, else to the test's folder."""
    folder = SHOTS if WRITE_SHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    size = page.viewport_size
    # A short viewport: the full-page shot then ends where the content ends.
    page.set_viewport_size({"width": size["width"], "height": 400})
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    return path


def until(page: Any, probe: Any, what: str, timeout: float = 20.0) -> Any:
    """`wait_for`, but letting Playwright deliver its events (they arrive only inside its calls)."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        page.wait_for_timeout(50)


def progress_of(page: Any, job_id: int) -> Any:
    return page.evaluate(
        "id => { const p = document.querySelector(`tr[data-job-id='${id}'] progress`);"
        " return p && p.hasAttribute('value') ? p.value : null; }",
        job_id,
    )


# -- the tests --------------------------------------------------------------------------------


def test_login_is_required_and_wrong_credentials_are_refused(browser: Any, server: str) -> None:
    context = browser.new_context(http_credentials={"username": USER, "password": "nope"})
    try:
        response = context.new_page().goto(server + PREFIX + "/")
        assert response.status == 401
    finally:
        context.close()


def test_a_running_jobs_progress_bar_moves_on_the_overview(
    env: Env, web: Flask, watched: Watched, tmp_path: Path
) -> None:
    page = watched.page
    gate = tmp_path / "gate"
    with web.app_context():
        for i in range(6):
            run_background_job(J, "add", [i, i])
        failing = run_background_job(J, "fail", ["upstream answered 502"], retry_attempts=1)
        run_background_job(J, "greet", {"name": "Grace"})
        waiting = run_background_job(J, "wait_for_file", [str(tmp_path / "never")])
        job = run_background_job(S, "gated", [str(gate), 4], priority=5)
        run_background_job(J, "noop", delay=3600)
    env.start_worker("--concurrency", "3")

    page.goto(PREFIX + "/")
    assert page.title() == "Overview · flask-bgjobs"
    page.wait_for_selector(f"tr[data-job-id='{job.id}']")  # arrives by live refresh
    page.wait_for_selector(f"tr[data-job-id='{waiting.id}']")
    assert progress_of(page, job.id) is None  # no report yet: an indeterminate bar

    (tmp_path / "gate.1").touch()
    page.wait_for_function(
        "id => document.querySelector(`tr[data-job-id='${id}'] progress`)?.value === 25", arg=job.id
    )
    before = page.text_content(f"tr[data-job-id='{job.id}'] [data-elapsed-since]")
    (tmp_path / "gate.2").touch()
    page.wait_for_function(
        "id => document.querySelector(`tr[data-job-id='${id}'] progress`)?.value === 50", arg=job.id
    )
    row = page.locator(f"tr[data-job-id='{job.id}']")
    assert "step 2 of 4" in row.inner_text()
    assert "50%" in row.inner_text()
    page.wait_for_function(
        "([id, before]) => document.querySelector("
        "`tr[data-job-id='${id}'] [data-elapsed-since]`).textContent !== before",
        arg=[job.id, before],
    )
    page.wait_for_function(
        "() => document.querySelector('[data-count=succeeded]').textContent === '7'"
    )
    assert page.text_content("[data-count=failed]") == "1"
    # The latest failures follow the failed count.
    page.wait_for_selector(f"[data-failures] li[data-job-id='{failing.id}']")
    assert "ValueError: upstream answered 502" in page.inner_text("[data-failures]")
    assert page.text_content("[data-failed-count]") == "1"
    assert page.text_content("[data-live-text]") == "live"
    page.mouse.move(0, 0)
    screenshot(page, "dashboard-overview", tmp_path)

    for i in (3, 4):
        (tmp_path / f"gate.{i}").touch()
    page.wait_for_selector(f"tr[data-job-id='{job.id}']", state="detached")
    page.wait_for_function(
        "() => document.querySelector('[data-count=succeeded]').textContent === '8'"
    )


def test_polling_pauses_while_the_tab_is_hidden(watched: Watched) -> None:
    page = watched.page
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/api/" in r.url else None)
    page.goto(PREFIX + "/")
    until(page, lambda: len(polls) >= 2, "the overview to poll")

    page.evaluate(
        "() => { Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }"
    )
    page.wait_for_function(
        "() => document.querySelector('[data-live-text]').textContent === 'paused'"
    )
    seen = len(polls)
    page.wait_for_timeout(3000)  # longer than one poll interval: nothing may be asked meanwhile
    assert len(polls) == seen

    page.evaluate(
        "() => { Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }"
    )
    until(page, lambda: len(polls) > seen, "polling to resume")


def test_open_a_failed_job_retry_it_with_the_keyboard_and_watch_it_succeed(
    env: Env, web: Flask, watched: Watched, tmp_path: Path
) -> None:
    page = watched.page
    ready = tmp_path / "upstream-ready"
    with web.app_context():
        job = run_background_job(S, "fail_until", [str(ready)], retry_attempts=1, priority=2)
    env.start_worker()
    with web.app_context():
        ext = jobapp.bgjobs
        wait_for(lambda: ext.get_job(job.id).status == "failed", what="the job to fail twice")

    page.goto(PREFIX + "/jobs?status=failed")
    page.click(f"tr[data-job-id='{job.id}'] a.jid")
    page.wait_for_url(f"**{PREFIX}/jobs/{job.id}")
    badge = page.locator(".page-head [data-status-badge]")
    assert badge.inner_text() == "failed"
    assert "ConnectionError: upstream not ready" in page.inner_text(".errpanel")
    assert "Traceback (most recent call last)" in page.inner_text("pre.tb")
    assert page.locator("table.attempts tbody tr").count() == 2
    assert page.locator("[data-action=cancel]").count() == 0

    ready.touch()
    # Reach the button with the keyboard alone, then press Enter.
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.dataset.action") == "retry":
            break
    else:
        raise AssertionError("the Retry button is not reachable with Tab")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**{PREFIX}/jobs/{job.id}")
    assert f"Job {job.id} is pending again" in page.inner_text(".flash")

    # The page follows the job by itself (it reloads when the status changes).
    page.wait_for_function(
        "() => document.querySelector('.page-head [data-status-badge]').textContent === 'succeeded'"
    )
    assert page.locator("[data-action=retry]").count() == 0
    assert '"recovered"' in page.inner_text("#params-h + pre + h2 + pre")
    reasons = page.locator("table.attempts tbody tr .reason").all_inner_texts()
    assert reasons == ["raised an exception", "raised an exception", "succeeded"]
    page.mouse.move(0, 0)
    screenshot(page, "dashboard-job", tmp_path)


def test_filter_and_search_the_list_and_retry_all_failed_after_confirming(
    env: Env, web: Flask, watched: Watched
) -> None:
    page = watched.page
    with web.app_context():
        ext = jobapp.bgjobs
        ids = {
            "add": run_background_job(J, "add", [1, 1]).id,
            "greet": run_background_job(J, "greet", {"name": "Lin"}).id,
            "fail1": run_background_job(J, "fail", ["a"], retry_attempts=0).id,
            "fail2": run_background_job(J, "fail", ["b"], retry_attempts=0).id,
        }
        env.burst()
        assert ext.list_jobs(status="failed")[1] == 2

    page.goto(PREFIX + "/jobs")
    assert page.locator("table.jobs tbody tr").count() == 4
    page.click("nav.tabs a.tab-failed")
    page.wait_for_url("**/jobs?status=failed")
    rows = page.locator("table.jobs tbody tr")
    assert sorted(
        int(r) for r in rows.evaluate_all("rs => rs.map(r => r.dataset.jobId)")
    ) == sorted([ids["fail1"], ids["fail2"]])

    page.click("nav.tabs a:has-text('all')")
    page.fill("#q", "greet")
    page.press("#q", "Enter")
    page.wait_for_url("**/jobs?q=greet")
    assert rows.count() == 1 and "greet" in rows.inner_text()
    page.click("text=Clear")
    page.wait_for_url(f"**{PREFIX}/jobs")

    page.click("summary:has-text('Retry all failed (2)')")
    confirm = page.locator("[data-action=retry-all]")
    assert confirm.is_visible() and confirm.inner_text() == "Retry 2 failed jobs"
    page.keyboard.press("Escape")
    assert not confirm.is_visible()
    page.click("summary:has-text('Retry all failed (2)')")
    confirm.click()
    page.wait_for_selector(".flash")
    assert "Retried 2 failed job(s)." in page.inner_text(".flash")
    [session] = [c for c in page.context.cookies() if c["name"] == "session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    with web.app_context():
        assert {ext.get_job(ids[k]).status for k in ("fail1", "fail2")} == {"pending"}


def test_follow_the_log_as_jobs_run(env: Env, web: Flask, watched: Watched) -> None:
    page = watched.page
    with web.app_context():
        first = run_background_job(J, "greet", {"name": "first"})
    env.burst()

    page.goto(PREFIX + "/logs")
    assert f"(job {first.id}," in page.inner_text("[data-log]")
    page.check("[data-follow]")
    page.wait_for_function("() => location.search.includes('follow=1')")
    page.wait_for_function(
        "() => document.querySelector('[data-live-text]').textContent === 'following'"
    )

    with web.app_context():
        later = run_background_job(J, "greet", {"name": "later"})
    env.start_worker()
    line = f"Job completed successfully for {J}::greet (job {later.id},"
    page.wait_for_function(
        "text => document.querySelector('[data-log]').innerText.includes(text)", arg=line
    )
    assert page.locator("[data-log] .entry.fresh").count() >= 1

    page.select_option("#level", "ERROR")
    page.click("button:has-text('Apply')")
    page.wait_for_url("**level=ERROR**")
    assert page.is_checked("[data-follow]")  # follow mode survives the filter
    assert line not in page.inner_text("[data-log]")

    page.click("nav.tabs a:has-text('Error log')")
    page.wait_for_url("**log=errors**")


def test_live_refresh_shows_control_characters_as_visible_escapes(
    web: Flask, watched: Watched
) -> None:
    # Rows written with SQL, as a job's progress() or an edit could leave them; no worker runs,
    # so nothing but the pages' live refresh changes what the browser shows.
    page = watched.page
    esc = "\x1b[31m\x07\x9b\u2028\x85"
    shown = "\\x1b[31m\\x07\\x9b\\u2028\\x85"
    with web.app_context():
        jobapp.bgjobs.init_db()
    now = time.time()
    common = {
        "params": "[]",
        "priority": 1,
        "attempts": 1,
        "max_attempts": 1,
        "run_at": now,
        "created_at": now,
        "started_at": now,
    }
    page.goto(PREFIX + "/")
    page.wait_for_function("() => document.querySelector('[data-live-text]')?.textContent")
    with web.extensions["bgjobs"].store.engine.begin() as conn:
        running = conn.execute(
            sa.insert(models.jobs)
            .values(
                **common,
                class_name=f"jobapp.jobs.Cls{esc}",
                method_name=f"meth{esc}",
                status="running",
                progress=30.0,
                progress_message=f"step{esc}",
                runner_id=f"host{esc}",
            )
            .returning(models.jobs.c.id)
        ).scalar_one()
        conn.execute(
            sa.insert(models.jobs).values(
                **common,
                class_name=J,
                method_name="fail",
                status="failed",
                finished_at=now,
                error=f"ValueError: bad{esc}",
            )
        )

    row = f"tr[data-job-id='{running}']"
    page.wait_for_selector(row)  # arrives by live refresh, built by the script
    page.wait_for_function(
        "t => document.querySelector('[data-failures]').textContent.includes(t)",
        arg=f"ValueError: bad{shown}",
    )
    text = page.inner_text(row)
    for expected in (f"Cls{shown}", f"meth{shown}", f"step{shown}", f"host{shown}"):
        assert expected in text, (expected, text)
    assert not any(c in text for c in "\x1b\x07\x9b\u2028\x85"), text

    page.goto(PREFIX + f"/jobs/{running}")
    assert f"step{shown}" in page.inner_text("[data-field=progress_message]")
    with web.extensions["bgjobs"].store.engine.begin() as conn:
        conn.execute(
            sa.update(models.jobs)
            .where(models.jobs.c.id == running)
            .values(progress=60.0, progress_message=f"next{esc}")
        )
    page.wait_for_function(
        "t => document.querySelector('[data-field=progress_message]').textContent === t",
        arg=f"next{shown}",
    )


@pytest.mark.usefixtures("queues_and_schedules")
def test_pages_fit_a_phone_screen_without_sideways_scrolling(
    env: Env, web: Flask, watched: Watched, tmp_path: Path
) -> None:
    page = watched.page
    long_queue = "q" * 64
    with web.app_context():
        failed = run_background_job(J, "fail", ["x" * 300], retry_attempts=0)
        run_background_job("jobapp.jobs.Jobs", "greet", {"name": "y" * 300}, queue=long_queue)
        run_background_job(J, "noop", queue="mail", delay=3600)
    env.burst()
    page.set_viewport_size({"width": 375, "height": 740})
    urls = ("/", "/jobs", f"/jobs/{failed.id}", "/logs?log=errors", "/queues", "/schedules")
    for url in (*urls, f"/jobs?queue={long_queue}"):
        page.goto(PREFIX + url)
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{url} scrolls sideways by {overflow} px"
    assert time.time()  # pages rendered; the watcher checks they logged nothing


def _jobs(web: Flask, ids: list[int]) -> list[models.Job]:
    with web.app_context():
        return [jobapp.bgjobs.get_job(i) for i in ids]


def _paused_queues(web: Flask) -> set[str]:
    with web.app_context():
        return {q.name for q in service.queues(web.extensions["bgjobs"]) if q.paused}


def _paused_schedules(web: Flask) -> set[str]:
    with web.app_context():
        return {s.name for s in service.schedules(web.extensions["bgjobs"]) if s.paused}


def _last_status(web: Flask, name: str) -> str | None:
    with web.app_context():
        found = service.schedules(web.extensions["bgjobs"])
        return next(s.last_status for s in found if s.name == name)


@pytest.mark.usefixtures("queues_and_schedules")
def test_pause_and_resume_a_queue_and_a_recurring_job_with_their_buttons(
    env: Env, web: Flask, watched: Watched, tmp_path: Path
) -> None:
    page = watched.page
    with web.app_context():
        mail = [run_background_job(J, "add", [i, 1], queue="mail", priority=5).id for i in range(3)]

    page.goto(PREFIX + "/")
    page.click("nav a:has-text('Queues')")
    page.wait_for_url(f"**{PREFIX}/queues")
    assert page.title() == "Queues · flask-bgjobs"
    row = page.locator("tr[data-queue='mail']")
    assert row.locator("[data-field=pending]").inner_text() == "3"
    row.locator("[data-action=pause-queue]").click()
    page.wait_for_selector(".flash")
    assert "Queue mail paused" in page.inner_text(".flash")
    assert row.locator(".pill").inner_text() == "paused"
    assert _paused_queues(web) == {"mail"}

    # A runner serves the other queues and leaves the paused one alone; the page follows the
    # counts by itself (the recurring job's ticks land in the default queue meanwhile).
    with web.app_context():
        other = run_background_job(J, "noop", queue="reports").id
    env.start_worker()
    wait_for(lambda: _jobs(web, [other])[0].status == "succeeded", what="the reports job to run")
    assert [j.status for j in _jobs(web, mail)] == ["pending"] * 3
    page.wait_for_function(
        "() => document.querySelector(\"tr[data-queue='reports'] [data-field=pending]\")"
        ".textContent === '0'"
    )
    assert row.locator("[data-field=pending]").inner_text() == "3"
    page.mouse.move(0, 0)
    screenshot(page, "dashboard-queues", tmp_path)

    # Resume with the keyboard alone.
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.dataset.action") == "resume-queue":
            break
    else:
        raise AssertionError("the Resume button is not reachable with Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector(".flash:has-text('Queue mail resumed.')")
    assert _paused_queues(web) == set()
    page.wait_for_function(
        "() => document.querySelector(\"tr[data-queue='mail'] [data-field=pending]\")"
        ".textContent === '0'"
    )
    assert [j.result for j in _jobs(web, mail)] == [1, 2, 3]

    # The job list, filtered by the queue from its row.
    page.click("tr[data-queue='mail'] td.qname a")
    page.wait_for_url("**/jobs?queue=mail")
    assert page.locator("table.jobs tbody tr").count() == 3
    assert page.locator("#queue").input_value() == "mail"
    page.select_option("#queue", "")  # the select applies itself
    page.wait_for_url(lambda url: "queue=mail" not in url)

    # The Schedules page: the ticking job's last run, then pause and resume the other one.
    page.click("nav a:has-text('Schedules')")
    page.wait_for_url(f"**{PREFIX}/schedules")
    wait_for(lambda: _last_status(web, "heartbeat") == "succeeded", what="a heartbeat job to run")
    page.reload()
    beat = page.locator("tr[data-schedule='heartbeat']")
    assert "every 2 s" in beat.inner_text()
    assert beat.locator("[data-status-badge]").inner_text() == "succeeded"
    nightly = page.locator("tr[data-schedule='nightly-report']")
    assert "Europe/Berlin" in nightly.inner_text()
    nightly.locator("[data-action=pause-schedule]").click()
    page.wait_for_selector(".flash:has-text('Recurring job nightly-report paused')")
    assert nightly.locator(".pill").inner_text() == "paused"
    assert "— (paused)" in nightly.inner_text()
    assert _paused_schedules(web) == {"nightly-report"}
    page.mouse.move(0, 0)
    screenshot(page, "dashboard-schedules", tmp_path)

    nightly.locator("[data-action=resume-schedule]").click()
    page.wait_for_selector(".flash:has-text('Recurring job nightly-report resumed')")
    assert nightly.locator(".pill").inner_text() == "active"
    assert _paused_schedules(web) == set()
