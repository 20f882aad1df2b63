"""Dependencies: jobs that run after others, workflows, chains, groups, and bulk operations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

import conveyor
from conveyor import Fail, InvalidArgument, JobNotFound, JobSpec, JobStatus, Workflow

from helpers import Gate, QueueOpener

pytestmark = pytest.mark.anyio


class Record:
    """What the handlers saw: the order jobs ran in, and each job's dependency results."""

    def __init__(self) -> None:
        self.order: list[Any] = []
        self.results: dict[Any, dict[int, Any]] = {}


def registry(record: Record, gate: Gate | None = None) -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("step", max_attempts=1)
    async def step(payload: Any) -> Any:
        record.order.append(payload)
        record.results[payload] = conveyor.current_job().dependency_results
        return {"done": payload}

    @registry.handler("fail", max_attempts=1)
    async def fail(payload: Any) -> None:
        record.order.append(payload)
        raise Fail("this step fails")

    @registry.handler("hold")
    async def hold(payload: Any) -> None:
        assert gate is not None
        await gate.pass_through()

    return registry


async def test_a_job_after_another_waits_until_that_one_completed(
    open_test_queue: QueueOpener,
) -> None:
    record, gate = Record(), Gate()
    async with open_test_queue(registry(record, gate)) as queue:
        first = await queue.enqueue("hold")
        second = await queue.enqueue("step", "second", after=[first.id])
        assert second.status is JobStatus.WAITING
        assert second.after == (first.id,)
        await gate.entered.wait()
        assert (await queue.get(second.id)).status is JobStatus.WAITING  # type: ignore[union-attr]
        gate.open()
        done = await queue.wait(second.id, timeout=60)
    assert done.status is JobStatus.COMPLETED


async def test_a_job_after_completed_jobs_is_pending_at_once(open_test_queue: QueueOpener) -> None:
    record = Record()
    async with open_test_queue(registry(record)) as queue:
        first = await queue.wait((await queue.enqueue("step", 1)).id, timeout=60)
        second = await queue.enqueue("step", 2, after=[first.id])
        assert second.status is JobStatus.PENDING
        await queue.wait(second.id, timeout=60)


async def test_a_chain_runs_its_steps_in_order(open_test_queue: QueueOpener) -> None:
    record = Record()
    async with open_test_queue(registry(record), workers=4) as queue:
        jobs = await queue.enqueue_workflow(
            Workflow.chain([JobSpec("step", n, priority=10 - n) for n in range(5)])
        )
        await queue.wait_all([job.id for job in jobs], timeout=60)
    assert record.order == [0, 1, 2, 3, 4]


async def test_a_group_runs_then_after_all_of_its_members(open_test_queue: QueueOpener) -> None:
    record = Record()
    async with open_test_queue(registry(record), workers=4) as queue:
        jobs = await queue.enqueue_workflow(
            Workflow.group([JobSpec("step", n) for n in range(3)], then=JobSpec("step", "then"))
        )
        await queue.wait(jobs[-1].id, timeout=60)
    assert record.order[-1] == "then"
    assert record.results["then"] == {job.id: {"done": n} for n, job in enumerate(jobs[:3])}


async def test_a_handler_reads_its_dependencies_results(open_test_queue: QueueOpener) -> None:
    record = Record()
    async with open_test_queue(registry(record)) as queue:
        flow = Workflow()
        fetch = flow.add("step", "fetch")
        parse = flow.add("step", "parse", after=[fetch])
        jobs = await queue.enqueue_workflow(flow)
        await queue.wait(jobs[1].id, timeout=60)
    assert parse.index == 1
    assert record.results["parse"] == {jobs[0].id: {"done": "fetch"}}
    assert record.results["fetch"] == {}


async def test_a_failed_dependency_cancels_its_transitive_dependents_and_nothing_else(
    open_test_queue: QueueOpener,
) -> None:
    record = Record()
    async with open_test_queue(registry(record)) as queue:
        flow = Workflow()
        root = flow.add("fail", "root")
        child = flow.add("step", "child", after=[root])
        flow.add("step", "grandchild", after=[child])
        flow.add("step", "bystander")
        jobs = await queue.enqueue_workflow(flow)
        done = await queue.wait_all([job.id for job in jobs], timeout=60)
    assert [job.status for job in done] == [
        JobStatus.FAILED,
        JobStatus.CANCELLED,
        JobStatus.CANCELLED,
        JobStatus.COMPLETED,
    ]
    assert f"job {jobs[0].id} ('fail'), which ended failed" in (done[1].error or "")
    assert f"job {jobs[0].id} ('fail'), which ended failed" in (done[2].error or "")
    assert "child" not in record.order
    assert "grandchild" not in record.order


