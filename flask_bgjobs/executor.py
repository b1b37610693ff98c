"""Attempts, inside a job process: resolve, call, and report back over the channel.

A job process is forked from the runner (or, with ``BGJOBS_START_METHOD=spawn``, started as a
fresh interpreter that loads the app: ``python -m flask_bgjobs.executor``). It runs one
attempt, or with process reuse up to ``BGJOBS_PROCESS_REUSE`` attempts one after another, each
received as a message on its channel to the runner.

The job process never writes to the job database. It sends newline-delimited JSON messages to
the runner, which alone records outcomes (fenced by attempt and lease), so a job cannot corrupt
its own record. The runner does not trust them either: it checks every message it is sent.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import faulthandler
import gc
import inspect
import io
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from flask_bgjobs import current, limits, security, signals, typed
from flask_bgjobs.errors import BgJobsError, DiscardJob, InvalidJob, RetryJob
from flask_bgjobs.limits import NO_LIMITS, Limits
from flask_bgjobs.models import Job

if TYPE_CHECKING:
    from flask import Flask

#: Longest traceback sent per attempt (characters); the tail is the useful part.
MAX_TRACEBACK = 64 * 1024
#: Longest error line sent per attempt (characters).
MAX_ERROR = 4000

# Messages on the channel, one JSON object per line. Runner → job process:
MSG_JOB = "job"  # {"t": "job", "id", "attempt", "class", "method", "params", "mem"?, "cpu"?,
#                   "row"?: the claimed job's columns, for the signals' job=}
# Job process → runner:
MSG_USAGE = "u"  # {"t": "u", "cpu"}: CPU used before this attempt (not in a fresh fork)
MSG_PROGRESS = "p"  # {"t": "p", "pct", "msg"}
MSG_OK = "ok"  # {"t": "ok", "result": JSON text or null, "note"?}
MSG_ERROR = "err"  # {"t": "err", "error", "tb", "mem"?: true for a MemoryError,
#                     "discard"?: true for DiscardJob, "retry_in"?: seconds, for RetryJob}
MSG_REJECTED = "rej"  # {"t": "rej", "error"}
FINAL_MESSAGES = (MSG_OK, MSG_ERROR, MSG_REJECTED)
# A final message of a reused process also carries "usage": {"rss": KiB, "cpu": seconds}, and
# "retire": true when the process exits after it (after a MemoryError: a fresh process for
# the next attempt, as after any other limit).

#: Environment of a spawned job process: its end of the channel, and how many attempts to run.
CHANNEL_FD_ENV = "BGJOBS_CHANNEL_FD"
BUDGET_ENV = "BGJOBS_PROCESS_BUDGET"
PARENT_ENV = "BGJOBS_PARENT_PID"

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Work:
    """One attempt to run: what the runner sends, and all a job process needs to know."""

    job_id: int
    attempt: int
    class_name: str
    method_name: str
    params_json: str
    limits: Limits = NO_LIMITS
    #: The job as claimed, handed to the signals' receivers (``None``: they get ``job=None``).
    job: Job | None = None

    def message(self) -> bytes:
        """The channel message that hands this attempt to a waiting job process."""
        data: dict[str, Any] = {
            "t": MSG_JOB,
            "id": self.job_id,
            "attempt": self.attempt,
            "class": self.class_name,
            "method": self.method_name,
            "params": self.params_json,
        }
        if self.limits.memory:
            data["mem"] = self.limits.memory
        if self.limits.cpu:
            data["cpu"] = self.limits.cpu
        if self.job is not None:
            data["row"] = job_row(self.job)
        return (json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n").encode(
            "utf-8", "surrogatepass"
        )

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Work:
        """The attempt a ``job`` message describes."""
        row = message.get("row")
        params_json = str(message["params"])
        return cls(
            int(message["id"]),
            int(message["attempt"]),
            str(message["class"]),
            str(message["method"]),
            params_json,
            Limits(int(message.get("mem", 0)), float(message.get("cpu", 0.0))),
            Job(**row, params_json=params_json) if isinstance(row, dict) else None,
        )


# The `Job` fields that travel with an attempt: every column, not the loaded history (nor the
# params, which the message carries already).
_ROW_FIELDS = tuple(
    f.name for f in dataclasses.fields(Job) if f.name not in ("events", "duplicate", "params_json")
)


def job_row(job: Job) -> dict[str, Any]:
    """A job's columns, as `Work.message` sends them to a reused or spawned job process."""
    return {name: getattr(job, name) for name in _ROW_FIELDS}


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


