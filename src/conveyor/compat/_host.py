"""A resource (an open queue) held by a task of its own, so that one task may open it and
another close it.

The facades' ``start()`` and ``stop()`` are called from different tasks by web frameworks
(startup and shutdown hooks) and test fixtures, while a queue's task group must be entered and
left by one task. So the queue lives in a *host* task, spawned outside the caller's task tree:
on trio a system task, on asyncio a task of the running loop. ``start`` returns once the host
has opened it, ``stop`` once the host has closed it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import anyio
import sniffio
import trio

from .._errors import InvalidArgument

T = TypeVar("T")

_asyncio_hosts: set[asyncio.Task[None]] = set()
"""The asyncio host tasks alive: the loop keeps only weak references to its tasks."""


class Host(Generic[T]):
    """Holds the value of ``resource()`` open in a host task between :meth:`start` and
    :meth:`stop`, which any task of the event loop may call.

    Leaving the resource's block is graceful when :meth:`stop` is called, and abrupt (the
    host is cancelled, as a crash) when the task in :meth:`stop` or :meth:`start` is cancelled.
    If the caller's event loop ends without :meth:`stop`, the host is cancelled with it.
    """

    def __init__(self, resource: Callable[[], AbstractAsyncContextManager[T]]) -> None:
        self._resource = resource
        self._scope = anyio.CancelScope()
        self._opened = anyio.Event()
        self._stopping = anyio.Event()
        self._closed = anyio.Event()
        self._value: list[T] = []
        self._failure: list[BaseException] = []

    async def start(self) -> T:
        """Spawn the host and return the resource once it is open; raise what opening it
        raised."""
        _spawn(self._host)
        await self._until(self._opened)
        if not self._value:
            raise self._failure[0]
        return self._value[0]

    async def stop(self) -> None:
        """Close the resource and return once it is closed; raise the error that ended it,
        if one did."""
        self._stopping.set()
        await self._until(self._closed)
        if self._failure:
            raise self._failure[0]

    async def _until(self, event: anyio.Event) -> None:
        """Wait for ``event``; if the caller is cancelled meanwhile, cancel the host (a crash,
        as cancelling an ``async with`` block of the queue is) and wait until it ended, so
        that nothing of it outlives the caller's block."""
        try:
            await event.wait()
        except anyio.get_cancelled_exc_class():
            self._scope.cancel()
            with anyio.CancelScope(shield=True):
                await self._closed.wait()
            raise

    async def _host(self) -> None:
        try:
            with self._scope:
                async with self._resource() as value:
                    self._value.append(value)
                    self._opened.set()
                    await self._stopping.wait()
        except Exception as exc:
            # Given to start() or stop(); an error escaping a trio system task would crash
            # the whole run.
            self._failure.append(exc)
        finally:
            self._opened.set()
            self._closed.set()


def _spawn(host: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``host`` in a task that no task of the caller's encloses, in the caller's context."""
    library = sniffio.current_async_library()
    context = contextvars.copy_context()
    if library == "trio":
        trio.lowlevel.spawn_system_task(host, name="conveyor.compat host", context=context)
    elif library == "asyncio":
        task = asyncio.get_running_loop().create_task(host(), context=context)
        _asyncio_hosts.add(task)
        task.add_done_callback(_asyncio_hosts.discard)
    else:
        raise InvalidArgument(f"conveyor runs on trio or asyncio, not {library}")
