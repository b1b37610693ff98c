"""Tests for flask_bgjobs.joblog: exact line formats (SPEC §6), safe appends, reading back."""

from __future__ import annotations

import calendar
import logging
import multiprocessing
import os
import re
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_bgjobs import joblog
from flask_bgjobs.joblog import JobLog

NAME = "demo_app.services.Reports::process_data"
AT_12_30_00 = calendar.timegm((2026, 11, 21, 12, 30, 0))
AT_12_30_01 = AT_12_30_00 + 1
AT_12_30_05 = AT_12_30_00 + 5
AT_12_32_00 = AT_12_30_00 + 120
REPO_ROOT = Path(__file__).resolve().parents[2]

LINE_RE = re.compile(r"\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\] [A-Z]+: .*")
RAW_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = "bad\r\n[2026-11-21 12:00:00] INFO: Job completed\x1b[31m red\u202eevil\x00\x85\u2028x"


@pytest.fixture
def log(tmp_path: Path) -> JobLog:
    return JobLog(str(tmp_path / "bgjobs.log"), str(tmp_path / "bgjobs-errors.log"))


def read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- exact formats -------------------------------------------------------------------------


def test_timestamp_is_utc_in_brackets() -> None:
    assert joblog.timestamp(AT_12_30_00) == "[2026-11-21 12:30:00]"
    assert joblog.timestamp(AT_12_30_00 + 0.999) == "[2026-11-21 12:30:00]"


def test_timestamp_defaults_to_now() -> None:
    assert re.fullmatch(r"\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\]", joblog.timestamp())


def test_main_log_lines_match_the_spec_character_for_character(log: JobLog) -> None:
    assert log.info(joblog.started(NAME, 17, 1, 4), now=AT_12_30_00)
    assert log.info(joblog.progress(NAME, 17, 40, "parsed rows"), now=AT_12_30_05)
    assert log.info(joblog.completed(NAME, 17, 120.0), now=AT_12_32_00)
    error = joblog.error_text(ValueError("bad row"))
    assert log.warning(joblog.retrying(NAME, 18, 1, 4, 10.0, error), now=AT_12_32_00)

    assert read(log.main_path) == (
        "[2026-11-21 12:30:00] INFO: Job started for "
        "demo_app.services.Reports::process_data (job 17, attempt 1/4).\n"
        "[2026-11-21 12:30:05] INFO: Job progress 40% for "
        "demo_app.services.Reports::process_data (job 17): parsed rows\n"
        "[2026-11-21 12:32:00] INFO: Job completed successfully for "
        "demo_app.services.Reports::process_data (job 17, 120.0 s).\n"
        "[2026-11-21 12:32:00] WARNING: Job failed for "
        "demo_app.services.Reports::process_data (job 18, attempt 1/4); retrying in 10 s. "
        "Error: ValueError: bad row\n"
    )


def test_error_log_lines_match_the_spec_character_for_character(log: JobLog) -> None:
    error = joblog.error_text(ValueError("bad row"))
    assert log.write_error(joblog.failed(NAME, 18, 4, 4, error), now=AT_12_30_00)
    refusal = "JobNotAllowed: os::system is not in BGJOBS_ALLOWED_JOBS"
    assert log.write_error(joblog.rejected("os::system", refusal), now=AT_12_30_01)

    assert read(log.error_path) == (
        "[2026-11-21 12:30:00] ERROR: Job failed for "
        "demo_app.services.Reports::process_data (job 18, attempt 4/4). "
        "Error: ValueError: bad row\n"
        "[2026-11-21 12:30:01] ERROR: Job rejected for os::system. "
        "Error: JobNotAllowed: os::system is not in BGJOBS_ALLOWED_JOBS\n"
    )


def test_other_messages_have_their_fixed_wording() -> None:
    assert joblog.interrupted(NAME, 17, 2, 4) == (
        f"Job interrupted by shutdown for {NAME} (job 17, attempt 2/4); returned to pending."
    )
    assert joblog.cancelled(NAME, 17) == f"Job cancelled for {NAME} (job 17)."
    assert (
        joblog.completed(NAME, 3, 0.04) == f"Job completed successfully for {NAME} (job 3, 0.0 s)."
    )


