"""Job names, the allowlist, params validation and target resolution.

Everything a caller hands us is checked here before anything is stored, imported or run, and
checked again by the runner just before the call, because the stored row may have been edited.
Nothing outside the allowlist is ever imported: ``resolve`` consults the allowlist first.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Final, Literal, NamedTuple, NoReturn, TypeAlias

from flask_bgjobs.errors import InvalidJob, JobNotAllowed

__all__ = [
    "CLASS_NAME_RE",
    "MAX_DEPTH",
    "METHOD_NAME_RE",
    "Allowlist",
    "check_names",
    "check_target",
    "decode_params",
    "decode_result",
    "display_name",
    "encode_params",
    "printable",
    "resolve",
]

#: A dotted path of ASCII identifiers: ``pkg.mod.Class`` or ``pkg.module``.
CLASS_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)
#: An ASCII identifier that does not start with ``_`` (no dunders, no private helpers).
METHOD_NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]*", re.ASCII)
#: Deepest nesting of lists and dicts accepted in params; the top-level container is level 1.
MAX_DEPTH: Final = 64

_MAX_CLASS_NAME: Final = 255
_MAX_METHOD_NAME: Final = 100
# How much of a rejected name is echoed back: enough to recognise it, never a 10 KB blob.
_SHOWN_CHARS: Final = 80
_WILDCARD: Final = "*"

# Characters that could forge a log line, drive a terminal or reorder what a reader sees.
_UNPRINTABLE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SURROGATE: Final = re.compile("[\ud800-\udfff]")

# json.loads (and str(int)) refuse integers longer than this by default, so neither may we store
# one: the runner could not read it back.
_MAX_INT_DIGITS: Final = 4300
_INT_LIMIT: Final = 10**_MAX_INT_DIGITS
# Below this bit length an integer has at most 4300 digits; saves a big comparison per int.
_SAFE_INT_BITS: Final = 14284

_HINTS: Final[dict[str, str]] = {
    "set": "use a list",
    "frozenset": "use a list",
    "bytes": "decode it to a str first (e.g. base64)",
    "bytearray": "decode it to a str first (e.g. base64)",
    "datetime": "pass an ISO 8601 string",
    "date": "pass an ISO 8601 string",
    "time": "pass an ISO 8601 string",
    "Decimal": "pass a str to keep every digit",
    "UUID": "pass a str",
}


def display_name(class_name: str, method_name: str) -> str:
    """Return the name logs and messages use for a job target: ``pkg.mod.Class::method``."""
    return f"{class_name}::{method_name}"


def printable(text: str) -> str:
    """Return ``text`` safe for one log line or a terminal.

    Control characters (C0, C1, DEL), line and paragraph separators, bidi controls and lone
    surrogates become visible escapes such as ``\\n``, ``\\x1b`` or ``\\u202e``.
    """
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _shown(text: str) -> str:
    """Return a short, printable rendering of untrusted ``text`` for an error message."""
    # Slice before repr so a huge value costs nothing to describe.
    shown = printable(repr(text[:_SHOWN_CHARS]))
    if len(text) > _SHOWN_CHARS:
        shown += f"... ({len(text)} characters)"
    return shown


def _check_class_name(class_name: object) -> None:
    # Exactly str: a subclass could override __eq__/__hash__ and match an allowlist entry that
    # differs from the name importlib would then import.
    if type(class_name) is not str:
        raise InvalidJob(f"class_name must be a str, not {type(class_name).__name__}")
    if len(class_name) > _MAX_CLASS_NAME:
        raise InvalidJob(
            f"class_name is {len(class_name)} characters long, over the limit of "
            f"{_MAX_CLASS_NAME}: {_shown(class_name)}"
        )
    if CLASS_NAME_RE.fullmatch(class_name) is None:
        raise InvalidJob(
            f"class_name {_shown(class_name)} is not a dotted path of ASCII identifiers "
            "(like 'pkg.module.Class')"
        )


def _check_method_name(method_name: object) -> None:
    if type(method_name) is not str:
        raise InvalidJob(f"method_name must be a str, not {type(method_name).__name__}")
    if len(method_name) > _MAX_METHOD_NAME:
        raise InvalidJob(
            f"method_name is {len(method_name)} characters long, over the limit of "
            f"{_MAX_METHOD_NAME}: {_shown(method_name)}"
        )
    if METHOD_NAME_RE.fullmatch(method_name) is None:
        raise InvalidJob(
            f"method_name {_shown(method_name)} is not an ASCII identifier that starts with "
            "a letter (names starting with '_' are never allowed)"
        )


def check_names(class_name: object, method_name: object) -> None:
    """Raise `InvalidJob` unless both names are well-formed; never imports anything."""
    _checked(class_name, method_name)


def _checked(class_name: object, method_name: object) -> tuple[str, str]:
    """Check both names and return them typed as the strings they now are known to be."""
    _check_class_name(class_name)
    _check_method_name(method_name)
    return class_name, method_name  # type: ignore[return-value]


class Allowlist:
    """The ``Class.method`` pairs jobs may run, read live from config mappings and `add`.

    Each source maps a class (or module) name to ``"*"`` (every public method) or to an
    iterable of method names. Sources are consulted on every call, so later changes are seen.
    """

    def __init__(self, *sources: Mapping[str, object]) -> None:
        self._added: dict[str, set[str] | Literal["*"]] = {}
        self._sources: tuple[Mapping[str, object], ...] = (*sources, self._added)

    def add(self, class_name: str, *methods: str) -> None:
        """Allow ``methods`` of ``class_name``; no methods, or ``"*"``, allows every public one."""
        _check_class_name(class_name)
        for method in methods:
            if method != _WILDCARD:
                _check_method_name(method)
        if not methods or _WILDCARD in methods:
            self._added[class_name] = _WILDCARD
            return
        current = self._added.setdefault(class_name, set())
        if isinstance(current, set):
            current.update(methods)

    def allows(self, class_name: object, method_name: object) -> bool:
        """Return whether the pair is well-formed and allowed (exact match on the class name)."""
        try:
            class_name, method_name = _checked(class_name, method_name)
        except InvalidJob:
            return False
        return self._grant(class_name, method_name) is not None

    def check(self, class_name: object, method_name: object) -> None:
        """Raise `InvalidJob` for malformed names, `JobNotAllowed` for a pair not allowed."""
        class_name, method_name = _checked(class_name, method_name)
        if self._grant(class_name, method_name) is None:
            name = printable(display_name(class_name, method_name))
            raise JobNotAllowed(f"{name} is not in BGJOBS_ALLOWED_JOBS")

    def _grant(self, class_name: str, method_name: str) -> Literal["named", "*"] | None:
        """Return how the pair is allowed: by name, by wildcard only, or not at all.

        Naming a method anywhere beats a wildcard, because `resolve` is stricter about what a
        wildcard may reach.
        """
        grant: Literal["named", "*"] | None = None
        for source in self._sources:
            entry = source.get(class_name)
            if entry is None:
                continue
            if isinstance(entry, str):
                # A bare string is one method name; iterating it would allow its letters.
                entry = (entry,)
            if not isinstance(entry, Iterable):
                continue
            for allowed in entry:
                if allowed == _WILDCARD:
                    grant = _WILDCARD
                elif type(allowed) is str and allowed == method_name:
                    return "named"
        return grant


# --- params ---------------------------------------------------------------------------------

_Key: TypeAlias = "int | str"
# A path is built as a chain of (parent, key) cells and only rendered when there is an error;
# the chain ends in the name of what is checked ("params" or "result").
_Path: TypeAlias = "tuple[_Path, _Key] | str"


_COMPACT: Final = "as compact JSON"
_TEXT: Final = "of JSON text"


class _LongInt:
    """Stands in for an integer literal too long to convert, so the walker can name its path."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


