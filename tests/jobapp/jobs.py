"""Jobs the integration tests run: each one shows one behaviour of the engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flask_bgjobs import current_job


def _mark(name: str, text: str = "") -> None:
    """Append a line to a file in ``JOBAPP_MARKS`` so tests can see what ran, and how often."""
    folder = Path(os.environ["JOBAPP_MARKS"])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a", encoding="utf-8") as fh:
        fh.write(f"{text}\n")


class Jobs:
    """Methods called on a fresh instance, as users' job classes are."""

    def add(self, a: int, b: int) -> int:
        return a + b

    def noop(self) -> None:
        return None

    def greet(self, name: str, greeting: str = "Hello") -> str:
        return f"{greeting}, {name}!"

    def record(self, tag: str) -> dict[str, object]:
        _mark(tag, f"{current_job.id} {current_job.attempt} {os.getpid()}")
        return {"pid": os.getpid(), "attempt": current_job.attempt}

    def fail(self, message: str = "bad row") -> None:
        raise ValueError(message)

    def flaky(self, tag: str, failures: int) -> str:
        """Fail `failures` times, then succeed."""
        _mark(tag, str(current_job.attempt))
        if current_job.attempt <= failures:
            raise RuntimeError(f"flaky failure {current_job.attempt}")
        return "ok"

    def sleep(self, seconds: float, tag: str = "") -> str:
        if tag:
            _mark(tag, f"start {os.getpid()}")
        time.sleep(seconds)
        if tag:
            _mark(tag, "end")
        return "slept"

    def wait_for_file(self, path: str, tag: str = "") -> str:
        """Run until `path` exists (tests create it when they are ready), at most 60 s."""
        if tag:
            _mark(tag, f"start {os.getpid()}")
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(path)
            time.sleep(0.01)
        return "released"

    def progress(self, steps: int = 4) -> str:
        for i in range(1, steps + 1):
            current_job.progress(100 * i / steps, f"step {i} of {steps}")
        return "done"

    def exit_hard(self, code: int = 3) -> None:
        os._exit(code)

    def kill_self(self, sig: int = signal.SIGKILL) -> None:
        os.kill(os.getpid(), sig)

    def kill_runner(self, tag: str) -> None:
        """Kill our runner: the job that takes its runner down every time."""
        _mark(tag, str(current_job.attempt))
        runner = os.getppid()
        if Path(f"/proc/{runner}/comm").read_text().strip() == "bgjobs-forksrv":
            runner = int(Path(f"/proc/{runner}/stat").read_text().split(") ")[1].split()[1])
        os.kill(runner, signal.SIGKILL)
        time.sleep(30)

    def spawn_and_hang(self, tag: str) -> None:
        """Fork a child that ignores SIGTERM, record both pids, then hang (for timeouts)."""
        code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
        child = subprocess.Popen([sys.executable, "-c", code])
        _mark(tag, f"{os.getpid()} {child.pid}")
        time.sleep(120)

    def unserialisable(self) -> object:
        return {1, 2, 3}

    def poison(self) -> None:
        """Text PostgreSQL cannot store (issue 12, defect 1)."""
        raise ValueError("poison\x00again \ud800")

    def progress_poison(self, seconds: float) -> str:
        """Progress with a NUL in a tight loop, for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            current_job.progress(10, "a\x00b")
            time.sleep(0.001)
        return "done"

    def huge_error(self, mib: int = 20) -> None:
        raise ValueError("E" * (mib * 1024 * 1024))

    def forged_result(self, kind: str) -> str:
        """Report a result the executor would refuse, past its own checks (a lying child)."""
        from flask_bgjobs import executor

        encoded = {
            "NaN": "[NaN]",
            "deep": "[" * 100_000 + "]" * 100_000,
            "big": '"' + "x" * (2 * 1024 * 1024) + '"',
            "duplicate": '{"a":1,"a":2}',
        }[kind]
        executor.encode_result = lambda result, max_bytes: encoded  # type: ignore[assignment]
        return "ignored"

    def span(self, tag: str, seconds: float) -> list[float]:
        """Run `seconds`, recording when this attempt started and ended (for overlap checks)."""
        start = time.time()
        time.sleep(seconds)
        end = time.time()
        _mark(tag, f"{current_job.id} {current_job.attempt} {start!r} {end!r}")
        return [start, end]

    def where(self) -> dict[str, object]:
        """Which process runs this attempt, and what it has loaded."""
        import sys as _sys

        return {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "pgid": os.getpgid(0),
            "runner_loaded": "flask_bgjobs.runner.loop" in _sys.modules,
            "attempt": current_job.attempt,
        }

    async def wait_async(self, seconds: float) -> str:
        import asyncio

        await asyncio.sleep(seconds)
        return f"awaited {current_job.id}"

    def write_stdout(self) -> str:
        print("hello from a job")
        return "printed"

    def allocate(self, mib: int) -> int:
        """Hold `mib` MiB at once (past a memory limit: MemoryError)."""
        chunks = [bytearray(1024 * 1024) for _ in range(mib)]
        return len(chunks)

    def burn_cpu(self, seconds: float) -> float:
        """Spin on the CPU for `seconds` of this process's CPU time."""
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass
        return time.process_time() - start

    def speak(self, tag: str) -> str:
        """Write to stdout and stderr three ways: print, a raw fd write, and a subprocess."""
        print(f"print {tag}")
        print(f"stderr {tag}", file=sys.stderr)
        os.write(1, f"fd1 {tag}\n".encode())
        code = f"import os; os.write(1, b'child {tag}\\n'); os.write(2, b'child err {tag}\\n')"
        subprocess.run([sys.executable, "-c", code], check=True)
        return tag

    def flood(self, megabytes: int, tag: str = "") -> int:
        """Write `megabytes` MB of numbered lines to stdout, then a last line."""
        line = b"x" * 95
        written = 0
        n = 0
        while written < megabytes * 1_000_000:
            chunk = b"".join(b"%08d %s\n" % (n + i, line) for i in range(1000))
            os.write(1, chunk)
            written += len(chunk)
            n += 1000
        os.write(1, f"the end {tag}\n".encode())
        return written

    def segfault(self) -> None:
        """Crash in C: faulthandler's traceback should name this method."""
        import ctypes

        print("about to crash")
        ctypes.string_at(0)

    def allocate_after(self, path: str, mib: int, tag: str = "") -> int:
        """Wait for `path` (a test's go-ahead), then hold `mib` MiB at once."""
        self.wait_for_file(path, tag)
        return self.allocate(mib)

    def say(self, text: str) -> str:
        """Write `text` to stdout as it is."""
        sys.stdout.write(text)
        return "said"

    def usage_here(self) -> dict[str, object]:
        """This process's limits, as the job sees them."""
        import resource

        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "data": resource.getrlimit(resource.RLIMIT_DATA)[0],
            "cpu": resource.getrlimit(resource.RLIMIT_CPU)[0],
            "pid": os.getpid(),
            "self_cpu": me.ru_utime + me.ru_stime,
            "children_cpu": kids.ru_utime + kids.ru_stime,
        }

    def chain(self, tag: str, n: int) -> int:
        """Mark `n`, then enqueue the next link (n - 1) until 0."""
        from flask_bgjobs import run_background_job

        _mark(tag, str(n))
        if n > 0:
            run_background_job("jobapp.jobs.Jobs", "chain", [tag, n - 1])
        return n

    def discard(self, reason: str, tag: str = "") -> None:
        """Give up for good: DiscardJob, whatever attempts remain."""
        # Imported here: tests/test_schema_upgrade.py runs these jobs with 0.1.0, which has none.
        from flask_bgjobs import DiscardJob

        if tag:
            _mark(tag, str(current_job.attempt))
        raise DiscardJob(reason)

    def retry_later(self, seconds: float, tag: str, times: int = 1) -> str:
        """Ask for a retry in `seconds`, `times` times, then succeed."""
        from flask_bgjobs import RetryJob

        _mark(tag, f"{current_job.attempt} {time.time()!r}")
        if current_job.attempt <= times:
            raise RetryJob(seconds)
        return "done"


def module_function(x: int) -> int:
    """A module-level function job: ``jobapp.jobs::module_function``."""
    return x * 2


class Registry(dict):  # type: ignore[type-arg]
    """A dict subclass allowed with "*": its own methods are jobs, dict's (get, keys...) are not."""

    def size(self) -> int:
        return len(self)
