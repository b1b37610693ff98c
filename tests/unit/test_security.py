"""Security: job names, the allowlist, params validation and target resolution (no processes).

FAULTS.md 16, 18, 19 and 20 at the level of ``flask_bgjobs.security``: rejected names import
nothing (a canary package leaves a file when imported), hostile names never reach a message
raw, and params that are not strict JSON are refused with the path that is wrong.
"""

from __future__ import annotations

import datetime
import enum
import json
import os
import re
import sys
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from flask_bgjobs.errors import BgJobsError, InvalidJob, JobNotAllowed
from flask_bgjobs.security import (
    MAX_DEPTH,
    Allowlist,
    check_names,
    check_target,
    decode_params,
    decode_result,
    display_name,
    encode_params,
    printable,
    resolve,
)

LIMIT = 1024 * 1024  # the default BGJOBS_MAX_PARAMS_BYTES

# Everything printable() must turn into an escape, spelled out independently of the module.
UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)

FAKE_LOG_LINE = "x\r\n[2026-11-21 12:30:00] INFO: Job completed successfully for admin::wipe"
HOSTILE_NAMES = {
    "10 KB": "a" * 10_240,
    "NUL": "pkg.mod\x00Class",
    "CR/LF fake log line": FAKE_LOG_LINE,
    "ANSI escapes": "\x1b[2J\x1b[31mpkg.mod.Class\x1b[0m",
    "RTL override": "pkg.\u202egnp.exe",
    "C1 and DEL": "pkg\x85mod\x9b\x7f",
    "line separator": "pkg\u2028mod",
}


def assert_safe_message(message: str) -> None:
    assert UNSAFE.search(message) is None, message
    assert len(message) < 400, message


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The folder where ``canary_pkg`` modules leave a file when imported; none is loaded yet."""
    marks = tmp_path / "imported"
    marks.mkdir()
    monkeypatch.setenv("BGJOBS_CANARY_DIR", str(marks))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    forget_canary()
    yield marks
    forget_canary()


def forget_canary() -> None:
    for name in [name for name in sys.modules if name.split(".")[0] == "canary_pkg"]:
        del sys.modules[name]


def imported(marks: Path) -> set[str]:
    return {path.name.removesuffix(".imported") for path in marks.iterdir()}


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_name", "method_name"),
    [
        ("pkg", "run"),
        ("pkg.mod.Class", "process_data"),
        ("_private_pkg.mod_2.Class_3", "Run2"),
        ("A.b.C", "x"),
        ("p" * 255, "m" * 100),
    ],
)
def test_accepts_well_formed_names(class_name: str, method_name: str) -> None:
    check_names(class_name, method_name)


@pytest.mark.parametrize(
    "class_name",
    [
        "",
        ".",
        "pkg.",
        ".pkg",
        "pkg..mod",
        "1pkg.mod",
        "pkg.2mod",
        "pkg-mod",
        "pkg/mod",
        "pkg:mod",
        "pkg mod",
        "pkg.mod ",
        " pkg.mod",
        "pkg.mod\n",
        "pkg.mod\t",
        "cаnary",  # Cyrillic а
        "ｏｓ",  # fullwidth
        "pkgé.mod",
        "p" * 256,
    ],
)
def test_rejects_malformed_class_names(class_name: str) -> None:
    with pytest.raises(InvalidJob, match="class_name"):
        check_names(class_name, "run")


@pytest.mark.parametrize(
    "method_name",
    ["", "_private", "__init__", "_", "1run", "run.now", "run ", " run", "run\n", "rυn", "m" * 101],
)
def test_rejects_malformed_method_names(method_name: str) -> None:
    with pytest.raises(InvalidJob, match="method_name"):
        check_names("pkg.mod.Class", method_name)


class SneakyStr(str):
    """A str subclass that equals everything: it must not pass for a name."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("pkg.mod.Class")


@pytest.mark.parametrize("bad", [None, b"pkg.mod", 42, ["pkg"], SneakyStr("os")])
def test_rejects_names_that_are_not_exactly_str(bad: object) -> None:
    with pytest.raises(InvalidJob, match="class_name must be a str"):
        check_names(bad, "run")
    with pytest.raises(InvalidJob, match="method_name must be a str"):
        check_names("pkg.mod.Class", bad)


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_rejects_hostile_names_with_a_message_free_of_control_characters(name: str) -> None:
    for class_name, method_name in [(name, "run"), ("pkg.mod.Class", name)]:
        with pytest.raises(InvalidJob) as caught:
            check_names(class_name, method_name)
        assert_safe_message(str(caught.value))


