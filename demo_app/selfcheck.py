"""The Python half of ``scripts/demo``: not part of the example app, a browser stand-in.

``enqueue`` presses every button of the index page the way a browser does (session cookie,
CSRF token, POST, redirect) and prints the new job ids as JSON. ``verify`` (``--check``) then
waits until every sample ended the way it should, looks at the logs and the dashboard, and
prints a summary; it exits non-zero saying what went wrong.

    python -m demo_app.selfcheck enqueue URL [--check]
    python -m demo_app.selfcheck verify URL IDS_JSON --deadline S [--dashboard PATH --user U]

The dashboard password comes from ``DEMO_DASHBOARD_PASSWORD`` (never the command line).
"""

from __future__ import annotations

import argparse
import base64
import http.cookiejar
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from flask_bgjobs import Job

#: The order the buttons are pressed in. The priority batch goes first, while nothing else
#: is running yet.
ORDER = ("priority", "report", "flaky", "reminder", "timeout", "fail", "slow", "words")


class CheckFailed(Exception):
    """One line saying what went wrong."""


def say(message: str) -> None:
    print(f"scripts/demo: {message}", file=sys.stderr, flush=True)


# -- enqueue -------------------------------------------------------------------------------------


def enqueue(url: str, check: bool) -> dict[str, list[int]]:
    """Press every sample's button once; return the new job ids by sample."""
    from demo_app import SAMPLES

    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    page = opener.open(url + "/", timeout=10).read().decode("utf-8")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    if not found:
        raise CheckFailed("the index page has no CSRF token in its forms")
    token = found.group(1)
    if check:
        if "<script" in page or " style=" in page:
            raise CheckFailed("the index page has inline script or style")
        try:
            opener.open(url + "/jobs", urllib.parse.urlencode({"sample": "words"}).encode())
            raise CheckFailed("a POST without a CSRF token was accepted")
        except urllib.error.HTTPError as exc:
            if exc.code != 400:
                raise CheckFailed(f"a POST without a CSRF token answered {exc.code}, not 400")
    ids: dict[str, list[int]] = {}
    for key in ORDER + tuple(k for k in SAMPLES if k not in ORDER):
        form = urllib.parse.urlencode({"csrf_token": token, "sample": key}).encode()
        # The view answers 303 to the index page; urllib follows it with a GET, as browsers do.
        page = opener.open(url + "/jobs", form, timeout=30).read().decode("utf-8")
        flashed = re.search(r'<p class="flash (ok|error)">(.*?)</p>', page, re.S)
        if not flashed or flashed.group(1) != "ok":
            text = re.sub(r"<[^>]+>|\s+", " ", flashed.group(2) if flashed else "").strip()
            raise CheckFailed(f"the {key!r} button did not enqueue: {text or 'no message'}")
        ids[key] = [int(i) for i in re.findall(r'data-job-id="(\d+)"', flashed.group(2))]
        if not ids[key]:
            raise CheckFailed(f"the {key!r} button's message names no job")
        shown = f"jobs {ids[key][0]}-{ids[key][-1]}" if len(ids[key]) > 1 else f"job {ids[key][0]}"
        say(f"enqueued {key} ({SAMPLES[key].title}): {shown}")
    return ids


# -- verify --------------------------------------------------------------------------------------


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _line(key: str, job: Job) -> str:
    text = f"  {key:<9} job {job.id:<4} {job.name:<38} {job.status}"
    text += f" (attempt {job.attempts}/{job.max_attempts}"
    if job.status == "failed" and job.end_reason:
        text += f", ended by {job.end_reason}"
    return text + ")"


def _settled(key: str, jobs: list[Job]) -> bool:
    if key == "reminder":
        return True  # it is due in 30 s: checked as it is, never waited for
    return all(j.is_finished for j in jobs)


#: How each sample must end: the status every job must reach, and a check of the details.
EXPECTED_STATUS = {"timeout": "failed", "fail": "failed", "reminder": None}


def check_report(jobs: list[Job]) -> str:
    [job] = jobs
    _expect(job.progress == 100, f"job {job.id} ended with progress {job.progress}, not 100")
    return f"progress 100%, result {job.result_json}"


def check_flaky(jobs: list[Job]) -> str:
    [job] = jobs
    failures = job.params["failures"]
    _expect(
        job.attempts == failures + 1,
        f"job {job.id} succeeded on attempt {job.attempts}, expected {failures + 1}",
    )
    return f"failed {failures} times, then {job.result}"


