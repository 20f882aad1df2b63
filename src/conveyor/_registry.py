"""The registry: the handlers a queue can run, by name, with their options."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, overload

import attrs

from ._errors import InvalidArgument, UnknownHandler
from ._job import JSON, check_max_attempts, check_seconds
from ._retry import Backoff

DEFAULT_MAX_ATTEMPTS = 3

HandlerFunction = Callable[[Any], Awaitable[JSON]] | Callable[[Any], JSON]


@attrs.frozen
class Handler:
    """A registered handler and its options. ``is_async`` handlers run in the event loop;
    the others run in a worker thread."""

    name: str
    function: HandlerFunction
    is_async: bool
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = None
    backoff: Backoff = attrs.field(factory=Backoff)


class Registry:
    """The handlers a queue runs, registered by name with :meth:`handler`.

    A registry is plain data: build it at import time, then pass it to
    :func:`conveyor.open_queue` (or name it to ``conveyor serve --handlers module:attribute``).
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    @overload
    def handler(self, name: HandlerFunction, /) -> HandlerFunction: ...

    @overload
    def handler(
        self,
        name: str | None = None,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None,
        backoff: Backoff | None = None,
    ) -> Callable[[HandlerFunction], HandlerFunction]: ...

    def handler(
        self,
        name: str | HandlerFunction | None = None,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None,
        backoff: Backoff | None = None,
    ) -> HandlerFunction | Callable[[HandlerFunction], HandlerFunction]:
        """Register the decorated function as the handler of jobs called ``name``.

        ``name`` defaults to the function's ``__name__``; ``@registry.handler`` without
        parentheses works too. The function takes the job's payload and returns a JSON value,
        stored as the job's result. ``max_attempts`` bounds how often a failing job runs;
        ``timeout`` (seconds) cancels an attempt that runs longer and counts it as failed;
        ``backoff`` sets the delay between attempts. A job's own ``max_attempts`` and
        ``timeout``, given at enqueue, win over these.
        """
        if callable(name):
            return self._register(name, None, DEFAULT_MAX_ATTEMPTS, None, None)
        check_max_attempts(max_attempts)
        check_seconds("timeout", timeout, positive=True)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise InvalidArgument(f"backoff must be a conveyor.Backoff, not {backoff!r}")

        def register(function: HandlerFunction) -> HandlerFunction:
            return self._register(function, name, max_attempts, timeout, backoff)

        return register

    def _register(
        self,
        function: HandlerFunction,
        name: str | None,
        max_attempts: int,
        timeout: float | None,
        backoff: Backoff | None,
    ) -> HandlerFunction:
        if not callable(function):
            raise InvalidArgument(f"a handler must be callable, not {function!r}")
        handler_name = name if name is not None else getattr(function, "__name__", None)
        if not isinstance(handler_name, str) or not handler_name:
            raise InvalidArgument(f"a handler name must be a non-empty str, not {handler_name!r}")
        if handler_name in self._handlers:
            raise InvalidArgument(f"a handler named {handler_name!r} is already registered")
        self._handlers[handler_name] = Handler(
            name=handler_name,
            function=function,
            is_async=inspect.iscoroutinefunction(function)
            or inspect.iscoroutinefunction(type(function).__call__),
            max_attempts=max_attempts,
            timeout=timeout,
            backoff=backoff if backoff is not None else Backoff(),
        )
        return function

    def __getitem__(self, name: str) -> Handler:
        try:
            return self._handlers[name]
        except KeyError:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise UnknownHandler(
                f"no handler named {name!r} is registered (registered: {known})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)