def test_a_long_name_is_echoed_truncated_with_its_length() -> None:
    with pytest.raises(InvalidJob) as caught:
        check_names("a" * 10_240, "run")
    message = str(caught.value)
    assert "10240 characters" in message
    assert "a" * 81 not in message


def test_display_name_joins_class_and_method() -> None:
    assert display_name("demo_app.services.Reports", "process_data") == (
        "demo_app.services.Reports::process_data"
    )


# --- printable ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\n", "\\n"),
        ("\r", "\\r"),
        ("\t", "\\t"),
        ("\x00", "\\x00"),
        ("\x1b", "\\x1b"),
        ("\x7f", "\\x7f"),
        ("\x85", "\\x85"),
        ("\x9b", "\\x9b"),
        ("\u200e", "\\u200e"),
        ("\u200f", "\\u200f"),
        ("\u202a", "\\u202a"),
        ("\u202e", "\\u202e"),
        ("\u2066", "\\u2066"),
        ("\u2069", "\\u2069"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
        ("\ud800", "\\ud800"),
        ("\udfff", "\\udfff"),
    ],
)
def test_printable_escapes_control_bidi_and_surrogate_characters(raw: str, shown: str) -> None:
    assert printable(f"a{raw}b") == f"a{shown}b"


def test_printable_leaves_ordinary_text_alone() -> None:
    text = "Job failed for pkg.mod.Class::run (job 7): naïve café 日本 🎉 \\n stays literal"
    assert printable(text) == text


def test_printable_output_never_contains_an_unsafe_character() -> None:
    every_bmp_char = "".join(map(chr, range(0x10000)))
    assert UNSAFE.search(printable(every_bmp_char)) is None
    assert printable(FAKE_LOG_LINE).count("\n") == 0


# --- allowlist ----------------------------------------------------------------------------


def test_allowlist_matches_the_exact_class_name_only() -> None:
    allowlist = Allowlist({"allowed.module": ["run"], "allowed.module.Class": "*"})
    assert allowlist.allows("allowed.module", "run")
    assert not allowlist.allows("allowed.module", "other")
    assert not allowlist.allows("allowed.module.os", "system")
    assert not allowlist.allows("allowed.modul", "run")
    assert not allowlist.allows("allowed.moduleX", "run")
    assert not allowlist.allows("allowed", "module")
    assert not allowlist.allows("Allowed.module", "run")
    assert allowlist.allows("allowed.module.Class", "anything")
    assert not allowlist.allows("allowed.module.Class.sub", "anything")


def test_allowlist_wildcard_never_admits_private_or_malformed_names() -> None:
    allowlist = Allowlist({"pkg.mod.Class": "*"})
    assert not allowlist.allows("pkg.mod.Class", "_private")
    assert not allowlist.allows("pkg.mod.Class", "__init__")
    assert not allowlist.allows("pkg.mod.Class", "run\n")
    with pytest.raises(InvalidJob):
        allowlist.check("pkg.mod.Class", "__class__")


def test_allowlist_reads_its_sources_live() -> None:
    config: dict[str, object] = {}
    allowlist = Allowlist(config)
    assert not allowlist.allows("pkg.mod.Class", "run")
    config["pkg.mod.Class"] = ["run"]
    assert allowlist.allows("pkg.mod.Class", "run")
    allowlist.add("pkg.other.Job", "go")
    assert allowlist.allows("pkg.other.Job", "go")
    del config["pkg.mod.Class"]
    assert not allowlist.allows("pkg.mod.Class", "run")


def test_allowlist_consults_every_source() -> None:
    allowlist = Allowlist({"a.A": ["one"]}, {"a.A": ["two"], "b.B": "*"})
    assert allowlist.allows("a.A", "one")
    assert allowlist.allows("a.A", "two")
    assert allowlist.allows("b.B", "three")
    assert not allowlist.allows("a.A", "three")


def test_allowlist_reads_a_bare_string_as_one_method_not_its_letters() -> None:
    allowlist = Allowlist({"pkg.mod.Class": "run"})
    assert allowlist.allows("pkg.mod.Class", "run")
    assert not allowlist.allows("pkg.mod.Class", "r")


@pytest.mark.parametrize("methods", [(), ("*",), ("run", "*")])
def test_add_without_methods_or_with_a_star_allows_every_public_method(
    methods: tuple[str, ...],
) -> None:
    allowlist = Allowlist()
    allowlist.add("pkg.mod.Class", *methods)
    assert allowlist.allows("pkg.mod.Class", "anything")
    assert not allowlist.allows("pkg.mod.Class", "_private")


