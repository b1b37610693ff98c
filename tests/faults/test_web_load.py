"""FAULTS case 14: 1,000 concurrent enqueues through gunicorn (4 workers × 8 threads)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Env, kill_tree, wait_for

from faults.conftest import Invariants, row_count, sqlite_held

pytestmark = pytest.mark.usefixtures("ctx")

REQUESTS = 1000
CLIENT_THREADS = 64


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _has_option(option: str) -> bool:
    help_text = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout
    return option in help_text


def post(url: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def server(env: Env, app: Any) -> Iterator[Server]:
    """The test app's enqueue view under gunicorn, 4 workers × 8 threads; stopped by PID."""
    port = _free_port()
    args = [sys.executable, "-m", "gunicorn", "--workers", "4", "--threads", "8"]
    args += ["--bind", f"127.0.0.1:{port}", "--timeout", "120", "--graceful-timeout", "5"]
    if _has_option("--no-control-socket"):  # gunicorn 27: no shared control socket
        args.append("--no-control-socket")
    with open(env.tmp / "gunicorn.out", "wb") as out:
        proc = subprocess.Popen(
            [*args, "jobapp.webapp:create_app()"],
            cwd=env.tmp,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: stopped as one
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ping(url, proc), timeout=60, interval=0.1, what="gunicorn to serve")
        yield Server(url, proc)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        kill_tree(proc.pid)
        proc.wait(timeout=10)


def _ping(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "gunicorn exited; see gunicorn.out"
    try:
        with urllib.request.urlopen(url + "/ping", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def test_1000_concurrent_enqueues_through_gunicorn_store_exactly_1000_rows(
    env: Env,
    app: Any,
    backend: str,
    server: Server,
    invariants: Invariants,
    figures: Callable[[str], None],
) -> None:
    """Case 14: no 500; every 201 has its row and nothing else is stored; a refusal (SQLite
    locked) is a 503 with Retry-After that wrote nothing, and repeating it succeeds."""
    statuses: Counter[int] = Counter()
    refusals_without_retry_after = []

    def enqueue_one(_n: int) -> int | None:
        for _ in range(30):
            status, headers, body = post(server.url + "/enqueue")
            statuses[status] += 1
            if status == 201:
                return int(json.loads(body)["id"])
            if status != 503:
                return None
            retry_after = headers.get("Retry-After")
            if retry_after is None:
                refusals_without_retry_after.append(body)
                return None
            time.sleep(float(retry_after))
        return None

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        ids = list(pool.map(enqueue_one, range(REQUESTS)))
    took = time.monotonic() - started
    stored = [i for i in ids if i is not None]
    invariants.enqueued.update(stored)
    figures(
        f"case 14 ({backend}): {REQUESTS} enqueues through gunicorn 4x8 from {CLIENT_THREADS} "
        f"client threads in {took:.1f} s ({REQUESTS / took:.0f}/s); responses {dict(statuses)}"
    )
    assert set(statuses) <= {201, 503}, statuses
    assert refusals_without_retry_after == []
    assert len(stored) == REQUESTS and len(set(stored)) == REQUESTS
    assert row_count(app) == REQUESTS

    if backend == "sqlite":  # PostgreSQL has no busy timeout: an enqueue waits for its lock
        with sqlite_held(env):
            status, headers, body = post(server.url + "/enqueue")
        assert status == 503, (status, body)
        assert headers.get("Retry-After") == "1"
        assert b"nothing was written" in body
        assert row_count(app) == REQUESTS
        status, _headers, body = post(server.url + "/enqueue")  # "try again" works
        assert status == 201, body
        invariants.enqueued.add(int(json.loads(body)["id"]))
        assert row_count(app) == REQUESTS + 1
    invariants.check()


def test_1000_concurrent_enqueues_with_one_unique_key_store_one_row(
    env: Env, app: Any, backend: str, server: Server, figures: Callable[[str], None]
) -> None:
    """SPEC §10: race-free across processes (4 gunicorn workers × 8 threads): the index decides."""
    ids: Counter[int] = Counter()
    duplicates = 0

    def enqueue_one(_n: int) -> None:
        nonlocal duplicates
        for _ in range(30):
            status, headers, body = post(server.url + "/enqueue?unique_key=nightly-export")
            if status == 503:
                time.sleep(float(headers.get("Retry-After", "1")))
                continue
            assert status == 201, (status, body)
            answer = json.loads(body)
            ids[int(answer["id"])] += 1
            duplicates += bool(answer["duplicate"])
            return

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(enqueue_one, range(REQUESTS)))
    took = time.monotonic() - started
    figures(
        f"unique key ({backend}): {REQUESTS} concurrent enqueues in {took:.1f} s -> {dict(ids)}"
    )
    assert sum(ids.values()) == REQUESTS
    assert len(ids) == 1 and duplicates == REQUESTS - 1
    assert row_count(app) == 1
