"""The parking lot idle workers wait in (trio's own on trio): woken one at a time, oldest first."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from conveyor._fastpath import primitives

pytestmark = pytest.mark.anyio


class Parkers:
    """A lot (made in the running event loop), and the tasks it woke, in the order they ran."""

    def __init__(self) -> None:
        self.lot = primitives().lot()
        self.woken: list[object] = []

    async def park(self, name: object) -> None:
        await self.lot.park()
        self.woken.append(name)


async def test_a_parked_task_waits_until_it_is_woken() -> None:
    parkers = Parkers()
    async with anyio.create_task_group() as tg:
        tg.start_soon(parkers.park, 1)
        await anyio.wait_all_tasks_blocked()
        assert (parkers.woken, len(parkers.lot)) == ([], 1)
        parkers.lot.unpark()
    assert (parkers.woken, len(parkers.lot)) == ([1], 0)


async def test_a_wake_wakes_only_the_task_parked_longest() -> None:
    parkers = Parkers()
    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(parkers.park, n)
            await anyio.wait_all_tasks_blocked()
        parkers.lot.unpark()
        await anyio.wait_all_tasks_blocked()
        assert (parkers.woken, len(parkers.lot)) == ([0], 2)
        for _ in range(2):
            parkers.lot.unpark()
            await anyio.wait_all_tasks_blocked()
    assert parkers.woken == [0, 1, 2]


async def test_a_task_cancelled_while_parked_leaves_the_lot() -> None:
    parkers = Parkers()
    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(parkers.park, "cancelled")
            await anyio.wait_all_tasks_blocked()
            doomed.cancel_scope.cancel()
        assert len(parkers.lot) == 0
        tg.start_soon(parkers.park, "later")
        await anyio.wait_all_tasks_blocked()
        parkers.lot.unpark()
    assert parkers.woken == ["later"]


async def test_waking_an_empty_lot_does_nothing() -> None:
    lot = primitives().lot()
    lot.unpark()
    assert len(lot) == 0


async def test_a_wake_that_reaches_a_task_cancelled_before_it_ran_goes_to_the_next(
    anyio_backend_name: str,
) -> None:
    if anyio_backend_name != "asyncio":
        pytest.skip("trio cannot cancel a task it has already woken")
    parkers = Parkers()
    first = asyncio.create_task(parkers.park("first"))
    second = asyncio.create_task(parkers.park("second"))
    await anyio.wait_all_tasks_blocked()
    parkers.lot.unpark()
    first.cancel()
    with anyio.move_on_after(5):  # a lost wake leaves the second parked
        await asyncio.gather(first, second, return_exceptions=True)
    assert (parkers.woken, len(parkers.lot)) == (["second"], 0)