class _DuplicateKey:
    """Stands in for a JSON object that repeats a key, so the walker can name its path.

    ``json.loads`` would silently keep the last value: the text would say one thing and the
    job receive another.
    """

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


def _render_path(path: _Path) -> str:
    parts: list[str] = []
    while not isinstance(path, str):
        path, key = path
        if isinstance(key, int):
            parts.append(f"[{key}]")
        else:
            shown = json.dumps(key, ensure_ascii=False)
            if len(shown) > 40:
                shown = shown[:36] + '..."'
            parts.append(f"[{shown}]")
    parts.reverse()
    if len(parts) > 12:
        # A 64-deep path is noise; its ends say where to look.
        parts = [*parts[:4], "...", *parts[-6:]]
    return printable(path + "".join(parts))


def _fail(path: _Path, message: str) -> NoReturn:
    raise InvalidJob(f"{_render_path(path)}: {message}")


def _too_large(size: int, max_bytes: int, *, at_least: bool, of: str) -> NoReturn:
    amount = f"at least {size}" if at_least else str(size)
    raise InvalidJob(f"params are {amount} bytes {of}, over BGJOBS_MAX_PARAMS_BYTES ({max_bytes})")


def _safe_repr(value: object) -> str:
    try:
        return printable(repr(value)[:_SHOWN_CHARS])
    except Exception:  # noqa: BLE001 - a 5,000-digit int cannot even be repr()'d
        return f"a {printable(type(value).__qualname__)}"


