"""Every SQL statement of the store, written once (with the few placeholders each backend fills
its own way: `_sql_for`), and the builders of the statements that vary with their arguments."""

from __future__ import annotations

import operator
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from flask_bgjobs.models import jobs
from flask_bgjobs.store.values import NOTIFY_CHANNEL, POSTGRESQL, SQLITE, Run

_ENQUEUE_COLUMNS = (
    "class_name", "method_name", "params", "status", "priority", "attempts", "max_attempts",
    "delay", "timeout", "run_at", "created_at", "log_incomplete", "queue", "unique_key",
    "concurrency_key", "concurrency_limit", "expires_at", "schedule", "scheduled_for",
    "memory_limit", "cpu_limit",
)  # fmt: skip
_INSERT_JOB = (
    f"INSERT INTO bgjobs_jobs ({', '.join(_ENQUEUE_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _ENQUEUE_COLUMNS)}) RETURNING id"
)
# With a unique key (or a schedule tick) the database decides: a second active job with the
# key, or a second job for the tick, is not inserted (ux_bgjobs_jobs_unique_key,
# ux_bgjobs_jobs_schedule_tick), whatever the number of processes racing.
_INSERT_JOB_ONCE = _INSERT_JOB.replace(" RETURNING id", " ON CONFLICT DO NOTHING RETURNING id")
_ACTIVE_WITH_KEY = (
    "SELECT * FROM bgjobs_jobs WHERE unique_key = :unique_key "
    "AND status IN ('pending', 'retrying', 'running')"
)
_NOTIFY = f"SELECT pg_notify('{NOTIFY_CHANNEL}', :payload)"
# PostgreSQL: insert and notify in one autocommitted statement, one round trip.
_INSERT_JOB_NOTIFY = (
    f"WITH j AS ({_INSERT_JOB}) SELECT j.id, pg_notify('{NOTIFY_CHANNEL}', :payload) FROM j"
)
_INSERT_JOB_ONCE_NOTIFY = (
    f"WITH j AS ({_INSERT_JOB_ONCE}) SELECT j.id, pg_notify('{NOTIFY_CHANNEL}', :payload) FROM j"
)
# The claim, in two statements. First the candidates, read from the head of the partial index
# ix_bgjobs_jobs_due in claim order; a paused queue's jobs, and jobs whose concurrency key is
# at its limit, are not candidates, so they never take the place of a job that may run.
# {queues} and {queue_limits} are filled per runner (`_claim_sql`).
_CANDIDATES = """
SELECT id, queue, concurrency_key, concurrency_limit, expires_at, started_at
FROM bgjobs_jobs j {due_index}
WHERE status IN ('pending', 'retrying') AND run_at <= :now{queues}
  AND NOT EXISTS (SELECT 1 FROM bgjobs_queues q WHERE q.name = j.queue AND q.paused)
  AND (concurrency_key IS NULL OR concurrency_limit > (
      SELECT count(*) FROM bgjobs_jobs r {key_index}
      WHERE r.status = 'running' AND r.concurrency_key = j.concurrency_key)){queue_limits}
ORDER BY priority DESC, run_at, id
LIMIT :limit {lock}"""
_TAKE = """
UPDATE bgjobs_jobs SET status = 'running', attempts = attempts + 1, started_at = :now,
    lease_owner = :owner, lease_expires_at = :expires, runner_id = :runner_id, pid = NULL,
    progress = NULL, progress_message = NULL
WHERE id IN ({ids}) AND status IN ('pending', 'retrying')
RETURNING *"""
# The "started" event of every job just taken, read from the rows themselves: it needs no
# answer from the take, so both travel with the COMMIT.
_STARTED_EVENTS = """
INSERT INTO bgjobs_events (job_id, at, kind, message, attempt)
SELECT id, CAST(:now AS DOUBLE PRECISION), 'started', CAST(:message AS TEXT), attempts
FROM bgjobs_jobs
WHERE id IN ({ids}) AND status = 'running' AND lease_owner = :owner AND started_at = :now"""
# Running jobs per concurrency key and per queue (ix_bgjobs_jobs_running_key, _queue).
_RUNNING_PER_KEY = """
SELECT concurrency_key AS name, count(*) AS n FROM bgjobs_jobs
WHERE status = 'running' AND concurrency_key IN ({names}) GROUP BY concurrency_key"""
_RUNNING_PER_QUEUE = """
SELECT queue AS name, count(*) AS n FROM bgjobs_jobs
WHERE status = 'running' AND queue IN ({names}) GROUP BY queue"""
# A job that never started within expires_in of falling due ends cancelled, never run.
_EXPIRE = """
UPDATE bgjobs_jobs SET status = 'cancelled', end_reason = 'expired', finished_at = :now
WHERE status IN ('pending', 'retrying') AND started_at IS NULL AND expires_at <= :now{ids}
RETURNING id, class_name, method_name"""
_SET_QUEUE = """
INSERT INTO bgjobs_queues (name, paused, updated_at) VALUES (:name, :paused, :now)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at"""
# A schedule new to the database, or whose timing changed (a new cron line), starts as if its
# latest tick were taken: it waits for its next tick instead of running at once for the
# "missed" latest tick of a timing it never had.
_ADD_SCHEDULE = """
INSERT INTO bgjobs_schedules (name, paused, last_tick, spec, updated_at)
VALUES (:name, false, :tick, :spec, :now)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at,
    last_tick = CASE
        WHEN COALESCE(bgjobs_schedules.spec, '') <> excluded.spec THEN excluded.last_tick
        ELSE bgjobs_schedules.last_tick END"""