def test_add_accumulates_methods_and_keeps_a_wildcard() -> None:
    allowlist = Allowlist()
    allowlist.add("pkg.mod.Class", "one")
    allowlist.add("pkg.mod.Class", "two")
    assert allowlist.allows("pkg.mod.Class", "one")
    assert allowlist.allows("pkg.mod.Class", "two")
    assert not allowlist.allows("pkg.mod.Class", "three")
    allowlist.add("pkg.mod.Star")
    allowlist.add("pkg.mod.Star", "one")
    assert allowlist.allows("pkg.mod.Star", "three")


@pytest.mark.parametrize(
    ("class_name", "methods"),
    [("pkg.mod.", ("run",)), ("pkg mod", ()), ("pkg.mod.Class", ("_private",)), ("os", ("",))],
)
def test_add_refuses_malformed_names(class_name: str, methods: tuple[str, ...]) -> None:
    allowlist = Allowlist()
    with pytest.raises(InvalidJob):
        allowlist.add(class_name, *methods)
    assert not allowlist.allows("pkg.mod.Class", "run")


def test_check_names_the_pair_that_is_not_allowed() -> None:
    allowlist = Allowlist({"pkg.mod.Class": ["run"]})
    allowlist.check("pkg.mod.Class", "run")
    with pytest.raises(JobNotAllowed) as caught:
        allowlist.check("os", "system")
    assert str(caught.value) == "os::system is not in BGJOBS_ALLOWED_JOBS"
    assert isinstance(caught.value, BgJobsError)
    assert not isinstance(caught.value, InvalidJob)


def test_check_rejects_malformed_names_before_consulting_the_allowlist() -> None:
    allowlist = Allowlist({"pkg.mod.Class\n": ["run"]})
    with pytest.raises(InvalidJob):
        allowlist.check("pkg.mod.Class\n", "run")
    assert not allowlist.allows("pkg.mod.Class\n", "run")


# --- resolution: nothing outside the allowlist is imported (FAULTS 16, 18) -----------------

CANARY_ALLOWLIST = {"canary_pkg.canary.Canary": ["run"], "canary_pkg.canary": ["ping"]}

ESCAPES = [
    ("os", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "__import__"),
    ("__import__", "os"),
    ("subprocess", "Popen"),
    ("subprocess.Popen", "communicate"),
    ("importlib", "import_module"),
    ("canary_pkg.canary.Canary", "__init__"),
    ("canary_pkg.canary.Canary", "__class__"),
    ("canary_pkg.canary.Canary", "__reduce_ex__"),
    ("canary_pkg.canary.Canary", "mro"),
    ("canary_pkg.canary.Canary", "_private"),
    ("canary_pkg.canary.Canary", "ping"),
    ("canary_pkg.canary.Canary.run", "__call__"),
    ("canary_pkg.canary.os", "system"),
    ("canary_pkg.canary.subprocess", "run"),
    ("canary_pkg.canary", "system"),
    ("canary_pkg.canary", "run_command"),
    ("canary_pkg.canary", "Canary"),
    ("canary_pkg.canar", "ping"),
    ("canary_pkg.canaryX", "ping"),
    ("canary_pkg.canary_", "ping"),
    ("canary_pkg", "canary"),
    ("canary_pkg.canary.canary", "ping"),
    ("Canary_pkg.canary", "ping"),
    ("canary_pkg..canary", "ping"),
    ("canary_pkg.canary ", "ping"),
    ("canary_pkg.canary\n", "ping"),
    ("canary_pkg.canary", "ping\n"),
    ("canary_pkg.cаnary", "ping"),  # Cyrillic а
    ("canary_pkg.canary.Canary", "rսn"),  # Armenian ս
    ("ｃanary_pkg.canary", "ping"),  # fullwidth ｃ
    ("canary_pkg.canary\u202e", "ping"),
    ("canary_pkg.canary\x00", "ping"),
]


@pytest.mark.parametrize(("class_name", "method_name"), ESCAPES)
def test_rejects_names_that_escape_the_allowlist_without_importing_anything(
    canary: Path, class_name: str, method_name: str
) -> None:
    allowlist = Allowlist(CANARY_ALLOWLIST)
    modules_before = set(sys.modules)

    assert not allowlist.allows(class_name, method_name)
    with pytest.raises((InvalidJob, JobNotAllowed)) as checked:
        allowlist.check(class_name, method_name)
    with pytest.raises((InvalidJob, JobNotAllowed)) as resolved:
        resolve(class_name, method_name, allowlist)
    with pytest.raises((InvalidJob, JobNotAllowed)) as targeted:
        check_target(class_name, method_name, allowlist)

    assert set(sys.modules) == modules_before
    assert imported(canary) == set()
    assert_safe_message(str(checked.value))
    assert str(resolved.value) == str(checked.value) == str(targeted.value)