def _check_str(text: str, path: _Path, what: str) -> None:
    surrogate = _SURROGATE.search(text)
    if surrogate is not None:
        _fail(
            path,
            f"{what} contains a lone surrogate (\\u{ord(surrogate.group()):04x}), "
            "which cannot be encoded as UTF-8",
        )


def _check_scalar(value: object, path: _Path) -> int:
    """Check one non-container value; return a lower bound of its encoded size in bytes."""
    # Exact types throughout: json writes a subclass as its base value, so it would come back
    # as something else.
    if type(value) is str:
        _check_str(value, path, "string")
        # Every char is at least one UTF-8 byte, plus two quotes; escapes only add to that.
        return len(value) + 2
    if value is None or type(value) is bool:
        return 4
    if type(value) is int:
        # Compare magnitudes before any str(): converting a huge int is slow, and refused.
        if value.bit_length() > _SAFE_INT_BITS and not -_INT_LIMIT < value < _INT_LIMIT:
            _fail(path, f"an integer with more than {_MAX_INT_DIGITS} digits cannot be read back")
        return 1
    if type(value) is float:
        if math.isnan(value):
            _fail(path, "NaN is not allowed")
        if math.isinf(value):
            _fail(path, ("Infinity" if value > 0 else "-Infinity") + " is not allowed")
        return 1
    if type(value) is _LongInt:
        _fail(
            path,
            f"an integer with {value.digits} digits cannot be read back "
            f"(the limit is {_MAX_INT_DIGITS})",
        )
    if type(value) is _DuplicateKey:
        _fail(
            (path, value.key),
            "this key appears more than once in its object; JSON would keep only the last value",
        )
    if type(value) is tuple:
        _fail(path, "tuple is not allowed, use a list")
    name = printable(type(value).__qualname__)
    if isinstance(value, (str, int, float, list, dict)):
        # Enums, IntEnum, OrderedDict...: json writes the base value and reads back another
        # type, and a container subclass may iterate differently from what json sees.
        _fail(path, f"{name} would change in a JSON round trip; pass a plain value")
    hint = _HINTS.get(type(value).__name__)
    _fail(path, f"{name} is not a JSON value" + (f"; {hint}" if hint else ""))


