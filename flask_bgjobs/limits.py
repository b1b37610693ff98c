"""Per-attempt limits, usage and output: the arithmetic and the job process's side of them.

Limits are resource limits (``setrlimit``) of the attempt's own process, set by the job process
itself at the start of each attempt, so neither the runner nor any other job is affected:

- memory: ``RLIMIT_DATA``, the process's private writable memory (heap, anonymous maps, thread
  stacks). Not ``RLIMIT_AS``: that counts every mapping, so a job that starts a few threads
  (64 MiB of reserved malloc arena each) or maps a large file fails long before it has used
  that much memory. Past the limit an allocation fails: Python raises ``MemoryError``.
- CPU: ``RLIMIT_CPU``. It counts the process's CPU time since it started, so with process reuse
  the soft limit is set to the CPU used so far plus the attempt's budget; past it the kernel
  sends ``SIGXCPU``, whose default action ends the process.

Only soft limits are set: a hard limit can be lowered but never raised again (without
privileges), which a reused process would need for its next attempt. The job's own code could
raise a soft limit again: limits are a safety net against runaway jobs, not a sandbox.

Usage: when an attempt's process exits, the runner reads its peak RSS and CPU from ``wait4``.
A reused process outlives its attempts, so it measures each one itself (`Meter`): CPU as a
``getrusage`` difference, and peak RSS after resetting the kernel's high-water mark
(``/proc/self/clear_refs``) at the attempt's start.

Output: the runner keeps the last `OUTPUT_LIMIT` bytes an attempt wrote (`OutputTail`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

if sys.platform != "win32":  # Windows has no rlimits: no limits there, no usage
    import resource

#: Bytes of each attempt's stdout and stderr kept with its outcome: the last ones.
OUTPUT_LIMIT = 64 * 1024
#: ``setrlimit``'s "no limit".
INFINITY: int = -1 if sys.platform == "win32" else resource.RLIM_INFINITY

_CLEAR_REFS = "/proc/self/clear_refs"
_RESET_PEAK_RSS = b"5"  # Linux: reset the process's peak RSS to its current RSS


@dataclass(frozen=True)
class Limits:
    """What one attempt may use; 0 means no limit."""

    #: Bytes of private writable memory (``RLIMIT_DATA``).
    memory: int = 0
    #: CPU seconds (user + system) of the attempt's process (``RLIMIT_CPU``).
    cpu: float = 0.0

    def __bool__(self) -> bool:
        return self.memory > 0 or self.cpu > 0

    @classmethod
    def for_job(
        cls,
        memory_limit: object,
        cpu_limit: object,
        *,
        default_memory: int = 0,
        default_cpu: float = 0.0,
    ) -> Limits:
        """A job's limits: its own values, or where they are ``None``, the configured defaults.

        An explicit 0 means no limit whatever the default says. A stored value that is no
        limit at all (negative, NaN, not a number: an edited row) counts as none.
        """
        memory = default_memory if memory_limit is None else memory_limit
        cpu = default_cpu if cpu_limit is None else cpu_limit
        return cls(_positive_int(memory), _positive_float(cpu))


#: No limit at all.
NO_LIMITS = Limits()


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if not math.isfinite(value) or value <= 0:
        return 0
    return min(int(value), 2**62)


def _positive_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    number = float(value)
    return number if math.isfinite(number) and number > 0 else 0.0


# -- the arithmetic ---------------------------------------------------------------------------


def memory_soft_limit(limit: int, hard: int) -> int:
    """The ``RLIMIT_DATA`` soft limit for an attempt: `limit` bytes, or `hard` for none."""
    if limit <= 0:
        return hard
    return limit if hard == INFINITY else min(limit, hard)


def cpu_soft_limit(used: float, limit: float, hard: int) -> int:
    """The ``RLIMIT_CPU`` soft limit (whole seconds of the process's CPU clock) for an attempt.

    `used` is the CPU the process has used so far (earlier attempts in a reused process), so
    the attempt gets its own `limit` on top. The kernel counts whole seconds: the sum is
    rounded to the nearest, so the attempt is stopped within half a second of its limit, and
    never before the process's clock reaches its next whole second. `hard` for none.
    """
    if limit <= 0:
        return hard
    soft = max(math.floor(used) + 1, round(used + limit))
    return soft if hard == INFINITY else min(soft, hard)


# -- in the job process -----------------------------------------------------------------------


class Enforcer:
    """A job process's limits: set at each attempt's start, undone when the next has none."""

    def __init__(self) -> None:
        self._set = False

    def apply(self, limits: Limits) -> None:
        """Set the soft limits for the attempt about to run (and lift the last attempt's)."""
        if sys.platform == "win32" or (not limits and not self._set):
            return  # the default: nothing to set, nothing to undo
        mem_hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
        resource.setrlimit(
            resource.RLIMIT_DATA, (memory_soft_limit(limits.memory, mem_hard), mem_hard)
        )
        cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        used = _own_cpu() if limits.cpu > 0 else 0.0
        resource.setrlimit(
            resource.RLIMIT_CPU, (cpu_soft_limit(used, limits.cpu, cpu_hard), cpu_hard)
        )
        self._set = bool(limits)


def _own_cpu() -> float:
    """CPU seconds this process used so far: what ``RLIMIT_CPU`` counts."""
    if sys.platform == "win32":
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak_rss() -> bool:
    """Make the kernel's peak RSS of this process start again from its current RSS (Linux).

    ``wait4`` and ``getrusage`` report the reset peak from then on. False where it cannot.
    """
    try:
        with open(_CLEAR_REFS, "wb", buffering=0) as fh:
            fh.write(_RESET_PEAK_RSS)
    except OSError:
        return False
    return True


@dataclass
class Meter:
    """Usage of one attempt in a process that outlives it: CPU and peak RSS since `start`."""

    self_cpu: float = 0.0
    children_cpu: float = 0.0
    children_rss: int = 0

    @classmethod
    def start(cls) -> Meter:
        """Begin measuring an attempt: reset the peak RSS, note the CPU used so far."""
        if sys.platform == "win32":
            return cls()
        reset_peak_rss()
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime, int(kids.ru_maxrss))

    @property
    def cpu_base(self) -> float:
        """CPU seconds of the process and its reaped children when the attempt started."""
        return self.self_cpu + self.children_cpu

    def stop(self) -> dict[str, Any]:
        """``{"rss": KiB, "cpu": seconds}`` of the attempt, for its final message.

        As ``wait4`` counts them: the process and the children it reaped (a subprocess the
        attempt ran), CPU added up, the larger peak RSS.
        """
        if sys.platform == "win32":
            return {}
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime - self.cpu_base
        rss = int(me.ru_maxrss)
        if kids.ru_maxrss > self.children_rss:  # a child of this attempt peaked higher
            rss = max(rss, int(kids.ru_maxrss))
        return {"rss": rss, "cpu": round(max(0.0, cpu), 6)}


# -- in the runner ----------------------------------------------------------------------------


class OutputTail:
    """The last `limit` bytes an attempt wrote to its stdout and stderr, and how many came before.

    Memory stays bounded whatever the job writes: older bytes are dropped as new ones arrive,
    only their number is kept.
    """

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.limit = limit
        self.dropped = 0
        self._kept = bytearray()

    def write(self, data: bytes) -> None:
        """Add what the attempt wrote."""
        if len(data) >= self.limit:
            self.dropped += len(self._kept) + len(data) - self.limit
            self._kept[:] = data[len(data) - self.limit :]
            return
        self._kept += data
        excess = len(self._kept) - self.limit
        if excess > 0:
            del self._kept[:excess]
            self.dropped += excess

    @property
    def total(self) -> int:
        """Bytes written in all."""
        return self.dropped + len(self._kept)

    def text(self) -> str | None:
        """What is kept, as text (``None`` if the attempt wrote nothing).

        Invalid UTF-8 becomes U+FFFD. When bytes were dropped, a first line says how many, and
        a character cut in half at the start is dropped with them.
        """
        if not self.total:
            return None
        data = bytes(self._kept)
        dropped = self.dropped
        if dropped:
            start = 0
            while start < min(3, len(data)) and data[start] & 0xC0 == 0x80:
                start += 1  # UTF-8 continuation bytes of a character that began before the cut
            data, dropped = data[start:], dropped + start
        text = data.decode("utf-8", "replace")
        if dropped:
            text = f"[{dropped} bytes before this were not kept]\n{text}"
        return text


def size_text(n_bytes: int) -> str:
    """``512 MiB``, ``1.5 GiB``, ``300 KiB``: a size for people (powers of 1024)."""
    value = float(n_bytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "bytes":
        return f"{int(value)} bytes"
    return f"{value:.1f} {unit}".replace(".0 ", " ")
