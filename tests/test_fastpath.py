"""The parking lot idle workers wait in (trio's own on trio): woken one at a time, oldest first."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from conveyor._fastpath import primitives

pytestmark = pytest.mark.anyio


async def test_a_parked_task_waits_until_it_is_woken() -> None:
    lot = primitives().lot()
    woken: list[int] = []

    async def park() -> None:
        await lot.park()
        woken.append(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(park)
        await anyio.wait_all_tasks_blocked()
        assert (woken, len(lot)) == ([], 1)
        lot.unpark()
    assert (woken, len(lot)) == ([1], 0)


async def test_a_wake_wakes_only_the_task_parked_longest() -> None:
    lot = primitives().lot()
    woken: list[int] = []

    async def park(n: int) -> None:
        await lot.park()
        woken.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(park, n)
            await anyio.wait_all_tasks_blocked()
        lot.unpark()
        await anyio.wait_all_tasks_blocked()
        assert (woken, len(lot)) == ([0], 2)
        for _ in range(2):
            lot.unpark()
            await anyio.wait_all_tasks_blocked()
    assert woken == [0, 1, 2]


async def test_a_task_cancelled_while_parked_leaves_the_lot() -> None:
    lot = primitives().lot()
    woken: list[str] = []

    async def park(name: str) -> None:
        await lot.park()
        woken.append(name)

    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(park, "cancelled")
            await anyio.wait_all_tasks_blocked()
            doomed.cancel_scope.cancel()
        assert len(lot) == 0
        tg.start_soon(park, "later")
        await anyio.wait_all_tasks_blocked()
        lot.unpark()
    assert woken == ["later"]


async def test_waking_an_empty_lot_does_nothing() -> None:
    lot = primitives().lot()
    lot.unpark()
    assert len(lot) == 0


async def test_a_wake_that_reaches_a_task_cancelled_before_it_ran_goes_to_the_next(
    anyio_backend_name: str,
) -> None:
    if anyio_backend_name != "asyncio":
        pytest.skip("trio cannot cancel a task it has already woken")
    lot = primitives().lot()
    woken: list[str] = []

    async def park(name: str) -> None:
        await lot.park()
        woken.append(name)

    first = asyncio.create_task(park("first"))
    second = asyncio.create_task(park("second"))
    await anyio.wait_all_tasks_blocked()
    lot.unpark()
    first.cancel()
    with anyio.move_on_after(5):  # a lost wake leaves the second parked
        await asyncio.gather(first, second, return_exceptions=True)
    assert (woken, len(lot)) == (["second"], 0)
