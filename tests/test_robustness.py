"""One bad input, handler or subscriber never takes the queue down, nor loses others' work."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

import conveyor
from conveyor import JobStatus

from helpers import QueueOpener

pytestmark = pytest.mark.anyio


def noop_registry() -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: object) -> object:
        return payload

    return registry


@pytest.mark.parametrize("job_id", [2**63, -(2**63) - 1, 2**100])
async def test_a_job_id_beyond_64_bits_is_refused(
    open_test_queue: QueueOpener, job_id: int
) -> None:
    async with open_test_queue(noop_registry()) as queue:
        for call in (queue.cancel, queue.requeue, queue.get):
            with pytest.raises(conveyor.InvalidArgument, match="64-bit"):
                await call(job_id)
        assert (await queue.wait((await queue.enqueue("noop", 1)).id, timeout=10)).result == 1


async def test_an_error_message_with_a_lone_surrogate_is_stored_escaped(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()

    @registry.handler("odd", max_attempts=1)
    async def odd(payload: None) -> None:
        raise OSError("cannot open b'caf\udce9.txt'")

    async with open_test_queue(registry) as queue:
        done = await queue.wait((await queue.enqueue("odd")).id, timeout=10)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert "caf\\udce9.txt" in done.error


async def test_a_progress_message_with_a_lone_surrogate_is_refused(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()

    @registry.handler("report")
    async def report(payload: None) -> str:
        with pytest.raises(conveyor.InvalidArgument, match="progress message must be Unicode"):
            conveyor.current_job().set_progress(0.5, "\ud800")
        return "went on"

    async with open_test_queue(registry) as queue:
        done = await queue.wait((await queue.enqueue("report")).id, timeout=10)
    assert done.result == "went on"


async def test_a_result_nested_too_deeply_fails_only_its_job(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("deep", max_attempts=1)
    async def deep(payload: None) -> object:
        value: list[Any] = []
        for _ in range(100_000):
            value = [value]
        return value

    async with open_test_queue(registry) as queue:
        done = await queue.wait((await queue.enqueue("deep")).id, timeout=10)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert "nested too deeply" in done.error


async def test_a_subscriber_that_raises_does_not_stop_the_queue(
    open_test_queue: QueueOpener, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(changes: object) -> None:
        raise ZeroDivisionError("bug in a subscriber")

    async with open_test_queue(noop_registry()) as queue:
        queue.subscribe(broken)
        done = await queue.wait((await queue.enqueue("noop", 7)).id, timeout=10)
    assert done.result == 7
    assert "a conveyor listener raised" in caplog.text


async def test_a_command_the_database_refuses_fails_alone(
    open_test_queue: QueueOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor._storage.sqlite import Writer

    def refuse(self: Writer, finished_before: float, statuses: object) -> int:
        raise ValueError("refused by the database")

    monkeypatch.setattr(Writer, "purge", refuse)
    results: dict[str, object] = {}
    async with open_test_queue(noop_registry()) as queue:

        async def purge() -> None:
            with pytest.raises(conveyor.DatabaseError, match="refused by the database"):
                await queue.purge(older_than=0)
            results["purge"] = "refused"

        async def enqueue() -> None:
            results["job"] = await queue.enqueue("noop", delay=60)

        async with anyio.create_task_group() as tg:
            tg.start_soon(purge)
            tg.start_soon(enqueue)
        assert await queue.get(results["job"].id) is not None  # type: ignore[attr-defined]
    assert results["purge"] == "refused"


async def test_an_error_leaving_the_block_keeps_its_own_cause(
    open_test_queue: QueueOpener,
) -> None:
    def fail_with_a_cause() -> None:
        try:
            {}["inner"]
        except KeyError as exc:
            raise ValueError("outer") from exc

    async def use_the_queue() -> None:
        async with open_test_queue(noop_registry()):
            fail_with_a_cause()

    with pytest.raises(ValueError, match="outer") as caught:
        await use_the_queue()
    assert isinstance(caught.value.__cause__, KeyError)


@pytest.mark.parametrize("path", ["", ":memory:", "file:jobs.db?mode=rwc"])
async def test_open_queue_refuses_a_path_that_is_not_a_file(path: str) -> None:
    with pytest.raises(conveyor.InvalidArgument, match="path must name a database file"):
        async with conveyor.open_queue(path, handlers=noop_registry()):
            pass


async def test_a_cancelled_open_releases_the_file(db_path: Path) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        async with conveyor.open_queue(db_path, handlers=noop_registry()):
            pass
    async with conveyor.open_queue(db_path, handlers=noop_registry()):
        pass


def test_a_handler_name_may_be_given_by_keyword() -> None:
    registry = conveyor.Registry()

    @registry.handler(name="named", max_attempts=2)
    async def function(payload: None) -> None:
        return None

    assert registry["named"].max_attempts == 2


def test_an_object_with_an_async_call_is_an_async_handler() -> None:
    class Resize:
        async def __call__(self, payload: object) -> object:
            return payload

    registry = conveyor.Registry()
    registry.handler("resize")(Resize())
    assert registry["resize"].is_async


async def test_a_result_too_large_to_write_as_json_fails_its_job_only(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()

    @registry.handler("huge")
    async def huge(payload: None) -> int:
        return 10**5000  # Python refuses to write an int of more than 4300 digits

    @registry.handler("small")
    async def small(payload: None) -> int:
        return 1

    async with open_test_queue(registry) as queue:
        failed = await queue.wait((await queue.enqueue("huge")).id, timeout=10)
        done = await queue.wait((await queue.enqueue("small")).id, timeout=10)
    assert failed.status is conveyor.JobStatus.FAILED
    assert "not JSON-serializable" in (failed.error or "")
    assert done.result == 1


def test_a_write_lock_held_outside_makes_the_store_wait_without_blocking_the_loop(
    db_path: Path,
) -> None:
    """Small batches run on the loop's thread, but never wait there for a lock."""

    async def main() -> None:
        async with conveyor.open_queue(db_path, handlers=noop_registry()) as queue:
            other = sqlite3.connect(db_path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            ticks = 0
            enqueued = trio.Event()
            jobs: list[conveyor.Job] = []

            async def enqueue() -> None:
                jobs.append(await queue.enqueue("noop", 1))
                enqueued.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(enqueue)
                for _ in range(10):
                    await trio.sleep(0.02)
                    ticks += 1
                assert not enqueued.is_set()
                other.rollback()
                other.close()
                with trio.fail_after(5):
                    await enqueued.wait()
            assert ticks == 10
            assert (await queue.wait(jobs[0].id, timeout=5)).status is JobStatus.COMPLETED

    trio.run(main)
