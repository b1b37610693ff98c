"""The package's imports point one way: no cycle, late imports included, and a web process that
imports flask_bgjobs loads no runner code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import flask_bgjobs

PACKAGE = Path(flask_bgjobs.__file__).parent
NAME = "flask_bgjobs"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every package module `path` imports, anywhere in the file (late imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(NAME))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(NAME):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    # Importing a module imports its parent packages too, but those edges are Python's, not
    # a dependency of ours: only the named module counts.
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_imports_another_in_a_circle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_only_the_entry_points_reach_into_the_runner() -> None:
    edges = graph()
    outside = {
        m: sorted(d for d in deps if d.startswith(f"{NAME}.runner"))
        for m, deps in edges.items()
        if not m.startswith(f"{NAME}.runner")
    }
    assert {m: d for m, d in outside.items() if d} == {
        f"{NAME}.cli": [f"{NAME}.runner"],
        f"{NAME}.extension": [f"{NAME}.runner"],
        # BGJOBS_EXECUTION inline and manual: the runner's outcome code, run in the caller.
        f"{NAME}.inline": [f"{NAME}.runner.health", f"{NAME}.runner.outcomes"],
    }


def test_the_store_is_the_only_module_with_sql() -> None:
    """No other module builds statements: no sqlalchemy Core calls, no SQL keywords in strings."""
    offenders = []
    for name, path in modules().items():
        if name.startswith((f"{NAME}.store", f"{NAME}.migrations")):
            continue  # the migrations are the schema's history: DDL, run by the store
        text = path.read_text(encoding="utf-8")
        for needle in ("sa.select(", "sa.text(", ".execute(", "INSERT INTO", "UPDATE bgjobs"):
            if needle in text:
                offenders.append(f"{name}: {needle}")
    assert offenders == []


def test_importing_the_package_loads_no_runner_or_job_process_code() -> None:
    code = (
        "import sys, flask_bgjobs, flask_bgjobs.testing, flask_bgjobs.signals\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('flask_bgjobs')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert f"{NAME}.extension" in loaded
    assert [m for m in loaded if m.startswith((f"{NAME}.runner", f"{NAME}.executor"))] == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
