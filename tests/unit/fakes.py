"""In-memory stand-ins that let the unit tier drive the runner with no process and no database.

`FakeStore` keeps jobs in a dict and applies the store's rules (claim order, the fence, the
statuses an outcome leads to) in Python; `FakeChildren` pretends to start job processes and
lets a test say how each one ended; `FakeClock` and `FakeSelector` make time pass only when
the loop waits. Together with the real `Runner`, `Claims`, `Leases` and `Recorder` they run a
shutdown, an outage or an idle exit in milliseconds.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from flask_bgjobs import config, models
from flask_bgjobs.errors import DatabaseBusy
from flask_bgjobs.joblog import JobLog
from flask_bgjobs.models import Job
from flask_bgjobs.runner.children import Attempt, JobProcess
from flask_bgjobs.runner.clock import Now
from flask_bgjobs.runner.loop import Runner
from flask_bgjobs.security import Allowlist
from flask_bgjobs.store import Outcome, Progress, Reclaimed


class FakeClock:
    """Time that moves only when told (or when the loop waits on the `FakeSelector`)."""

    def __init__(self, wall: float = 1_800_000_000.0) -> None:
        self.mono = 1000.0
        self.wall = wall

    def now(self) -> Now:
        return Now(self.mono, self.wall)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class FakeSelector:
    """A selector with nothing to select: waiting advances the clock by the timeout."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []
        #: True when a descriptor would be readable now (a job process just exited: SIGCHLD).
        self.ready: Callable[[], bool] = lambda: False

    def register(self, *args: Any) -> None:
        pass

    def unregister(self, *args: Any) -> None:
        pass

    def modify(self, *args: Any) -> None:
        pass

    def select(self, timeout: float | None = None) -> list[Any]:
        if self.ready():
            return []
        self.waits.append(timeout or 0.0)
        self.clock.advance(timeout or 0.0)
        return []

    def close(self) -> None:
        pass


