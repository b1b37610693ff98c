"""One attempt, inside the forked child: resolve, call, and report back over a pipe.

The child never writes to the job database. It sends newline-delimited JSON messages to the
runner, which alone records outcomes (fenced by attempt and lease), so a job cannot corrupt
its own record, and a child needs no database connection for bookkeeping.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from flask_bgjobs import security
from flask_bgjobs.errors import BgJobsError

if TYPE_CHECKING:
    from flask import Flask

    from flask_bgjobs.models import Job

#: Longest traceback kept per attempt (characters); the tail is the useful part.
MAX_TRACEBACK = 64 * 1024
#: Longest progress message (characters).
MAX_PROGRESS_MESSAGE = 1000

# Message kinds on the pipe.
MSG_PROGRESS = "p"
MSG_OK = "ok"
MSG_ERROR = "err"
MSG_REJECTED = "rej"

_PR_SET_PDEATHSIG = 1


@dataclass
class _Context:
    job_id: int
    attempt: int
    fd: int


_context: _Context | None = None


class CurrentJob:
    """`flask_bgjobs.current_job`: the job this process is running.

    Outside a job, every attribute raises `RuntimeError`, as Flask's proxies do.
    """

    def _ctx(self) -> _Context:
        if _context is None:
            raise RuntimeError(
                "Working outside of a background job: current_job is only set inside a job "
                "run by flask-bgjobs."
            )
        return _context

    @property
    def id(self) -> int:
        """The job's id."""
        return self._ctx().job_id

    @property
    def attempt(self) -> int:
        """The number of this attempt, 1 for the first run."""
        return self._ctx().attempt

    def progress(self, percent: float, message: str = "") -> None:
        """Report progress (0–100) with an optional message; it updates the record and log."""
        ctx = self._ctx()
        if isinstance(percent, bool) or not isinstance(percent, (int, float)):
            raise TypeError("percent must be a number from 0 to 100")
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be from 0 to 100, got {percent!r}")
        _send(
            ctx.fd,
            {"t": MSG_PROGRESS, "pct": float(percent), "msg": str(message)[:MAX_PROGRESS_MESSAGE]},
        )

    def __bool__(self) -> bool:
        return _context is not None

    def __repr__(self) -> str:
        if _context is None:
            return "<current_job: none>"
        return f"<current_job {_context.job_id} attempt {_context.attempt}>"


current_job = CurrentJob()


def _send(fd: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8", "surrogatepass")
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _load_prctl() -> Callable[..., int] | None:
    # Loaded once, in the runner: ctypes.CDLL in every child cost ~0.5 ms per attempt.
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


# Delivered to the attempt's process when its runner dies. Not SIGKILL: its handler takes the
# attempt's whole process group down, so nothing the job started runs on while it is rerun.
_DEATH_SIGNAL = getattr(signal, "SIGRTMIN", signal.SIGTERM) + 1


def _kill_own_group(_signum: int, _frame: object) -> None:
    os.killpg(0, signal.SIGKILL)


def _set_parent_death_signal() -> None:
    """Linux: die with the runner, so an orphan never finishes a job whose lease is lost."""
    if _prctl is not None:
        signal.signal(_DEATH_SIGNAL, _kill_own_group)
        _prctl(_PR_SET_PDEATHSIG, _DEATH_SIGNAL, 0, 0, 0)


def child_main(
    app: Flask,
    job: Job,
    fd: int,
    *,
    allowlist: security.Allowlist,
    max_params_bytes: int,
    parent_pid: int,
    after_fork: Callable[[], None],
) -> NoReturn:
    """Run one attempt of `job` in this freshly forked process, report on `fd`, and exit."""
    global _context
    code = 0
    try:
        # Our own process group: a timeout or cancel kills the job and everything it forked.
        os.setpgid(0, 0)
        _set_parent_death_signal()
        if os.getppid() != parent_pid:  # the runner died before prctl took effect
            os._exit(1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        # The runner's objects came across the fork: freeze them so this child's garbage
        # collector never walks (and copies) every inherited page.
        gc.freeze()
        after_fork()
        _context = _Context(job.id, job.attempts, fd)
        with app.app_context():
            _run(job, fd, allowlist, max_params_bytes)
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
        code = 70
        try:  # say why, if the pipe still works: "exit code 70" alone helps nobody
            _send(fd, {"t": MSG_ERROR, "error": _error_text(exc), "tb": traceback.format_exc()})
        except BaseException:  # noqa: BLE001
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        # Never run the parent's atexit handlers or finalisers in the child.
        os._exit(code)


def _run(job: Job, fd: int, allowlist: security.Allowlist, max_params_bytes: int) -> None:
    try:
        params = security.decode_params(job.params_json, max_params_bytes)
        target = security.resolve(job.class_name, job.method_name, allowlist)
    except BgJobsError as exc:
        _send(fd, {"t": MSG_REJECTED, "error": f"{type(exc).__name__}: {exc}"})
        return
    try:
        result = target(*params) if isinstance(params, list) else target(**params)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt fail the attempt too
        # Start the traceback at the job's own frame: ours is noise to the reader.
        frames = exc.__traceback__.tb_next if exc.__traceback__ else None
        tb = "".join(traceback.format_exception(type(exc), exc, frames))
        if len(tb) > MAX_TRACEBACK:
            tb = "…\n" + tb[-MAX_TRACEBACK:]
        _send(fd, {"t": MSG_ERROR, "error": _error_text(exc), "tb": tb})
        return
    message: dict[str, Any] = {"t": MSG_OK, "result": None}
    if result is not None:
        try:
            encoded = json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            message["note"] = f"return value not stored: not JSON-serialisable ({exc})"
        else:
            if len(encoded.encode("utf-8", "surrogatepass")) > max_params_bytes:
                message["note"] = "return value not stored: larger than BGJOBS_MAX_PARAMS_BYTES"
            else:
                message["result"] = encoded
    _send(fd, message)


def _error_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001
        text = "<str() failed>"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
