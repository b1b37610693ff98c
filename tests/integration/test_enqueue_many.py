"""``bgjobs.enqueue_many(specs)`` (SPEC §12): every spec checked first, one transaction, all or
none; unique keys as one enqueue has them, inside the batch too; runners run the lot."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Env

from flask_bgjobs import InvalidJob, JobNotAllowed, run_background_job, store

J = "jobapp.jobs.Jobs"

pytestmark = pytest.mark.usefixtures("ctx")


def specs(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"class_name": J, "method_name": "add", "params": [i, i], **extra} for i in range(n)]


def test_many_jobs_are_stored_in_order_and_a_runner_runs_them_all(env: Env, bgjobs: Any) -> None:
    jobs = bgjobs.enqueue_many(
        [*specs(600), {"class_name": "jobapp.jobs", "method_name": "module_function",
                       "params": {"x": 21}, "priority": 5, "queue": "other", "delay": 3600}]
    )  # fmt: skip
    assert len(jobs) == 601 and len({j.id for j in jobs}) == 601
    assert [j.params for j in jobs[:600]] == [[i, i] for i in range(600)]
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    last = jobs[-1]
    assert (last.priority, last.queue, last.params) == (5, "other", {"x": 21})
    assert last.run_at >= last.created_at + 3600
    stored = bgjobs.get_job(jobs[123].id)
    assert (stored.status, stored.params, stored.max_attempts) == ("pending", [123, 123], 4)
    env.burst("--concurrency", "2", timeout=300)
    assert bgjobs.get_job(jobs[599].id).result == 1198
    assert bgjobs.counts()["succeeded"] == 600
    assert bgjobs.get_job(last.id).status == "pending"  # due in an hour


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ({"class_name": "os", "method_name": "system"}, JobNotAllowed, r"^specs\[2\]: os::system"),
        ({"class_name": J, "method_name": "add", "params": [float("nan")]}, InvalidJob, r"^specs\[2\]: "),
        ({"class_name": J, "method_name": "add", "priority": "high"}, InvalidJob, r"specs\[2\]: priority"),
        ({"class_name": J, "method_name": "add", "colour": "red"}, InvalidJob, r"unknown keys colour"),
        ({"class_name": J, "method_name": "add", "session": None}, InvalidJob, r"to enqueue_many itself"),
        ({"class_name": J}, InvalidJob, r"specs\[2\]: missing method_name"),
        ("add", InvalidJob, r"specs\[2\]: a spec must be a dict"),
    ],
)  # fmt: skip
def test_one_bad_spec_stores_none_and_names_its_index(
    env: Env, bgjobs: Any, bad: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        bgjobs.enqueue_many([*specs(2), bad, *specs(3)])
    assert sum(bgjobs.counts().values()) == 0
    assert env.error_log.read_text().count("ERROR: Job rejected for ") == 1


def test_a_list_is_required(env: Env, bgjobs: Any) -> None:
    for wrong in ({"class_name": J, "method_name": "add"}, "specs", 7):
        with pytest.raises(InvalidJob, match="takes a list of dicts"):
            bgjobs.enqueue_many(wrong)
    assert bgjobs.enqueue_many([]) == []


def test_a_failure_midway_stores_nothing(
    env: Env, bgjobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows of the first batches are inserted when the failure comes: rolled back too."""
    real = store.NewJob.inserted
    built: list[int] = []

    def fails_at_550(self: store.NewJob, job_id: int) -> Any:
        built.append(job_id)
        if len(built) == 550:
            raise RuntimeError("the 550th row")
        return real(self, job_id)

    monkeypatch.setattr(store.NewJob, "inserted", fails_at_550)
    with pytest.raises(RuntimeError, match="the 550th row"):
        bgjobs.enqueue_many(specs(600))  # SQLite: 512 rows, then the rest; PostgreSQL: one go
    assert sum(bgjobs.counts().values()) == 0


def test_unique_keys_hold_across_the_batch_and_against_stored_jobs(env: Env, bgjobs: Any) -> None:
    held = run_background_job(J, "noop", unique_key="daily")
    jobs = bgjobs.enqueue_many(
        [
            {"class_name": J, "method_name": "noop", "unique_key": "daily"},
            {"class_name": J, "method_name": "add", "params": [1, 1], "unique_key": "k"},
            {"class_name": J, "method_name": "add", "params": [2, 2]},
            {"class_name": J, "method_name": "add", "params": [3, 3], "unique_key": "k"},
        ]
    )
    assert [(j.duplicate, j.params) for j in jobs] == [
        (True, []), (False, [1, 1]), (False, [2, 2]), (True, [1, 1])
    ]  # fmt: skip
    assert jobs[0].id == held.id and jobs[3].id == jobs[1].id
    assert sum(bgjobs.counts().values()) == 3
