"""Enqueueing: what a job looks like when stored, and what is refused (and then not written)."""

from __future__ import annotations

import anyio
import pytest
import trio

import conveyor
from conveyor import JobSpec, JobStatus

from helpers import QueueOpener

pytestmark = pytest.mark.anyio


def make_registry() -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("noop", max_attempts=4, timeout=30)
    async def noop(payload: object) -> object:
        return payload

    return registry


async def test_enqueue_returns_the_stored_pending_job(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry(), workers=1) as queue:
        job = await queue.enqueue("noop", {"path": "a.png"}, priority=2)
        assert job.id >= 1
        assert job.name == "noop"
        assert job.payload == {"path": "a.png"}
        assert job.status is JobStatus.PENDING
        assert job.priority == 2
        assert job.attempts == 0
        assert job.run_at == pytest.approx(job.created_at, abs=1)


async def test_an_enqueued_job_keeps_every_option_given(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry()) as queue:
        first = await queue.enqueue("noop", delay=60)
        job = await queue.enqueue(
            "noop",
            [1, "two"],
            priority=3,
            delay=90,
            max_attempts=7,
            timeout=4.5,
            idempotency_key="k1",
            after=[first.id],
            concurrency_key="tenant-1",
        )
        assert (job.payload, job.priority, job.max_attempts, job.timeout) == ([1, "two"], 3, 7, 4.5)
        assert (job.idempotency_key, job.after, job.concurrency_key) == (
            "k1",
            (first.id,),
            "tenant-1",
        )
        assert job.run_at == pytest.approx(job.created_at + 90, abs=1)
        assert await queue.get(job.id) == job


async def test_handler_options_are_the_job_defaults(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry()) as queue:
        default = await queue.enqueue("noop", delay=60)
        own = await queue.enqueue("noop", delay=60, max_attempts=9, timeout=2.5)
    assert (default.max_attempts, default.timeout) == (4, 30)
    assert (own.max_attempts, own.timeout) == (9, 2.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"priority": 0}, "priority must be within 1..10"),
        ({"priority": 11}, "priority must be within 1..10"),
        ({"priority": "high"}, "priority must be an int"),
        ({"delay": 5, "run_at": 1e9}, "delay or run_at, not both"),
        ({"delay": -1}, "delay must be >= 0"),
        ({"delay": float("nan")}, "delay must be a finite number"),
        ({"max_attempts": 0}, "max_attempts must be an int within 1..2"),
        ({"max_attempts": 2**63}, "max_attempts must be an int within 1..2"),
        ({"idempotency_key": "\ud800"}, "idempotency_key must be Unicode text"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"idempotency_key": ""}, "idempotency_key must be a non-empty str"),
    ],
)
async def test_invalid_arguments_are_refused_with_a_value_error_naming_them(
    open_test_queue: QueueOpener, kwargs: dict[str, object], message: str
) -> None:
    async with open_test_queue(make_registry()) as queue:
        with pytest.raises(conveyor.InvalidArgument, match=message) as caught:
            await queue.enqueue("noop", **kwargs)  # type: ignore[arg-type]
        assert isinstance(caught.value, ValueError)
        assert await queue.list() == []


async def test_unknown_handler_is_refused_by_name(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry()) as queue:
        with pytest.raises(conveyor.UnknownHandler, match=r"'resize'.*registered: noop"):
            await queue.enqueue("resize")
        assert await queue.list() == []


async def test_payload_that_is_not_json_is_refused(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry()) as queue:
        with pytest.raises(conveyor.NotJSONSerializable, match="payload of a 'noop' job"):
            await queue.enqueue("noop", {"when": object()})
        with pytest.raises(conveyor.NotJSONSerializable):
            await queue.enqueue("noop", float("inf"))
        with pytest.raises(conveyor.NotJSONSerializable, match="lone surrogate"):
            await queue.enqueue("noop", {"name": "\ud800"})
        assert await queue.list() == []


@pytest.mark.trio_only
async def test_an_enqueue_past_its_deadline_writes_nothing(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry()) as queue:
        with anyio.move_on_after(1):
            # The caller's own work outlasts its deadline, with no checkpoint to notice it.
            trio.lowlevel.current_clock().jump(2)  # type: ignore[attr-defined]
            await queue.enqueue("noop", "late")
        after = await queue.enqueue("noop", "after")
        assert [job.payload for job in await queue.list()] == [after.payload]


async def test_a_payload_that_contains_itself_is_refused(open_test_queue: QueueOpener) -> None:
    payload: list[object] = []
    payload.append(payload)
    async with open_test_queue(make_registry()) as queue:
        with pytest.raises(conveyor.NotJSONSerializable, match="Circular reference"):
            await queue.enqueue("noop", payload)
        assert await queue.list() == []


async def test_a_key_with_a_nul_character_is_refused(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry()) as queue:
        with pytest.raises(conveyor.InvalidArgument, match="must not hold a NUL"):
            await queue.enqueue("noop", idempotency_key="order\x00-1")
        job = await queue.enqueue("noop", {"text": "a NUL \x00 in a payload is JSON's"})
        stored = await queue.get(job.id)
        assert [listed.id for listed in await queue.list()] == [job.id]
    assert stored is not None
    assert stored.payload == {"text": "a NUL \x00 in a payload is JSON's"}


async def test_enqueue_many_returns_the_jobs_in_order(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry(), workers=1) as queue:
        specs = [JobSpec("noop", {"n": n}, priority=3, delay=60) for n in range(50)]
        jobs = await queue.enqueue_many(specs)
    assert [job.payload for job in jobs] == [{"n": n} for n in range(50)]
    assert [job.id for job in jobs] == sorted(job.id for job in jobs)


