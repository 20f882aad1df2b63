"""The worker pool's per-job primitives: trio's own where trio runs, anyio's elsewhere.

anyio's cancel scope, event and checkpoints wrap trio's at a cost that shows on the per-job path
(DESIGN §9: httpcore picks its backend the same way). Only these four are chosen here; all the
rest of conveyor uses anyio on every backend.
"""

from __future__ import annotations

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


@attrs.frozen
class Primitives:
    cancel_scope: Callable[[], Scope]
    event: Callable[[], Signal]
    checkpoint: Callable[[], Awaitable[None]]
    checkpoint_if_cancelled: Callable[[], Awaitable[None]]


def primitives() -> Primitives:
    """The primitives of the event loop that is running."""
    if sniffio.current_async_library() == "trio":
        return Primitives(
            trio.CancelScope,
            trio.Event,
            trio.lowlevel.checkpoint,
            trio.lowlevel.checkpoint_if_cancelled,
        )
    return Primitives(
        anyio.CancelScope,
        anyio.Event,
        anyio.lowlevel.checkpoint,
        anyio.lowlevel.checkpoint_if_cancelled,
    )
