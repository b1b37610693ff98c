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
import itertools
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
from flask_bgjobs.models import attempts_of

#: The order the buttons are pressed in. The priority batch goes first, while nothing else
#: is running yet. The mail queue is paused before its mail is sent, and resumed last.
ORDER = (
    "priority",
    "pause_mail",
    "mail",
    "report",
    "flaky",
    "reminder",
    "timeout",
    "fail",
    "slow",
    "words",
    "expires",
    "unique",
    "concurrency",
    "run_at",
    "prints",
    "memory",
    "cpu",
    "discard",
    "retry",
    "order",
    "rollback",
    "resume_mail",
)

#: Buttons that enqueue no job of their own (their message names none).
NO_JOBS = ("pause_mail", "resume_mail", "rollback")

#: The recurring jobs the index page must list (demo_app/__init__.py).
SCHEDULES = ("heartbeat", "nightly-report")


class CheckFailed(Exception):
    """One line saying what went wrong."""


def say(message: str) -> None:
    print(f"scripts/demo: {message}", file=sys.stderr, flush=True)


# -- enqueue -------------------------------------------------------------------------------------


def enqueue(url: str, check: bool) -> dict[str, Any]:
    """Press every sample's button once; return the new job ids by sample.

    Also ``_pressed_at`` (when each button was pressed, epoch seconds) and ``_orders`` (the
    order references a button's message names)."""
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
        for name in SCHEDULES:
            if f'data-schedule="{name}"' not in page:
                raise CheckFailed(f"the index page does not list the schedule {name!r}")
        try:
            opener.open(url + "/jobs", urllib.parse.urlencode({"sample": "words"}).encode())
            raise CheckFailed("a POST without a CSRF token was accepted")
        except urllib.error.HTTPError as exc:
            if exc.code != 400:
                raise CheckFailed(f"a POST without a CSRF token answered {exc.code}, not 400")
    ids: dict[str, Any] = {}
    pressed_at: dict[str, float] = {}
    orders: dict[str, list[str]] = {}
    for key in ORDER + tuple(k for k in SAMPLES if k not in ORDER):
        form = urllib.parse.urlencode({"csrf_token": token, "sample": key}).encode()
        pressed_at[key] = time.time()
        # The view answers 303 to the index page; urllib follows it with a GET, as browsers do.
        page = opener.open(url + "/jobs", form, timeout=30).read().decode("utf-8")
        flashed = re.search(r'<p class="flash (ok|error)">(.*?)</p>', page, re.S)
        if not flashed or flashed.group(1) != "ok":
            text = re.sub(r"<[^>]+>|\s+", " ", flashed.group(2) if flashed else "").strip()
            raise CheckFailed(f"the {key!r} button did not enqueue: {text or 'no message'}")
        ids[key] = [int(i) for i in re.findall(r'data-job-id="(\d+)"', flashed.group(2))]
        orders[key] = re.findall(r'data-order="([0-9a-f]+)"', flashed.group(2))
        if not ids[key] and key not in NO_JOBS:
            raise CheckFailed(f"the {key!r} button's message names no job")
        text = re.sub(r"<[^>]+>|\s+", " ", flashed.group(2)).strip()
        say(f"{key}: {text}")
    ids["_pressed_at"] = pressed_at
    ids["_orders"] = orders
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
    if key in ("reminder", "run_at"):
        return True  # due in 30 s: checked as it is, never waited for
    return all(j.is_finished for j in jobs)


#: How each sample must end: the status every job must reach (or, a tuple, each of its jobs
#: in turn; None: not waited for), and a check of the details.
EXPECTED_STATUS: dict[str, str | tuple[str, ...] | None] = {
    "timeout": "failed",
    "fail": "failed",
    "reminder": None,
    "run_at": None,
    "expires": ("succeeded", "cancelled"),
    "memory": "failed",
    "cpu": "failed",
    "discard": "failed",
}