async def test_enqueue_many_writes_nothing_when_one_spec_is_refused(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(make_registry()) as queue:
        with pytest.raises(conveyor.UnknownHandler):
            await queue.enqueue_many([JobSpec("noop"), JobSpec("missing")])
        with pytest.raises(conveyor.InvalidArgument, match="item 1"):
            await queue.enqueue_many([JobSpec("noop"), "noop"])  # type: ignore[list-item]
        assert await queue.list() == []


async def test_enqueue_many_of_nothing_returns_nothing(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry()) as queue:
        assert await queue.enqueue_many([]) == []


async def test_a_used_idempotency_key_returns_the_existing_job(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(make_registry()) as queue:
        first = await queue.enqueue("noop", {"v": 1, "w": 2}, delay=60, idempotency_key="o-7")
        again = await queue.enqueue("noop", {"w": 2, "v": 1}, delay=60, idempotency_key="o-7")
        assert again.id == first.id
        assert len(await queue.list()) == 1


async def test_a_used_key_with_another_payload_or_handler_is_refused(
    open_test_queue: QueueOpener,
) -> None:
    registry = make_registry()

    @registry.handler("resize")
    async def resize(payload: object) -> None:
        return None

    async with open_test_queue(registry) as queue:
        first = await queue.enqueue("noop", {"v": 1}, delay=60, idempotency_key="order-7")
        with pytest.raises(conveyor.IdempotencyConflict, match="'order-7' is held by job"):
            await queue.enqueue("noop", {"v": 2}, delay=60, idempotency_key="order-7")
        with pytest.raises(conveyor.IdempotencyConflict, match="not 'resize'"):
            await queue.enqueue("resize", {"v": 1}, delay=60, idempotency_key="order-7")
        assert [job.id for job in await queue.list()] == [first.id]


async def test_one_key_in_one_batch_yields_one_job(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry()) as queue:
        jobs = await queue.enqueue_many(
            [JobSpec("noop", {"n": 1}, delay=60, idempotency_key="k") for _ in range(3)]
        )
        assert {job.id for job in jobs} == {jobs[0].id}
        assert len(await queue.list()) == 1
        with pytest.raises(conveyor.IdempotencyConflict, match="an earlier job of this batch"):
            await queue.enqueue_many(
                [JobSpec("noop", n, delay=60, idempotency_key="other") for n in range(2)]
            )


async def test_concurrent_enqueues_with_one_key_yield_one_job(
    open_test_queue: QueueOpener,
) -> None:
    ids: list[int] = []
    async with open_test_queue(make_registry()) as queue:

        async def enqueue() -> None:
            ids.append((await queue.enqueue("noop", delay=60, idempotency_key="same")).id)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(enqueue)
        assert len(set(ids)) == 1
        assert len(await queue.list()) == 1


async def test_a_purged_jobs_key_is_free_again(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry()) as queue:
        first = await queue.enqueue("noop", idempotency_key="k")
        await queue.wait(first.id, timeout=10)
        assert await queue.purge(older_than=0) == 1
        second = await queue.enqueue("noop", idempotency_key="k")
        assert second.id != first.id


async def test_enqueue_beyond_max_pending_raises_queue_full_and_writes_nothing(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(make_registry(), max_pending=3) as queue:
        await queue.enqueue_many([JobSpec("noop", delay=60) for _ in range(2)])
        with pytest.raises(conveyor.QueueFull, match="max_pending is 3"):
            await queue.enqueue_many([JobSpec("noop", delay=60) for _ in range(2)])
        await queue.enqueue("noop", delay=60)
        with pytest.raises(conveyor.QueueFull):
            await queue.enqueue("noop", delay=60)
        assert len(await queue.list()) == 3


async def test_a_full_queue_is_logged(
    open_test_queue: QueueOpener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="conveyor")
    async with open_test_queue(make_registry(), max_pending=1) as queue:
        await queue.enqueue("noop", delay=60)
        with pytest.raises(conveyor.QueueFull):
            await queue.enqueue("noop", delay=60)
    (record,) = [r for r in caplog.records if getattr(r, "conveyor_event", None) == "queue_full"]
    assert record.levelname == "WARNING"
    assert "max_pending is 1" in record.getMessage()


async def test_an_idempotent_repeat_does_not_count_against_max_pending(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(make_registry(), max_pending=1) as queue:
        first = await queue.enqueue("noop", delay=60, idempotency_key="k")
        assert (await queue.enqueue("noop", delay=60, idempotency_key="k")).id == first.id


async def test_concurrent_enqueues_share_transactions(
    open_test_queue: QueueOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor._actors import store

    batches: list[int] = []
    prepare_batch = store.prepare_batch

    def counting(writer, commands, *args, **options):  # type: ignore[no-untyped-def]
        batches.append(len(commands))
        return prepare_batch(writer, commands, *args, **options)

    monkeypatch.setattr(store, "prepare_batch", counting)
    async with open_test_queue(make_registry()) as queue:
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(queue.enqueue, "noop", None)
        assert len(await queue.list(limit=1000)) == 200
    assert max(batches) > 1
    assert len(batches) < 200


async def test_an_enqueue_in_a_cancelled_scope_writes_nothing(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(make_registry()) as queue:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await queue.enqueue("noop", "never")
        # Committed after anything sent before it: the store applies commands in order.
        after = await queue.enqueue("noop", "after")
        assert [job.payload for job in await queue.list()] == [after.payload]