# Delivered to the job process when its runner dies. Not SIGKILL: its handler takes the
# process group down, so nothing the job started runs on while the job is rerun.
_DEATH_SIGNAL = getattr(signal, "SIGRTMIN", signal.SIGTERM) + 1


def _kill_own_group(_signum: int, _frame: object) -> None:
    os.killpg(0, signal.SIGKILL)


def _set_parent_death_signal() -> None:
    """Linux: die with the runner, so an orphan never finishes a job whose lease is lost."""
    if _prctl is not None:
        signal.signal(_DEATH_SIGNAL, _kill_own_group)
        _prctl(_PR_SET_PDEATHSIG, _DEATH_SIGNAL, 0, 0, 0)


class _Channel:
    """The job process's end of the channel: blocking reads of whole lines."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        _send(self.fd, message)

    def next_work(self) -> Work | None:
        """The next attempt to run; ``None`` when the runner closed the channel."""
        while b"\n" not in self._buffer:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except InterruptedError:
                continue
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line.decode("utf-8", "surrogatepass"))
        return Work.from_message(message) if message.get("t") == MSG_JOB else None


def warm_up() -> None:
    """In a spare job process (runner/forkserver.py), before it has an attempt: go once
    through what every attempt does around the job's own code (decode its message and params,
    encode a reply).

    A forked process copies each page of its parent's that it first writes to; done here, those
    copies are made while the spare waits, not while a caller waits for the job to start. No
    code of the host app runs here.
    """
    gc.freeze()
    sample = Work(0, 1, "warm.Up", "run", "[]")
    work = Work.from_message(json.loads(sample.message()))
    security.decode_params(work.params_json, 1024)
    json.dumps({"t": MSG_OK, "result": None}, separators=(",", ":"))


def serve(
    app: Flask,
    fd: int,
    first: Work | None,
    *,
    budget: int,
    allowlist: security.Allowlist,
    max_params_bytes: int,
    parent_pid: int,
    after_fork: Callable[[], None] = lambda: None,
    forked: bool = True,
    prepared: bool = False,
) -> NoReturn:
    """Run attempts in this job process until `budget` ran or the runner closes the channel.

    `first` is the attempt a process forked by the runner starts with (others read every
    attempt from the channel). `forked`: this process was forked, so its usage started at
    nothing (a spawned one loaded the app first). `prepared`: its parent ran `prepare_process`. Never returns: the process leaves with ``os._exit``, so no atexit
    handler or finaliser of the runner runs here.
    """
    code = 0
    channel = _Channel(fd)
    try:
        # Our own process group: a timeout or cancel kills the job and everything it forked.
        with contextlib.suppress(OSError):  # a spawned process may already lead its group
            os.setpgid(0, 0)
        _set_parent_death_signal()
        if os.getppid() != parent_pid:  # the runner died before prctl took effect
            os._exit(1)
        if not prepared:
            prepare_process()
            signal.set_wakeup_fd(-1)
        # The runner's objects came across the fork: freeze them so this process's garbage
        # collector never walks (and copies) every inherited page.
        gc.freeze()
        after_fork()
        enforcer = limits.Enforcer()
        work = first
        fresh = forked  # a forked process's first attempt: wait4 says it all
        for _ in range(max(1, budget)):
            if work is None:
                work = channel.next_work()
                if work is None:
                    break
            with app.app_context():
                more = _attempt(
                    work,
                    channel,
                    allowlist,
                    max_params_bytes,
                    enforcer=enforcer,
                    fresh=fresh,
                    reused=budget > 1,
                )
            work, fresh = None, False
            if not more:
                break
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a job process
        code = 70
        try:  # say why, if the channel still works: "exit code 70" alone helps nobody
            channel.send({"t": MSG_ERROR, "error": _error_text(exc), "tb": traceback.format_exc()})
        except BaseException:  # noqa: BLE001
            pass
    finally:
        _flush_streams()
        os._exit(code)


# Signals a job process takes with their default action. SIGXCPU's ends the process when it
# passes its CPU limit.
_DEFAULT_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGCHLD", "SIGHUP", "SIGXCPU")
    if hasattr(signal, name)
)


def prepare_process() -> None:
    """What a job process needs that survives ``fork``: default signal handlers and complete
    output. A fork server does it once for all the job processes it forks (`serve` is then
    told ``prepared``)."""
    for sig in _DEFAULT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    _prepare_output()


def _prepare_output() -> None:
    """In a job process, whose fd 1 and 2 are its attempts' output: make it complete.

    Python's stdout to a pipe is block-buffered: a job that crashes would lose its last
    prints, and prints would land after later ``os.write`` and subprocess output. Line
    buffering keeps them whole and in order. faulthandler writes a crash's Python traceback
    (a segfault in C code) to fd 2, so it lands in the output too.
    """
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is None:  # a runner started without them: still give prints somewhere to go
            with contextlib.suppress(OSError):
                setattr(sys, name, open(fd, "w", buffering=1, closefd=False))  # noqa: SIM115
        elif isinstance(stream, io.TextIOWrapper) and not stream.line_buffering:
            with contextlib.suppress(Exception):
                stream.reconfigure(line_buffering=True)
    with contextlib.suppress(Exception):
        faulthandler.enable(file=2, all_threads=True)


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


def _attempt(
    work: Work,
    channel: _Channel,
    allowlist: security.Allowlist,
    max_params_bytes: int,
    *,
    enforcer: limits.Enforcer,
    fresh: bool,
    reused: bool,
) -> bool:
    """Run one attempt under its limits and send its final message.

    Returns False when this process must run no further attempt. `fresh` is a forked
    process's first attempt (its usage so far is nil); in a `reused` process the attempt
    measures its own usage, as no ``wait4`` will.
    """
    meter = None
    if reused or not fresh:
        meter = limits.Meter.start()
        if not fresh:  # the runner subtracts it from wait4's figures if the process dies
            channel.send({"t": MSG_USAGE, "cpu": round(meter.cpu_base, 6)})
    enforcer.apply(work.limits)

    def report(percent: float, message: str) -> None:
        channel.send({"t": MSG_PROGRESS, "pct": percent, "msg": message})

    with current.running(current.JobContext(work.job_id, work.attempt, report)):
        final = run_attempt(work, allowlist, max_params_bytes)
    # Lift them: what follows is ours, and a reused process's CPU clock runs on between
    # attempts; SIGXCPU then would fail an attempt that had finished, or the next one.
    enforcer.apply(NO_LIMITS)
    # What the attempt printed reaches the output pipe before its final message, so the
    # runner, draining the pipe when the message arrives, gives it to this attempt.
    _flush_streams()
    more = True
    if reused:
        if meter is not None:
            final["usage"] = meter.stop()
        if final.get("mem"):  # a limit was hit: the next attempt gets a fresh process
            final["retire"] = True
            more = False
    channel.send(final)
    return more


def run_attempt(work: Work, allowlist: security.Allowlist, max_params_bytes: int) -> dict[str, Any]:
    """Resolve and call the job's target; return the final message describing how it went.

    Checks the allowlist and the params again first (the stored row may have been edited):
    a refused job is never imported or run.
    """
    try:
        params = security.decode_params(work.params_json, max_params_bytes)
        target = security.resolve(work.class_name, work.method_name, allowlist)
    except BgJobsError as exc:
        return {"t": MSG_REJECTED, "error": _error_text(exc)}
    app = _current_app()
    signals.send(signals.job_started, app, job=work.job)
    try:
        result = call(target, params)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt fail the attempt too
        memory = isinstance(exc, MemoryError)
        if memory and exc.__traceback__ is not None:
            # The job's frames hold what it allocated: let it go, formatting needs memory.
            traceback.clear_frames(exc.__traceback__.tb_next)
        error: dict[str, Any] = {
            "t": MSG_ERROR,
            "error": _error_text(exc),
            "tb": job_traceback(exc),
        }
        if memory:
            error["mem"] = True
        elif isinstance(exc, DiscardJob):
            error["discard"] = True
        elif isinstance(exc, RetryJob):
            error["retry_in"] = exc.in_seconds
        signals.send(signals.job_failed, app, job=work.job, exception=exc)
        return error
    signals.send(signals.job_succeeded, app, job=work.job, result=result)
    message: dict[str, Any] = {"t": MSG_OK, "result": None}
    if result is not None:
        encoded = encode_result(result, max_params_bytes)
        if isinstance(encoded, Note):
            message["note"] = encoded.text
        else:
            message["result"] = encoded
    return message


def _current_app() -> Flask | None:
    """The app whose context the attempt runs in: the signals' sender."""
    from flask import current_app, has_app_context

    return current_app._get_current_object() if has_app_context() else None  # type: ignore[attr-defined]


