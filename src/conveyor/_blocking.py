"""The blocking API: the same queue for programs with no event loop (scripts, Django, Flask).

The queue runs in a trio event loop of its own, on a thread of its own; every call of
:class:`BlockingQueue` is the :class:`Queue` call of the same name, run there with
``trio.from_thread.run``, the caller's thread blocked until it returns. Nothing is implemented
twice: each method is its async twin, carried across.

trio's own ``from_thread.run`` rather than anyio's blocking portal (which runs trio too): an
empty round trip costs 37 µs against the portal's 88 µs here, and a ``get`` 63 µs when awaited
in the loop itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import attrs
import sniffio
import trio

from ._actors.store import Listener
from ._errors import InvalidArgument, QueueClosed
from ._queue import BatchProgress, Queue
from ._runtime import open_queue as open_async_queue

P = ParamSpec("P")
T = TypeVar("T")


def _refuse_inside_an_event_loop(what: str) -> None:
    """A blocking call from a thread that runs an event loop would freeze that loop."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    raise InvalidArgument(
        f"conveyor.blocking's {what} was called from inside a running {library} event loop, "
        "which it would block: use the async API there (conveyor.open_queue and await)"
    )


class _Blocking(Generic[P, T]):
    """A :class:`BlockingQueue` method made of the :class:`Queue` coroutine method ``method``."""

    def __init__(self, method: Callable[Concatenate[Queue, P], Awaitable[T]]) -> None:
        self._method = method
        self.__doc__ = method.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, queue: None, owner: type) -> _Blocking[P, T]: ...

    @overload
    def __get__(self, queue: BlockingQueue, owner: type) -> Callable[P, T]: ...

    def __get__(self, queue: BlockingQueue | None, owner: type) -> _Blocking[P, T] | Callable[P, T]:
        if queue is None:
            return self
        method, name = self._method, self._name

        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            _refuse_inside_an_event_loop(f"Queue.{name}")
            return queue._loop.run(lambda: method(queue._queue, *args, **kwargs))

        call.__doc__ = self.__doc__
        return call


class BlockingQueue:
    """The :class:`Queue` API, blocking: each method is the async method of the same name (see
    its documentation), called from any thread of a program without an event loop. Calls from
    several threads at once are safe: they meet in the queue's own event loop."""

    def __init__(self, queue: Queue, loop: _Loop) -> None:
        self._queue = queue
        self._loop = loop

    enqueue = _Blocking(Queue.enqueue)
    enqueue_many = _Blocking(Queue.enqueue_many)
    enqueue_workflow = _Blocking(Queue.enqueue_workflow)
    cancel = _Blocking(Queue.cancel)
    requeue = _Blocking(Queue.requeue)
    requeue_failed = _Blocking(Queue.requeue_failed)
    cancel_pending = _Blocking(Queue.cancel_pending)
    pause = _Blocking(Queue.pause)
    resume = _Blocking(Queue.resume)
    paused = _Blocking(Queue.paused)
    schedule = _Blocking(Queue.schedule)
    unschedule = _Blocking(Queue.unschedule)
    schedules = _Blocking(Queue.schedules)
    purge = _Blocking(Queue.purge)
    ping = _Blocking(Queue.ping)
    get = _Blocking(Queue.get)
    get_many = _Blocking(Queue.get_many)
    workflow = _Blocking(Queue.workflow)
    wait = _Blocking(Queue.wait)
    wait_all = _Blocking(Queue.wait_all)
    list = _Blocking(Queue.list)
    stats = _Blocking(Queue.stats)

    def subscribe(self, listener: Listener) -> None:
        """:meth:`Queue.subscribe`: call ``listener`` with the :class:`Change` values of every
        commit, once durable. It is called on the queue's event loop thread, not the caller's:
        it must be quick and thread-safe, must not block, and must not call this queue's
        blocking methods (they would wait for the loop it holds). Hand the changes to another
        thread (a ``queue.Queue``, a ``threading.Event``) for anything slower."""
        _refuse_inside_an_event_loop("Queue.subscribe")

        async def add() -> None:
            self._queue.subscribe(listener)

        self._loop.run(add)

    def unsubscribe(self, listener: Listener) -> None:
        """:meth:`Queue.unsubscribe`: stop calling a listener given to :meth:`subscribe`; once
        it returns, the listener is not called again."""
        _refuse_inside_an_event_loop("Queue.unsubscribe")

        async def remove() -> None:
            self._queue.unsubscribe(listener)

        self._loop.run(remove)

    def progress(self, job_ids: Iterable[int]) -> Iterator[BatchProgress]:
        """:meth:`Queue.progress`, as a blocking iterator."""
        _refuse_inside_an_event_loop("Queue.progress")
        ids = list(job_ids)
        updates: AsyncIterator[BatchProgress] = self._queue.progress(ids)
        try:
            while True:
                try:
                    yield self._loop.run(updates.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            closing = getattr(updates, "aclose", None)
            if closing is not None:
                self._loop.run(closing)


@attrs.define
class _Loop:
    """The queue's event loop thread: what runs calls there, and how it is told to stop."""

    token: trio.lowlevel.TrioToken
    stop: trio.Event

    def run(self, function: Callable[[], Awaitable[T]]) -> T:
        try:
            return trio.from_thread.run(function, trio_token=self.token)
        except trio.RunFinishedError:
            raise QueueClosed("the queue's event loop has ended") from None


@contextlib.contextmanager
def open_queue(
    path: str | os.PathLike[str] = "conveyor.db", **options: Any
) -> Iterator[BlockingQueue]:
    """:func:`conveyor.open_queue` for programs without an event loop: the same options, a
    :class:`BlockingQueue` to call from any thread.

    The queue runs in its own trio event loop on a thread of its own, started here. Leaving
    the block shuts it down gracefully, as the async one does, also when the block raises (a
    Ctrl-C in the main thread included); an error that stopped the queue is raised here.
    Raises :class:`InvalidArgument` when called from a thread that runs an event loop: use
    :func:`conveyor.open_queue` there.
    """
    _refuse_inside_an_event_loop("open_queue")
    opened = threading.Event()
    started: list[tuple[Queue, _Loop]] = []
    failure: list[BaseException] = []

    async def host() -> None:
        stop = trio.Event()
        async with open_async_queue(path, **options) as queue:
            started.append((queue, _Loop(trio.lowlevel.current_trio_token(), stop)))
            opened.set()
            await stop.wait()

    def loop_thread() -> None:
        try:
            trio.run(host)
        except BaseException as exc:
            failure.append(exc)
        finally:
            opened.set()

    thread = threading.Thread(target=loop_thread, name="conveyor-loop", daemon=True)
    thread.start()
    opened.wait()
    if not started:
        thread.join()
        raise failure[0]
    queue, loop = started[0]
    try:
        yield BlockingQueue(queue, loop)
    finally:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(loop.stop.set, trio_token=loop.token)
        thread.join()
        if failure:
            raise failure[0]