# The compare-and-set that makes a tick this runner's: only one runner moves last_tick forward.
_TAKE_TICK = """
UPDATE bgjobs_schedules SET last_tick = :tick, updated_at = :now
WHERE name = :name AND NOT paused AND (last_tick IS NULL OR last_tick < :tick)
RETURNING last_job_id"""
_STATUS_OF = "SELECT status FROM bgjobs_jobs WHERE id = :id"
_SET_LAST_JOB = "UPDATE bgjobs_schedules SET last_job_id = :id WHERE name = :name"
_PAUSE_SCHEDULE = """
INSERT INTO bgjobs_schedules (name, paused, last_tick, spec, updated_at)
VALUES (:name, :paused, :tick, :spec, :now)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at,
    last_tick = CASE
        WHEN excluded.paused THEN bgjobs_schedules.last_tick
        WHEN bgjobs_schedules.last_tick IS NULL OR bgjobs_schedules.last_tick < excluded.last_tick
            THEN excluded.last_tick
        ELSE bgjobs_schedules.last_tick END"""
# Serialises the claims that involve a limit across PostgreSQL runners (SQLite's write lock
# does it there): an arbitrary constant, like _DDL_LOCK_KEY.
_LIMIT_LOCK_KEY = 0x62676A6C696D
_INSERT_EVENT = """
INSERT INTO bgjobs_events (job_id, at, kind, message, attempt)
VALUES (:job_id, :at, :kind, :message, :attempt)"""
# The event that ends an attempt also says what the attempt used and wrote.
_INSERT_END_EVENT = """
INSERT INTO bgjobs_events (job_id, at, kind, message, attempt, max_rss_kb, cpu_s, output)
VALUES (:job_id, :at, :kind, :message, :attempt, :max_rss_kb, :cpu_s, :output)"""
#: The fence: the row is still running this attempt under this lease owner.
_FENCE = "id = :id AND status = 'running' AND attempts = :attempt AND lease_owner = :owner"
_FINISH = (
    "UPDATE bgjobs_jobs SET {changes}, end_reason = :reason, lease_owner = NULL, "
    "lease_expires_at = NULL, pid = :pid WHERE " + _FENCE
)
_FINISH_SUCCEEDED = _FINISH.format(
    changes="status = 'succeeded', finished_at = :now, result = :result, error = NULL, "
    "traceback = NULL"
)
# Interrupted by the runner's own shutdown: the attempt is given back.
_FINISH_SHUTDOWN = _FINISH.format(
    changes="status = 'pending', attempts = attempts - 1, progress = NULL, progress_message = NULL"
)
_FINISH_RETRYING = _FINISH.format(
    changes="status = 'retrying', run_at = :run_at, error = :error, traceback = :traceback"
)
_FINISH_FAILED = _FINISH.format(
    changes="status = 'failed', finished_at = :now, error = :error, traceback = :traceback"
)
_SET_PID = "UPDATE bgjobs_jobs SET pid = :pid WHERE " + _FENCE