def check_priority(jobs: list[Job]) -> str:
    *bulk, urgent = jobs
    _expect(
        urgent.priority > max(b.priority for b in bulk),
        "the last job of the priority batch is not the urgent one",
    )
    _expect(
        all(b.created_at < urgent.created_at for b in bulk),
        "the urgent job was not queued after the bulk ones",
    )
    assert urgent.started_at is not None
    # Priority decides among due jobs: a bulk job may have started first only if the urgent
    # one was not due yet when it started (their due times are microseconds apart).
    ahead = [b for b in bulk if b.started_at is not None and b.started_at < urgent.started_at]
    early = [b for b in ahead if b.started_at is not None and b.started_at >= urgent.run_at]
    _expect(
        not early,
        f"bulk job(s) {[b.id for b in early]} started before urgent job {urgent.id} "
        "although it was due",
    )
    behind = sum(1 for b in bulk if b not in ahead)
    if not ahead:
        return (
            f"urgent job {urgent.id} (priority {urgent.priority}, queued last) started "
            f"first, before all {len(bulk)} bulk jobs (priority {bulk[0].priority})"
        )
    return (
        f"urgent job {urgent.id} (priority {urgent.priority}, queued last) started before "
        f"{behind} of {len(bulk)} bulk jobs; {len(ahead)} started before it was due"
    )


def check_reminder(jobs: list[Job]) -> str:
    [job] = jobs
    wait = job.run_at - job.created_at
    if job.status == "pending":
        left = job.run_at - time.time()
        _expect(left > 0, f"job {job.id} is still pending {-left:.1f} s after its run-at time")
        return f"pending, due {wait:.0f} s after it was enqueued ({left:.0f} s from now)"
    _expect(
        job.status == "succeeded" and (job.started_at or 0) >= job.run_at,
        f"job {job.id} is {job.status}, started at {job.started_at} before its run-at {job.run_at}",
    )
    return f"ran {wait:.0f} s after it was enqueued, as delayed"


def check_timeout(jobs: list[Job]) -> str:
    [job] = jobs
    _expect(
        job.end_reason == "timeout" and job.attempts == job.max_attempts == 1,
        f"job {job.id} ended by {job.end_reason} after {job.attempts}/{job.max_attempts} "
        "attempts, expected timeout after 1/1",
    )
    return f"killed: {job.error}"


def check_fail(jobs: list[Job]) -> str:
    [job] = jobs
    _expect(
        job.end_reason == "exception" and job.attempts == job.max_attempts == 2,
        f"job {job.id} ended by {job.end_reason} after {job.attempts}/{job.max_attempts} "
        "attempts, expected exception after 2/2",
    )
    return f"gave up: {job.error}"


def check_result(jobs: list[Job]) -> str:
    [job] = jobs
    return f"result {(job.result_json or '')[:60]}"


CHECKS: dict[str, Callable[[list[Job]], str]] = {
    "report": check_report,
    "flaky": check_flaky,
    "priority": check_priority,
    "reminder": check_reminder,
    "timeout": check_timeout,
    "fail": check_fail,
    "slow": check_result,
    "words": check_result,
}


