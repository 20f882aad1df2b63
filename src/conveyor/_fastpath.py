"""The worker pool's per-job primitives: trio's own where trio runs, anyio's elsewhere.

anyio's cancel scope, event and checkpoints wrap trio's at a cost that shows on the per-job path
(DESIGN §9: httpcore picks its backend the same way), and anyio has no parking lot. Only these
five are chosen here; all the rest of conveyor uses anyio on every backend.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

import anyio
import anyio.lowlevel
import attrs
import sniffio
import trio


class Scope(Protocol):
    """What the pool uses of a cancel scope (trio's and anyio's both have it)."""

    deadline: float

    @property
    def cancel_called(self) -> bool: ...

    def cancel(self) -> None: ...

    def __enter__(self) -> object: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


class Signal(Protocol):
    """What the pool uses of an event."""

    def set(self) -> object: ...

    async def wait(self) -> object: ...


class Lot(Protocol):
    """What the pool uses of a parking lot: tasks wait in it until woken one at a time."""

    def __len__(self) -> int: ...

    async def park(self) -> None: ...

    def unpark(self) -> object: ...


class EventLot:
    """A parking lot over anyio's events, for the backends trio's does not run on.

    :meth:`park` waits until :meth:`unpark` wakes this task; the oldest waiting task is woken
    first. A task cancelled while parked leaves the lot; one cancelled after it was woken and
    before it ran (asyncio's ``Task.cancel`` can do that) hands its wake to the next, so that a
    wake is never lost.
    """

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: collections.deque[anyio.Event] = collections.deque()

    def __len__(self) -> int:
        """The tasks parked."""
        return len(self._waiting)

    async def park(self) -> None:
        woken = anyio.Event()
        self._waiting.append(woken)
        try:
            await woken.wait()
        except BaseException:
            if woken.is_set():
                self.unpark()
            else:
                self._waiting.remove(woken)
            raise

    def unpark(self) -> None:
        """Wake the task parked longest, if any."""
        if self._waiting:
            self._waiting.popleft().set()


@attrs.frozen
class Primitives:
    cancel_scope: Callable[[], Scope]
    event: Callable[[], Signal]
    lot: Callable[[], Lot]
    checkpoint: Callable[[], Awaitable[None]]
    checkpoint_if_cancelled: Callable[[], Awaitable[None]]


def primitives() -> Primitives:
    """The primitives of the event loop that is running."""
    if sniffio.current_async_library() == "trio":
        return Primitives(
            trio.CancelScope,
            trio.Event,
            trio.lowlevel.ParkingLot,
            trio.lowlevel.checkpoint,
            trio.lowlevel.checkpoint_if_cancelled,
        )
    return Primitives(
        anyio.CancelScope,
        anyio.Event,
        EventLot,
        anyio.lowlevel.checkpoint,
        anyio.lowlevel.checkpoint_if_cancelled,
    )
