"""The runner: claims due jobs and runs each attempt in its own forked child.

One single-threaded loop around a selector. It wakes on a datagram from the web process
(a job was enqueued), a PostgreSQL notification, a child's pipe (progress, result), SIGCHLD,
SIGTERM, or the next timer (a due job, a lease renewal, a timeout). Only this loop writes
outcomes, each fenced by attempt and lease owner.

The runner loads the app once and forks: ~3 ms per attempt instead of the ~0.8 s a fresh
interpreter needs to import Flask and SQLAlchemy. It owns no threads, which is what makes
``fork()`` safe here, and the web process never forks at all.

Run by the operator as ``flask bgjobs worker``, or auto-started as ``python -m
flask_bgjobs.runner`` with the app import string in ``BGJOBS_APP``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import secrets
import selectors
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask_bgjobs import executor, joblog, launcher, models, retry, security
from flask_bgjobs.errors import BgJobsError
from flask_bgjobs.store import Outcome, Reclaimed

if TYPE_CHECKING:
    from flask import Flask

    from flask_bgjobs.extension import State
    from flask_bgjobs.models import Job

#: Fallback poll for due jobs when no wake-up arrives (seconds).
POLL_INTERVAL = 1.0
#: While jobs run, how often the runner checks it still holds their leases (cancel, takeover).
OWNERSHIP_CHECK = 1.0
#: After a database error, wait this long before touching the database again (seconds).
DB_RETRY = 0.5
#: A burst worker gives up (exit 1) when the database stays unreachable this long (seconds).
BURST_DB_PATIENCE = 30.0
#: Most bytes a child may send before its result (a runaway progress loop is cut off).
MAX_PIPE_BUFFER = 64 * 1024 * 1024


@dataclass
class Attempt:
    """A running child process and what it has reported so far."""

    job: Job
    pid: int
    fd: int
    started: float  # monotonic
    deadline: float | None  # monotonic
    buffer: bytearray = field(default_factory=bytearray)
    final: dict[str, Any] | None = None
    progress: list[tuple[float, str]] = field(default_factory=list)
    killed: str | None = None  # "timeout", "shutdown" or "lost"
    status: int | None = None  # from waitpid


class Runner:
    """Claims and runs jobs until stopped (or idle, when auto-started; or drained, in burst)."""

    def __init__(
        self,
        app: Flask,
        state: State,
        *,
        concurrency: int | None = None,
        burst: bool = False,
        autostarted: bool = False,
        lock_fd: int | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.settings = state.settings
        self.store = state.store
        self.log = state.joblog
        self.concurrency = max(1, concurrency or self.settings.max_concurrency)
        self.burst = burst
        self.autostarted = autostarted
        self.runner_id = state.runner_id()
        # The lease owner is unique per process start, so a restarted runner that reuses a
        # BGJOBS_RUNNER_ID can never mistake an old lease for its own.
        self.owner = f"{self.runner_id}~{secrets.token_hex(4)}"
        self._inherited_lock_fd = lock_fd
        self._lock_fd: int | None = None
        self._attempts: dict[int, Attempt] = {}  # by pid
        self._fd_attempt: dict[int, Attempt] = {}
        self._finished: list[Attempt] = []
        self._unsaved: list[tuple[Outcome, Attempt | None]] = []
        self._log_failed: set[int] = set()
        self._stop_requests = 0
        self._stop_logged = False
        self._stop_deadline = 0.0
        self._want_claim = True
        self._check_leases = False
        self._db_wait_until = 0.0
        self._last_db_error = 0.0
        self._db_failing_since: float | None = None
        self._exit_code = 0
        now = time.monotonic()
        self._next_renew = now + self.settings.lease_seconds / 3
        self._next_owned = now + OWNERSHIP_CHECK
        self._next_sweep = now
        self._next_poll = now + POLL_INTERVAL
        self._next_due: float | None = None  # wall clock
        self._last_active = now
        self._sel = selectors.DefaultSelector()
        self._wake_sock: socket.socket | None = None
        self._wake_path: str | None = None
        self._sig_r = self._sig_w = -1
        self._pg: Any = None
        self._pg_fd = -1
        self._next_pg_connect = now

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return the process exit code."""
        self._setup()
        try:
            self.log.info(
                f"Runner {security.printable(self.runner_id)} started (pid {os.getpid()}, "
                f"concurrency {self.concurrency}{', burst' if self.burst else ''})."
            )
            while self._step():
                pass
        finally:
            self._teardown()
        self.log.info(f"Runner {security.printable(self.runner_id)} stopped (pid {os.getpid()}).")
        return self._exit_code

    def _setup(self) -> None:
        # Ignore SIGXFSZ so a log over `ulimit -f` is a failed write, not a dead runner.
        if hasattr(signal, "SIGXFSZ"):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        self._sig_r, self._sig_w = os.pipe()
        os.set_blocking(self._sig_r, False)
        os.set_blocking(self._sig_w, False)
        signal.set_wakeup_fd(self._sig_w)
        signal.signal(signal.SIGCHLD, _noop)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        self._sel.register(self._sig_r, selectors.EVENT_READ, "signal")
        bound = self.state.launcher.bind()
        if bound is not None:
            self._wake_sock, self._wake_path = bound
            self._sel.register(self._wake_sock, selectors.EVENT_READ, "wake")
        self._lock_fd = self.state.launcher.hold_lock(
            self._inherited_lock_fd, exclusive=self.autostarted
        )
        if self.autostarted and self._lock_fd is None:
            # Another auto-started runner won the race; it will serve.
            self._stop_requests = 2
        self.state.guard_app_engines(self.app)
        # Everything loaded so far lives as long as the runner: keep the collector (here and
        # in every child) off those pages.
        gc.collect()
        gc.freeze()

    def _teardown(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        if self._wake_path:
            with contextlib.suppress(OSError):
                os.unlink(self._wake_path)
        if self._wake_sock is not None:
            self._wake_sock.close()
        self._close_pg()
        self._sel.close()
        for fd in (self._sig_r, self._sig_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._lock_fd is not None:
            if self.autostarted:  # the pid in the lock file is ours: clear it
                self.state.launcher.release_lock(self._lock_fd)
            else:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
        self._lock_fd = None

    def _stopping(self) -> bool:
        return self._stop_requests > 0

    def _on_stop(self, _signum: int, _frame: Any) -> None:
        self._stop_requests += 1
        if self._stop_requests == 1:
            self._stop_deadline = time.monotonic() + self.settings.shutdown_grace

    # -- the loop ----------------------------------------------------------------------------

    def _step(self) -> bool:
        """One turn of the loop; False when the runner should exit."""
        now = time.monotonic()
        self._reap()
        self._record()
        if self._stop_requests:
            if not self._stop_logged:
                self._stop_logged = True
                self.log.info(
                    f"Runner {security.printable(self.runner_id)} stopping: no new jobs; "
                    f"{len(self._attempts)} running, {self.settings.shutdown_grace:g} s grace."
                )
            if not self._attempts:
                self._save_unsaved()
                # Outcomes not yet written (database down) are worth the rest of the grace.
                if not self._unsaved or self._stop_requests > 1 or now >= self._stop_deadline:
                    for outcome, _ in self._unsaved:
                        self.log.write_error(
                            f"Runner {security.printable(self.runner_id)}: exiting without "
                            f"recording job {outcome.job_id} attempt {outcome.attempt} "
                            f"({outcome.reason}); it is taken back when its lease expires."
                        )
                    return False
            if self._stop_requests > 1 or now >= self._stop_deadline:
                for att in self._attempts.values():
                    if att.killed is None:
                        self._kill(att, "shutdown")
        else:
            if self._next_due is not None and self._next_due <= time.time():
                self._next_due = None
                self._want_claim = True
            self._housekeeping(now)
            if self._stopping():  # a signal may have arrived meanwhile
                return True
            self._check_timeouts(now)
            if self._want_claim and now >= self._db_wait_until:
                self._claim()
                if self._attempts or self._finished:
                    self._last_active = now
            if self.burst and not self._attempts and not self._finished and not self._unsaved:
                if not self._want_claim and not self._due_now():
                    return False
            if self.burst and not self._attempts and self._db_failing_since is not None:
                if now - self._db_failing_since > BURST_DB_PATIENCE:
                    self._exit_code = 1  # nobody would see it working: say it failed
                    return False
            if self.autostarted and not self._attempts and not self._finished:
                if now - self._last_active >= self.settings.idle_timeout and self._idle_exit():
                    return False
        self._wait(self._timeout(time.monotonic()))
        return True

    def _timeout(self, now: float) -> float:
        if self._finished or (self._want_claim and len(self._attempts) < self.concurrency):
            return 0 if now >= self._db_wait_until else self._db_wait_until - now
        wake = [self._next_poll, self._next_sweep]
        if self._attempts:
            wake += [self._next_renew, self._next_owned]
            wake += [a.deadline for a in self._attempts.values() if a.deadline is not None]
        if self._next_due is not None:
            wake.append(now + max(0.0, self._next_due - time.time()))
        if self._stop_requests:
            wake.append(self._stop_deadline)
        if self.autostarted and not self._attempts:
            wake.append(self._last_active + self.settings.idle_timeout)
        return max(0.0, min(wake) - now)

    def _wait(self, timeout: float) -> None:
        for key, _mask in self._sel.select(min(timeout, POLL_INTERVAL)):
            tag = key.data
            if tag == "signal":
                _drain_fd(self._sig_r)
            elif tag == "wake":
                self._on_wake()
            elif tag == "pg":
                self._on_pg()
            elif isinstance(tag, Attempt):
                self._read_pipe(tag)

    def _on_wake(self) -> None:
        assert self._wake_sock is not None
        while True:
            try:
                payload = self._wake_sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if payload == launcher.WAKE_CANCELLED:
                self._check_leases = True
            else:
                self._want_claim = True

    # -- claiming and starting ---------------------------------------------------------------

    def _claim(self) -> None:
        free = self.concurrency - len(self._attempts)
        if free <= 0:
            return
        try:
            jobs = self.store.claim(
                owner=self.owner,
                runner_id=self.runner_id,
                limit=free,
                lease_seconds=self.settings.lease_seconds,
            )
        except Exception as exc:  # noqa: BLE001 - a locked or lost database must not kill us
            self._db_error("claim", exc)
            return
        self._db_failing_since = None
        if len(jobs) < free:
            self._want_claim = False
            self._next_due = None
            self._next_poll = time.monotonic()  # look up the next due time right away
        entries: list[tuple[str, str]] = []
        ready: list[Job] = []
        for job in jobs:
            try:
                # Re-check before anything is imported: the row may have been edited.
                self.state.allowlist.check(job.class_name, job.method_name)
                security.decode_params(job.params_json, self.settings.max_params_bytes)
            except BgJobsError as exc:
                self._reject(job, exc)
                continue
            entries.append(
                ("INFO", joblog.started(job.name, job.id, job.attempts, job.max_attempts))
            )
            ready.append(job)
        if entries and not self.log.write(entries):
            self._log_failed.update(j.id for j in ready)
        started = [(job.id, job.attempts, self._start(job)) for job in ready]
        try:  # so operators see which process runs a job; best effort
            self.store.set_pids(self.owner, started)
        except Exception as exc:  # noqa: BLE001
            self._db_error("set_pids", exc)

    def _start(self, job: Job) -> int:
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which reports over the pipe
            os.close(read_fd)
            executor.child_main(
                self.app,
                job,
                write_fd,
                allowlist=self.state.allowlist,
                max_params_bytes=self.settings.max_params_bytes,
                parent_pid=parent,
                after_fork=self._after_fork_in_child,
            )
        os.close(write_fd)
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first wins the race
        except OSError:
            pass
        os.set_blocking(read_fd, False)
        now = time.monotonic()
        timeout = job.timeout
        att = Attempt(job, pid, read_fd, now, now + timeout if timeout > 0 else None)
        self._attempts[pid] = att
        self._fd_attempt[read_fd] = att
        self._sel.register(read_fd, selectors.EVENT_READ, att)
        return pid

    def _after_fork_in_child(self) -> None:
        # The child must never use the runner's sockets, lock or database connections.
        for fd in (self._sig_r, self._sig_w, self._lock_fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        # Only pipes still open: a closed one's number may already be this child's own pipe.
        for fd in self._fd_attempt:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._wake_sock is not None:
            with contextlib.suppress(OSError):
                os.close(self._wake_sock.fileno())
        if self._pg is not None:
            with contextlib.suppress(OSError):
                os.close(self._pg_fd)
        # Nothing to do for database pools: `_setup` guarded them (see guard_app_engines).

    def _reject(self, job: Job, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        outcome = Outcome(
            job.id, job.attempts, models.END_REJECTED, message=error, error=error, retry_in=None
        )
        self._unsaved.append((outcome, None))
        if not self.log.write_error(joblog.rejected(job.name, error)):
            self._log_failed.add(job.id)

    # -- children ----------------------------------------------------------------------------

    def _read_pipe(self, att: Attempt) -> None:
        while True:
            try:
                chunk = os.read(att.fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._close_pipe(att)
                break
            att.buffer += chunk
            if len(att.buffer) > MAX_PIPE_BUFFER:
                self._close_pipe(att)
                break
        while True:
            end = att.buffer.find(b"\n")
            if end < 0:
                return
            line = bytes(att.buffer[:end])
            del att.buffer[: end + 1]
            try:
                message = json.loads(line.decode("utf-8", "replace"))
                kind = message["t"]
            except (ValueError, KeyError, TypeError):
                continue  # a job may scribble on the pipe; it cannot confuse us
            if kind == executor.MSG_PROGRESS:
                try:
                    att.progress.append((float(message["pct"]), str(message.get("msg", ""))))
                except (KeyError, TypeError, ValueError):
                    continue
            elif kind in (executor.MSG_OK, executor.MSG_ERROR, executor.MSG_REJECTED):
                att.final = message

    def _close_pipe(self, att: Attempt) -> None:
        # Fd numbers are reused: only close the pipe if it is still this attempt's own.
        if self._fd_attempt.get(att.fd) is att:
            del self._fd_attempt[att.fd]
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(att.fd)
            os.close(att.fd)

    def _reap(self) -> None:
        while self._attempts:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            att = self._attempts.pop(pid, None)
            if att is None:
                continue
            att.status = status
            if self._fd_attempt.get(att.fd) is att:
                self._read_pipe(att)
                self._close_pipe(att)
            self._finished.append(att)
            self._want_claim = True  # a slot is free

    def _kill(self, att: Attempt, reason: str) -> None:
        att.killed = reason
        launcher.kill_group(att.pid, signal.SIGKILL)

    def _check_timeouts(self, now: float) -> None:
        for att in self._attempts.values():
            if att.deadline is not None and now >= att.deadline and att.killed is None:
                self._kill(att, "timeout")

    # -- recording ---------------------------------------------------------------------------

    def _record(self) -> None:
        """Write progress and outcomes to the database, then to the logs."""
        self._record_progress()
        finished, self._finished = self._finished, []
        for att in finished:
            outcome = self._outcome(att)
            if outcome is not None:
                self._unsaved.append((outcome, att))
            elif att.killed == "lost":
                self.log.warning(
                    f"Job stopped for {att.job.name} (job {att.job.id}, attempt "
                    f"{att.job.attempts}/{att.job.max_attempts}): this runner no longer holds "
                    "it (cancelled, or taken back after its lease expired)."
                )
        self._save_unsaved()

    def _record_progress(self) -> None:
        updates: list[tuple[int, int, float, str, int | None]] = []
        entries: list[tuple[str, str]] = []
        ids: list[int] = []
        for att in [*self._attempts.values(), *self._finished]:
            if not att.progress:
                continue
            for pct, msg in att.progress:
                entries.append(("INFO", joblog.progress(att.job.name, att.job.id, pct, msg)))
            pct, msg = att.progress[-1]
            att.progress.clear()
            updates.append((att.job.id, att.job.attempts, pct, msg, att.pid))
            ids.append(att.job.id)
        if not updates:
            return
        try:
            self.store.progress(self.owner, updates)
        except Exception as exc:  # noqa: BLE001 - progress is best effort
            self._db_error("progress", exc)
        if not self.log.write(entries):
            self._log_failed.update(ids)

    def _outcome(self, att: Attempt) -> Outcome | None:
        job = att.job
        status = att.status or 0
        final = att.final or {}
        kind = final.get("t")
        ids = (job.id, job.attempts)
        if att.killed == "lost":
            return None
        if att.killed == "shutdown":
            return Outcome(*ids, models.END_SHUTDOWN, "interrupted by shutdown", pid=att.pid)
        tb = None
        if att.killed == "timeout":
            reason, error = models.END_TIMEOUT, f"timeout after {job.timeout:g} s"
        elif kind == executor.MSG_OK and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return Outcome(
                *ids,
                models.END_SUCCEEDED,
                str(final.get("note") or "succeeded"),
                result_json=final.get("result"),
                pid=att.pid,
            )
        elif kind == executor.MSG_REJECTED:
            error = str(final.get("error"))
            self.log.write_error(joblog.rejected(job.name, error))
            return Outcome(*ids, models.END_REJECTED, error, error=error, pid=att.pid)
        elif kind == executor.MSG_ERROR:
            reason, error, tb = models.END_EXCEPTION, str(final.get("error")), final.get("tb")
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            reason, error = models.END_SIGNAL, f"killed by signal {sig} ({_signame(sig)})"
        else:
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
            reason, error = models.END_EXIT, f"exit code {code} without a result"
        wait = retry.retry_in(
            job, retry_delay=self.settings.retry_delay, kind=self.settings.retry_backoff
        )
        message = error if wait is None else f"{error}; retrying in {wait:.1f} s"
        return Outcome(
            *ids,
            reason,
            message,
            error=error,
            traceback=tb if isinstance(tb, str) else None,
            retry_in=wait,
            pid=att.pid,
        )

    def _save_unsaved(self) -> None:
        if not self._unsaved or time.monotonic() < self._db_wait_until:
            return
        batch = self._unsaved
        try:
            applied = self.store.finish(self.owner, [o for o, _ in batch])
        except Exception as exc:  # noqa: BLE001 - keep them and try again
            self._db_error("finish", exc)
            return
        self._unsaved = []
        # All main-log lines of the batch in one append: the drain rate depends on it.
        entries: list[tuple[str, str]] = []
        logged: list[int] = []
        for (outcome, att), ok in zip(batch, applied, strict=False):
            if att is None:
                continue  # rejected before it started: logged already
            job = att.job
            if not ok:
                entries.append(
                    (
                        "WARNING",
                        f"Job result discarded for {job.name} (job {job.id}, attempt "
                        f"{outcome.attempt}/{job.max_attempts}): the lease was lost meanwhile.",
                    )
                )
                continue
            if not self._log_outcome(job, outcome, att, entries):
                self._log_failed.add(job.id)
            logged.append(job.id)
        if not self.log.write(entries):
            self._log_failed.update(logged)
        if self._log_failed:
            failed, self._log_failed = list(self._log_failed), set()
            try:
                self.store.mark_log_incomplete(failed)
            except Exception as exc:  # noqa: BLE001
                self._log_failed.update(failed)  # keep them for the next try
                self._db_error("mark_log_incomplete", exc)

    def _log_outcome(
        self, job: Job, o: Outcome, att: Attempt, entries: list[tuple[str, str]]
    ) -> bool:
        """Add the main-log lines of one outcome to `entries`; write its error-log entry."""
        name, a, m = job.name, job.attempts, job.max_attempts
        if o.reason == models.END_SUCCEEDED:
            seconds = time.monotonic() - att.started
            entries.append(("INFO", joblog.completed(name, job.id, seconds)))
            if o.message != "succeeded":
                entries.append(("WARNING", f"Job {job.id}: {o.message}"))
            return True
        if o.reason == models.END_SHUTDOWN:
            entries.append(("WARNING", joblog.interrupted(name, job.id, a, m)))
            return True
        error = o.error or o.reason
        if o.retry_in is not None:
            entries.append(("WARNING", joblog.retrying(name, job.id, a, m, o.retry_in, error)))
        else:
            entries.append(("ERROR", joblog.failed(name, job.id, a, m, error)))
        return self.log.write_error(joblog.failed(name, job.id, a, m, error), o.traceback)

    # -- housekeeping ------------------------------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        if now < self._db_wait_until:
            return
        if self._attempts and (now >= self._next_renew):
            self._next_renew = now + self.settings.lease_seconds / 3
            self._next_owned = now + OWNERSHIP_CHECK
            self._leases(renew=True)
        elif self._attempts and (self._check_leases or now >= self._next_owned):
            self._next_owned = now + OWNERSHIP_CHECK
            self._leases(renew=False)
        self._check_leases = False
        if now >= self._next_sweep:
            self._next_sweep = now + self.settings.lease_seconds / 3
            self._sweep()
        if now >= self._next_poll:
            self._next_poll = now + POLL_INTERVAL
            self._poll()
        if self.store.is_postgres and self._pg is None and now >= self._next_pg_connect:
            self._connect_pg()
        if self._lock_fd is None and not self.autostarted:
            self._lock_fd = self.state.launcher.hold_lock(None, exclusive=False)

    def _leases(self, *, renew: bool) -> None:
        try:
            if renew:
                owned = self.store.renew(self.owner, self.settings.lease_seconds)
            else:
                owned = self.store.owned(self.owner)
        except Exception as exc:  # noqa: BLE001
            self._db_error("lease renewal", exc)
            return
        for att in self._attempts.values():
            if att.job.id not in owned and att.killed is None:
                self._kill(att, "lost")

    def _sweep(self) -> None:
        try:
            reclaimed = self.state.reclaim_expired(except_owner=self.owner)
        except Exception as exc:  # noqa: BLE001
            self._db_error("sweep", exc)
            return
        if any(r.retry_in is not None for r in reclaimed):
            self._want_claim = True
        _ = reclaimed  # logged by State.reclaim_expired

    def _poll(self) -> None:
        try:
            self._next_due = self.store.next_due_at()
        except Exception as exc:  # noqa: BLE001
            self._db_error("poll", exc)
            return
        if self._next_due is not None and self._next_due <= time.time():
            self._want_claim = True

    def _due_now(self) -> bool:
        try:
            due = self.store.next_due_at()
        except Exception as exc:  # noqa: BLE001
            self._db_error("poll", exc)
            return True
        return due is not None and due <= time.time()

    def _idle_exit(self) -> bool:
        """Leave when there is no work at all; never strand a job enqueued meanwhile."""
        try:
            if self.store.has_work():
                self._last_active = time.monotonic()
                return False
            # Release the lock first, then look again: an enqueue that saw the lock held
            # committed before we released it, so the second look sees its job; a later one
            # finds the lock free and starts a new runner.
            if self._lock_fd is not None:
                self.state.launcher.release_lock(self._lock_fd)
                self._lock_fd = None
            if not self.store.has_work():
                return True
        except Exception as exc:  # noqa: BLE001
            self._db_error("idle check", exc)
            return False
        self._lock_fd = self.state.launcher.hold_lock(None, exclusive=True)
        self._last_active = time.monotonic()
        return self._lock_fd is None  # someone else started a runner: let it serve

    # -- PostgreSQL notifications ------------------------------------------------------------

    def _connect_pg(self) -> None:
        try:
            import psycopg
            import sqlalchemy as sa

            from flask_bgjobs.store import NOTIFY_CHANNEL

            url = sa.engine.make_url(self.store.uri).set(drivername="postgresql")
            conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
            try:
                conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                fd = conn.fileno()
                self._sel.register(fd, selectors.EVENT_READ, "pg")
            except BaseException:
                conn.close()
                raise
            # Remember the number: once libpq closed a dead socket, fileno() raises, and a
            # stale registration would collide with the next pipe that reuses the number.
            self._pg, self._pg_fd = conn, fd
            self._want_claim = True  # notifications may have been missed while disconnected
        except Exception as exc:  # noqa: BLE001
            self._next_pg_connect = time.monotonic() + 5
            self._db_error("LISTEN", exc)

    def _on_pg(self) -> None:
        try:
            pgconn = self._pg.pgconn
            pgconn.consume_input()
            if pgconn.status != 0:  # CONNECTION_OK
                raise ConnectionError("notification connection lost")
            while (note := pgconn.notifies()) is not None:
                if note.extra == b"c":
                    self._check_leases = True
                else:
                    self._want_claim = True
        except Exception as exc:  # noqa: BLE001
            self._close_pg()
            self._next_pg_connect = time.monotonic() + 1
            self._db_error("LISTEN", exc)

    def _close_pg(self) -> None:
        if self._pg is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(self._pg_fd)
        try:
            self._pg.close()
        except Exception:  # noqa: BLE001
            pass
        self._pg = None

    def _db_error(self, what: str, exc: BaseException) -> None:
        self._db_wait_until = time.monotonic() + DB_RETRY
        now = time.monotonic()
        if self._db_failing_since is None:
            self._db_failing_since = now
        if now - self._last_db_error >= 30:
            self._last_db_error = now
            self.log.write_error(
                f"Runner {security.printable(self.runner_id)}: database error during {what}; "
                f"will retry. Error: {joblog.error_text(exc)}"
            )


def _noop(_signum: int, _frame: Any) -> None:
    """SIGCHLD handler: its only job is to make the wake-up fd readable."""


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def log_reclaimed(log: joblog.JobLog, reclaimed: list[Reclaimed]) -> list[int]:
    """Write the log lines for jobs taken back after their lease expired.

    Returns the ids of the jobs whose lines could not all be written.
    """
    unlogged = []
    for r in reclaimed:
        job = r.job
        a, m = job.attempts, job.max_attempts
        error = f"LeaseExpired: lease of {job.runner_id} expired (runner lost)"
        ok = log.write_error(joblog.failed(job.name, job.id, a, m, error))
        if r.retry_in is None:
            ok = log.error(joblog.failed(job.name, job.id, a, m, error)) and ok
        else:
            ok = log.warning(joblog.retrying(job.name, job.id, a, m, r.retry_in, error)) and ok
        if not ok:
            unlogged.append(job.id)
    return unlogged


def main(argv: list[str] | None = None) -> int:
    """Entry point of an auto-started runner: ``python -m flask_bgjobs.runner``."""
    from flask.cli import ScriptInfo

    lock_fd_text = os.environ.pop(launcher.LOCK_FD_ENV, None)
    lock_fd = int(lock_fd_text) if lock_fd_text and lock_fd_text.isdigit() else None
    try:
        app = ScriptInfo(app_import_path=os.environ.get("BGJOBS_APP") or None).load_app()
        state = app.extensions["bgjobs"]
    except Exception:  # noqa: BLE001 - nobody watches our stderr: say it in the error log
        _report_crash("could not load the app (BGJOBS_APP={})".format(os.environ.get("BGJOBS_APP")))
        return 1
    try:
        with app.app_context():
            return Runner(app, state, autostarted=True, lock_fd=lock_fd).run()
    except Exception:  # noqa: BLE001
        state.joblog.write_error("Runner crashed.", traceback.format_exc())
        return 1


def _report_crash(message: str) -> None:
    path = (
        os.environ.get(launcher.ERROR_LOG_ENV)
        or os.environ.get("BGJOBS_ERROR_LOG_FILE")
        or os.environ.get("ERROR_LOG")
    )
    text = f"{joblog.timestamp()} ERROR: Runner {message}\n{traceback.format_exc()}"
    if path:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text)
            return
        except OSError:
            pass
    sys.stderr.write(text)


if __name__ == "__main__":
    sys.exit(main())
