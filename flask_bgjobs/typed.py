"""Typed jobs: ``@bgjobs.job(**options)`` on a module-level function.

The decorated function is allowed (like ``bgjobs.allow(module, name)``) and comes back as a
`JobFunction`: called, it runs as before; ``.enqueue(*args, **kwargs)`` stores a job that calls
it, typed with the function's own parameters (`ParamSpec`), so a type checker flags a wrong
argument where the job is enqueued instead of in the job's process later. The job is still
stored as two strings and checked against the allowlist at run time.

How arguments become params (a JSON list or dict): bound to the function's signature first
(a wrong call raises `TypeError` here, as calling the function would); then a list when every
argument can be passed by position (keywords given for ordinary parameters are put in their
place), else a dict by name (keyword-only parameters, ``**kwargs``). A call that needs both,
positional-only or ``*args`` values beside keyword-only ones, cannot be stored and raises
`TypeError`. Defaults are not stored: the job gets the function's defaults when it runs.

Methods of classes are not supported: a decorator cannot type ``.enqueue`` without the
``self`` parameter and still keep the method callable on instances with one `ParamSpec`; use
``bgjobs.allow`` and ``run_background_job`` for them.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypedDict, TypeVar

from flask_bgjobs.models import Job

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11 on

P = ParamSpec("P")
R = TypeVar("R")


class JobOptions(TypedDict, total=False):
    """The keywords of ``run_background_job`` a typed job takes as options (``Unpack``-ed in
    `BackgroundJobs.job` and `JobFunction.with_options`, so a type checker checks them too)."""

    retry_attempts: int | None
    delay: float | None
    priority: int | None
    timeout: float | None
    queue: str | None
    run_at: datetime | None
    expires_in: float | None
    unique_key: str | None
    concurrency_key: str | None
    concurrency_limit: int | None
    memory_limit: int | None
    cpu_limit: float | None
    session: object | None


#: The names of `JobOptions`, checked at run time (for callers no type checker saw).
OPTIONS = frozenset(JobOptions.__annotations__)

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)


def check_options(options: Mapping[str, Any]) -> None:
    """`TypeError` for a name that is not an option of ``run_background_job``."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise TypeError(
            f"unknown job options {', '.join(unknown)}; use {', '.join(sorted(OPTIONS))}"
        )


class JobFunction(Generic[P, R]):
    """A module-level function that is also a job: call it, or `enqueue` it."""

    def __init__(
        self, func: Callable[P, R], enqueue: Callable[..., Job], options: Mapping[str, object]
    ) -> None:
        if not inspect.isfunction(func):
            raise TypeError(
                f"@bgjobs.job() takes a function defined with def, got {type(func).__name__}"
            )
        if func.__qualname__ != func.__name__:
            raise TypeError(
                f"@bgjobs.job() takes a module-level function, which the runner imports as "
                f"{func.__module__}.{func.__name__}; {func.__qualname__} is not one (for a "
                "method, use bgjobs.allow() and run_background_job)"
            )
        check_options(options)
        functools.update_wrapper(self, func)
        #: The function itself.
        self.function: Callable[P, R] = func
        self._run = enqueue
        self._signature = inspect.signature(func)
        #: The module path and the function name the job is stored under.
        self.class_name: str = func.__module__
        self.method_name: str = func.__name__
        #: Keywords of ``run_background_job`` every `enqueue` passes (`with_options` adds).
        self.options: dict[str, Any] = dict(options)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function here and now, as if it were not a job."""
        return self.function(*args, **kwargs)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Store a job that calls the function with these arguments; return the `Job`.

        Needs an application context, like ``run_background_job``, which it calls with the
        decorator's options.
        """
        params = params_of(self._signature, args, kwargs, self.method_name)
        return self._run(self.class_name, self.method_name, params, **self.options)

    def with_options(self, **options: Unpack[JobOptions]) -> JobFunction[P, R]:
        """This job with more options, for one enqueue: ``f.with_options(session=db.session)``."""
        check_options(options)
        other = copy.copy(self)
        other.options = {**self.options, **options}
        return other

    def __repr__(self) -> str:
        return f"<job {self.class_name}::{self.method_name}>"


def params_of(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any], name: str
) -> list[Any] | dict[str, Any]:
    """The params (a list, or a dict by name) that call a function as ``f(*args, **kwargs)``."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{name}.enqueue(): {exc}") from None
    if not bound.kwargs:
        return list(bound.args)
    by_position = [
        n
        for n, value in bound.arguments.items()
        if signature.parameters[n].kind in _POSITIONAL and value != ()
    ]
    if by_position:
        raise TypeError(
            f"{name}.enqueue(): params are a list or a dict, and this call needs both: "
            f"{', '.join(by_position)} by position, {', '.join(bound.kwargs)} by name"
        )
    params: dict[str, Any] = {}
    for n, value in bound.arguments.items():
        kind = signature.parameters[n].kind
        if kind == inspect.Parameter.VAR_KEYWORD:
            params.update(value)
        elif kind != inspect.Parameter.VAR_POSITIONAL:
            params[n] = value
    return params
