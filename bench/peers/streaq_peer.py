"""streaQ on Redis with its trio backend, worker = ``streaq run streaq_peer:worker``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import anyio
import common
from streaq import Worker

CRASH = os.environ.get("PEERS_CRASH") == "1"
# Default row: trio, the backend conveyor runs on, and streaQ's defaults otherwise
# (concurrency 16, prefetch = concurrency).  Tuned row: StreaqPeer.tuning.
BACKEND: Literal["asyncio", "trio"] = "asyncio" if common.tuned() else "trio"
# Tasks a consumer holds longer than idle_timeout (default 60 s) are re-queued
# (Redis streams consumer groups); crash test: 2 s.
worker = Worker(
    redis_url=common.REDIS_URL,
    anyio_backend=BACKEND,
    idle_timeout=2 if CRASH else 60,
)


@worker.task()
async def job(job_id: int, t_enq: float, sleep_s: float) -> None:
    await common.run_job_async(job_id, t_enq, sleep_s, anyio.sleep)


class StreaqPeer(common.Peer):
    name = "streaq"
    dists = ("streaq", "coredis", "trio")
    is_async = True
    async_backend = BACKEND
    settings: ClassVar[dict[str, str]] = {
        "storage": "Redis streams (server persistence: see notes)",
        "batch": "Worker.enqueue_many() (one pipeline per 1,000)",
        "worker": f"streaq run streaq_peer:worker, anyio_backend={BACKEND}, concurrency=16, "
        "prefetch=16 (defaults)",
        "recovery": "idle_timeout 60 s -> 2 s: tasks held by a dead consumer are re-claimed; "
        "max_tries=3 (default)",
    }
    tuning: ClassVar[str] = (
        "anyio_backend trio -> asyncio (streaQ's default: ~15 % more here).  Its other "
        "knobs, concurrency (tasks run at once) and prefetch (tasks fetched ahead), drained "
        "no more at 32-64 and 256 than at their defaults, 16"
    )
    recovery_s = 10.0

    def reset(self) -> None:
        common.flush_redis()

    def worker_argv(self, crash: bool) -> list[str]:
        return [common.venv_bin("streaq"), "run", "streaq_peer:worker"]

    async def open_producer_async(self) -> Any:
        await worker.__aenter__()
        return worker

    async def close_producer_async(self, prod: Any) -> None:
        await worker.__aexit__(None, None, None)

    async def enqueue_async(self, prod: Any, spec: common.Spec) -> None:
        await job.enqueue(*spec)

    async def bulk_async(self, prod: Any, specs: Sequence[common.Spec]) -> None:
        await worker.enqueue_many([job.enqueue(*s) for s in specs])


PEER = StreaqPeer()

if __name__ == "__main__":
    common.main(__file__)
