"""The store's and the worker pool's inboxes: a memory channel without a needless scheduling turn.

anyio's and trio's memory channels begin every ``receive`` with a checkpoint, a full turn of
the scheduler even when the receiver is about to wait anyway. The store and the pool each
receive once or twice per batch of jobs, so a drain cycle of eight jobs spent three of its
sixteen task steps there (2026-12-07, ``Instrument.before_task_step`` on a drain). A
:class:`Mailbox` yields only when it waits for a message, or when the receiver was cancelled.

One receiver (the actor that owns it) and any number of senders, all on the event loop's
thread. It uses anyio's exceptions, as the channels it stands in for do:
``anyio.WouldBlock`` from the ``_nowait`` calls, ``anyio.BrokenResourceError`` for a message
sent after the receiver closed it, ``anyio.ClosedResourceError`` for a receive after that.
"""

from __future__ import annotations

import collections
import math
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

from .._fastpath import Signal, primitives

T = TypeVar("T")


class Mailbox(Generic[T]):
    """An actor's inbox holding up to ``capacity`` messages (made inside the event loop)."""

    __slots__ = (
        "_arrived",
        "_capacity",
        "_checkpoint_if_cancelled",
        "_closed",
        "_event",
        "_items",
        "_room",
    )

    def __init__(self, capacity: float = math.inf) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._capacity = capacity
        self._closed = False
        fast = primitives()
        self._event = fast.event
        self._checkpoint_if_cancelled = fast.checkpoint_if_cancelled
        self._arrived: Signal | None = None
        """Set by the next message while the receiver waits for one."""
        self._room: anyio.Event | None = None
        """Set when a message is taken while senders wait for room."""

    def __len__(self) -> int:
        """The messages waiting to be received."""
        return len(self._items)

    def send_nowait(self, message: T) -> None:
        """Deliver ``message`` now, or raise ``anyio.WouldBlock`` if the mailbox is full."""
        if self._closed:
            raise anyio.BrokenResourceError
        if len(self._items) >= self._capacity:
            raise anyio.WouldBlock
        self._items.append(message)
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    async def send(self, message: T) -> None:
        """Deliver ``message``, waiting for room if the mailbox is full. A checkpoint."""
        while True:
            try:
                self.send_nowait(message)
            except anyio.WouldBlock:
                if self._room is None:
                    self._room = anyio.Event()
                await self._room.wait()
            else:
                await anyio.lowlevel.checkpoint()
                return

    def receive_nowait(self) -> T:
        """The oldest message, or ``anyio.WouldBlock`` if there is none."""
        if self._items:
            message = self._items.popleft()
            if self._room is not None:
                self._room.set()
                self._room = None
            return message
        if self._closed:
            raise anyio.ClosedResourceError
        raise anyio.WouldBlock

    async def receive(self) -> T:
        """The oldest message, waiting for one if there is none.

        It yields to the scheduler only to wait; with a message already there it returns at
        once, unless the caller is cancelled (then it raises the cancellation)."""
        await self._checkpoint_if_cancelled()
        while not (self._items or self._closed):
            arrived = self._arrived = self._event()
            await arrived.wait()
        return self.receive_nowait()

    def close(self) -> None:
        """Take no more messages; those already here can still be received."""
        self._closed = True
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None
        if self._room is not None:
            self._room.set()
            self._room = None
