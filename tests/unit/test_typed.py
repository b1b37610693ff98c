"""``@bgjobs.job(**options)``: how a call's arguments become params, what it allows, what it
refuses; no database (the enqueue itself is replaced by a recorder)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from flask_bgjobs import BackgroundJobs
from flask_bgjobs.typed import JobFunction, params_of


def plain(a: int, b: int = 2, *, c: int = 3) -> int:
    return a + b + c


def with_rest(a: int, *rest: int, **named: int) -> int:
    return a + sum(rest) + sum(named.values())


def positional_only(a: int, /, b: int, *, c: int = 0) -> int:
    return a + b + c


def bind(func: Any, *args: Any, **kwargs: Any) -> Any:
    return params_of(inspect.signature(func), args, kwargs, func.__name__)


@pytest.mark.parametrize(
    ("func", "args", "kwargs", "params"),
    [
        (plain, (1,), {}, [1]),
        (plain, (1, 5), {}, [1, 5]),
        (plain, (), {"a": 1, "b": 5}, [1, 5]),  # ordinary parameters by name: put in place
        (plain, (1,), {"b": 5}, [1, 5]),
        (plain, (1,), {"c": 9}, {"a": 1, "c": 9}),  # keyword-only: a dict by name
        (plain, (), {"a": 1, "c": 9}, {"a": 1, "c": 9}),
        (with_rest, (1, 2, 3), {}, [1, 2, 3]),
        (with_rest, (1,), {"x": 4}, {"a": 1, "x": 4}),  # **named flattened into the dict
        (positional_only, (1, 2), {}, [1, 2]),
        (positional_only, (1,), {"b": 2}, [1, 2]),
    ],
)
def test_arguments_become_a_list_when_they_can_else_a_dict_by_name(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], params: Any
) -> None:
    assert bind(func, *args, **kwargs) == params
    # Called with the stored params, as the executor calls a job, it gets the same arguments.
    expected = func(*args, **kwargs)
    assert (func(*params) if isinstance(params, list) else func(**params)) == expected


@pytest.mark.parametrize(
    ("func", "args", "kwargs", "message"),
    [
        (plain, (), {}, "missing a required argument: 'a'"),
        (plain, (1,), {"d": 4}, "unexpected keyword argument 'd'"),
        (plain, (1, 2, 3), {}, "too many positional arguments"),
        (with_rest, (1, 2), {"x": 4}, "this call needs both: rest by position, x by name"),
        (positional_only, (1, 2), {"c": 3}, "needs both: a by position, c by name"),
    ],
)
def test_a_call_that_cannot_be_stored_raises_type_error_naming_the_function(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=rf"^{func.__name__}\.enqueue\(\): .*{message}"):
        bind(func, *args, **kwargs)


EXT = BackgroundJobs()


@EXT.job(queue="mail", priority=5)
def send(to: str, *, urgent: bool = False) -> str:
    """Send it."""
    return f"{to}{'!' if urgent else ''}"


def test_the_decorator_allows_the_function_and_keeps_it_callable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert isinstance(send, JobFunction)
    assert send("ada", urgent=True) == "ada!"  # still the function
    assert (send.__name__, send.__doc__, send.__module__) == ("send", "Send it.", __name__)
    assert EXT.allowed == {__name__: ("send",)}
    assert (send.class_name, send.method_name) == (__name__, "send")
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(send, "_run", lambda *a, **kw: calls.append((*a, kw)) or "job")
    assert send.enqueue("ada") == "job"
    send.with_options(session="s", priority=1).enqueue("bob", urgent=True)
    assert calls == [
        (__name__, "send", ["ada"], {"queue": "mail", "priority": 5}),
        (__name__, "send", {"to": "bob", "urgent": True}, {"queue": "mail", "priority": 1, "session": "s"}),
    ]  # fmt: skip
    assert send.options == {"queue": "mail", "priority": 5}  # with_options made a copy


def test_methods_nested_functions_and_unknown_options_are_refused() -> None:
    ext = BackgroundJobs()
    with pytest.raises(TypeError, match="unknown job options colour"):
        ext.job(colour="red")
    with pytest.raises(TypeError, match=r"module-level function.*Holder\.method is not one"):

        class Holder:
            @ext.job()
            def method(self) -> None: ...

    def outer() -> None:
        @ext.job()
        def inner() -> None: ...

    with pytest.raises(TypeError, match=r"outer\.<locals>\.inner is not one"):
        outer()
    with pytest.raises(TypeError, match="takes a function defined with def"):
        ext.job()(print)
    assert ext.allowed == {}
