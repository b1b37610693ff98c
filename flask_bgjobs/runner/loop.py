"""The runner's loop: one thread, one selector, a table of parts each told the time.

One attempt's life, as `Runner.step` runs it::

    claims.claim()      a due job becomes ``running`` under our lease (fenced from here on)
    children.start()    a job process runs it: forked, spawned, or a reused one
    children.collect()  its process exited (or, reused, sent its final message), or timed out
    classify()          exactly one end reason from final message, exit status, kill reason
    recorder.flush()    the outcome is written (fenced), then its log lines

Around it: `Wakeups` (signals, datagrams, NOTIFY), `Leases` (renew, lost jobs, sweeps),
shutdown (SIGTERM: stop claiming, grace, then kill and hand back), idle exit of an
auto-started runner, and burst exit. The loop owns no threads, which is what makes ``fork()``
safe here; parts never read the clock, the loop reads it once per turn and passes it on.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from flask_bgjobs import joblog, recurring, security, service
from flask_bgjobs.errors import BgJobsError
from flask_bgjobs.joblog import JobLog
from flask_bgjobs.launcher import Launcher
from flask_bgjobs.runner import children as children_mod
from flask_bgjobs.runner.children import Attempt, Children
from flask_bgjobs.runner.claims import POLL_INTERVAL, Claims
from flask_bgjobs.runner.clock import Clock, Now, SystemClock
from flask_bgjobs.runner.health import Health
from flask_bgjobs.runner.leases import Leases
from flask_bgjobs.runner.outcomes import Recorder, classify, rejected
from flask_bgjobs.runner.retention import Retention
from flask_bgjobs.runner.scheduler import Scheduler
from flask_bgjobs.runner.wakeups import Wakeups
from flask_bgjobs.state import AppState
from flask_bgjobs.store import NewJob, Reclaimed, Store

if TYPE_CHECKING:
    from flask import Flask

    from flask_bgjobs.config import Settings
    from flask_bgjobs.models import Job


def _build_tick(state: AppState, spec: recurring.Schedule, tick: float) -> NewJob:
    """The job of one tick of a schedule, checked like any enqueue."""
    return service.build(
        state, spec.class_name, spec.method_name, spec.params, spec.retry_attempts, None,
        spec.priority, timeout=spec.timeout, queue=spec.queue, schedule=spec.name,
        scheduled_for=tick,
    )  # fmt: skip


def _no_build(spec: recurring.Schedule, tick: float) -> NewJob:
    raise BgJobsError(f"no way to build the job of schedule {spec.name!r}")


#: A burst worker gives up (exit 1) when the database stays unreachable this long (seconds).
BURST_DB_PATIENCE = 30.0


class Runner:
    """Claims and runs jobs until stopped (or idle, when auto-started; or drained, in burst)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        log: JobLog,
        launcher: Launcher,
        allowlist: security.Allowlist,
        children: Children,
        sweep: Callable[[str], list[Reclaimed]],
        retry_in: Callable[[Job], float | None],
        runner_id: str,
        selector: selectors.BaseSelector,
        clock: Clock | None = None,
        concurrency: int | None = None,
        burst: bool = False,
        autostarted: bool = False,
        lock_fd: int | None = None,
        signals: bool = True,
        queues: tuple[str, ...] | None = None,
        schedules: Callable[[], Mapping[str, recurring.Schedule]] = dict,
        build_tick: Callable[[recurring.Schedule, float], NewJob] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.log = log
        self.launcher = launcher
        self.clock = clock or SystemClock()
        self.selector = selector
        self.runner_id = runner_id
        # The lease owner is unique per process start, so a restarted runner that reuses a
        # BGJOBS_RUNNER_ID can never mistake an old lease for its own.
        self.owner = f"{runner_id}~{secrets.token_hex(4)}"
        self.concurrency = max(1, concurrency or settings.max_concurrency)
        self.burst = burst
        self.autostarted = autostarted
        self.retry_in = retry_in
        self.health = Health(log, runner_id)
        self.recorder = Recorder(store, log, self.owner, self.health)
        self.claims = Claims(
            store,
            allowlist,
            owner=self.owner,
            runner_id=runner_id,
            lease_seconds=settings.lease_seconds,
            max_params_bytes=settings.max_params_bytes,
            health=self.health,
            queues=queues,
            queue_limits=settings.queue_limits,
            on_expired=self._log_expired,
        )
        self.leases = Leases(
            store,
            owner=self.owner,
            lease_seconds=settings.lease_seconds,
            sweep=sweep,
            health=self.health,
        )
        self.scheduler = Scheduler(store, schedules, build_tick or _no_build, log, self.health)
        self.retention = Retention(store, settings.retention_days, self.health)
        self.children = children
        self.children.concurrency = self.concurrency
        self.children.on_progress = self._on_progress
        self.children.inherited_fds = self._fds
        self.wakeups = (
            Wakeups(selector, launcher, store, self.health, on_stop=self.request_stop)
            if signals
            else None
        )
        self._inherited_lock_fd = lock_fd
        self._lock_fd: int | None = None
        self.stop_requests = 0
        self._stop_deadline = 0.0
        self._stop_logged = False
        self._last_active = self.clock.now().mono
        self.exit_code = 0

    @classmethod
    def for_app(
        cls,
        app: Flask,
        state: AppState,
        *,
        concurrency: int | None = None,
        burst: bool = False,
        autostarted: bool = False,
        lock_fd: int | None = None,
        reuse: int | None = None,
        queues: tuple[str, ...] | None = None,
    ) -> Runner:
        """A runner with the real parts, for `app`.

        An auto-started runner serves ``BGJOBS_QUEUES``; a worker the queues it is given
        (``None``: all).
        """
        s = state.settings
        selector = selectors.DefaultSelector()
        kids = Children(
            app=app,
            allowlist=state.allowlist,
            selector=selector,
            concurrency=concurrency or s.max_concurrency,
            reuse=reuse or s.process_reuse,
            start_method=s.start_method,
            max_params_bytes=s.max_params_bytes,
            on_progress=lambda att, pct, msg: None,
            memory_limit=s.memory_limit,
            cpu_limit=s.cpu_limit,
        )
        return cls(
            settings=s,
            store=state.store,
            log=state.joblog,
            launcher=state.launcher,
            allowlist=state.allowlist,
            children=kids,
            sweep=lambda owner: service.sweep(state, except_owner=owner),
            retry_in=state.retry_in,
            runner_id=state.runner_id(),
            selector=selector,
            concurrency=concurrency,
            burst=burst,
            autostarted=autostarted,
            lock_fd=lock_fd,
            queues=s.queues if autostarted else queues,
            schedules=state.schedules,
            build_tick=lambda spec, tick: _build_tick(state, spec, tick),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, app: Flask | None = None) -> int:
        """Serve until stopped; return the process exit code."""
        self.setup(app)
        try:
            self.log.info(
                f"Runner {security.printable(self.runner_id)} started (pid {os.getpid()}, "
                f"concurrency {self.concurrency}{self._mode()})."
            )
            while self.step():
                pass
        finally:
            self.teardown()
        self.log.info(f"Runner {security.printable(self.runner_id)} stopped (pid {os.getpid()}).")
        return self.exit_code

    def _mode(self) -> str:
        words = []
        if self.children.reuse > 1:
            words.append(f"process reuse {self.children.reuse}")
        if self.children.start_method != "fork":
            words.append(f"start method {self.children.start_method}")
        if self.claims.queues:
            words.append(f"queues {','.join(self.claims.queues)}")
        if self.burst:
            words.append("burst")
        return "".join(f", {w}" for w in words)

    def setup(self, app: Flask | None = None) -> None:
        """Signals, wake-up socket, host lock; then freeze what the job processes inherit."""
        if self.wakeups is not None:
            self.wakeups.setup()
        self._lock_fd = self.launcher.hold_lock(self._inherited_lock_fd, exclusive=self.autostarted)
        if self.autostarted and self._lock_fd is None:
            # Another auto-started runner won the race; it will serve.
            self.stop_requests = 2
        if app is not None:
            children_mod.guard_app_engines(app)
        # No pooled connection may outlive this point in a process that keeps forking: the
        # fork server would hold its socket open (the runner reconnects on first use).
        self.store.close()
        self.children.prepare_fork()

    def teardown(self) -> None:
        """Undo `setup`; idle job processes exit when their channel closes."""
        self.children.stop()
        if self.wakeups is not None:
            self.wakeups.teardown()
        self.selector.close()
        if self._lock_fd is not None:
            if self.autostarted:  # the pid in the lock file is ours: clear it
                self.launcher.release_lock(self._lock_fd)
            else:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
        self._lock_fd = None

    def request_stop(self) -> None:
        """SIGTERM or SIGINT: the first stops claiming and starts the grace; the second kills."""
        self.stop_requests += 1
        if self.stop_requests == 1:
            self._stop_deadline = self.clock.now().mono + self.settings.shutdown_grace

    def _fds(self) -> list[int]:
        fds = self.wakeups.fds() if self.wakeups is not None else []
        if self._lock_fd is not None:
            fds.append(self._lock_fd)
        return fds

    # -- the loop ----------------------------------------------------------------------------

    def step(self) -> bool:
        """One turn of the loop; False when the runner should exit."""
        now = self.clock.now()
        self._take_wakeups(now)
        self._record(now)
        if self.stop_requests:
            if not self._shutdown_step(now):
                return False
        else:
            self._housekeeping(now)
            if not self.stop_requests:  # a signal may have arrived meanwhile
                self._claim_and_start(now)
                if self._should_exit(now):
                    return False
        self._wait(self._timeout(self.clock.now()))
        return True

    def _take_wakeups(self, now: Now) -> None:
        if self.wakeups is None:
            return
        self.wakeups.step(now)
        if self.wakeups.claim:
            self.wakeups.claim = False
            self.claims.want()
        if self.wakeups.leases:
            self.wakeups.leases = False
            self.leases.check_wanted = True

    def _record(self, now: Now) -> None:
        """Attempts that ended → outcomes → the database, then the logs."""
        for att in self.children.collect(now.mono):
            outcome = classify(
                att.job,
                final=att.final,
                status=att.status,
                killed=att.killed,
                retry_in=self.retry_in,
                pid=att.pid,
                rusage=att.rusage,
                cpu_base=att.cpu_base,
                output=att.output.text(),
                limits=att.limits,
            )
            if outcome is None:  # cancelled or taken back: the row is not ours any more
                self.log.warning(
                    f"Job stopped for {att.job.name} (job {att.job.id}, attempt "
                    f"{att.job.attempts}/{att.job.max_attempts}): this runner no longer holds "
                    "it (cancelled, or taken back after its lease expired)."
                )
            else:
                self.recorder.outcome(outcome, att.job, now.mono - att.started)
            self.claims.want()  # a slot is free
            self._last_active = now.mono
        self.recorder.flush(now.mono)

    def _housekeeping(self, now: Now) -> None:
        owned, reclaimed = self.leases.step(now, running=bool(self.children.attempts))
        if owned is not None:
            self.children.kill_lost(owned)
        if any(r.retry_in is not None for r in reclaimed):
            self.claims.want()
        self.claims.step(now)
        if self.scheduler.step(now):
            self.claims.want()
        self.retention.step(now)
        if self._lock_fd is None and not self.autostarted:
            self._lock_fd = self.launcher.hold_lock(None, exclusive=False)

    def _claim_and_start(self, now: Now) -> None:
        free = self.children.free()
        ready, refused = self.claims.claim(now, free)
        for job, error in refused:
            self.recorder.outcome(rejected(job, error), job, None)
        if not ready:
            return
        if not self.children.attempts:
            self.leases.started(now)
        self.recorder.started(ready)
        pids = []
        for job in ready:
            att = self.children.start(job, now.mono)
            pids.append((job.id, job.attempts, att.pid))
        self.recorder.pids(pids, now.mono)
        self._last_active = now.mono

    def _log_expired(self, expired: list[Job]) -> None:
        if not self.log.write([("WARNING", joblog.expired(j.name, j.id)) for j in expired]):
            self.recorder.log_failed([j.id for j in expired])

    def _on_progress(self, att: Attempt, percent: float, message: str) -> None:
        self.recorder.progress(att.job, percent, message, att.pid)

    # -- leaving -----------------------------------------------------------------------------

    def _shutdown_step(self, now: Now) -> bool:
        """While stopping: no claims; kill what still runs once the grace is over."""
        if not self._stop_logged:
            self._stop_logged = True
            self.children.release_idle()
            self.log.info(
                f"Runner {security.printable(self.runner_id)} stopping: no new jobs; "
                f"{len(self.children.attempts)} running, {self.settings.shutdown_grace:g} s grace."
            )
        out_of_time = self.stop_requests > 1 or now.mono >= self._stop_deadline
        if not self.children.attempts:
            # Outcomes not yet written (database down) are worth the rest of the grace.
            if not self.recorder.unsaved or out_of_time:
                for outcome in self.recorder.unsaved:
                    self.log.write_error(
                        f"Runner {security.printable(self.runner_id)}: exiting without "
                        f"recording job {outcome.job_id} attempt {outcome.attempt} "
                        f"({outcome.reason}); it is taken back when its lease expires."
                    )
                return False
        elif out_of_time:
            self.children.kill_all()
        return True

    def _should_exit(self, now: Now) -> bool:
        """Burst: drained (or the database stayed away); auto-started: idle long enough."""
        busy = bool(self.children.attempts) or bool(self.recorder.unsaved)
        if self.burst and not busy:
            if not self.claims.wanted and not self.claims.due_now(now):
                return True
            failing = self.health.failing_since
            if failing is not None and now.mono - failing > BURST_DB_PATIENCE:
                self.exit_code = 1  # nobody would see it working: say it failed
                return True
        if self.autostarted and not busy and not self.scheduler.active():
            if now.mono - self._last_active >= self.settings.idle_timeout:
                return self._idle_exit(now)
        return False

    def _idle_exit(self, now: Now) -> bool:
        """Leave when there is no work at all; never strand a job enqueued meanwhile."""
        try:
            if self.store.has_work():
                self._last_active = now.mono
                return False
            # Release the lock first, then look again: an enqueue that saw the lock held
            # committed before we released it, so the second look sees its job; a later one
            # finds the lock free and starts a new runner.
            if self._lock_fd is not None:
                self.launcher.release_lock(self._lock_fd)
                self._lock_fd = None
            if not self.store.has_work():
                return True
        except Exception as exc:  # noqa: BLE001
            self.health.failed("idle check", exc, now.mono)
            self._last_active = now.mono
            return False
        self._lock_fd = self.launcher.hold_lock(None, exclusive=True)
        self._last_active = now.mono
        return self._lock_fd is None  # someone else started a runner: let it serve

    # -- waiting -----------------------------------------------------------------------------

    def _timeout(self, now: Now) -> float:
        """Seconds until some part wants the loop back (at most `POLL_INTERVAL`)."""
        if self.stop_requests:
            wake = [self._stop_deadline]
        else:
            free = self.children.free()
            wake = [
                self.claims.next_wake(now, free),
                self.leases.next_wake(bool(self.children.attempts)),
                self.scheduler.next_wake(),
            ]
            if (purge := self.retention.next_wake()) is not None:
                wake.append(purge)
            if self.autostarted and not self.children.attempts and not self.scheduler.active():
                wake.append(self._last_active + self.settings.idle_timeout)
        for extra in (
            self.children.next_deadline(),
            self.recorder.next_wake(),
            self.wakeups.next_wake() if self.wakeups is not None else None,
        ):
            if extra is not None:
                wake.append(extra)
        return min(POLL_INTERVAL, max(0.0, min(wake) - now.mono))

    def _wait(self, timeout: float) -> None:
        for key, mask in self.selector.select(timeout):
            key.data(mask)