def _wanted(key: str, index: int) -> str | None:
    want = EXPECTED_STATUS.get(key, "succeeded")
    return want[index] if isinstance(want, tuple) else want


#: What `check_*` may need besides the jobs: when each button was pressed, and the orders.
CONTEXT: dict[str, Any] = {"pressed_at": {}, "orders": {}, "signals": []}


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


def check_run_at(jobs: list[Job]) -> str:
    return check_reminder(jobs)


def _one_at_a_time(jobs: list[Job], what: str) -> str:
    """Every job succeeded on its first attempt, and no two of them ran at the same time."""
    for job in jobs:
        _expect(
            job.attempts == 1,
            f"job {job.id} took {job.attempts} attempts: a job held back spent an attempt",
        )
    spans = sorted((j.started_at or 0, j.finished_at or 0, j.id) for j in jobs)
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        # The runner stamps a job's end and claims the next in one go: the two times may be
        # a few milliseconds apart either way; two jobs running at once overlap by seconds.
        _expect(start >= end - 0.05, f"jobs {a} and {b} ran at the same time despite {what}")
    return f"{len(jobs)} jobs ran one at a time ({what}), each on its first attempt"


def check_mail(jobs: list[Job]) -> str:
    _expect(all(j.queue == "mail" for j in jobs), "a mail job is not in the mail queue")
    resumed = CONTEXT["pressed_at"].get("resume_mail")
    if resumed is not None:
        early = [j.id for j in jobs if (j.started_at or 0) < resumed]
        _expect(not early, f"mail job(s) {early} started while the mail queue was paused")
    told = _one_at_a_time(jobs, "queue limit mail:1")
    return told + ("; none before the queue was resumed" if resumed is not None else "")


def check_concurrency(jobs: list[Job]) -> str:
    _expect(
        all(j.concurrency_key == "printer-1" and j.concurrency_limit == 1 for j in jobs),
        "a printer job lacks its concurrency key",
    )
    return _one_at_a_time(jobs, "concurrency key printer-1, limit 1")


def check_unique(jobs: list[Job]) -> str:
    first, second = jobs
    _expect(first.id == second.id, f"two jobs ({first.id}, {second.id}) for one unique key")
    return f"two enqueues, one job ({first.id}, unique_key {first.unique_key})"


def check_expires(jobs: list[Job]) -> str:
    busy, code = jobs
    _expect(
        code.end_reason == "expired" and code.attempts == 0 and code.started_at is None,
        f"job {code.id} ended by {code.end_reason} after {code.attempts} attempts, "
        "expected expired, never started",
    )
    return f"job {busy.id} held the gateway; job {code.id} expired, never ran"


def _ended(job: Job) -> Any:
    ends = [e for e in job.events or () if e.ends_attempt]
    _expect(bool(ends), f"job {job.id} has no event that ended an attempt")
    return ends[-1]


def check_prints(jobs: list[Job]) -> str:
    [job] = jobs
    output = job.output or ""
    _expect(
        "step 3 of 3: working" in output and "a warning on stderr" in output,
        f"job {job.id} kept the output {output[:200]!r}",
    )
    return f"output kept: {len(output.splitlines())} lines, stdout and stderr"


def _limited(job: Job, reason: str) -> str:
    _expect(
        job.end_reason == reason and job.attempts == job.max_attempts == 1,
        f"job {job.id} ended by {job.end_reason} after {job.attempts}/{job.max_attempts} "
        f"attempts, expected {reason} after 1/1",
    )
    ended = _ended(job)
    return f"stopped: {job.error}; peak RSS {ended.max_rss_kb} KiB, CPU {ended.cpu_s:.2f} s"


def check_memory(jobs: list[Job]) -> str:
    return _limited(jobs[0], "memory")


def check_cpu(jobs: list[Job]) -> str:
    return _limited(jobs[0], "cpu")