def _with_end_event(update: str) -> str:
    """PostgreSQL: a fenced outcome and, only if it applied, the event that ends the attempt.

    The same update (the rule is written once, above), in one statement with its event: what
    a batch of outcomes sends with its COMMIT, in one round trip. SQLite, which has no round
    trips to save, runs the two statements.
    """
    return (
        f"WITH u AS ({update} RETURNING id) "
        "INSERT INTO bgjobs_events (job_id, at, kind, message, attempt, max_rss_kb, cpu_s, output) "
        "SELECT id, CAST(:now AS DOUBLE PRECISION), CAST(:reason AS VARCHAR), "
        "CAST(:message AS TEXT), CAST(:attempt AS INTEGER), CAST(:max_rss_kb AS BIGINT), "
        "CAST(:cpu_s AS DOUBLE PRECISION), CAST(:output AS TEXT) FROM u RETURNING job_id"
    )


_PROGRESS = (
    "UPDATE bgjobs_jobs SET progress = :percent, progress_message = :message, pid = :pid "
    "WHERE " + _FENCE
)
_RENEW = """
UPDATE bgjobs_jobs SET lease_expires_at = :expires
WHERE status = 'running' AND lease_owner = :owner
RETURNING id"""
_OWNED = "SELECT id FROM bgjobs_jobs WHERE status = 'running' AND lease_owner = :owner"
# Reads the partial index ix_bgjobs_jobs_lease.
_EXPIRED = """
SELECT * FROM bgjobs_jobs
WHERE status = 'running' AND lease_expires_at < :now AND lease_owner <> :except_owner
{lock}"""
_RECLAIM = (
    "UPDATE bgjobs_jobs SET status = :status, run_at = :run_at, finished_at = :finished_at, "
    "end_reason = 'lease_expired', lease_owner = NULL, lease_expires_at = NULL, "
    "error = :error, traceback = NULL WHERE " + _FENCE
)
# Attempts that ended since :since, per job; each with its duration (from the latest started
# event of its number before it: numbers start again after an operator's retry) and its peak
# RSS; then the nearest-rank 50th and 95th percentiles of both. NULLs sort last on both
# backends ("x IS NULL" first) and are not counted.
_ATTEMPT_STATS = """
WITH ended AS (
    SELECT j.class_name AS class_name, j.method_name AS method_name, e.kind AS kind,
        e.max_rss_kb AS rss,
        e.at - (
            SELECT s.at FROM bgjobs_events s
            WHERE s.job_id = e.job_id AND s.kind = 'started' AND s.attempt = e.attempt
                AND s.id < e.id
            ORDER BY s.id DESC LIMIT 1
        ) AS took
    FROM bgjobs_events e JOIN bgjobs_jobs j ON j.id = e.job_id
    WHERE e.at >= :since AND e.attempt IS NOT NULL AND e.kind IN :kinds
),
ranked AS (
    SELECT class_name, method_name, kind, took, rss,
        ROW_NUMBER() OVER (
            PARTITION BY class_name, method_name ORDER BY took IS NULL, took
        ) AS took_rank,
        COUNT(took) OVER (PARTITION BY class_name, method_name) AS took_n,
        ROW_NUMBER() OVER (
            PARTITION BY class_name, method_name ORDER BY rss IS NULL, rss
        ) AS rss_rank,
        COUNT(rss) OVER (PARTITION BY class_name, method_name) AS rss_n
    FROM ended
)
SELECT class_name, method_name, COUNT(*) AS attempts,
    SUM(CASE WHEN kind = :ok THEN 0 ELSE 1 END) AS failed,
    MAX(CASE WHEN took_rank = (took_n * 50 + 99) / 100 THEN took END) AS p50_s,
    MAX(CASE WHEN took_rank = (took_n * 95 + 99) / 100 THEN took END) AS p95_s,
    MAX(CASE WHEN rss_rank = (rss_n * 50 + 99) / 100 THEN rss END) AS p50_rss_kb,
    MAX(CASE WHEN rss_rank = (rss_n * 95 + 99) / 100 THEN rss END) AS p95_rss_kb
FROM ranked
GROUP BY class_name, method_name
ORDER BY COUNT(*) DESC, class_name, method_name"""
_PARAMS = {
    sql: frozenset(re.findall(r":(\w+)", sql))
    for sql in (_FINISH_SUCCEEDED, _FINISH_SHUTDOWN, _FINISH_RETRYING, _FINISH_FAILED)
}
_FINISH_WITH_EVENT = {sql: _with_end_event(sql) for sql in _PARAMS}
# What each backend makes of the placeholders in the statements above. {lock}: SQLite's
# IMMEDIATE transaction already holds the write lock. The index hints: without statistics
# SQLite's planner reads the claim's candidates through ix_bgjobs_jobs_status_id and sorts them
# all (1.3 ms with 3,000 waiting jobs, growing with the queue), where the partial index in claim
# order gives the head at once (6 µs); PostgreSQL's planner finds it alone (tests check).
_FRAGMENTS = {
    SQLITE: {
        "{lock}": "",
        "{due_index}": "INDEXED BY ix_bgjobs_jobs_due",
        "{key_index}": "INDEXED BY ix_bgjobs_jobs_running_key",
    },
    POSTGRESQL: {"{lock}": "FOR UPDATE SKIP LOCKED", "{due_index}": "", "{key_index}": ""},
}
_BACKEND_SQL: dict[tuple[str, str], str] = {}