def test_the_canary_does_report_an_import(canary: Path) -> None:
    # Without this, the "nothing imported" tests above could pass with a broken canary.
    run = resolve("canary_pkg.canary.Canary", "run", Allowlist(CANARY_ALLOWLIST))
    assert run() == "ran"
    assert imported(canary) == {"canary_pkg", "canary_pkg.canary"}


def test_resolve_checks_the_allowlist_first_even_for_a_module_that_fails_to_import(
    canary: Path,
) -> None:
    with pytest.raises(JobNotAllowed):
        resolve("canary_pkg.broken", "anything", Allowlist({"canary_pkg.broken": ["other"]}))
    assert imported(canary) == set()


# --- resolution: allowed targets ----------------------------------------------------------


def test_resolves_a_module_function(canary: Path) -> None:
    add = resolve("canary_pkg.jobs", "add", Allowlist({"canary_pkg.jobs": ["add"]}))
    assert add(2, 3) == 5


def test_resolves_a_bound_method_on_a_fresh_instance(canary: Path) -> None:
    allowlist = Allowlist({"canary_pkg.jobs.Reports": ["process"]})
    first = resolve("canary_pkg.jobs.Reports", "process", allowlist)
    second = resolve("canary_pkg.jobs.Reports", "process", allowlist)
    assert first(21) == 42
    assert type(first.__self__).__name__ == "Reports"  # type: ignore[attr-defined]
    assert first.__self__ is not second.__self__  # type: ignore[attr-defined]


@pytest.mark.parametrize(("method_name", "expected"), [("twice", 8), ("kind", "Reports")])
def test_resolves_static_and_class_methods(
    canary: Path, method_name: str, expected: object
) -> None:
    target = resolve(
        "canary_pkg.jobs.Reports", method_name, Allowlist({"canary_pkg.jobs.Reports": "*"})
    )
    assert (target(4) if method_name == "twice" else target()) == expected


def test_wildcard_class_reaches_methods_inherited_from_user_classes(canary: Path) -> None:
    allowlist = Allowlist({"canary_pkg.jobs.Child": "*"})
    assert resolve("canary_pkg.jobs.Child", "process", allowlist)(1) == 2
    assert resolve("canary_pkg.jobs.Child", "own", allowlist)() == "own"


@pytest.mark.parametrize("method_name", ["clear", "keys", "pop", "update", "fromkeys"])
def test_wildcard_class_does_not_reach_methods_inherited_from_builtins(
    canary: Path, method_name: str
) -> None:
    allowlist = Allowlist({"canary_pkg.jobs.Registry": "*"})
    with pytest.raises(InvalidJob, match="built-in dict"):
        resolve("canary_pkg.jobs.Registry", method_name, allowlist)
    assert resolve("canary_pkg.jobs.Registry", "lookup", allowlist)("x") is None


def test_a_builtin_method_named_explicitly_is_allowed(canary: Path) -> None:
    allowlist = Allowlist({"canary_pkg.jobs.Registry": ["keys"]})
    assert resolve("canary_pkg.jobs.Registry", "keys", allowlist)() == {}.keys()


@pytest.mark.parametrize("method_name", ["system", "run"])
def test_wildcard_module_does_not_reach_functions_it_imported(
    canary: Path, method_name: str
) -> None:
    allowlist = Allowlist({"canary_pkg.jobs": "*"})
    with pytest.raises(InvalidJob, match=re.escape("not defined in canary_pkg.jobs")):
        resolve("canary_pkg.jobs", method_name, allowlist)
    assert resolve("canary_pkg.jobs", "add", allowlist)(1, 1) == 2


def test_a_reexported_function_named_explicitly_is_allowed(canary: Path) -> None:
    # The operator named it; the wildcard rule exists for what nobody named.
    target = resolve("canary_pkg.jobs", "system", Allowlist({"canary_pkg.jobs": ["system"]}))
    assert target is os.system