def call(target: Callable[..., Any], params: Any) -> Any:
    """Call a resolved target with decoded params (a list: positional, a dict: keywords).

    An ``async def`` target is run here, to the end.
    """
    if isinstance(target, typed.JobFunction):
        target = target.function  # its __call__ adds nothing but a frame to every traceback
    result = target(*params) if isinstance(params, list) else target(**params)
    if inspect.isawaitable(result):
        result = _await(result)
    return result


def job_frames(exc: BaseException) -> TracebackType | None:
    """The traceback of an exception a job raised through `call`, from the job's own frame.

    The frames up to `call` are ours: noise to the reader, and to a debugger.
    """
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is call.__code__:
            return tb.tb_next
        tb = tb.tb_next
    return exc.__traceback__


def job_traceback(exc: BaseException) -> str:
    """The text of `job_frames`, cut to its last `MAX_TRACEBACK` characters."""
    text = "".join(traceback.format_exception(type(exc), exc, job_frames(exc)))
    if len(text) > MAX_TRACEBACK:
        text = "…\n" + text[-MAX_TRACEBACK:]
    return text


def _await(awaitable: Any) -> Any:
    import asyncio  # only for async targets: ~10 ms to import

    async def wait() -> Any:
        return await awaitable

    return asyncio.run(wait())