def verify(ids: dict[str, list[int]], deadline: float) -> dict[str, list[Job]]:
    """Wait until every sample settled (within `deadline` seconds), then check each one."""
    from demo_app import bgjobs, create_app

    app = create_app()
    end = time.monotonic() + deadline
    seen: dict[int, tuple[str, int]] = {}
    with app.app_context():
        state = bgjobs.state()
        main_log, error_log = state.settings.log_file, state.settings.error_log_file
        while True:
            jobs = {k: [bgjobs.get_job(i, with_events=False) for i in v] for k, v in ids.items()}
            for key, group in jobs.items():
                for job in group:
                    now = (job.status, job.attempts)
                    if seen.get(job.id) != now:
                        seen[job.id] = now
                        print(_line(key, job), flush=True)
            for key, group in jobs.items():
                want = EXPECTED_STATUS.get(key, "succeeded")
                wrong = [j for j in group if want and j.is_finished and j.status != want]
                if wrong:
                    j = wrong[0]
                    raise CheckFailed(f"{key}: job {j.id} {j.status}, not {want}: {j.error}")
            if all(_settled(k, g) for k, g in jobs.items()):
                break
            if time.monotonic() > end:
                late = [
                    f"{j.id} ({j.status})" for k, g in jobs.items() for j in g if not j.is_finished
                ]
                raise CheckFailed(f"jobs {', '.join(late)} did not finish within {deadline:g} s")
            time.sleep(0.2)

    print("\nsummary:", flush=True)
    for key, group in jobs.items():
        for job in group:
            print(_line(key, job))
        print(f"  {key}: {CHECKS.get(key, check_result)(group)}", flush=True)

    with open(main_log, encoding="utf-8") as fh:
        main_lines = fh.read().splitlines()
    with open(error_log, encoding="utf-8") as fh:
        error_lines = [line for line in fh.read().splitlines() if not line.startswith("  ")]
    for job in (j for g in jobs.values() for j in g if j.status == "succeeded"):
        _expect(
            any(
                f"Job completed successfully for {job.name} (job {job.id}," in x for x in main_lines
            ),
            f"no 'Job completed successfully' line for job {job.id} in {main_log}",
        )
    for key in ("flaky", "timeout", "fail"):
        job = jobs[key][0]
        failed = job.attempts - (job.status == "succeeded")
        entries = [
            x for x in error_lines if f"Job failed for {job.name} (job {job.id}, attempt" in x
        ]
        _expect(
            len(entries) == failed,
            f"{len(entries)} 'Job failed' entries for job {job.id} in {error_log}, not {failed}",
        )
    print("  logs: a completion line per succeeded job, an error entry per failed attempt")
    return jobs


def check_dashboard(url: str, path: str, user: str, jobs: dict[str, list[Job]]) -> None:
    """Locked without the login, open with it, with a strict CSP; each job's page answers."""
    password = os.environ.get("DEMO_DASHBOARD_PASSWORD", "")

    def get(suffix: str, login: bool) -> tuple[int, Any, bytes]:
        request = urllib.request.Request(url + suffix)
        if login:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    login = bool(user)
    if login:
        code, _, _ = get(path, False)
        _expect(code == 401, f"the dashboard answered {code} without the login, expected 401")
    code, headers, _ = get(path, login)
    csp = headers.get("Content-Security-Policy", "")
    _expect(
        code == 200 and "default-src 'self'" in csp and "unsafe-inline" not in csp,
        f"the dashboard answered {code} with CSP {csp!r}",
    )
    code, _, body = get(path + "api/stats", login)
    _expect(code == 200, f"GET {path}api/stats answered {code}")
    total = sum(json.loads(body)["counts"].values())
    for group in jobs.values():
        job = group[-1]
        # The link the index page's message gives for this job.
        code, _, body = get(f"{path}jobs/{job.id}", login)
        _expect(
            code == 200 and job.class_name.encode() in body and job.method_name.encode() in body,
            f"the dashboard page of job {job.id} answered {code} without the job's name",
        )
    say(f"dashboard OK: {total} jobs in its API, a page for each sample's job")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo_app.selfcheck")
    sub = parser.add_subparsers(dest="command", required=True)
    p_enqueue = sub.add_parser("enqueue", help="press every button; print the ids as JSON")
    p_enqueue.add_argument("url")
    p_enqueue.add_argument("--check", action="store_true", help="also test the CSRF check")
    p_verify = sub.add_parser("verify", help="wait for the jobs and check how they ended")
    p_verify.add_argument("url")
    p_verify.add_argument("ids", help="the JSON that enqueue printed")
    p_verify.add_argument("--deadline", type=float, default=120)
    p_verify.add_argument("--dashboard", default="", help="its path, e.g. /bgjobs/")
    p_verify.add_argument("--user", default="", help="the dashboard login's user name")
    args = parser.parse_args(argv)
    try:
        if args.command == "enqueue":
            print(json.dumps(enqueue(args.url, args.check)))
        else:
            ids = {k: [int(i) for i in v] for k, v in json.loads(args.ids).items()}
            say(f"waiting up to {args.deadline:g} s for the sample jobs to end as they should")
            jobs = verify(ids, args.deadline)
            if args.dashboard:
                check_dashboard(args.url, args.dashboard, args.user, jobs)
    except (CheckFailed, OSError) as exc:
        say(f"ERROR: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