@pytest.mark.parametrize(
    ("percent", "text"), [(40, "40"), (40.0, "40"), (0, "0"), (100.0, "100"), (12.34, "12.3")]
)
def test_progress_percent_is_an_integer_when_whole_else_one_decimal(
    percent: float, text: str
) -> None:
    assert joblog.progress(NAME, 1, percent, "x") == f"Job progress {text}% for {NAME} (job 1): x"


def test_progress_without_message_ends_with_a_full_stop() -> None:
    assert joblog.progress(NAME, 17, 55.5) == f"Job progress 55.5% for {NAME} (job 17)."


@pytest.mark.parametrize(
    ("wait", "text"), [(10.0, "10"), (1.5, "1.5"), (1.04, "1"), (0.25, "0.2"), (86400, "86400")]
)
def test_retry_wait_prints_without_a_trailing_zero(wait: float, text: str) -> None:
    assert f"retrying in {text} s." in joblog.retrying(NAME, 1, 1, 4, wait, "E")


def test_error_text_is_type_name_and_message() -> None:
    assert joblog.error_text(ValueError("bad row")) == "ValueError: bad row"
    assert joblog.error_text(RuntimeError()) == "RuntimeError"
    assert joblog.error_text(KeyError("k")) == "KeyError: 'k'"


def test_error_text_survives_an_exception_whose_str_fails() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert joblog.error_text(Broken()).startswith("Broken: ")


# --- nothing can forge a line or reach the terminal raw ------------------------------------


def test_hostile_text_stays_on_one_line_with_visible_escapes(log: JobLog) -> None:
    assert log.info(joblog.progress(HOSTILE, 1, 50, HOSTILE), now=AT_12_30_00)
    assert log.warning(joblog.retrying(HOSTILE, 1, 1, 2, 1, HOSTILE), now=AT_12_30_00)
    assert log.error(HOSTILE, now=AT_12_30_00)

    lines = read(log.main_path).split("\n")
    assert lines[-1] == ""
    assert len(lines[:-1]) == 3
    for line in lines[:-1]:
        assert LINE_RE.fullmatch(line)
        assert not RAW_CONTROL_RE.search(line)
        assert "\\r\\n[2026-11-21 12:00:00] INFO:" in line
        assert "\\x1b[31m" in line
        assert "\\u202e" in line
        assert "\\x00" in line and "\\x85" in line and "\\u2028" in line


def test_level_and_lone_surrogates_are_escaped_too(log: JobLog) -> None:
    assert log.write([("INFO\n[x] ERROR", "half \ud800 pair")], now=AT_12_30_00)
    assert read(log.main_path) == "[2026-11-21 12:30:00] INFO\\n[x] ERROR: half \\ud800 pair\n"


def test_every_line_separator_and_bidi_control_is_escaped() -> None:
    specials = "\t\x0b\x0c\x1c\x1d\x1e\x7f\x85\u061c\u200e\u200f\u2028\u2029"
    specials += "".join(map(chr, range(0x202A, 0x202F))) + "".join(map(chr, range(0x2066, 0x206A)))
    text = joblog.rejected(specials, specials)
    assert text.splitlines() == [text]
    assert text.isprintable()
    assert "\\t" in text and "\\x0b" in text and "\\u2069" in text


def test_escaping_is_idempotent() -> None:
    assert joblog._printable(joblog._printable(HOSTILE)) == joblog._printable(HOSTILE)


def test_traceback_lines_are_indented_and_sanitised(log: JobLog) -> None:
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "job.py", line 3, in run\n'
        "    raise ValueError(msg)\n"
        "ValueError: bad\x1b[2J row\r\n"
        "[2026-11-21 12:00:00] INFO: forged\u202e\n"
    )
    assert log.write_error("Job failed. Error: ValueError: bad row", traceback, AT_12_30_00)
    assert read(log.error_path) == (
        "[2026-11-21 12:30:00] ERROR: Job failed. Error: ValueError: bad row\n"
        "  Traceback (most recent call last):\n"
        '    File "job.py", line 3, in run\n'
        "      raise ValueError(msg)\n"
        "  ValueError: bad\\x1b[2J row\n"
        "  [2026-11-21 12:00:00] INFO: forged\\u202e\n"
    )
    for line in read(log.error_path).splitlines()[1:]:
        assert joblog.parse_line(line) == (None, None, line)


def test_error_entry_without_traceback_is_one_line(log: JobLog) -> None:
    assert log.write_error("boom", None, AT_12_30_00)
    assert log.write_error("boom", "", AT_12_30_00)
    assert read(log.error_path) == "[2026-11-21 12:30:00] ERROR: boom\n" * 2