@pytest.mark.parametrize(
    ("class_name", "method_name", "message"),
    [
        ("canary_pkg.jobs.Reports", "mro", "has no method 'mro'"),
        ("canary_pkg.jobs.Reports", "nope", "has no method 'nope'"),
        ("canary_pkg.jobs.Dynamic", "anything", "has no method 'anything'"),
        ("canary_pkg.jobs.Reports", "total", "is not a method"),
        ("canary_pkg.jobs.Reports", "label", "is not a method"),
        ("canary_pkg.jobs", "nope", "has no function 'nope'"),
        ("canary_pkg.jobs", "CONSTANT", "is not callable"),
        ("canary_pkg.jobs.CONSTANT", "bit_length", "neither a class nor a module"),
        ("canary_pkg.jobs.add", "run", "neither a class nor a module"),
        ("canary_pkg.jobs.Nope", "run", "has no module or class 'Nope'"),
        ("canary_pkg.nosuch", "run", "has no module or class 'nosuch'"),
        ("canary_pkg.nosuch.Class", "run", "No module named 'canary_pkg.nosuch'"),
        ("no_such_top_level_pkg_for_bgjobs", "run", "no module named"),
        ("no_such_top_level_pkg_for_bgjobs.mod.Class", "run", "cannot import"),
    ],
)
def test_allowed_but_unresolvable_targets_raise_invalid_job(
    canary: Path, class_name: str, method_name: str, message: str
) -> None:
    with pytest.raises(InvalidJob, match=re.escape(message)) as caught:
        resolve(class_name, method_name, Allowlist({class_name: [method_name]}))
    assert not isinstance(caught.value, (AttributeError, ImportError))
    assert_safe_message(str(caught.value))


@pytest.mark.parametrize(
    ("class_name", "cause", "message"),
    [
        ("canary_pkg.broken", RuntimeError, "broken module refuses to import"),
        ("canary_pkg.missing_dep", ModuleNotFoundError, "canary_pkg_dependency_that_does_not"),
        ("canary_pkg.jobs.NeedsArgs", TypeError, "NeedsArgs() failed"),
        ("canary_pkg.jobs.Explodes", RuntimeError, "constructor failed"),
    ],
)
def test_errors_raised_by_user_code_are_wrapped_with_their_cause(
    canary: Path, class_name: str, cause: type[Exception], message: str
) -> None:
    with pytest.raises(InvalidJob, match=re.escape(message)) as caught:
        resolve(class_name, "run", Allowlist({class_name: ["run"]}))
    assert isinstance(caught.value.__cause__, cause)


# --- check_target: enqueue refuses what the runner would refuse (issue 12, item 10) ----------

#: Pairs a "*" grant on their class or module does not reach, with what the refusal says.
WILDCARD_REFUSED = [
    ("canary_pkg.jobs.Reports", "mro", "has no method 'mro'"),
    ("canary_pkg.jobs.Reports", "nope", "has no method 'nope'"),
    ("canary_pkg.jobs.Reports", "total", "is not a method"),
    ("canary_pkg.jobs.Reports", "label", "is not a method"),
    ("canary_pkg.jobs.Dynamic", "anything", "has no method 'anything'"),
    ("canary_pkg.jobs.Registry", "get", "inherited from the built-in dict"),
    ("canary_pkg.jobs.Registry", "keys", "inherited from the built-in dict"),
    ("canary_pkg.jobs.Registry", "fromkeys", "inherited from the built-in dict"),
    ("canary_pkg.jobs", "system", "not defined in canary_pkg.jobs"),
    ("canary_pkg.jobs", "run", "not defined in canary_pkg.jobs"),
    ("canary_pkg.jobs", "nope", "has no function 'nope'"),
    ("canary_pkg.jobs", "CONSTANT", "not defined in canary_pkg.jobs"),
    ("canary_pkg.jobs.Nope", "run", "has no module or class 'Nope'"),
    ("canary_pkg.broken", "run", "broken module refuses to import"),
    ("canary_pkg.missing_dep", "run", "canary_pkg_dependency_that_does_not"),
]


@pytest.mark.parametrize(("class_name", "method_name", "message"), WILDCARD_REFUSED)
def test_check_target_refuses_what_a_wildcard_does_not_reach_exactly_as_resolve_does(
    canary: Path, class_name: str, method_name: str, message: str
) -> None:
    allowlist = Allowlist({class_name: "*"})
    with pytest.raises(InvalidJob, match=re.escape(message)) as at_enqueue:
        check_target(class_name, method_name, allowlist)
    with pytest.raises(InvalidJob) as at_run_time:
        resolve(class_name, method_name, allowlist)
    assert str(at_enqueue.value) == str(at_run_time.value)
    assert_safe_message(str(at_enqueue.value))


@pytest.mark.parametrize(
    ("class_name", "method_name"),
    [
        ("canary_pkg.jobs.Reports", "process"),
        ("canary_pkg.jobs.Reports", "twice"),
        ("canary_pkg.jobs.Reports", "kind"),
        ("canary_pkg.jobs.Child", "process"),
        ("canary_pkg.jobs.Registry", "lookup"),
        ("canary_pkg.jobs", "add"),
        # Instantiating is the job's own code: only the runner does it, in the job's process.
        ("canary_pkg.jobs.Explodes", "run"),
        ("canary_pkg.jobs.NeedsArgs", "run"),
    ],
)
def test_check_target_accepts_what_a_wildcard_reaches_without_instantiating_it(
    canary: Path, class_name: str, method_name: str
) -> None:
    check_target(class_name, method_name, Allowlist({class_name: "*"}))


