"""Limit arithmetic, the output tail and the job's limits: pure parts, no process."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from fakes import settings

from flask_bgjobs.errors import ConfigError
from flask_bgjobs.limits import (
    INFINITY,
    OUTPUT_LIMIT,
    Limits,
    OutputTail,
    cpu_soft_limit,
    memory_soft_limit,
    size_text,
)
from flask_bgjobs.models import Event, Job, attempts_of

MiB = 1024 * 1024

# -- whose limits -------------------------------------------------------------------------------


def test_a_job_without_its_own_limits_takes_the_configured_defaults() -> None:
    assert Limits.for_job(None, None, default_memory=256 * MiB, default_cpu=30.0) == Limits(
        256 * MiB, 30.0
    )


def test_a_job_limit_of_zero_means_none_whatever_the_default_says() -> None:
    assert Limits.for_job(0, 0, default_memory=256 * MiB, default_cpu=30.0) == Limits(0, 0.0)
    assert not Limits.for_job(0, 0, default_memory=256 * MiB, default_cpu=30.0)


def test_a_job_limit_beats_the_default() -> None:
    assert Limits.for_job(MiB, 2.5, default_memory=256 * MiB, default_cpu=30.0) == Limits(MiB, 2.5)


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "100", True, [1]])
def test_a_stored_limit_that_is_no_limit_at_all_counts_as_none(bad: object) -> None:
    assert Limits.for_job(bad, bad) == Limits(0, 0.0)


# -- rlimit arithmetic --------------------------------------------------------------------------


def test_the_memory_soft_limit_is_the_attempts_limit_within_the_hard_one() -> None:
    assert memory_soft_limit(256 * MiB, INFINITY) == 256 * MiB
    assert memory_soft_limit(256 * MiB, 100 * MiB) == 100 * MiB
    assert memory_soft_limit(0, INFINITY) == INFINITY  # none: lift the last attempt's
    assert memory_soft_limit(0, 100 * MiB) == 100 * MiB


@pytest.mark.parametrize(
    ("used", "limit", "soft"),
    [
        (0.003, 1.0, 1),  # a fresh fork: the attempt gets its second
        (0.003, 5.0, 5),
        (12.3, 5.0, 17),  # a reused process: CPU used so far plus the attempt's own budget
        (12.7, 5.0, 18),  # rounded to the nearest second: within half a second of the limit
        (0.0, 0.2, 1),  # under a second acts as one: the clock counts whole seconds
        (10.9, 0.2, 11),  # never at or before the clock's present second
    ],
)
def test_the_cpu_soft_limit_gives_each_attempt_its_own_budget_on_top_of_what_was_used(
    used: float, limit: float, soft: int
) -> None:
    assert cpu_soft_limit(used, limit, INFINITY) == soft
    assert cpu_soft_limit(used, limit, INFINITY) > used


def test_the_cpu_soft_limit_stays_within_the_hard_one_and_none_lifts_it() -> None:
    assert cpu_soft_limit(0.0, 60.0, 10) == 10
    assert cpu_soft_limit(4.0, 0.0, INFINITY) == INFINITY
    assert cpu_soft_limit(4.0, 0.0, 10) == 10


# -- the output tail ------------------------------------------------------------------------------


def test_output_is_kept_whole_while_it_fits() -> None:
    tail = OutputTail()
    tail.write(b"hello\n")
    tail.write(b"world\n")
    assert tail.text() == "hello\nworld\n"
    assert (tail.dropped, tail.total) == (0, 12)


def test_nothing_written_is_no_output_at_all() -> None:
    assert OutputTail().text() is None


def test_only_the_last_bytes_are_kept_and_the_rest_is_counted_and_said() -> None:
    tail = OutputTail(limit=10)
    for i in range(100):
        tail.write(b"%03d\n" % i)
    assert tail.total == 400 and tail.dropped == 390
    assert tail.text() == "[390 bytes before this were not kept]\n" + "7\n098\n099\n"


def test_one_write_larger_than_the_limit_keeps_its_own_tail() -> None:
    tail = OutputTail(limit=8)
    tail.write(b"abc")
    tail.write(b"0123456789ABCDEF")
    assert tail.text() == "[11 bytes before this were not kept]\n89ABCDEF"


def test_memory_stays_bounded_whatever_is_written() -> None:
    tail = OutputTail()
    chunk = b"x" * 65536
    for _ in range(160):  # 10 MiB
        tail.write(chunk)
        assert len(tail._kept) <= OUTPUT_LIMIT
    assert tail.total == 160 * 65536


def test_a_character_cut_in_half_at_the_start_is_dropped_with_what_came_before() -> None:
    tail = OutputTail(limit=4)
    tail.write("aé€".encode())  # 1 + 2 + 3 bytes: the cut falls inside "é"
    assert tail.text() == "[3 bytes before this were not kept]\n€"


def test_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    tail = OutputTail()
    tail.write(b"ok \xff\xfe end")
    assert tail.text() == "ok \ufffd\ufffd end"


def test_sizes_read_as_people_write_them() -> None:
    assert size_text(512) == "512 bytes"
    assert size_text(256 * MiB) == "256 MiB"
    assert size_text(int(1.5 * 1024 * MiB)) == "1.5 GiB"
    assert size_text(45732 * 1024) == "44.7 MiB"


# -- attempts in a job's history ----------------------------------------------------------------


def _job(events: tuple[Event, ...]) -> Job:
    return Job(
        id=1, class_name="a.B", method_name="c", params_json="[]", status="failed", priority=1,
        attempts=2, max_attempts=2, delay=0.0, timeout=0.0, run_at=0.0, created_at=0.0,
        events=events,
    )  # fmt: skip


def test_the_jobs_output_is_the_latest_ended_attempts_and_attempts_pair_with_their_start() -> None:
    events = (
        Event(1.0, "started", "started on r", 1),
        Event(2.0, "exception", "boom", 1, 5000, 0.5, "first\n"),
        Event(3.0, "started", "started on r", 2),
        Event(4.0, "progress", "50%", 2),
        Event(5.0, "memory", "MemoryError", 2, 90000, 0.1, None),
    )
    job = _job(events)
    assert job.output is None  # the latest attempt printed nothing
    assert _job(events[:2]).output == "first\n"
    assert job.to_dict()["output"] is None and "output" in job.to_dict()
    pairs = attempts_of(events)
    assert [(s.at if s else None, e.kind) for s, e in pairs] == [
        (1.0, "exception"),
        (3.0, "memory"),
    ]
    assert [e.to_dict()["max_rss_kb"] for _, e in pairs] == [5000, 90000]


def test_the_job_list_view_carries_no_output() -> None:
    assert "output" not in dataclasses.replace(_job(()), events=None).to_dict()


# -- the configuration keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "memory"),
    [("0", 0), ("1048576", MiB), ("512M", 512 * MiB), ("512MiB", 512 * MiB), ("1.5g", 1536 * MiB)],
)
def test_the_memory_limit_takes_bytes_or_a_size_with_a_unit(
    tmp_path: Path, raw: str, memory: int
) -> None:
    assert settings(str(tmp_path), BGJOBS_MEMORY_LIMIT=raw).memory_limit == memory


def test_limits_default_to_none_and_refuse_what_is_no_limit(tmp_path: Path) -> None:
    s = settings(str(tmp_path))
    assert (s.memory_limit, s.cpu_limit) == (0, 0.0)
    assert settings(str(tmp_path), BGJOBS_CPU_LIMIT="2.5").cpu_limit == 2.5
    for key, bad in (("BGJOBS_MEMORY_LIMIT", "lots"), ("BGJOBS_MEMORY_LIMIT", "-5"),
                     ("BGJOBS_CPU_LIMIT", "-1"), ("BGJOBS_CPU_LIMIT", "nan")):  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            settings(str(tmp_path), **{key: bad})