def _sql_for(backend: str, sql: str) -> str:
    """`sql` with its placeholders filled for `backend` (and psycopg's parameter style)."""
    converted = _BACKEND_SQL.get((backend, sql))
    if converted is None:
        converted = sql
        for mark, text in _FRAGMENTS[backend].items():
            converted = converted.replace(mark, text)
        if backend == POSTGRESQL:  # sqlite3 takes :name as it is; psycopg wants %(name)s
            converted = re.sub(r"(?<!:):(\w+)", r"%(\1)s", converted)
        _BACKEND_SQL[(backend, sql)] = converted
    return converted


def _expired(candidate: Mapping[str, Any], now: float) -> bool:
    expires = candidate["expires_at"]
    return expires is not None and candidate["started_at"] is None and expires <= now


_CANDIDATE_SQL: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}


def _candidates_sql(
    queues: tuple[str, ...] | None, limits: Mapping[str, int]
) -> tuple[str, dict[str, Any]]:
    """The candidates statement for a runner's queues and queue limits, and its parameters."""
    cache_key = (queues, tuple(sorted(limits.items())))
    found = _CANDIDATE_SQL.get(cache_key)
    if found is not None:
        return found
    params: dict[str, Any] = {}
    served = ""
    if queues:
        params |= {f"q{i}": q for i, q in enumerate(queues)}
        served = f"\n  AND queue IN ({', '.join(f':q{i}' for i in range(len(queues)))})"
    limited = ""
    if limits:
        names = sorted(limits)
        params |= {f"l{i}": n for i, n in enumerate(names)}
        params |= {f"n{i}": limits[n] for i, n in enumerate(names)}
        cases = " ".join(f"WHEN :l{i} THEN :n{i}" for i in range(len(names)))
        limited = (
            f"\n  AND (queue NOT IN ({', '.join(f':l{i}' for i in range(len(names)))}) OR "
            "(SELECT count(*) FROM bgjobs_jobs r WHERE r.status = 'running' AND r.queue = j.queue)"
            f" < CASE queue {cases} END)"
        )
    sql = _CANDIDATES.format(
        queues=served, queue_limits=limited, lock="{lock}", due_index="{due_index}",
        key_index="{key_index}",
    )  # fmt: skip
    found = (sql, params)
    _CANDIDATE_SQL[cache_key] = found
    return found


def _counts(run: Run, sql: str, names: Sequence[str]) -> dict[str, int]:
    if not names:
        return {}
    marks = ", ".join(f":c{i}" for i in range(len(names)))
    rows = run(sql.format(names=marks), {f"c{i}": n for i, n in enumerate(names)})
    return {r["name"]: int(r["n"]) for r in rows}


# -- enqueue in bulk, and in a host's transaction -------------------------------------------
# One multi-row INSERT per batch of rows (RETURNING id and unique_key): the rows of a batch get
# ascending ids in the order of the VALUES list (SQLite: one more than the largest rowid;
# PostgreSQL: the identity sequence, called row by row), whatever order RETURNING lists them in,
# so sorting them by id lines them up with the rows that went in.

#: Most rows in one INSERT: 512 × 21 parameters, far below SQLite's and psycopg's limits.
_BATCH_ROWS = 512
# Batches are powers of two, so at most 10 statement texts exist per flavour (cached, and
# converted for psycopg once each). Positional parameters: SQLite looks a named one up among
# those already seen, which makes a statement of 10,000 names take a quadratic 0.2 s to parse.
_ROWS_SQL: dict[tuple[int, bool], str] = {}


