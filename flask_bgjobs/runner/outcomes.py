"""How attempts ended, and writing it down: first the database (fenced), then the logs.

`classify` is pure: from what the job process said (its final message), how it exited (its
wait status) and why the runner killed it (timeout, shutdown, lost lease) it derives exactly
one end reason. `Recorder` batches progress and outcomes, writes them through the store and
then appends their log lines, and holds them while the database is away.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask_bgjobs import joblog, models, security
from flask_bgjobs.errors import MAX_RETRY_IN, DatabaseBusy, InvalidJob
from flask_bgjobs.executor import MSG_ERROR, MSG_OK, MSG_PROGRESS, MSG_REJECTED, MSG_USAGE
from flask_bgjobs.limits import NO_LIMITS, Limits, size_text
from flask_bgjobs.models import Job
from flask_bgjobs.runner.health import Health
from flask_bgjobs.store import (
    MAX_ERROR,
    MAX_PROGRESS_MESSAGE,
    MAX_TRACEBACK,
    Outcome,
    Progress,
    Store,
    storable,
)

# Why the runner killed an attempt.
KILLED_TIMEOUT = "timeout"
KILLED_SHUTDOWN = "shutdown"
#: Cancelled, or taken back by another runner: nothing is recorded, the row is not ours.
KILLED_LOST = "lost"

#: How long the pid of a started attempt may wait for an outcome batch to ride along with.
PID_DELAY = 0.1
#: After this many failed writes of one outcome, it is written without the job's texts.
MAX_OUTCOME_TRIES = 3

_SIGXCPU = getattr(signal, "SIGXCPU", 24)
#: What C libraries and the interpreter print when an allocation fails and they give up
#: (abort, exit), rather than raise MemoryError. Looked for in the end of the output only.
MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
_MARKER_WINDOW = 4096


@dataclass(frozen=True)
class Usage:
    """What an attempt's process used: peak RSS (KiB) and user + system CPU (seconds)."""

    max_rss_kb: int | None = None
    cpu_s: float | None = None


# -- what a job process may say -------------------------------------------------------------