def _check_tree(root: object, max_bytes: int, what: str = "params") -> None:
    """Check that ``root`` is strict JSON; iterative, so deep nesting cannot overflow the stack.

    Keeps a running lower bound of the encoded size so huge params are refused early.
    """
    # One frame per open container: its (key, value) pairs, its path, its depth, is it a dict.
    frames: list[tuple[Iterator[tuple[_Key, object]], _Path, int, bool]] = []
    size = 0
    path: _Path = what
    value, depth = root, 0
    while True:
        if type(value) is list or type(value) is dict:
            depth += 1
            if depth > MAX_DEPTH:
                _fail(path, f"nested deeper than {MAX_DEPTH} levels")
            # Brackets, plus one separator per element below: never more than json writes.
            size += 1
            if type(value) is dict:
                frames.append((iter(value.items()), path, depth, True))
            elif type(value) is list:
                frames.append((enumerate(value), path, depth, False))
        else:
            size += _check_scalar(value, path)
        if size > max_bytes:
            _too_large(size, max_bytes, at_least=True, of=_COMPACT)
        while frames:
            items, parent, depth, is_dict = frames[-1]
            pair = next(items, None)
            if pair is None:
                frames.pop()
                continue
            key, value = pair
            if is_dict:
                if type(key) is not str:
                    _fail(
                        parent,
                        f"key {_safe_repr(key)} ({printable(type(key).__qualname__)}) is not "
                        "allowed: JSON object keys are strings, so it would change in a JSON "
                        "round trip",
                    )
                _check_str(key, (parent, key), "key")
                size += len(key) + 3
            path = (parent, key)
            size += 1
            break
        else:
            return


def _check_root(params: object) -> None:
    if type(params) is _DuplicateKey:
        _check_scalar(params, "params")
    if type(params) is tuple:
        raise InvalidJob("params: tuple is not allowed, use a list")
    if type(params) not in (list, dict):
        raise InvalidJob(
            "params must be a list (positional arguments) or a dict (keyword arguments), "
            f"not {printable(type(params).__qualname__)}"
        )


# One encoder for every enqueue: json.dumps with these options builds a new one per call,
# a tenth of what checking and encoding a small params list costs (enqueue_many does 10,000).
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_params(params: object, max_bytes: int) -> str:
    """Validate ``params`` and return their compact JSON text; `InvalidJob` names the bad path.

    ``None`` means no arguments and encodes as ``[]``.
    """
    if params is None:
        params = []
    _check_root(params)
    _check_tree(params, max_bytes)
    text = _ENCODE(params)
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        _too_large(size, max_bytes, at_least=False, of=_COMPACT)
    return text


def _parse_int(digits: str) -> int | _LongInt:
    count = len(digits) - digits.startswith("-")
    if count > _MAX_INT_DIGITS:
        return _LongInt(count)
    return int(digits)


def _parse_object(pairs: list[tuple[str, object]]) -> dict[str, object] | _DuplicateKey:
    obj = dict(pairs)
    if len(obj) < len(pairs):  # rare: only then look for the key that repeats
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                return _DuplicateKey(key)
            seen.add(key)
    return obj


def _parse_constant(name: str) -> float:
    # Hand NaN and Infinity to the walker, which rejects them with the path where they appear.
    return float(name)