@dataclass(frozen=True)
class Note:
    """Why a return value was not stored."""

    text: str


def encode_result(result: object, max_bytes: int) -> str | Note:
    """The strict JSON text of a return value, or a `Note` saying why it is not stored."""
    try:
        encoded = json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        security.decode_result(encoded)  # what is stored, every reader can read back
    except InvalidJob as exc:  # before ValueError: InvalidJob is a ValueError
        return Note(f"return value not stored: {_shorten(str(exc))}")
    except (TypeError, ValueError, RecursionError) as exc:
        return Note(f"return value not stored: not JSON-serialisable ({_shorten(str(exc))})")
    if len(encoded.encode("utf-8", "surrogatepass")) > max_bytes:
        return Note("return value not stored: larger than BGJOBS_MAX_PARAMS_BYTES")
    return encoded


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _error_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001
        text = "<str() failed>"
    name = type(exc).__name__
    text = f"{name}: {text}" if text else name
    if len(text) > MAX_ERROR:
        text = f"{text[:MAX_ERROR]}… [{len(text) - MAX_ERROR} characters cut]"
    return text


def main() -> None:
    """Entry point of a spawned job process: load the app, then serve its channel."""
    from flask.cli import ScriptInfo

    from flask_bgjobs.state import get_state

    fd = int(os.environ.pop(CHANNEL_FD_ENV))
    budget = int(os.environ.pop(BUDGET_ENV, "1"))
    parent = int(os.environ.pop(PARENT_ENV, str(os.getppid())))
    try:
        app = ScriptInfo(app_import_path=os.environ.get("BGJOBS_APP") or None).load_app()
        state = get_state(app)
    except BaseException as exc:  # noqa: BLE001 - the attempt fails, saying why
        _send(
            fd,
            {
                "t": MSG_ERROR,
                "error": f"could not load the app: {_error_text(exc)}",
                "tb": traceback.format_exc(),
            },
        )
        os._exit(70)
    serve(
        app,
        fd,
        None,
        forked=False,
        budget=budget,
        allowlist=state.allowlist,
        max_params_bytes=state.settings.max_params_bytes,
        parent_pid=parent,
    )


if __name__ == "__main__":
    main()