class FakeStore:
    """The runner's view of the store, in memory, with a switch that takes it down."""

    is_postgres = False

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.jobs: dict[int, Job] = {}
        self.events: list[tuple[int, str, str, int | None]] = []
        #: While set, every call raises it (a locked or unreachable database).
        self.down: Exception | None = None
        self.calls: list[str] = []
        self.claims: list[float] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down is not None:
            raise self.down

    def add(
        self,
        *,
        delay: float = 0.0,
        timeout: float = 0.0,
        max_attempts: int = 1,
        queue: str = "default",
    ) -> Job:
        job_id = len(self.jobs) + 1
        now = self.clock.wall
        self.jobs[job_id] = Job(
            id=job_id, class_name="jobapp.jobs.Jobs", method_name="noop", params_json="[]",
            status=models.PENDING, priority=1, attempts=0, max_attempts=max_attempts,
            delay=delay, timeout=timeout, run_at=now + delay, created_at=now, queue=queue,
        )  # fmt: skip
        return self.jobs[job_id]

    def _set(self, job_id: int, **changes: Any) -> None:
        self.jobs[job_id] = dataclasses.replace(self.jobs[job_id], **changes)

    def _owned(self, job_id: int, attempt: int, owner: str) -> bool:
        job = self.jobs.get(job_id)
        return (
            job is not None
            and job.status == models.RUNNING
            and job.attempts == attempt
            and job.lease_owner == owner
        )

    # -- the runner's transitions --

    def claim(
        self,
        *,
        owner: str,
        runner_id: str,
        limit: int,
        lease_seconds: float,
        now: float,
        queues: tuple[str, ...] | None = None,
        **_: Any,
    ) -> list[Job]:
        self._call("claim")
        self.claims.append(now)
        due = sorted(
            (
                j
                for j in self.jobs.values()
                if j.status in models.DUE_STATUSES
                and j.run_at <= now
                and (queues is None or j.queue in queues)
            ),
            key=lambda j: (-j.priority, j.run_at, j.id),
        )[:limit]
        for job in due:
            self._set(
                job.id, status=models.RUNNING, attempts=job.attempts + 1, started_at=now,
                lease_owner=owner, lease_expires_at=now + lease_seconds, runner_id=runner_id,
            )  # fmt: skip
            self.events.append((job.id, "started", f"started on {runner_id}", job.attempts + 1))
        return [self.jobs[j.id] for j in due]

    def finish(
        self,
        owner: str,
        outcomes: list[Outcome],
        now: float | None = None,
        *,
        pids: Iterable[tuple[int, int, int]] = (),
    ) -> list[bool]:
        self._call("finish")
        applied = []
        for o in outcomes:
            ok = self._owned(o.job_id, o.attempt, owner)
            if ok:
                common = {"lease_owner": None, "end_reason": o.reason, "pid": o.pid}
                if o.reason == models.END_SUCCEEDED:
                    self._set(
                        o.job_id, status=models.SUCCEEDED, result_json=o.result_json, **common
                    )
                elif o.reason == models.END_SHUTDOWN:
                    self._set(
                        o.job_id, status=models.PENDING,
                        attempts=self.jobs[o.job_id].attempts - 1, **common,
                    )  # fmt: skip
                elif o.retry_in is not None:
                    self._set(
                        o.job_id, status=models.RETRYING, error=o.error,
                        run_at=self.clock.wall + o.retry_in, **common,
                    )  # fmt: skip
                else:
                    self._set(o.job_id, status=models.FAILED, error=o.error, **common)
                self.events.append((o.job_id, o.reason, o.message, o.attempt))
            applied.append(ok)
        return applied

    def set_pids(self, owner: str, started: list[tuple[int, int, int]]) -> None:
        self._call("set_pids")

    def renew(self, owner: str, lease_seconds: float, now: float) -> set[int]:
        self._call("renew")
        ids = {j.id for j in self.jobs.values() if j.status == "running" and j.lease_owner == owner}
        for job_id in ids:
            self._set(job_id, lease_expires_at=now + lease_seconds)
        return ids

    def owned(self, owner: str) -> set[int]:
        self._call("owned")
        return {
            j.id for j in self.jobs.values() if j.status == "running" and j.lease_owner == owner
        }

    def progress(self, owner: str, reports: list[Progress]) -> list[bool]:
        self._call("progress")
        applied = []
        for p in reports:
            ok = self._owned(p.job_id, p.attempt, owner)
            if ok:
                self._set(p.job_id, progress=p.percent, progress_message=p.message)
            applied.append(ok)
        return applied

    def close(self) -> None:
        pass

    def mark_log_incomplete(self, job_ids: list[int]) -> None:
        self._call("mark_log_incomplete")

    def next_due_at(self, queues: tuple[str, ...] | None = None) -> float | None:
        self._call("next_due_at")
        due = [j.run_at for j in self.jobs.values() if j.status in models.DUE_STATUSES]
        return min(due) if due else None

    def has_work(self) -> bool:
        self._call("has_work")
        active = (*models.DUE_STATUSES, models.RUNNING)
        return any(j.status in active for j in self.jobs.values())

    def sweep(self, except_owner: str) -> list[Reclaimed]:
        self._call("sweep")
        return []

    def cancel(self, job_id: int) -> None:
        """An operator's cancel: the runner finds out when it checks its leases."""
        self._set(job_id, status=models.CANCELLED, lease_owner=None)


class FakeChildren:
    """Pretend job processes: `start` records the attempt, the test says how it ended."""

    def __init__(self) -> None:
        self.concurrency = 2
        self.reuse = 1
        self.start_method = "fork"
        self.on_progress: Callable[[Attempt, float, str], None] = lambda a, p, m: None
        self.inherited_fds: Callable[[], Iterable[int]] = lambda: ()
        self.attempts: dict[int, Attempt] = {}
        self.started: list[Job] = []
        self._ended: list[Attempt] = []
        self._next_pid = 40000
        self.released = 0

    def free(self) -> int:
        return self.concurrency - len(self.attempts)

    def next_deadline(self) -> float | None:
        deadlines = [a.deadline for a in self.attempts.values() if a.deadline and not a.killed]
        return min(deadlines) if deadlines else None

    def fds(self) -> list[int]:
        return []

    def prepare_fork(self) -> None:
        pass

    def start(self, job: Job, now: float) -> Attempt:
        self._next_pid += 1
        proc = JobProcess(self._next_pid, None, 0)  # type: ignore[arg-type]
        deadline = now + job.timeout if job.timeout > 0 else None
        att = Attempt(job, proc, now, deadline)
        proc.attempt = att
        self.attempts[job.id] = att
        self.started.append(job)
        return att

    def exit(self, job_id: int, *, final: dict[str, Any] | None = None, code: int = 0) -> None:
        """The job process of `job_id` exits with `code` after sending `final`."""
        att = self.attempts.pop(job_id)
        att.final = final
        att.status = code << 8  # a wait status, as os.waitpid gives it
        self._ended.append(att)

    def succeed(self, job_id: int) -> None:
        self.exit(job_id, final={"t": "ok", "result": None})

    def collect(self, now: float) -> list[Attempt]:
        for att in list(self.attempts.values()):
            if att.deadline is not None and now >= att.deadline and att.killed is None:
                self.kill(att, "timeout")
        ended, self._ended = self._ended, []
        return ended

    def kill(self, att: Attempt, reason: str) -> None:
        # SIGKILL is immediate: the process is gone by the next collect.
        if att.killed is None:
            att.killed = reason
        if self.attempts.pop(att.job.id, None) is not None:
            att.status = signal.SIGKILL
            self._ended.append(att)

    def kill_lost(self, owned: set[int]) -> None:
        for att in list(self.attempts.values()):
            if att.job.id not in owned and att.killed is None:
                self.kill(att, "lost")

    def kill_all(self) -> None:
        for att in list(self.attempts.values()):
            self.kill(att, "shutdown")

    def release_idle(self) -> None:
        self.released += 1

    def stop(self) -> None:
        self.release_idle()