def _loads(text: str, what: str, invalid: str) -> object:
    """``json.loads`` with the hooks above; every failure becomes an `InvalidJob`."""
    try:
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_constant=_parse_constant,
            object_pairs_hook=_parse_object,
        )
    except json.JSONDecodeError as exc:
        raise InvalidJob(f"{invalid}: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
    except RecursionError as exc:
        raise InvalidJob(f"{what}: nested deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:
        raise InvalidJob(f"{invalid}: {printable(str(exc))}") from exc


def decode_params(text: str, max_bytes: int | None) -> list[object] | dict[str, object]:
    """Parse stored or typed params JSON, refusing anything `encode_params` would refuse.

    ``max_bytes`` None means no size limit: for readers of a row already stored, which hold
    the text anyway and only need to know whether it is strict JSON.
    """
    if type(text) is not str:
        raise InvalidJob(f"params JSON must be a str, not {type(text).__name__}")
    if max_bytes is None:
        max_bytes = sys.maxsize
    else:
        # Each char is at least one byte: a long text is refused without encoding it.
        if len(text) > max_bytes:
            _too_large(len(text), max_bytes, at_least=True, of=_TEXT)
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            _too_large(size, max_bytes, at_least=False, of=_TEXT)
    params = _loads(text, "params", "params are not valid JSON")
    _check_root(params)
    _check_tree(params, max_bytes)
    return params  # type: ignore[return-value]


def decode_result(text: str) -> object:
    """Parse a stored result: any strict JSON value, with the limits params have.

    The dashboard, the JSON API and the CLI read results through this, so a row edited to hold
    ``[NaN]`` or 100,000 levels of nesting is refused here (`InvalidJob` naming the path as
    ``result…``) rather than crashing them or producing JSON that is not JSON.
    """
    if type(text) is not str:
        raise InvalidJob(f"result JSON must be a str, not {type(text).__name__}")
    result = _loads(text, "result", "result is not valid JSON")
    _check_tree(result, sys.maxsize, "result")
    return result


# --- resolution -----------------------------------------------------------------------------


def _import(name: str) -> ModuleType | None:
    """Import module ``name``; return None when ``name`` itself is not a module."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise InvalidJob(f"cannot import {name}: {printable(str(exc))}") from exc
    except Exception as exc:
        # The user's module raised while importing: say so, keep the original as __cause__.
        raise InvalidJob(
            f"importing {name} failed: {type(exc).__name__}: {printable(str(exc))}"
        ) from exc


def _module_function(
    module: ModuleType, class_name: str, method_name: str, wildcard: bool
) -> object:
    target = display_name(class_name, method_name)
    try:
        function = getattr(module, method_name)
    except AttributeError:
        raise InvalidJob(f"{class_name} has no function {method_name!r}") from None
    except Exception as exc:
        raise InvalidJob(
            f"looking up {target} failed: {type(exc).__name__}: {printable(str(exc))}"
        ) from exc
    if wildcard:
        # "*" means the module's own functions, not os.system or subprocess.run that it imports.
        defined_in = getattr(function, "__module__", None)
        if defined_in != module.__name__:
            raise InvalidJob(
                f"{target} is not defined in {class_name} (it comes from "
                f"{printable(str(defined_in))}); allow it by name, not with '*'"
            )
    return function


def _method_of_class(class_name: str, method_name: str, wildcard: bool) -> type:
    """Import the class ``class_name`` and check it has a method ``method_name``; return it.

    Nothing of the class runs: the lookup is static, and the class is not instantiated.
    """
    target = display_name(class_name, method_name)
    parent_name, _, attr = class_name.rpartition(".")
    if not parent_name:
        raise InvalidJob(f"cannot import {class_name}: no module named {class_name!r}")
    parent = _import(parent_name)
    if parent is None:  # pragma: no cover - importing the full path imported the parent
        raise InvalidJob(f"cannot import {class_name}: no module named {parent_name!r}")
    try:
        cls = getattr(parent, attr)
    except AttributeError:
        raise InvalidJob(
            f"cannot import {class_name}: {parent_name} has no module or class {attr!r}"
        ) from None
    except Exception as exc:
        raise InvalidJob(
            f"looking up {class_name} failed: {type(exc).__name__}: {printable(str(exc))}"
        ) from exc
    if not inspect.isclass(cls):
        raise InvalidJob(f"{class_name} is neither a class nor a module")

    # Look the name up statically in the class's own hierarchy: no descriptor or __getattr__
    # runs, and nothing from object or the metaclass (__class__, mro, __subclasses__...) counts.
    for owner in cls.__mro__:
        if owner is not object and method_name in vars(owner):
            static = vars(owner)[method_name]
            break
    else:
        raise InvalidJob(f"{class_name} has no method {method_name!r}")
    if wildcard and getattr(owner, "__module__", None) == "builtins":
        raise InvalidJob(
            f"{target} is inherited from the built-in {owner.__qualname__}; "
            "allow it by name, not with '*'"
        )
    # A property would run its getter when looked up on the instance; only methods are jobs.
    if not (callable(static) or isinstance(static, (staticmethod, classmethod))):
        raise InvalidJob(f"{target} is not a method")
    return cls


def _bound_method(cls: type, class_name: str, method_name: str) -> object:
    """Instantiate ``cls`` with no arguments and return its bound ``method_name``."""
    try:
        instance = cls()
    except Exception as exc:
        raise InvalidJob(
            f"{class_name}() failed: {type(exc).__name__}: {printable(str(exc))}"
        ) from exc
    try:
        return getattr(instance, method_name)
    except Exception as exc:
        target = display_name(class_name, method_name)
        raise InvalidJob(
            f"looking up {target} failed: {type(exc).__name__}: {printable(str(exc))}"
        ) from exc


class _Found(NamedTuple):
    """A target found without running the job's code: a module's function, or a class."""

    #: The class to instantiate, or None when the target is a module's function.
    cls: type | None
    #: The module's function (None for a class: its method is bound on a fresh instance).
    function: object


def _find(class_name: str, method_name: str, wildcard: bool) -> _Found:
    """Import the allowed module and look the target up, without instantiating or calling it.

    This is where what ``*`` reaches is decided (not inherited from ``object``, the metaclass
    or a built-in type; for a module, only functions it defines), for `check_target` at
    enqueue and for `resolve` in the runner alike.
    """
    module = _import(class_name)
    if module is None:
        return _Found(_method_of_class(class_name, method_name, wildcard), None)
    function = _module_function(module, class_name, method_name, wildcard)
    if not callable(function):
        raise InvalidJob(f"{display_name(class_name, method_name)} is not callable")
    return _Found(None, function)


def check_target(class_name: object, method_name: object, allowlist: Allowlist) -> None:
    """Raise unless the runner would accept this target: the check made before storing a job.

    Always the names and the allowlist (`Allowlist.check`), which import nothing. A pair the
    allowlist names explicitly needs no more: the operator chose it. A pair allowed only by
    ``*`` is looked up as `resolve` will look it up, so enqueue refuses what the runner would
    refuse (``mro``, a ``dict`` subclass's ``get``, ``os.system`` imported into an allowed
    module): that imports the allowed module itself (once per process; nothing else), and
    neither instantiates nor calls anything.
    """
    allowlist.check(class_name, method_name)
    class_name, method_name = _checked(class_name, method_name)
    if allowlist._grant(class_name, method_name) == _WILDCARD:
        _find(class_name, method_name, wildcard=True)


def resolve(class_name: str, method_name: str, allowlist: Allowlist) -> Callable[..., object]:
    """Return the callable a job names, after checking the names and the allowlist.

    A module's ``method_name`` function is returned as is; a class is instantiated with no
    arguments and the bound method returned. Nothing is imported unless the pair is allowed.
    Every failure is an `InvalidJob` (or the `JobNotAllowed` from the allowlist).
    """
    # The very check enqueue made: what the runner accepts cannot drift from what was stored.
    check_target(class_name, method_name, allowlist)
    # For a "*" grant this looks the target up a second time: a dict lookup in sys.modules
    # and one walk of the class's MRO, nothing beside forking the attempt's process.
    found = _find(class_name, method_name, allowlist._grant(class_name, method_name) == _WILDCARD)
    if found.cls is None:
        target = found.function
    else:
        target = _bound_method(found.cls, class_name, method_name)
    if not callable(target):
        raise InvalidJob(f"{display_name(class_name, method_name)} is not callable")
    return target
