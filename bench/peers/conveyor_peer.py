"""conveyor embedded (SQLite file): the worker is a trio program that runs ``open_queue``.

The processes take turns on the file, so that the drain measures the worker alone: the enqueue
measures and the pre-queueing of the drain and crash measures run ``open_queue`` in the
measuring process and leave it before the worker process opens the file; for the latency
measure the worker process enqueues the jobs itself, as a program that embeds conveyor does
(``produces_in_worker``). The worker is one process, as the harness runs every system at its
default number of worker processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import common
import trio

import conveyor

STATE = common.state_dir("conveyor")
DB = STATE / "conveyor.db"
# open_queue's default; the tuned row runs more (ConveyorPeer.tuning).
# CONVEYOR_BENCH_WORKERS, for trying counts by hand, sets both rows.
DEFAULT_WORKERS: Final = 4
TUNED_WORKERS: Final = 32
WORKERS = int(
    os.environ.get(
        "CONVEYOR_BENCH_WORKERS", str(TUNED_WORKERS if common.tuned() else DEFAULT_WORKERS)
    )
)
SYNCHRONOUS: Final = "normal"  # the default: survives kill -9, not power loss

registry = conveyor.Registry()


@registry.handler("job")
async def job(payload: list[float]) -> None:
    job_id, t_enq, sleep_s = payload
    await common.run_job_async(int(job_id), t_enq, sleep_s, trio.sleep)


# conveyor has no enqueue-only mode: an open queue runs the handlers of its registry. The
# producer of the measuring process must not run jobs (no peer's producer does), so its one
# worker parks on the first job it claims; leaving the block (shutdown_grace=0) interrupts it
# and returns it to pending without using an attempt, for the worker process to run.
producer_registry = conveyor.Registry()


@producer_registry.handler("job")
async def parked(payload: list[float]) -> None:
    await trio.sleep_forever()


def _spec(spec: common.Spec) -> conveyor.JobSpec:
    return conveyor.JobSpec("job", list(spec))


class ConveyorPeer(common.Peer):
    name = "conveyor"
    dists = ("conveyor", "trio", "anyio", "attrs")
    is_async = True
    async_backend = "trio"
    produces_in_worker = True
    settings: ClassVar[dict[str, str]] = {
        "storage": f"SQLite file, WAL, synchronous={SYNCHRONOUS.upper()} (conveyor's default: "
        "an acknowledged job survives kill -9; 'full' adds power loss)",
        "batch": "Queue.enqueue_many() (one transaction per 1,000)",
        "worker": f"a trio program: open_queue(workers={WORKERS})"
        + (" (the default)" if WORKERS == DEFAULT_WORKERS else "")
        + ", async handler. "
        "Producers: open_queue(workers=1) in the measuring process, its worker parked on one "
        "claimed job (no enqueue-only mode); latency: the worker process enqueues itself "
        "(one writer process per file)",
        "recovery": "on open_queue: jobs left running go back to pending (the attempt counts), "
        "max_attempts=3 (default); nothing to shorten",
    }
    tuning: ClassVar[str] = (
        f"workers {DEFAULT_WORKERS} -> {WORKERS} (README: `workers` is how many jobs run at "
        "once, and async handlers that wait on I/O want many; each transaction then completes "
        "and claims more jobs. Drain here: 32 > 16 ~ 64 > 8 > 4)"
    )
    recovery_s = 0.0

    def worker_argv(self, crash: bool) -> list[str]:
        return self.self_worker_argv()

    def run_worker(self, crash: bool) -> None:
        trio.run(_worker_main, int(os.environ.get("PEERS_PACED_N", "0")))

    async def open_producer_async(self) -> Any:
        stack = contextlib.AsyncExitStack()
        queue = await stack.enter_async_context(
            conveyor.open_queue(
                DB,
                handlers=producer_registry,
                workers=1,
                shutdown_grace=0,
                synchronous=SYNCHRONOUS,
            )
        )
        return stack, queue

    async def close_producer_async(self, prod: Any) -> None:
        stack, _ = prod
        await stack.aclose()

    async def enqueue_async(self, prod: Any, spec: common.Spec) -> None:
        _, queue = prod
        await queue.enqueue("job", list(spec))

    async def bulk_async(self, prod: Any, specs: Sequence[common.Spec]) -> None:
        _, queue = prod
        await queue.enqueue_many([_spec(s) for s in specs])


async def _worker_main(paced_n: int) -> None:
    async with conveyor.open_queue(
        DB, handlers=registry, workers=WORKERS, synchronous=SYNCHRONOUS
    ) as queue:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            if paced_n:
                await _produce_paced(queue, paced_n)
            # SIGTERM (the harness's stop) leaves the block: a graceful shutdown
            async for _ in signals:
                break


async def _produce_paced(queue: conveyor.Queue, n: int) -> None:
    warm = [
        await queue.enqueue("job", [jid, time.time(), 0.0])
        for jid, _, _ in common.specs(common.LATENCY_WARMUP, start=n)
    ]
    for warm_job in warm:
        await queue.wait(warm_job.id, timeout=60)
    for target, (jid, _, sleep_s) in common.paced(common.specs(n), common.LATENCY_RATE):
        delay = target - time.time()
        if delay > 0:
            await trio.sleep(delay)
        await queue.enqueue("job", [jid, time.time(), sleep_s])


PEER = ConveyorPeer()

if __name__ == "__main__":
    common.main(__file__)
