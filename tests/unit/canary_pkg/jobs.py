"""Job targets for the resolution tests: allowed classes and functions, and traps."""

from __future__ import annotations

from os import system  # noqa: F401 - re-exported: a "*" on this module must not reach it
from subprocess import run  # noqa: F401 - likewise
from typing import Any

CONSTANT = 3


def add(a: int, b: int) -> int:
    return a + b


class Reports:
    """A plain job class."""

    label = "not callable"

    def process(self, value: int) -> int:
        return value * 2

    @staticmethod
    def twice(value: int) -> int:
        return value * 2

    @classmethod
    def kind(cls) -> str:
        return cls.__name__

    @property
    def total(self) -> int:
        raise AssertionError("a property getter must never run during resolution")


class Child(Reports):
    """Inherits process() from a user class in the same module."""

    def own(self) -> str:
        return "own"


class Registry(dict):  # type: ignore[type-arg]
    """Inherits clear(), keys()... from the built-in dict."""

    def lookup(self, key: str) -> object:
        return self.get(key)


class NeedsArgs:
    def __init__(self, required: int) -> None:
        self.required = required

    def run(self) -> int:
        return self.required


class Explodes:
    def __init__(self) -> None:
        raise RuntimeError("constructor failed")

    def run(self) -> None:
        return None


class Dynamic:
    """Answers any attribute at run time; resolution must not trust that."""

    def __getattr__(self, name: str) -> Any:
        return lambda: name
