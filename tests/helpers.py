"""Small tools the tests share."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

import conveyor

QueueOpener = Callable[..., AbstractAsyncContextManager[conveyor.Queue]]
"""What the ``open_test_queue`` fixture is: ``open_queue`` on the test's file and clock."""


async def wait_all(queue: conveyor.Queue, jobs: list[conveyor.Job]) -> list[conveyor.Job]:
    """Every job of ``jobs`` once finished, in order."""
    return [await queue.wait(job.id, timeout=60) for job in jobs]


class Gate:
    """Handlers wait on it to stay running until the test opens it."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self._open = anyio.Event()

    async def pass_through(self) -> None:
        self.entered.set()
        await self._open.wait()

    def open(self) -> None:
        self._open.set()


def service_registry(gate: Gate) -> conveyor.Registry:
    """The handlers of the service tests: ``echo`` returns its payload, ``explode`` fails for
    good, ``blocked`` runs until ``gate`` opens."""
    registry = conveyor.Registry()

    @registry.handler
    async def echo(payload: Any) -> Any:
        return payload

    @registry.handler(max_attempts=1)
    async def explode(payload: Any) -> None:
        raise conveyor.Fail("boom: the handler gave up")

    @registry.handler
    async def blocked(payload: Any) -> None:
        await gate.pass_through()

    return registry
