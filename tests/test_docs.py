"""The documentation stays true to the code.

1. ``docs/configuration.md`` lists exactly the keys of ``flask_bgjobs.config.KEY_NAMES``, each
   with its seed alias and (for plain defaults) its default.
2. Every relative link between the Markdown files resolves to a file, and every ``#anchor``
   to a heading of the target.
3. Every fenced ``python`` block in ``README.md`` and ``docs/*.md`` runs, or is marked as an
   excerpt. The rule: a block whose first line starts with ``# excerpt`` is only compiled
   (it must still be valid Python); any other block is compiled, then executed as a script in
   a fresh interpreter, in a temporary directory that is its working directory and its app's
   root (so its instance folder), with every ``BGJOBS_*``, seed and ``FLASK_APP`` variable
   removed from the environment and ``BGJOBS_AUTOSTART=false``, so it starts no runner and
   writes nothing outside that directory. A block that must not run that way (it starts a
   worker, needs your app) is an excerpt.
4. ``docs/cli.md`` has a section for every command of ``flask bgjobs`` that mentions each of
   its arguments and options, and mentions no option the command lacks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import click
import pytest

from flask_bgjobs.cli import bgjobs_cli
from flask_bgjobs.config import KEY_NAMES, KEYS, Computed

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: The Markdown files whose links must resolve.
LINKED_FILES = [
    ROOT / "README.md",
    ROOT / "DEVELOPERS.md",
    ROOT / "CHANGELOG.md",
    *sorted(DOCS.glob("*.md")),
]
#: The Markdown files whose Python blocks must run or be marked as excerpts.
SNIPPET_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

EXCERPT_MARK = "# excerpt"
PYTHON_LANGS = {"python", "py", "python3"}
SEED_ALIASES = {key.alias for key in KEYS if key.alias}


# --- Markdown parsing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str

    @property
    def label(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")


def split_fences(text: str) -> tuple[list[str], list[tuple[int, str, list[str]]]]:
    """Return the lines outside fenced blocks (blanked inside) and the blocks themselves."""
    prose: list[str] = []
    blocks: list[tuple[int, str, list[str]]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is None:
            match = _FENCE.match(line)
            if match:
                fence = match.group(1)
                blocks.append((number, match.group(2).lower(), []))
                prose.append("")
            else:
                prose.append(line)
        else:
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                fence = None
            else:
                # Indented blocks (in a list item) keep their relative indentation.
                blocks[-1][2].append(line)
            prose.append("")
    return prose, blocks


def code_blocks(path: Path) -> list[Block]:
    _, blocks = split_fences(path.read_text(encoding="utf-8"))
    result = []
    for line, lang, lines in blocks:
        indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
        code = "\n".join(x[indent:] for x in lines) + "\n"
        result.append(Block(path, line, lang, code))
    return result


def slugify(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link may use in `path`: heading slugs (with -1, -2 for repeats) and ids."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose:
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = slugify(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
        found.update(re.findall(r"""<a\s+(?:name|id)=["']([^"']+)["']""", line))
    return found


_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"
)
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
_HTML_LINK = re.compile(r"""(?:href|src)=["']([^"']+)["']""")
_CODE_SPAN = re.compile(r"(`+).+?\1")


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link, image and reference definition outside code."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    found = []
    for number, line in enumerate(prose, start=1):
        line = _CODE_SPAN.sub("", line)
        for regex in (_INLINE_LINK, _REFERENCE_DEF, _HTML_LINK):
            found += [(number, m.group(1)) for m in regex.finditer(line)]
    return found


def table_rows(lines: list[str]) -> list[list[str]]:
    """The cells of a Markdown table's body rows (`\\|` is a pipe inside a cell)."""
    rows = []
    for line in lines[2:]:  # after the header and the --- row
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append([cell.strip().replace("\\|", "|") for cell in cells])
    return rows


def section(text: str, heading: str) -> list[str]:
    """The prose lines under the level-2 `heading`, up to the next level-2 heading."""
    prose, _ = split_fences(text)
    start = prose.index(f"## {heading}") + 1
    end = next((i for i in range(start, len(prose)) if prose[i].startswith("## ")), len(prose))
    return prose[start:end]


# --- 1. the configuration reference -----------------------------------------------------------