def check_discard(jobs: list[Job]) -> str:
    [job] = jobs
    _expect(
        job.end_reason == "discarded" and job.attempts == 1 < job.max_attempts,
        f"job {job.id} ended by {job.end_reason} after {job.attempts}/{job.max_attempts} "
        "attempts, expected discarded after the first",
    )
    signal = f"job_failed: job {job.id} "
    _expect(
        any(signal in line for line in CONTEXT["signals"]),
        f"no {signal!r} line from the job_failed receiver in signals.log",
    )
    return f"discarded on attempt 1 of {job.max_attempts}: {job.error}; job_failed signal seen"


def check_retry(jobs: list[Job]) -> str:
    [job] = jobs
    wait = job.params["in_seconds"]
    _expect(job.attempts == 2, f"job {job.id} succeeded on attempt {job.attempts}, not 2")
    [(_, first_end), (second_start, _)] = attempts_of(job.events or ())
    _expect(second_start is not None, f"job {job.id}: no start event for its second attempt")
    assert second_start is not None
    gap = second_start.at - first_end.at
    _expect(gap >= wait - 0.1, f"job {job.id} was retried after {gap:.1f} s, not {wait:g} s")
    return f"retried {gap:.1f} s after its first attempt asked for {wait:g} s, then {job.result}"


def check_order(jobs: list[Job]) -> str:
    from demo_app import Order, db

    [job] = jobs
    [ref] = CONTEXT["orders"]["order"]
    order = db.session.scalar(db.select(Order).filter_by(reference=ref))
    _expect(order is not None, f"order {ref} was not stored")
    assert order is not None
    args = job.params if isinstance(job.params, list) else list(job.params.values())
    _expect(args == [order.id], f"job {job.id} is not the confirmation of order {order.id}: {args}")
    _expect(order.status == "confirmed", f"order {ref} is {order.status}, not confirmed")
    return f"order {ref} (id {order.id}) committed with job {job.id}, which confirmed it"


def check_rollback(_: list[Job]) -> str:
    from demo_app import Order, bgjobs, db

    [ref] = CONTEXT["orders"]["rollback"]
    _expect(
        db.session.scalar(db.select(Order).filter_by(reference=ref)) is None,
        f"order {ref} exists after its rollback",
    )
    since = CONTEXT["pressed_at"]["order"]
    confirmations, _ = bgjobs.list_jobs(q="demo_app.orders::confirm_order", per_page=100)
    new = [j.id for j in confirmations if j.created_at >= since]
    _expect(len(new) == 1, f"{len(new)} confirmation jobs since the first order, not 1: {new}")
    return f"order {ref} and its job rolled back: no order, no job"


def check_queue_switch(_: list[Job]) -> str:
    return "no job of its own (the mail jobs waited for the resume: see mail)"


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
    "mail": check_mail,
    "unique": check_unique,
    "concurrency": check_concurrency,
    "run_at": check_run_at,
    "expires": check_expires,
    "prints": check_prints,
    "memory": check_memory,
    "cpu": check_cpu,
    "discard": check_discard,
    "retry": check_retry,
    "order": check_order,
    "rollback": check_rollback,
    "pause_mail": check_queue_switch,
    "resume_mail": check_queue_switch,
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
        signal_log = os.path.join(app.instance_path, "logs", "signals.log")
        while True:
            jobs = {k: [bgjobs.get_job(i, with_events=False) for i in v] for k, v in ids.items()}
            for key, group in jobs.items():
                for job in group:
                    now = (job.status, job.attempts)
                    if seen.get(job.id) != now:
                        seen[job.id] = now
                        print(_line(key, job), flush=True)
            for key, group in jobs.items():
                for index, j in enumerate(group):
                    want = _wanted(key, index)
                    if want and j.is_finished and j.status != want:
                        raise CheckFailed(f"{key}: job {j.id} {j.status}, not {want}: {j.error}")
            if all(_settled(k, g) for k, g in jobs.items()):
                break
            if time.monotonic() > end:
                late = [
                    f"{j.id} ({j.status})" for k, g in jobs.items() for j in g if not j.is_finished
                ]
                raise CheckFailed(f"jobs {', '.join(late)} did not finish within {deadline:g} s")
            time.sleep(0.2)

        # With their history now: attempts, usage and output.
        jobs = {k: [bgjobs.get_job(i) for i in v] for k, v in ids.items()}
        try:
            with open(signal_log, encoding="utf-8") as fh:
                CONTEXT["signals"] = fh.read().splitlines()
        except FileNotFoundError:
            CONTEXT["signals"] = []

        print("\nsummary:", flush=True)
        for key, group in jobs.items():
            for job in group:
                print(_line(key, job))
            print(f"  {key}: {CHECKS.get(key, check_result)(group)}", flush=True)
        print(f"  queues: {check_queues(bgjobs.queues())}", flush=True)
        print(f"  schedules: {check_schedules(bgjobs.schedules())}", flush=True)

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