async def test_requeuing_the_failed_dependency_brings_its_dependents_back(
    open_test_queue: QueueOpener,
) -> None:
    record, flaky, gate = Record(), {"fail": True}, Gate()
    reg = registry(record)

    @reg.handler("flaky", max_attempts=1)
    async def flaky_step(payload: Any) -> str:
        if flaky["fail"]:
            raise Fail("not yet")
        await gate.pass_through()  # holds the workflow while the test looks at it
        return "fixed"

    async with open_test_queue(reg) as queue:
        flow = Workflow()
        first = flow.add("flaky")
        second = flow.add("step", "second", after=[first])
        flow.add("step", "third", after=[second])
        jobs = await queue.enqueue_workflow(flow)
        await queue.wait_all([job.id for job in jobs], timeout=60)
        flaky["fail"] = False
        assert await queue.requeue(jobs[0].id)
        assert (await queue.get(jobs[2].id)).status is JobStatus.WAITING  # type: ignore[union-attr]
        gate.open()
        done = await queue.wait_all([job.id for job in jobs], timeout=60)
    assert [job.status for job in done] == [JobStatus.COMPLETED] * 3
    assert record.order == ["second", "third"]


async def test_a_dependent_cannot_be_requeued_while_its_dependency_failed(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(registry(Record())) as queue:
        failed = await queue.wait((await queue.enqueue("fail", 1)).id, timeout=60)
        dependent = await queue.enqueue("step", 2, after=[failed.id])
        assert dependent.status is JobStatus.CANCELLED
        assert (await queue.get(dependent.id)).status is JobStatus.CANCELLED  # type: ignore[union-attr]
        assert not await queue.requeue(dependent.id)


async def test_cancelling_a_waiting_job_cancels_it_and_its_dependents(
    open_test_queue: QueueOpener,
) -> None:
    gate = Gate()
    async with open_test_queue(registry(Record(), gate)) as queue:
        first = await queue.enqueue("hold")
        second = await queue.enqueue("step", 2, after=[first.id])
        third = await queue.enqueue("step", 3, after=[second.id])
        assert await queue.cancel(second.id)
        gate.open()
        done = await queue.wait_all([first.id, second.id, third.id], timeout=60)
    assert [job.status for job in done] == [
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
        JobStatus.CANCELLED,
    ]


async def test_an_unknown_dependency_is_refused_and_nothing_is_written(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(registry(Record())) as queue:
        with pytest.raises(JobNotFound, match="12345"):
            await queue.enqueue_many([JobSpec("step", 1), JobSpec("step", 2, after=[12345])])
        assert await queue.list() == []


async def test_after_must_hold_job_ids() -> None:
    with pytest.raises(InvalidArgument, match="after"):
        JobSpec("step", after=["a"])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="after"):
        JobSpec("step", after=5)  # type: ignore[arg-type]


def test_a_step_of_another_workflow_is_refused() -> None:
    other = Workflow().add("step")
    with pytest.raises(InvalidArgument, match="another workflow"):
        Workflow().add("step", after=[other])


@pytest.mark.trio_only
async def test_a_dependents_delay_counts_from_its_release(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    starts: dict[str, float] = {}
    reg = conveyor.Registry()

    @reg.handler("at")
    async def at(payload: str) -> None:
        if payload == "first":
            await anyio.sleep(100)
        starts[payload] = wall_clock()

    async with open_test_queue(reg) as queue:
        first = await queue.enqueue("at", "first")
        second = await queue.enqueue("at", "second", delay=10, after=[first.id])
        await queue.wait(second.id)
    assert starts["second"] - starts["first"] == pytest.approx(10, abs=0.01)


async def test_wait_all_returns_the_jobs_in_the_order_given(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(registry(Record())) as queue:
        jobs = [await queue.enqueue("step", n) for n in range(3)]
        ids = [jobs[2].id, jobs[0].id, jobs[1].id]
        done = await queue.wait_all(ids, timeout=60)
    assert [job.id for job in done] == ids


async def test_wait_all_times_out_naming_how_many_are_unfinished(
    open_test_queue: QueueOpener,
) -> None:
    gate = Gate()
    async with open_test_queue(registry(Record(), gate)) as queue:
        held = await queue.enqueue("hold")
        quick = await queue.enqueue("step", 1)
        with pytest.raises(conveyor.WaitTimeout, match="1 of the 2 jobs"):
            await queue.wait_all([held.id, quick.id], timeout=5)
        gate.open()


async def test_requeue_failed_requeues_every_failed_job_of_a_handler(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(registry(Record())) as queue:
        jobs = [await queue.enqueue("fail", n) for n in range(3)]
        await queue.wait_all([job.id for job in jobs], timeout=60)
        assert await queue.requeue_failed(name="other") == 0
        assert await queue.requeue_failed(name="fail") == 3
        await queue.wait_all([job.id for job in jobs], timeout=60)
        assert await queue.requeue_failed() == 3


async def test_cancel_pending_cancels_pending_and_waiting_jobs(
    open_test_queue: QueueOpener,
) -> None:
    gate = Gate()
    async with open_test_queue(registry(Record(), gate), workers=1) as queue:
        held = await queue.enqueue("hold")
        await gate.entered.wait()
        pending = await queue.enqueue("step", 1)
        waiting = await queue.enqueue("step", 2, after=[held.id])
        after_pending = await queue.enqueue("step", 3, after=[pending.id])
        assert await queue.cancel_pending(name="step") == 3
        assert (await queue.get(after_pending.id)).status is JobStatus.CANCELLED  # type: ignore[union-attr]
        gate.open()
        done = await queue.wait_all([held.id, pending.id, waiting.id], timeout=60)
    assert [job.status for job in done] == [
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
        JobStatus.CANCELLED,
    ]


async def test_progress_follows_a_batch_until_every_job_finished(
    open_test_queue: QueueOpener,
) -> None:
    gate = Gate()
    async with open_test_queue(registry(Record(), gate), workers=1) as queue:
        held = await queue.enqueue("hold")
        quick = [await queue.enqueue("step", n) for n in range(2)]
        seen: list[conveyor.BatchProgress] = []
        first = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def follow() -> None:
                async for progress in queue.progress([held.id, *(job.id for job in quick)]):
                    seen.append(progress)
                    first.set()

            tg.start_soon(follow)
            await gate.entered.wait()
            await first.wait()  # the held job runs until the gate opens: not all finished yet
            gate.open()
    assert seen[0].total == 3
    assert seen[0].finished < 3
    assert seen[-1] == conveyor.BatchProgress(
        total=3, pending=0, running=0, completed=3, failed=0, cancelled=0
    )


async def test_progress_of_an_unknown_job_is_refused(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(registry(Record())) as queue:
        with pytest.raises(JobNotFound):
            async for _ in queue.progress([999]):
                pass


async def test_a_jobs_workflow_holds_every_job_connected_to_it(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(registry(Record())) as queue:
        flow = Workflow()
        root = flow.add("step", "root")
        left = flow.add("step", "left", after=[root])
        flow.add("step", "right", after=[root])
        flow.add("step", "end", after=[left])
        jobs = await queue.enqueue_workflow(flow)
        lone = await queue.enqueue("step", "lone")
        graph = await queue.workflow(jobs[1].id)
        small = await queue.workflow(jobs[0].id, limit=2)
        assert [job.id for job in (await queue.get_many([lone.id, 999])).values()] == [lone.id]
        with pytest.raises(JobNotFound):
            await queue.workflow(999)
    assert [job.id for job in graph.jobs] == [job.id for job in jobs]
    assert not graph.truncated
    assert len(small.jobs) == 2
    assert small.truncated


# --- found by the state machine (property_tests) -------------------------------------------------
async def test_a_requeued_job_whose_dependency_completed_while_it_was_cancelled_runs(
    open_test_queue: QueueOpener,
) -> None:
    # The completion came while the dependent was cancelled and was not counted: once requeued,
    # the dependent waited for ever for a dependency that had completed.
    gate = Gate()
    async with open_test_queue(registry(Record(), gate)) as queue:
        first = await queue.enqueue("hold")
        second = await queue.enqueue("step", "second", after=[first.id])
        assert await queue.cancel(second.id)
        gate.open()
        await queue.wait(first.id, timeout=60)
        assert await queue.requeue(second.id)
        assert (await queue.get(second.id)).status is not JobStatus.WAITING  # type: ignore[union-attr]
        done = await queue.wait(second.id, timeout=60)
    assert done.status is JobStatus.COMPLETED


async def test_a_dependent_brought_back_by_a_requeue_counts_what_completed_meanwhile(
    open_test_queue: QueueOpener,
) -> None:
    # The same miscount, through the requeue of the dependency whose failure cancelled it.
    record, gate, flaky = Record(), Gate(), {"fail": True}
    reg = registry(record, gate)

    @reg.handler("flaky", max_attempts=1)
    async def flaky_step(payload: Any) -> str:
        if flaky["fail"]:
            raise Fail("not yet")
        return "fixed"

    async with open_test_queue(reg) as queue:
        flow = Workflow()
        fixable = flow.add("flaky")
        held = flow.add("hold")
        flow.add("step", "last", after=[fixable, held])
        first, other, last = await queue.enqueue_workflow(flow)
        assert (await queue.wait(first.id, timeout=60)).status is JobStatus.FAILED
        gate.open()
        await queue.wait(other.id, timeout=60)  # completes while ``last`` is cancelled
        flaky["fail"] = False
        assert await queue.requeue(first.id)
        await queue.wait(first.id, timeout=60)
        assert (await queue.get(last.id)).status is not JobStatus.WAITING  # type: ignore[union-attr]
        done = await queue.wait(last.id, timeout=60)
    assert done.status is JobStatus.COMPLETED
    assert record.order == ["last"]


async def test_a_step_after_two_steps_that_share_an_idempotency_key_runs_after_that_job(
    open_test_queue: QueueOpener,
) -> None:
    # Both steps are answered by one job; the step after them counted it twice and never ran.
    record = Record()
    async with open_test_queue(registry(record)) as queue:
        flow = Workflow()
        one = flow.add("step", "one", idempotency_key="same")
        two = flow.add("step", "one", idempotency_key="same")
        flow.add("step", "after both", after=[one, two])
        first, second, last = await queue.enqueue_workflow(flow)
        assert first.id == second.id
        assert last.after == (first.id,)
        done = await queue.wait(last.id, timeout=60)
    assert done.status is JobStatus.COMPLETED
    assert record.order == ["one", "after both"]
