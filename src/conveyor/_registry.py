"""The registry: the handlers a queue can run, by name, with their options."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, overload

import attrs

from ._errors import InvalidArgument, UnknownHandler
from ._job import JSON, check_max_attempts, check_seconds
from ._limits import Limits, parse_rate_limit
from ._process import parse_memory_limit, reference
from ._retry import Backoff

DEFAULT_MAX_ATTEMPTS = 3

HandlerFunction = Callable[[Any], Awaitable[JSON]] | Callable[[Any], JSON]


@attrs.frozen
class Handler:
    """A registered handler and its options. ``is_async`` handlers run in the event loop;
    ``process`` handlers in a worker process (``memory_limit``: its bytes, or ``None``); the
    others in a worker thread."""

    name: str
    function: HandlerFunction
    is_async: bool
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = None
    backoff: Backoff = attrs.field(factory=Backoff)
    limits: Limits = attrs.field(factory=Limits)
    process: bool = False
    memory_limit: int | None = None


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
        concurrency: int | None = None,
        key_concurrency: int | None = None,
        rate_limit: str | tuple[int, float] | None = None,
        retry_priority_step: int = 0,
        process: bool = False,
        memory_limit: int | str | None = None,
    ) -> Callable[[HandlerFunction], HandlerFunction]: ...

    def handler(
        self,
        name: str | HandlerFunction | None = None,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        concurrency: int | None = None,
        key_concurrency: int | None = None,
        rate_limit: str | tuple[int, float] | None = None,
        retry_priority_step: int = 0,
        process: bool = False,
        memory_limit: int | str | None = None,
    ) -> HandlerFunction | Callable[[HandlerFunction], HandlerFunction]:
        """Register the decorated function as the handler of jobs called ``name``.

        ``name`` defaults to the function's ``__name__``; ``@registry.handler`` without
        parentheses works too. The function takes the job's payload and returns a JSON value,
        stored as the job's result. ``max_attempts`` bounds how often a failing job runs;
        ``timeout`` (seconds) cancels an attempt that runs longer and counts it as failed;
        ``backoff`` sets the delay between attempts. A job's own ``max_attempts`` and
        ``timeout``, given at enqueue, win over these.

        Limits, held in the claim (a job held back stays ``pending`` and keeps its place, and
        other handlers' jobs start past it): ``concurrency``, at most this many of its jobs run
        at once in the queue; ``key_concurrency``, at most this many per ``concurrency_key``
        given at enqueue; ``rate_limit`` (``"100/minute"``, per second, minute, hour or day, or
        ``(count, seconds)``), at most that many starts in any window of that length.
        ``retry_priority_step``: each retry runs at the last attempt's priority plus this
        (capped at 10), so that a failing job stops starving fresh ones.

        ``process=True`` runs a sync handler in a worker process, so that CPU-bound work runs
        in parallel and a cancel, a timeout or the end of shutdown's grace kills it. The
        payload and the result cross as JSON; the worker imports the function by its module
        and qualified name, so it must be defined with ``def`` at the top level of an
        importable module (a lambda, a closure or an async function is refused here, with
        :class:`InvalidArgument`). ``memory_limit`` (``"512MiB"``, ``"1GiB"``, ``"200MB"``, or
        an int of bytes; only with ``process=True``): an attempt whose worker's resident memory
        exceeds it is killed and fails, naming the limit and the size reached.
        """
        if callable(name):
            return self._register(name, None, DEFAULT_MAX_ATTEMPTS, None, None, Limits())
        check_max_attempts(max_attempts)
        check_seconds("timeout", timeout, positive=True)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise InvalidArgument(f"backoff must be a conveyor.Backoff, not {backoff!r}")
        limits = Limits(
            concurrency=concurrency,
            key_concurrency=key_concurrency,
            rate=parse_rate_limit(rate_limit),
            retry_priority_step=retry_priority_step,
        )
        if not isinstance(process, bool):
            raise InvalidArgument(f"process must be True or False, not {process!r}")
        limit = None if memory_limit is None else parse_memory_limit(memory_limit)
        if limit is not None and not process:
            raise InvalidArgument(
                "memory_limit needs process=True: only a handler in a worker process can be "
                "held to a memory limit (a thread shares the queue's memory)"
            )

        def register(function: HandlerFunction) -> HandlerFunction:
            return self._register(
                function, name, max_attempts, timeout, backoff, limits, process, limit
            )

        return register

    def _register(
        self,
        function: HandlerFunction,
        name: str | None,
        max_attempts: int,
        timeout: float | None,
        backoff: Backoff | None,
        limits: Limits,
        process: bool = False,
        memory_limit: int | None = None,
    ) -> HandlerFunction:
        if not callable(function):
            raise InvalidArgument(f"a handler must be callable, not {function!r}")
        if process:
            reference(function)  # refuses what a worker process cannot import by name
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
            limits=limits,
            process=process,
            memory_limit=memory_limit,
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

    def limits(self) -> dict[str, Limits]:
        """Each handler's limits, by name."""
        return {name: handler.limits for name, handler in self._handlers.items()}