class FakeLauncher:
    """The host lock and wake-up socket, as a flag: who holds the lock."""

    def __init__(self) -> None:
        self.holder: int | None = None
        self.released = 0

    def hold_lock(self, inherited_fd: int | None, *, exclusive: bool) -> int | None:
        if inherited_fd is not None:
            self.holder = inherited_fd
            return inherited_fd
        if self.holder is not None and exclusive:
            return None
        self.holder = 7
        return 7

    def release_lock(self, fd: int) -> None:
        self.released += 1
        self.holder = None

    def bind(self) -> None:
        return None


def settings(tmp: str, **overrides: object) -> config.Settings:
    """Real `Settings` (every default of SPEC §2) with a few keys set."""
    app = Flask("fakeapp", instance_path=os.path.join(tmp, "instance"), root_path=tmp)
    dotenv = os.path.join(tmp, "empty.env")
    open(dotenv, "w").close()  # never the developer's own .env
    environ = {"BGJOBS_DOTENV_PATH": dotenv} | {k: str(v) for k, v in overrides.items()}
    return config.load_settings(app, environ=environ)


class Rig:
    """A real `Runner` on fakes, and the fakes, for one test."""

    def __init__(
        self, tmp: str, *, burst: bool = False, autostarted: bool = False, **env: object
    ) -> None:
        self.clock = FakeClock()
        self.store = FakeStore(self.clock)
        self.children = FakeChildren()
        self.launcher = FakeLauncher()
        self.log = JobLog(os.path.join(tmp, "main.log"), os.path.join(tmp, "errors.log"))
        self.selector = FakeSelector(self.clock)
        self.selector.ready = lambda: bool(self.children._ended)
        s = settings(tmp, **({"BGJOBS_MAX_CONCURRENCY": 2, "BGJOBS_RETRY_DELAY": 5} | env))
        self.runner = Runner(
            settings=s,
            store=self.store,  # type: ignore[arg-type]
            log=self.log,
            launcher=self.launcher,  # type: ignore[arg-type]
            allowlist=Allowlist({"jobapp.jobs.Jobs": "*"}),
            children=self.children,  # type: ignore[arg-type]
            sweep=self.store.sweep,
            retry_in=lambda job: None if job.attempts >= job.max_attempts else 5.0,
            runner_id="unit",
            selector=self.selector,  # type: ignore[arg-type]
            clock=self.clock,
            burst=burst,
            autostarted=autostarted,
            lock_fd=3 if autostarted else None,
            signals=False,
        )
        self.runner.setup()

    def step(self, times: int = 1) -> bool:
        alive = True
        for _ in range(times):
            alive = self.runner.step()
            if not alive:
                break
        return alive

    def run_until(self, condition: Callable[[], bool], *, steps: int = 1000) -> int:
        """Step until `condition` holds; return how many steps it took (fails past `steps`)."""
        for n in range(steps):
            if condition():
                return n
            assert self.runner.step(), "the runner exited first"
        raise AssertionError(f"not reached within {steps} steps")

    def status(self, job_id: int) -> str:
        return self.store.jobs[job_id].status

    def main_log(self) -> str:
        path = self.log.main_path
        return open(path, encoding="utf-8").read() if os.path.exists(path) else ""

    def error_log(self) -> str:
        path = self.log.error_path
        return open(path, encoding="utf-8").read() if os.path.exists(path) else ""


BUSY = DatabaseBusy("the job database stayed locked for 5 s; nothing was written, try again")