def check_queues(queues: list[Any]) -> str:
    """The mail queue has its limit of 1, and is no longer paused."""
    mail = next((q for q in queues if q.name == "mail"), None)
    _expect(mail is not None, "bgjobs.queues() has no mail queue")
    assert mail is not None
    _expect(mail.limit == 1, f"the mail queue's limit is {mail.limit}, not 1")
    _expect(not mail.paused, "the mail queue is still paused")
    return ", ".join(f"{q.name} (limit {q.limit or '-'}, {q.pending} pending)" for q in queues)


def check_schedules(schedules: list[Any]) -> str:
    """The heartbeat ticks every 30 s; the nightly report at 02:30 in Berlin."""
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    found = {s.name: s for s in schedules}
    _expect(set(SCHEDULES) <= set(found), f"bgjobs.schedules() lists {sorted(found)}")
    beat, nightly = found["heartbeat"], found["nightly-report"]
    now = time.time()
    _expect(
        beat.every == 30 and beat.next_run is not None and 0 <= beat.next_run - now <= 30,
        f"heartbeat: every {beat.every}, next run {beat.next_run} (now {now:.0f})",
    )
    _expect(
        beat.last_status in (None, "pending", "running", "succeeded"),
        f"the heartbeat's last job {beat.last_job_id} is {beat.last_status}",
    )
    assert nightly.next_run is not None
    berlin = datetime.fromtimestamp(nightly.next_run, timezone.utc).astimezone(
        ZoneInfo("Europe/Berlin")
    )
    _expect(
        nightly.cron == "30 2 * * *"
        and (berlin.hour, berlin.minute) == (2, 30)
        and 0 < nightly.next_run - now <= 86_400 + 3600,
        f"nightly-report: cron {nightly.cron}, next run {berlin.isoformat()}",
    )
    last = (
        f"last job {beat.last_job_id} ({beat.last_status})"
        if beat.last_job_id
        else "no tick yet since the runner started"
    )
    return (
        f"heartbeat {beat.words}, next in {beat.next_run - now:.0f} s, {last}; "
        f"nightly-report {nightly.words}, next {berlin:%Y-%m-%d %H:%M %Z}"
    )


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
    for group in (g for g in jobs.values() if g):
        job = group[-1]
        # The link the index page's message gives for this job.
        code, _, body = get(f"{path}jobs/{job.id}", login)
        _expect(
            code == 200 and job.class_name.encode() in body and job.method_name.encode() in body,
            f"the dashboard page of job {job.id} answered {code} without the job's name",
        )
    for page, word in (("queues", b"mail"), ("schedules", b"heartbeat")):
        code, _, body = get(f"{path}{page}", login)
        _expect(code == 200 and word in body, f"GET {path}{page} answered {code}")
    say(f"dashboard OK: {total} jobs in its API, a page for each sample's job, queues, schedules")


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
            given = json.loads(args.ids)
            CONTEXT["pressed_at"] = given.pop("_pressed_at", {})
            CONTEXT["orders"] = given.pop("_orders", {})
            ids = {k: [int(i) for i in v] for k, v in given.items()}
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
