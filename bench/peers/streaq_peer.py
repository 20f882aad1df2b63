"""streaQ on Redis with its trio backend, worker = ``streaq run streaq_peer:worker``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
import common
from streaq import Worker

CRASH = os.environ.get("PEERS_CRASH") == "1"
# Tasks a consumer holds longer than idle_timeout (default 60 s) are re-queued
# (Redis streams consumer groups); crash test: 2 s.
worker = Worker(
    redis_url=common.REDIS_URL, anyio_backend="trio", idle_timeout=2 if CRASH else 60
)  # concurrency=16 (default)


@worker.task()
async def job(job_id: int, t_enq: float, sleep_s: float) -> None:
    await common.run_job_async(job_id, t_enq, sleep_s, anyio.sleep)


class StreaqPeer(common.Peer):
    name = "streaq"
    dists = ("streaq", "coredis", "trio")
    is_async = True
    async_backend = "trio"
    settings: ClassVar[dict[str, str]] = {
        "storage": "Redis streams (server persistence: see notes)",
        "batch": "Worker.enqueue_many() (one pipeline per 1,000)",
        "worker": "streaq run streaq_peer:worker, anyio_backend=trio, concurrency=16 (default)",
        "recovery": "idle_timeout 60 s -> 2 s: tasks held by a dead consumer are re-claimed; "
        "max_tries=3 (default)",
    }
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