def test_check_target_imports_nothing_for_a_pair_allowed_by_name(canary: Path) -> None:
    # The operator named it: there is nothing left to decide, so the job's module stays out of
    # the web process, and a name that does not exist is the runner's to report.
    modules_before = set(sys.modules)
    check_target("canary_pkg.canary.Canary", "run", Allowlist(CANARY_ALLOWLIST))
    check_target("canary_pkg.jobs.Reports", "mro", Allowlist({"canary_pkg.jobs.Reports": ["mro"]}))
    check_target("canary_pkg.broken", "run", Allowlist({"canary_pkg.broken": ["run"]}))
    assert set(sys.modules) == modules_before
    assert imported(canary) == set()


def test_check_target_imports_only_the_module_a_wildcard_names(canary: Path) -> None:
    allowlist = Allowlist({"canary_pkg.canary.Canary": "*"})
    with pytest.raises(InvalidJob, match="has no method 'mro'"):
        check_target("canary_pkg.canary.Canary", "mro", allowlist)
    assert imported(canary) == {"canary_pkg", "canary_pkg.canary"}
    check_target("canary_pkg.canary.Canary", "run", allowlist)


@pytest.mark.parametrize(
    ("class_name", "method_name", "error"),
    [
        ("os", "system", JobNotAllowed),
        ("canary_pkg.jobs.Reports", "_private", InvalidJob),
        ("canary_pkg.jobs.Reports", "__class__", InvalidJob),
        ("canary_pkg.jobs.Reports ", "process", InvalidJob),
        (None, "process", InvalidJob),
    ],
)
def test_check_target_checks_names_and_the_allowlist_first(
    canary: Path, class_name: object, method_name: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        check_target(class_name, method_name, Allowlist({"canary_pkg.jobs.Reports": "*"}))
    assert imported(canary) == set()


# --- params: encoding (FAULTS 19, 20) -----------------------------------------------------


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Name(str, enum.Enum):
    ADA = "ada"


class MyFloat(float):
    pass


class MyList(list):  # type: ignore[type-arg]
    pass


def test_encodes_nested_values_compactly_and_round_trips_them() -> None:
    params = {
        "rows": [1, -2, 3.5, -0.0, 1e300, True, False, None, "naïve 🎉", "\x00\n"],
        "nested": {"a": [{"b": []}, {}], "": "empty key"},
        "big": 10**4299,
    }
    text = encode_params(params, LIMIT)
    assert text == json.dumps(params, separators=(",", ":"), ensure_ascii=False)
    assert decode_params(text, LIMIT) == params


def test_encodes_none_as_no_arguments() -> None:
    assert encode_params(None, LIMIT) == "[]"
    assert encode_params({}, LIMIT) == "{}"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ((1, 2), "params: tuple is not allowed, use a list"),
        ("text", "params must be a list (positional arguments) or a dict"),
        (3, "params must be a list"),
        ({1, 2}, "params must be a list"),
        (OrderedDict(a=1), "params must be a list"),
        ([{"when": datetime.datetime(2026, 1, 1)}], 'params[0]["when"]: datetime is not a JSON'),
        ([datetime.date(2026, 1, 1)], "params[0]: date is not a JSON value"),
        ({"a": [1, 2, float("nan")]}, 'params["a"][2]: NaN is not allowed'),
        ([float("inf")], "params[0]: Infinity is not allowed"),
        ([float("-inf")], "params[0]: -Infinity is not allowed"),
        ([[(1, 2)]], "params[0][0]: tuple is not allowed, use a list"),
        ([{1, 2}], "params[0]: set is not a JSON value"),
        ([frozenset()], "params[0]: frozenset is not a JSON value"),
        ({"b": b"bytes"}, 'params["b"]: bytes is not a JSON value'),
        ([bytearray(b"x")], "params[0]: bytearray is not a JSON value"),
        ([Decimal("1.10")], "params[0]: Decimal is not a JSON value"),
        ([uuid.UUID(int=0)], "params[0]: UUID is not a JSON value"),
        ([object()], "params[0]: object is not a JSON value"),
        ([Color.RED], "params[0]: Color is not a JSON value"),
        ([Level.HIGH], "params[0]: Level would change in a JSON round trip"),
        ([Name.ADA], "params[0]: Name would change in a JSON round trip"),
        ([MyFloat(1.0)], "params[0]: MyFloat would change in a JSON round trip"),
        ([MyList()], "params[0]: MyList would change in a JSON round trip"),
        ([OrderedDict()], "params[0]: OrderedDict would change in a JSON round trip"),
        ([{1: "a"}], "params[0]: key 1 (int) is not allowed"),
        ({"a": {True: 1}}, 'params["a"]: key True (bool) is not allowed'),
        ({None: 1}, "params: key None (NoneType) is not allowed"),
        ({(1, 2): 1}, "params: key (1, 2) (tuple) is not allowed"),
        ({10**5000: 1}, "params: key a int (int) is not allowed"),
        ([10**4300], "params[0]: an integer with more than 4300 digits"),
        ({"n": [-(10**5000)]}, 'params["n"][0]: an integer with more than 4300 digits'),
        (["ok", "bad \ud800"], "params[1]: string contains a lone surrogate (\\ud800)"),
        ({"\udfff": 1}, 'params["\\udfff"]: key contains a lone surrogate (\\udfff)'),
    ],
)
def test_encode_rejects_values_json_would_refuse_or_change(params: object, message: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        encode_params(params, LIMIT)
    assert message in str(caught.value)
    assert_safe_message(str(caught.value))


def test_integers_up_to_4300_digits_are_accepted() -> None:
    for value in (10**4300 - 1, -(10**4300 - 1)):
        assert decode_params(encode_params([value], LIMIT), LIMIT) == [value]


def test_a_hostile_key_is_shown_escaped_in_the_path() -> None:
    with pytest.raises(InvalidJob) as caught:
        encode_params({FAKE_LOG_LINE: {"\x1b[31m": float("nan")}}, LIMIT)
    message = str(caught.value)
    assert_safe_message(message)
    assert '["\\u001b[31m"]: NaN is not allowed' in message


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
@pytest.mark.parametrize("container", ["list", "dict"])
def test_rejects_nesting_deeper_than_the_limit_without_recursing(
    depth: int, container: str
) -> None:
    params: object = [] if container == "list" else {}
    for _ in range(depth - 1):
        params = [params] if container == "list" else {"k": params}
    with pytest.raises(InvalidJob, match=f"nested deeper than {MAX_DEPTH} levels") as caught:
        encode_params(params, 10**9)
    assert caught.value.__cause__ is None  # not a RecursionError in disguise
    assert_safe_message(str(caught.value))


def test_accepts_nesting_at_the_limit() -> None:
    params: list[object] = []
    for _ in range(MAX_DEPTH - 1):
        params = [params]
    text = encode_params(params, LIMIT)
    assert decode_params(text, LIMIT) == params


def test_rejects_params_over_the_byte_limit_naming_the_setting_and_sizes() -> None:
    with pytest.raises(InvalidJob) as caught:
        encode_params(["x" * 10_000_000], LIMIT)
    message = str(caught.value)
    assert "BGJOBS_MAX_PARAMS_BYTES" in message
    assert str(LIMIT) in message
    assert "10000004 bytes" in message


def test_refuses_a_10_mb_payload_before_building_its_json(monkeypatch: pytest.MonkeyPatch) -> None:
    def dumps_must_not_run(*args: object, **kwargs: object) -> str:
        raise AssertionError("json.dumps ran on a payload already known to be too large")

    params = ["0123456789"] * 1_000_000
    monkeypatch.setattr(json, "dumps", dumps_must_not_run)
    with pytest.raises(InvalidJob, match="BGJOBS_MAX_PARAMS_BYTES"):
        encode_params(params, LIMIT)


def test_the_limit_counts_utf8_bytes_of_the_compact_encoding() -> None:
    params = ["é" * 10]  # 2 brackets + 2 quotes + 10 two-byte chars
    assert encode_params(params, 24) == '["éééééééééé"]'
    with pytest.raises(InvalidJob, match=r"params are 24 bytes as compact JSON.*\(23\)"):
        encode_params(params, 23)
    # Escapes make the encoding longer than the text: the final check sees the real size.
    with pytest.raises(InvalidJob, match="params are 604 bytes as compact JSON"):
        encode_params(["\x00" * 100], 300)


# --- params: decoding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[NaN]", "params[0]: NaN is not allowed"),
        ('{"a": [1, Infinity]}', 'params["a"][1]: Infinity is not allowed'),
        ('{"a": -Infinity}', 'params["a"]: -Infinity is not allowed'),
        ("[1e400]", "params[0]: Infinity is not allowed"),
        ("[" + "1" * 5000 + "]", "params[0]: an integer with 5000 digits cannot be read back"),
        ('{"n": -' + "9" * 4301 + "}", 'params["n"]: an integer with 4301 digits'),
        ('["\\ud800"]', "params[0]: string contains a lone surrogate (\\ud800)"),
        ('{"\\udfff": 1}', 'params["\\udfff"]: key contains a lone surrogate (\\udfff)'),
        ('["\ud800"]', "params[0]: string contains a lone surrogate (\\ud800)"),
        ("[" * 100_000 + "]" * 100_000, f"params: nested deeper than {MAX_DEPTH} levels"),
        ("[" * 65 + "]" * 65, f"nested deeper than {MAX_DEPTH} levels"),
        ("", "params are not valid JSON: Expecting value (line 1, column 1)"),
        ("[1,", "params are not valid JSON"),
        ("[1] [2]", "params are not valid JSON: Extra data"),
        ("{'a': 1}", "params are not valid JSON"),
        ("null", "params must be a list (positional arguments) or a dict"),
        ('"text"', "params must be a list"),
        ("42", "params must be a list"),
    ],
)
def test_decode_rejects_what_encode_would_refuse(text: str, message: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        decode_params(text, LIMIT)
    assert message in str(caught.value)
    assert_safe_message(str(caught.value))


def test_decode_refuses_oversized_text_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def loads_must_not_run(*args: object, **kwargs: object) -> object:
        raise AssertionError("json.loads ran on text already known to be too large")

    monkeypatch.setattr(json, "loads", loads_must_not_run)
    with pytest.raises(InvalidJob, match=r"params are at least 10000004 bytes of JSON text"):
        decode_params('["' + "x" * 10_000_000 + '"]', LIMIT)
    with pytest.raises(InvalidJob, match=r"params are 24 bytes of JSON text.*\(23\)"):
        decode_params('["' + "é" * 10 + '"]', 23)


def test_decode_refuses_a_value_that_is_not_text() -> None:
    with pytest.raises(InvalidJob, match="must be a str"):
        decode_params(b"[]", LIMIT)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"a": 1, "a": 2}', 'params["a"]'),
        ('{"a": 1, "b": 2, "a": 1}', 'params["a"]'),
        ('[1, {"x": {"k": [], "k": []}}]', 'params[1]["x"]["k"]'),
        ('{"\\u0061": 1, "a": 2}', 'params["a"]'),  # the same key, spelled with an escape
        ('{"\\u001b[2J": 1, "\\u001b[2J": 2}', 'params["\\u001b[2J"]'),
    ],
)
def test_decode_refuses_duplicate_keys_naming_the_path(text: str, path: str) -> None:
    # json.loads would keep the last value: the text says one thing, the job gets another.
    with pytest.raises(InvalidJob) as caught:
        decode_params(text, LIMIT)
    assert str(caught.value).startswith(f"{path}: this key appears more than once")
    assert_safe_message(str(caught.value))