def parse_message(line: bytes, max_result_bytes: int) -> dict[str, Any] | None:
    """A message from a job process, checked; ``None`` for anything malformed.

    The job process runs the user's code, which may scribble on the channel or lie: every
    field is type-checked and bounded here, and a result must be strict JSON within
    `max_result_bytes`, as the executor itself would have required.
    """
    try:
        message = json.loads(line.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    kind = message.get("t")
    if kind == MSG_USAGE:
        cpu = _seconds(message.get("cpu"))
        return None if cpu is None else {"t": kind, "cpu": cpu}
    checked = _parse_report(kind, message, max_result_bytes)
    if checked is not None and kind != MSG_PROGRESS:
        usage = message.get("usage")
        if isinstance(usage, dict):
            rss, cpu = usage.get("rss"), _seconds(usage.get("cpu"))
            if _count(rss) and cpu is not None:
                checked["usage"] = {"rss": rss, "cpu": cpu}
        if message.get("retire") is True:
            checked["retire"] = True
    return checked


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


def _parse_report(
    kind: object, message: dict[str, Any], max_result_bytes: int
) -> dict[str, Any] | None:
    if kind == MSG_PROGRESS:
        pct, msg = message.get("pct"), message.get("msg", "")
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100:
            return None
        return {"t": kind, "pct": float(pct), "msg": _text(msg, MAX_PROGRESS_MESSAGE)}
    if kind == MSG_OK:
        result, note = message.get("result"), message.get("note")
        checked: dict[str, Any] = {"t": kind, "result": None}
        if note is not None:
            checked["note"] = _text(note, 500)
        if result is not None:
            problem = _result_problem(result, max_result_bytes)
            if problem:
                checked["note"] = f"return value not stored: {problem}"
            else:
                checked["result"] = result
        return checked
    if kind == MSG_ERROR:
        tb = message.get("tb")
        error: dict[str, Any] = {
            "t": kind,
            "error": _text(message.get("error"), MAX_ERROR),
            "tb": _text(tb, MAX_TRACEBACK, tail=True) if tb is not None else None,
        }
        if message.get("mem") is True:
            error["mem"] = True
        elif message.get("discard") is True:
            error["discard"] = True
        elif (retry_in := _seconds(message.get("retry_in"))) is not None:
            error["retry_in"] = min(retry_in, MAX_RETRY_IN)
        return error
    if kind == MSG_REJECTED:
        return {"t": kind, "error": _text(message.get("error"), MAX_ERROR)}
    return None


def _text(value: object, limit: int, *, tail: bool = False) -> str:
    text = value if isinstance(value, str) else repr(value)
    return storable(text, limit, tail=tail) or ""


def _result_problem(result: object, max_bytes: int) -> str | None:
    """Why a reported result cannot be stored, or ``None``: the executor's own rule again."""
    if not isinstance(result, str):
        return "not JSON text"
    if len(result.encode("utf-8", "surrogatepass")) > max_bytes:
        return "larger than BGJOBS_MAX_PARAMS_BYTES"
    try:
        security.decode_result(result)  # what is stored, every reader can read back
    except InvalidJob as exc:
        return _text(str(exc), 300)
    return None


# -- how an attempt ended --------------------------------------------------------------------


def classify(
    job: Job,
    *,
    final: dict[str, Any] | None,
    status: int | None,
    killed: str | None,
    retry_in: Callable[[Job], float | None],
    pid: int | None = None,
    rusage: Usage | None = None,
    cpu_base: float = 0.0,
    output: str | None = None,
    limits: Limits = NO_LIMITS,
) -> Outcome | None:
    """The one end reason of an attempt; ``None`` when it is not this runner's to record.

    `final` is the job process's last checked message, `status` its wait status (``None``
    while a reused process is still alive after its final message), `killed` why the runner
    killed it, if it did. `rusage` is ``wait4``'s figures for a process that exited during the
    attempt, `cpu_base` the CPU it had used before, `output` what the attempt wrote, and
    `limits` the limits it ran under. The outcome carries the attempt's usage and output.
    """
    ids = (job.id, job.attempts)
    if killed == KILLED_LOST:
        return None
    usage = attempt_usage(final, status, rusage, cpu_base)

    def outcome(reason: str, message: str, **fields: Any) -> Outcome:
        return Outcome(
            *ids,
            reason,
            message,
            pid=pid,
            max_rss_kb=usage.max_rss_kb,
            cpu_s=usage.cpu_s,
            output=output,
            **fields,
        )

    if killed == KILLED_SHUTDOWN:
        return outcome(models.END_SHUTDOWN, "interrupted by shutdown")
    kind = final.get("t") if final else None
    exited_cleanly = status is None or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
    tb: str | None = None
    asked: float | None = None  # the wait a RetryJob asked for
    if killed == KILLED_TIMEOUT:
        reason, error = models.END_TIMEOUT, f"timeout after {job.timeout:g} s"
    elif kind == MSG_OK and exited_cleanly:
        assert final is not None
        return outcome(
            models.END_SUCCEEDED,
            str(final.get("note") or "succeeded"),
            result_json=final.get("result"),
        )
    elif kind == MSG_REJECTED:
        assert final is not None
        error = str(final["error"])
        return outcome(models.END_REJECTED, error, error=error)
    elif kind == MSG_ERROR:
        assert final is not None
        reason, error, tb = models.END_EXCEPTION, str(final["error"]), final.get("tb")
        if final.get("discard"):
            # The job said so: failed for good, whatever attempts remain.
            return outcome(models.END_DISCARDED, error, error=error, traceback=tb)
        asked = final.get("retry_in")
        if final.get("mem") or error.startswith("MemoryError"):
            reason = models.END_MEMORY
            if limits.memory:
                error += f" (memory limit {size_text(limits.memory)})"
    else:
        reason, error = _death(status, limits, usage, output)
    wait = retry_in(job)
    if wait is not None and asked is not None:
        wait = float(asked)  # RetryJob(in_seconds): its own wait, while attempts remain
    message = error if wait is None else f"{error}; retrying in {wait:.1f} s"
    return outcome(reason, message, error=error, traceback=tb, retry_in=wait)


def _death(status: int | None, limits: Limits, usage: Usage, output: str | None) -> tuple[str, str]:
    """Why a process ended without a final message: a signal, an exit code, or a limit."""
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        how = f"killed by signal {sig} ({signame(sig)})"
        cpu_spent = limits.cpu > 0 and usage.cpu_s is not None and usage.cpu_s >= limits.cpu
        if sig == _SIGXCPU or (sig == signal.SIGKILL and cpu_spent):
            limit = f" of {limits.cpu:g} s" if limits.cpu else ""
            return models.END_CPU, f"CPU limit{limit} exceeded: {how}"
    else:
        code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else status
        how = f"exit code {code} without a result"
    if limits.memory and output and any(m in output[-_MARKER_WINDOW:] for m in MEMORY_MARKERS):
        # A C library that could not allocate and gave up (abort, exit) rather than fail
        # the call: its last words say so.
        return models.END_MEMORY, f"out of memory (memory limit {size_text(limits.memory)}): {how}"
    reason = models.END_SIGNAL if status is not None and os.WIFSIGNALED(status) else models.END_EXIT
    return reason, how


def attempt_usage(
    final: dict[str, Any] | None, status: int | None, rusage: Usage | None, cpu_base: float
) -> Usage:
    """An attempt's usage: ``wait4``'s when its process exited during it, less the CPU used
    before it; else what a reused process measured and reported in its final message."""
    if status is not None and rusage is not None:
        cpu = None if rusage.cpu_s is None else round(max(0.0, rusage.cpu_s - cpu_base), 6)
        return Usage(rusage.max_rss_kb, cpu)
    reported = final.get("usage") if final else None
    if isinstance(reported, dict):
        return Usage(reported["rss"], reported["cpu"])
    return Usage()


def rejected(job: Job, error: str) -> Outcome:
    """The outcome of a claimed job refused before it started (edited row, allowlist)."""
    return Outcome(job.id, job.attempts, models.END_REJECTED, error, error=error)


def signame(sig: int) -> str:
    """``SIGKILL`` for 9, and so on."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


# -- writing it down -------------------------------------------------------------------------


@dataclass
class _Pending:
    outcome: Outcome
    job: Job
    #: Seconds the attempt ran, for the "completed" line; ``None`` when it never started.
    seconds: float | None
    tries: int = 0


@dataclass
class Recorder:
    """Writes progress and outcomes through the store, then their log lines, in batches."""

    store: Store
    log: joblog.JobLog
    owner: str
    health: Health
    _progress: dict[tuple[int, int], Progress] = field(default_factory=dict)
    _progress_lines: list[tuple[str, str, int]] = field(default_factory=list)
    _unsaved: list[_Pending] = field(default_factory=list)
    _log_failed: set[int] = field(default_factory=set)
    _pids: list[tuple[int, int, int]] = field(default_factory=list)
    _pids_since: float | None = None
    #: When outcomes may be written again after a database error (monotonic).
    retry_at: float = 0.0
    _progress_retry_at: float = 0.0

    # -- what the loop hands in --

    def started(self, jobs: list[Job]) -> None:
        """Log the start of attempts just claimed."""
        entries = [("INFO", joblog.started(j.name, j.id, j.attempts, j.max_attempts)) for j in jobs]
        if entries and not self.log.write(entries):
            self._log_failed.update(j.id for j in jobs)

    def pids(self, started: list[tuple[int, int, int]], now: float) -> None:
        """Queue the process ids of attempts just started: ``(job_id, attempt, pid)``.

        Best effort, so operators see which process runs a job. They ride along with the next
        outcome batch; alone only after `PID_DELAY`, which a short job never waits for.
        """
        if started:
            self._pids.extend(started)
            if self._pids_since is None:
                self._pids_since = now

    def progress(self, job: Job, percent: float, message: str, pid: int | None) -> None:
        """Queue a progress report: every one is logged, the latest per attempt is stored."""
        self._progress[(job.id, job.attempts)] = Progress(
            job.id, job.attempts, percent, message, pid
        )
        self._progress_lines.append(
            ("INFO", joblog.progress(job.name, job.id, percent, message), job.id)
        )

    def outcome(self, outcome: Outcome, job: Job, seconds: float | None) -> None:
        """Queue how an attempt ended."""
        self._unsaved.append(_Pending(outcome, job, seconds))
        if outcome.reason == models.END_REJECTED and seconds is None:
            # Refused by the runner itself before it started: log it now, as the executor's
            # refusals are logged when they arrive.
            if not self.log.write_error(joblog.rejected(job.name, outcome.error or "")):
                self._log_failed.add(job.id)

    def log_failed(self, job_ids: list[int]) -> None:
        """Note jobs whose log lines could not be written (flagged with the next flush)."""
        self._log_failed.update(job_ids)

    @property
    def unsaved(self) -> list[Outcome]:
        """Outcomes not yet in the database."""
        return [p.outcome for p in self._unsaved]

    def next_wake(self) -> float | None:
        """When the loop should come back to write what waits (monotonic)."""
        wake = []
        if self._unsaved:
            wake.append(self.retry_at)
        if self._progress:
            wake.append(self._progress_retry_at)
        if self._pids_since is not None:
            wake.append(max(self.retry_at, self._pids_since + PID_DELAY))
        return min(wake) if wake else None

    # -- writing --

    def flush(self, now: float) -> None:
        """Write queued progress and outcomes that may be written now."""
        if self._progress and now >= self._progress_retry_at:
            self._flush_progress(now)
        if self._unsaved and now >= self.retry_at:
            self._flush_outcomes(now)
        if self._pids_since is not None and now >= max(self.retry_at, self._pids_since + PID_DELAY):
            pids, self._pids, self._pids_since = self._pids, [], None
            try:
                self.store.set_pids(self.owner, pids)
            except Exception as exc:  # noqa: BLE001 - best effort: dropped
                self.retry_at = self.health.failed("set_pids", exc, now)
        if self._log_failed and now >= self.retry_at:
            failed, self._log_failed = list(self._log_failed), set()
            try:
                self.store.mark_log_incomplete(failed)
            except Exception as exc:  # noqa: BLE001 - kept for the next try
                self._log_failed.update(failed)
                self.retry_at = self.health.failed("mark_log_incomplete", exc, now)

    def _flush_progress(self, now: float) -> None:
        reports, self._progress = list(self._progress.values()), {}
        lines, self._progress_lines = self._progress_lines, []
        try:
            self.store.progress(self.owner, reports)
        except Exception as exc:  # noqa: BLE001 - progress is best effort: dropped, not retried
            self._progress_retry_at = self.health.failed("progress", exc, now)
        if lines and not self.log.write([(level, text) for level, text, _ in lines]):
            self._log_failed.update(job_id for _, _, job_id in lines)

    def _flush_outcomes(self, now: float) -> None:
        batch, self._unsaved = self._unsaved, []
        pids, self._pids, self._pids_since = self._pids, [], None
        try:
            applied = self.store.finish(self.owner, [p.outcome for p in batch], pids=pids)
        except Exception as exc:  # noqa: BLE001 - see below
            if len(batch) == 1 or isinstance(exc, DatabaseBusy):
                self._retry_later(batch, exc, now)
                return
            # One bad outcome must not hold up the others: write them one by one.
            written: list[tuple[_Pending, bool]] = []
            kept: list[_Pending] = []
            for pending in batch:
                try:
                    [ok] = self.store.finish(self.owner, [pending.outcome])
                except Exception as one_exc:  # noqa: BLE001
                    kept.append(pending)
                    exc = one_exc
                    continue
                written.append((pending, ok))
            if kept:
                self._retry_later(kept, exc, now)
            self._log_outcomes(written)
            return
        self.health.ok()
        self._log_outcomes(list(zip(batch, applied, strict=True)))

    def _retry_later(self, batch: list[_Pending], exc: BaseException, now: float) -> None:
        for pending in batch:
            pending.tries += 1
            if pending.tries >= MAX_OUTCOME_TRIES:
                # Something in the job's own text may be what the database refuses: keep the
                # outcome, drop the text.
                o = pending.outcome
                note = f"[not stored: the database refused it ({type(exc).__name__})]"
                pending.outcome = dataclasses.replace(
                    o,
                    message=note,
                    result_json=None,
                    error=note if o.error is not None else None,
                    traceback=None,
                    output=None if o.output is None else note,
                )
        self._unsaved = batch + self._unsaved
        self.retry_at = self.health.failed("finish", exc, now)

    def _log_outcomes(self, written: list[tuple[_Pending, bool]]) -> None:
        """All main-log lines of a batch in one append: the drain rate depends on it."""
        entries: list[tuple[str, str]] = []
        logged: list[int] = []
        for pending, ok in written:
            job, o = pending.job, pending.outcome
            if pending.seconds is None and o.reason == models.END_REJECTED:
                continue  # refused before it started: logged already
            if not ok:
                entries.append(
                    (
                        "WARNING",
                        f"Job result discarded for {job.name} (job {job.id}, attempt "
                        f"{o.attempt}/{job.max_attempts}): the lease was lost meanwhile.",
                    )
                )
                continue
            if not self._outcome_lines(pending, entries):
                self._log_failed.add(job.id)
            logged.append(job.id)
        if not self.log.write(entries):
            self._log_failed.update(logged)

    def _outcome_lines(self, pending: _Pending, entries: list[tuple[str, str]]) -> bool:
        """Add the main-log lines of one outcome to `entries`; write its error-log entry."""
        job, o = pending.job, pending.outcome
        name, a, m = job.name, job.attempts, job.max_attempts
        if o.reason == models.END_SUCCEEDED:
            entries.append(("INFO", joblog.completed(name, job.id, pending.seconds or 0.0)))
            if o.message != "succeeded":
                entries.append(("WARNING", f"Job {job.id}: {o.message}"))
            return True
        if o.reason == models.END_SHUTDOWN:
            entries.append(("WARNING", joblog.interrupted(name, job.id, a, m)))
            return True
        error = o.error or o.reason
        if o.reason == models.END_REJECTED:
            ok = self.log.write_error(joblog.rejected(name, error))
        else:
            ok = self.log.write_error(joblog.failed(name, job.id, a, m, error), o.traceback)
        if o.retry_in is not None:
            entries.append(("WARNING", joblog.retrying(name, job.id, a, m, o.retry_in, error)))
        else:
            entries.append(("ERROR", joblog.failed(name, job.id, a, m, error)))
        return ok