def test_write_puts_several_entries_in_order(log: JobLog) -> None:
    assert log.write([("INFO", "one"), ("WARNING", "two")], now=AT_12_30_00)
    assert log.write([], now=AT_12_30_00)
    assert read(log.main_path) == (
        "[2026-11-21 12:30:00] INFO: one\n[2026-11-21 12:30:00] WARNING: two\n"
    )


# --- appending safely ----------------------------------------------------------------------


def _hammer(main_path: str, error_path: str, worker: int, count: int) -> None:
    log = JobLog(main_path, error_path)
    for i in range(count):
        body = f"w{worker} i{i} " + "x" * (4000 + worker * 37)
        log.write([("INFO", body), ("WARNING", body)])
        log.write_error(body, "Traceback:\n  " + body)


def test_concurrent_processes_append_only_whole_lines(log: JobLog) -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    context = multiprocessing.get_context("fork")
    workers, count = 6, 60
    processes = [
        context.Process(target=_hammer, args=(log.main_path, log.error_path, w, count))
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0

    main_lines = read(log.main_path).split("\n")
    assert main_lines.pop() == ""
    assert len(main_lines) == workers * count * 2
    for line in main_lines:
        match = re.fullmatch(r"\[[^]]+\] (?:INFO|WARNING): w(\d+) i\d+ (x+)", line)
        assert match, line[:80]
        assert len(match.group(2)) == 4000 + int(match.group(1)) * 37

    error_lines = read(log.error_path).split("\n")
    assert error_lines.pop() == ""
    assert len(error_lines) == workers * count * 3
    for head, first, second in zip(*[iter(error_lines)] * 3, strict=True):
        worker = re.fullmatch(r"\[[^]]+\] ERROR: (w\d+ i\d+) x+", head)
        assert worker, head[:80]
        assert first == "  Traceback:"
        assert second.startswith("    " + worker.group(1) + " ")


def test_write_after_rotation_creates_a_fresh_file(log: JobLog) -> None:
    assert log.info("before", now=AT_12_30_00)
    os.rename(log.main_path, log.main_path + ".1")
    assert log.info("after", now=AT_12_30_01)
    assert read(log.main_path + ".1") == "[2026-11-21 12:30:00] INFO: before\n"
    assert read(log.main_path) == "[2026-11-21 12:30:01] INFO: after\n"


def test_missing_parent_directory_is_created(tmp_path: Path) -> None:
    log = JobLog(str(tmp_path / "a" / "b" / "main.log"), str(tmp_path / "c" / "errors.log"))
    assert log.info("hello", now=AT_12_30_00)
    assert log.write_error("oops", now=AT_12_30_00)
    assert read(log.main_path) == "[2026-11-21 12:30:00] INFO: hello\n"
    assert read(log.error_path) == "[2026-11-21 12:30:00] ERROR: oops\n"


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The default umask of most systems, under which files are created 0644 unless asked."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("usual_umask")
@pytest.mark.parametrize("rotated", [False, True])
def test_log_files_are_created_readable_by_their_owner_only(log: JobLog, rotated: bool) -> None:
    # Job names, errors and tracebacks are not for every account on the machine.
    if rotated:
        assert log.info("before") and log.write_error("before")
        os.rename(log.main_path, log.main_path + ".1")
        os.rename(log.error_path, log.error_path + ".1")
    assert log.info("hello") and log.write_error("oops")
    assert stat.S_IMODE(os.stat(log.main_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(log.error_path).st_mode) == 0o600


@pytest.mark.usefixtures("usual_umask")
def test_an_existing_log_file_keeps_the_mode_it_was_given(log: JobLog) -> None:
    # logrotate's `create 0640 app adm`, or an operator's chmod, is a choice to respect.
    Path(log.main_path).touch(mode=0o640)
    assert log.info("hello")
    assert stat.S_IMODE(os.stat(log.main_path).st_mode) == 0o640


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_returns_false_without_raising() -> None:
    log = JobLog("/dev/full", "/dev/full")
    assert log.info("hello") is False
    assert log.write([("INFO", "a"), ("ERROR", "b")]) is False
    assert log.write_error("oops", "Traceback:\n  boom") is False


def test_path_under_a_regular_file_returns_false(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    log = JobLog(str(blocker / "main.log"), str(blocker / "sub" / "errors.log"))
    assert log.info("hello") is False
    assert log.write_error("oops") is False


def test_directory_as_log_path_returns_false(tmp_path: Path) -> None:
    log = JobLog(str(tmp_path), str(tmp_path))
    assert log.info("hello") is False
    assert log.write_error("oops") is False


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_unwritable_file_returns_false(tmp_path: Path) -> None:
    target = tmp_path / "main.log"
    target.write_text("")
    target.chmod(0o444)
    assert JobLog(str(target), str(target)).info("hello") is False


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_file_size_limit_gives_false_for_partial_and_refused_writes(tmp_path: Path) -> None:
    # The runner ignores SIGXFSZ; this child does the same so EFBIG reaches JobLog.
    result = run_python(
        """
        import resource, signal
        from flask_bgjobs.joblog import JobLog
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
        log = JobLog("main.log", "errors.log")
        print(log.info("a" * 50), log.info("b" * 200), log.info("c"), log.write_error("d" * 500))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "False", "False"]
    assert (tmp_path / "main.log").stat().st_size == 100


# --- reading back --------------------------------------------------------------------------


def test_tail_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert joblog.tail(str(tmp_path / "nope.log")) == []
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert joblog.tail(str(blocker / "nope.log")) == []


def test_tail_returns_last_lines_without_newlines(log: JobLog) -> None:
    log.write([("INFO", f"line {i}") for i in range(10)], now=AT_12_30_00)
    log.write_error("boom", "Traceback:\n  raise X", now=AT_12_30_00)
    assert joblog.tail(log.main_path, max_lines=3) == [
        "[2026-11-21 12:30:00] INFO: line 7",
        "[2026-11-21 12:30:00] INFO: line 8",
        "[2026-11-21 12:30:00] INFO: line 9",
    ]
    assert len(joblog.tail(log.main_path)) == 10
    assert joblog.tail(log.error_path) == [
        "[2026-11-21 12:30:00] ERROR: boom",
        "  Traceback:",
        "    raise X",
    ]
    assert joblog.tail(log.main_path, max_lines=0) == []


def test_tail_of_a_large_file_reads_only_the_end_and_drops_the_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    lines = [f"[2026-11-21 12:30:00] INFO: line {i:05d} " + "y" * 80 for i in range(5000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    line_bytes = len(lines[0]) + 1

    result = joblog.tail(str(path), max_lines=10_000, max_bytes=10 * line_bytes + 5)
    assert result == lines[-10:]

    exact = joblog.tail(str(path), max_lines=10_000, max_bytes=10 * line_bytes)
    assert exact == lines[-10:]

    assert joblog.tail(str(path), max_lines=10_000, max_bytes=line_bytes - 1) == []


def test_tail_without_trailing_newline_keeps_the_last_line(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"first\r\nsecond")
    assert joblog.tail(str(path)) == ["first", "second"]


def test_tail_replaces_bad_utf8_and_escapes_controls(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"ok \xff\xfe bytes\nansi \x1b[31m red \xe2\x80\xae rtl\n")
    assert joblog.tail(str(path)) == ["ok \ufffd\ufffd bytes", "ansi \\x1b[31m red \\u202e rtl"]


def test_parse_line_splits_a_log_line() -> None:
    assert joblog.parse_line(
        "[2026-11-21 12:32:00] WARNING: Job failed for x (job 18, attempt 1/4)."
    ) == ("2026-11-21 12:32:00", "WARNING", "Job failed for x (job 18, attempt 1/4).")
    assert joblog.parse_line("[2026-11-21 12:32:00] INFO: ") == (
        "2026-11-21 12:32:00",
        "INFO",
        "",
    )


@pytest.mark.parametrize(
    "line",
    [
        "  Traceback (most recent call last):",
        "",
        "plain text",
        "[2026-11-21 12:32] INFO: short timestamp",
        "[2026-11-21 12:32:00] info: lower-case level",
        " [2026-11-21 12:32:00] INFO: leading space",
    ],
)
def test_parse_line_leaves_other_lines_whole(line: str) -> None:
    assert joblog.parse_line(line) == (None, None, line)


def test_parse_line_round_trips_written_lines(log: JobLog) -> None:
    log.write([("INFO", joblog.started(NAME, 17, 1, 4))], now=AT_12_30_00)
    (line,) = joblog.tail(log.main_path)
    assert joblog.parse_line(line) == (
        "2026-11-21 12:30:00",
        "INFO",
        f"Job started for {NAME} (job 17, attempt 1/4).",
    )


# --- the standard logger ----------------------------------------------------------------------


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """What reaches ``logging.getLogger("flask_bgjobs")`` at INFO and above."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("flask_bgjobs")
    handler, before = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(before)


def test_every_main_log_line_reaches_the_logger_at_its_level_with_its_job_id(
    log: JobLog, records: list[logging.LogRecord]
) -> None:
    log.write(
        [
            ("INFO", joblog.started(NAME, 17, 1, 4)),
            ("WARNING", joblog.retrying(NAME, 18, 1, 4, 10, "ValueError: bad row")),
            ("ERROR", joblog.failed(NAME, 18, 4, 4, "ValueError: bad row")),
            ("INFO", "Runner host:1 started (pid 1, concurrency 2)."),
        ],
        now=AT_12_30_00,
    )
    file_lines = [joblog.parse_line(x)[1:] for x in read(log.main_path).splitlines()]
    seen = [(r.levelname, r.getMessage()) for r in records]
    assert seen == file_lines  # the same level and text, without the file's timestamp
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING, logging.ERROR, 20]
    assert [getattr(r, "job_id", "?") for r in records] == [17, 18, 18, None]
    assert {getattr(r, "bgjobs_file", "?") for r in records} == {"main"}
    assert all(r.name == "flask_bgjobs" for r in records)


def test_an_error_log_entry_reaches_the_logger_with_its_traceback(
    log: JobLog, records: list[logging.LogRecord]
) -> None:
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad row\n'
    log.write_error(joblog.failed(NAME, 18, 4, 4, "ValueError: bad row"), tb)
    [record] = records
    extras = record.__dict__
    assert (record.levelno, extras["job_id"], extras["bgjobs_file"]) == (
        logging.ERROR,
        18,
        "errors",
    )
    assert record.getMessage() == joblog.failed(NAME, 18, 4, 4, "ValueError: bad row")
    assert record.exc_text == tb.rstrip("\n")  # as raised: not indented like the file
    formatted = logging.Formatter("%(levelname)s %(message)s").format(record)
    assert formatted.endswith("\nValueError: bad row")  # a handler shows the traceback too


def test_the_logger_gets_the_escaped_text_never_raw_control_characters(
    log: JobLog, records: list[logging.LogRecord]
) -> None:
    log.write([("WARNING", joblog.progress(NAME, 3, 10, HOSTILE))])
    log.write_error(joblog.rejected(NAME, HOSTILE), HOSTILE)
    for record in records:
        assert not RAW_CONTROL_RE.search(record.getMessage())
        assert not RAW_CONTROL_RE.search(record.exc_text or "")
        assert "\n" not in record.getMessage()


def test_a_message_with_percent_signs_is_not_formatted_again(
    log: JobLog, records: list[logging.LogRecord]
) -> None:
    log.write([("INFO", joblog.progress(NAME, 3, 40, "100%s done %(x)s"))])
    assert records[0].getMessage().endswith("(job 3): 100%s done %(x)s")


def test_a_level_the_host_turned_off_costs_no_record(log: JobLog) -> None:
    seen: list[logging.LogRecord] = []
    logger = logging.getLogger("flask_bgjobs")
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        log.write([("INFO", "quiet"), ("WARNING", "loud")])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
    assert [r.getMessage() for r in seen] == ["loud"]


def test_a_broken_handler_costs_a_record_never_the_write(
    log: JobLog, records: list[logging.LogRecord]
) -> None:
    class Broken(logging.Handler):
        def handle(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("shipper down")

    logger = logging.getLogger("flask_bgjobs")
    broken = Broken()
    logger.addHandler(broken)
    try:
        assert log.write([("ERROR", "still written")])
    finally:
        logger.removeHandler(broken)
    assert read(log.main_path).endswith("ERROR: still written\n")


def test_without_logging_configured_nothing_is_printed(tmp_path: Path) -> None:
    code = f"""
        from flask_bgjobs.joblog import JobLog
        JobLog({str(tmp_path / "m.log")!r}, {str(tmp_path / "e.log")!r}).write_error("boom", "tb")
    """
    result = run_python(code, tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