def test_decode_accepts_the_same_key_in_different_objects() -> None:
    text = '[{"a": 1}, {"a": 2, "b": {"a": 3}}]'
    assert decode_params(text, LIMIT) == [{"a": 1}, {"a": 2, "b": {"a": 3}}]


# --- stored results: the readers' decoder ---------------------------------------------------


@pytest.mark.parametrize("value", [None, True, 3, -2.5, "text", [], {"a": [1, {"b": None}]}])
def test_decode_result_reads_any_strict_json_value(value: object) -> None:
    assert decode_result(json.dumps(value)) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[NaN]", "result[0]: NaN is not allowed"),
        ("-Infinity", "result: -Infinity is not allowed"),
        ('{"a": {"b": 1, "b": 2}}', 'result["a"]["b"]: this key appears more than once'),
        ("[" + "7" * 5000 + "]", "result[0]: an integer with 5000 digits"),
        ('["\\ud800"]', "result[0]: string contains a lone surrogate"),
        ("[" * 100_000 + "]" * 100_000, f"result: nested deeper than {MAX_DEPTH} levels"),
        ("[" * 65 + "]" * 65, f"nested deeper than {MAX_DEPTH} levels"),
        ("{'a': 1}", "result is not valid JSON"),
        ("", "result is not valid JSON: Expecting value"),
    ],
)
def test_decode_result_refuses_what_no_reader_could_show(text: str, message: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        decode_result(text)
    assert message in str(caught.value)
    assert_safe_message(str(caught.value))


def test_decode_params_without_a_size_limit_still_refuses_everything_else() -> None:
    # Readers of stored rows pass None: the text is in memory already, only strictness matters.
    big = json.dumps(["x" * (2 * LIMIT)])
    assert decode_params(big, None) == ["x" * (2 * LIMIT)]
    with pytest.raises(InvalidJob, match=r"params\[0\]: NaN"):
        decode_params("[NaN]", None)


def test_decode_accepts_what_a_user_types() -> None:
    assert decode_params(' [1, "two", {"three": 3.0}] ', LIMIT) == [1, "two", {"three": 3.0}]