#: A row's values in the order of `_ENQUEUE_COLUMNS`, as positional parameters need them.
_IN_COLUMN_ORDER = operator.itemgetter(*_ENQUEUE_COLUMNS)


def _rows_sql(n: int, once: bool) -> str:
    """SQLite: the INSERT of `n` job rows (ON CONFLICT DO NOTHING when one has a unique key)."""
    found = _ROWS_SQL.get((n, once))
    if found is None:
        row = "(" + ", ".join(["?"] * len(_ENQUEUE_COLUMNS)) + ")"
        found = (
            f"INSERT INTO bgjobs_jobs ({', '.join(_ENQUEUE_COLUMNS)}) VALUES "
            f"{', '.join([row] * n)}{' ON CONFLICT DO NOTHING' if once else ''} "
            "RETURNING id, unique_key"
        )
        _ROWS_SQL[(n, once)] = found
    return found


# PostgreSQL: one statement for any number of rows, each column an array parameter, unnested in
# order (WITH ORDINALITY … ORDER BY: the identity sequence is called in that order). psycopg
# converts a statement's placeholders in Python, uncached past 4 KiB: 10,000 rows of VALUES
# cost more to convert than to insert. Text columns travel as text[]: an over-long value is
# then an error, where a cast to varchar(n)[] would cut it.
_PG_ROWS_SQL: dict[bool, str] = {}


def _pg_rows_sql(once: bool) -> str:
    found = _PG_ROWS_SQL.get(once)
    if found is None:
        from sqlalchemy.dialects import postgresql

        def sql_type(name: str) -> str:
            column_type = jobs.c[name].type
            if isinstance(column_type, (sa.String, sa.Text)):
                return "TEXT"
            return str(column_type.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]

        names = ", ".join(_ENQUEUE_COLUMNS)
        arrays = ", ".join(f"%s::{sql_type(c)}[]" for c in _ENQUEUE_COLUMNS)
        found = (
            f"INSERT INTO bgjobs_jobs ({names}) SELECT {names} FROM unnest({arrays}) "
            f"WITH ORDINALITY AS t({names}, n) ORDER BY n"
            f"{' ON CONFLICT DO NOTHING' if once else ''} RETURNING id, unique_key"
        )
        _PG_ROWS_SQL[once] = found
    return found


def _batches(indexes: list[int]) -> Iterator[list[int]]:
    """`indexes` cut into runs of `_BATCH_ROWS`, the rest into powers of two."""
    start = 0
    while start < len(indexes):
        left = len(indexes) - start
        size = _BATCH_ROWS if left >= _BATCH_ROWS else 1 << (left.bit_length() - 1)
        yield indexes[start : start + size]
        start += size


_SQLITE_FILE = "PRAGMA database_list"
# Which PostgreSQL database a connection reaches: the same name on a server that started at the
# same moment on the same port is the same database, whatever host name or address led there.
_PG_IDENTITY = (
    "SELECT current_database() AS db, current_setting('port') AS port, "
    "CAST(pg_postmaster_start_time() AS text) AS started"
)
# Attempts that ended, by reason, for the metrics (cancels only of a running attempt: a job
# cancelled while it waited ended no attempt, whatever its event's number says).
_ATTEMPT_ENDS = """
SELECT kind, count(*) AS n FROM bgjobs_events
WHERE attempt IS NOT NULL
  AND (kind IN :kinds OR (kind = 'cancelled' AND message = 'cancelled while running'))
GROUP BY kind"""
# Each ended attempt's duration, from its started event (as in _ATTEMPT_STATS), counted into
# histogram buckets in SQL: one row whatever the number of events. {buckets} is one SUM per
# upper bound; a negative duration (two hosts' clocks) counts as 0.
_ATTEMPT_DURATIONS = """
WITH ended AS (
    SELECT e.at - (
        SELECT s.at FROM bgjobs_events s
        WHERE s.job_id = e.job_id AND s.kind = 'started' AND s.attempt = e.attempt
            AND s.id < e.id
        ORDER BY s.id DESC LIMIT 1
    ) AS took
    FROM bgjobs_events e
    WHERE e.attempt IS NOT NULL AND e.kind IN :kinds
),
timed AS (SELECT CASE WHEN took < 0 THEN 0 ELSE took END AS took FROM ended WHERE took IS NOT NULL)
SELECT COUNT(*) AS n, COALESCE(SUM(took), 0) AS total{buckets} FROM timed"""