def reference_table() -> list[list[str]]:
    lines = section((DOCS / "configuration.md").read_text(encoding="utf-8"), "Reference")
    start = next(i for i, line in enumerate(lines) if line.startswith("| key |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    header = [cell.strip() for cell in lines[start].strip().strip("|").split("|")]
    assert header == ["key", "default", "seed alias", "meaning", "example"]
    return table_rows(lines[start:end])


def documented_default(value: object) -> str:
    """How a plain default must appear in the default column."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict) and not value:
        return "empty"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def test_config_reference_lists_exactly_the_declared_keys() -> None:
    documented = []
    for row in reference_table():
        names = re.findall(r"`(BGJOBS_[A-Z0-9_]+)`", row[0])
        assert len(names) == 1, f"one key per row, got {row[0]!r}"
        documented.append(names[0])
    duplicates = sorted({name for name in documented if documented.count(name) > 1})
    assert not duplicates, f"listed more than once in docs/configuration.md: {duplicates}"
    missing = [name for name in KEY_NAMES if name not in documented]
    assert not missing, f"declared in config.KEYS but missing from docs/configuration.md: {missing}"
    unknown = [name for name in documented if name not in KEY_NAMES]
    assert not unknown, f"in docs/configuration.md but not declared in config.KEYS: {unknown}"


def test_config_reference_gives_alias_default_meaning_and_example() -> None:
    by_name = {key.name: key for key in KEYS}
    for key_cell, default, alias, meaning, example in reference_table():
        key = by_name[re.findall(r"`(BGJOBS_[A-Z0-9_]+)`", key_cell)[0]]
        assert alias == (f"`{key.alias}`" if key.alias else ""), f"{key.name}: alias {alias!r}"
        assert default and meaning and example, f"{key.name}: an empty cell"
        if not isinstance(key.default, Computed):
            expected = documented_default(key.default)
            assert expected in default, f"{key.name}: default {default!r} lacks {expected!r}"


# --- 2. links ---------------------------------------------------------------------------------


def test_the_linked_files_exist() -> None:
    for path in (ROOT / "README.md", ROOT / "CHANGELOG.md", DOCS / "index.md"):
        assert path.is_file(), path


@pytest.mark.parametrize("path", LINKED_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path.name} does not exist")
    broken = []
    for line, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:|^//", target, re.IGNORECASE):
            continue  # https:, mailto: ...: not ours to check
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{line}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
            broken.append(f"{where} (no such heading in {dest.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


# --- 3. Python snippets -----------------------------------------------------------------------


def python_blocks() -> list[Block]:
    return [
        block
        for path in SNIPPET_FILES
        if path.exists()
        for block in code_blocks(path)
        if block.lang in PYTHON_LANGS
    ]


def is_excerpt(block: Block) -> bool:
    first = next((line for line in block.code.splitlines() if line.strip()), "")
    return first.strip().startswith(EXCERPT_MARK)


def snippet_env(tmp_path: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("BGJOBS_") and name not in SEED_ALIASES and name != "FLASK_APP"
    }
    env["BGJOBS_AUTOSTART"] = "false"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def test_there_are_snippets_of_both_kinds() -> None:
    blocks = python_blocks()
    assert any(is_excerpt(b) for b in blocks) and any(not is_excerpt(b) for b in blocks)


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: b.label)
def test_python_snippet_runs_or_is_an_excerpt(block: Block, tmp_path: Path) -> None:
    try:
        compile(block.code, block.label, "exec")
    except SyntaxError as exc:
        pytest.fail(f"{block.label}: not valid Python ({exc}); excerpts must compile too")
    if is_excerpt(block):
        return
    script = tmp_path / "snippet.py"
    script.write_text(block.code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=snippet_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    leftover = [
        lock for lock in (tmp_path / "instance" / "bgjobs-run").glob("*.lock") if lock.read_text()
    ]
    assert not leftover, f"{block.label} started a runner; mark it '{EXCERPT_MARK}'"
    assert result.returncode == 0, (
        f"{block.label} failed; make it run or start it with '{EXCERPT_MARK}'.\n"
        f"{result.stdout}{result.stderr}"
    )


# --- 4. the CLI reference ---------------------------------------------------------------------


def cli_sections() -> dict[str, str]:
    """Command name → the text of its ``### `name` `` section in docs/cli.md."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*$", line)
        if heading:
            name = re.fullmatch(r"`([a-z][a-z0-9-]*)`", heading.group(2))
            current = (
                sections.setdefault(name.group(1), [])
                if (name and len(heading.group(1)) == 3)
                else None
            )
            continue
        if current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.mark.parametrize("name", sorted(bgjobs_cli.commands))
def test_cli_reference_documents_every_argument_and_option(name: str) -> None:
    sections = cli_sections()
    assert name in sections, f"docs/cli.md has no '### `{name}`' section"
    text = sections[name]
    assert f"flask bgjobs {name}" in text, f"{name}: no usage line"
    command: click.Command = bgjobs_cli.commands[name]
    missing = []
    for param in command.params:
        if isinstance(param, click.Option):
            words = [*param.opts, *param.secondary_opts]
        else:
            words = [param.human_readable_name]
        missing += [word for word in words if not _mentions(text, word)]
    assert not missing, f"docs/cli.md, section {name}: not mentioned: {missing}"


def test_cli_reference_documents_nothing_that_does_not_exist() -> None:
    sections = cli_sections()
    unknown = sorted(set(sections) - set(bgjobs_cli.commands))
    assert not unknown, f"docs/cli.md documents commands that do not exist: {unknown}"
    stale = []
    for name, text in sections.items():
        real = {opt for p in bgjobs_cli.commands[name].params for opt in p.opts}
        for option in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)):
            if option not in real | {"--help", "--app"}:
                stale.append(f"{name}: {option}")
    assert not stale, f"docs/cli.md mentions options that do not exist: {sorted(stale)}"
