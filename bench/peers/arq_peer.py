"""arq on Redis, worker = ``arq arq_peer.WorkerSettings``."""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

import common
from arq import create_pool, func
from arq.connections import RedisSettings

CRASH = os.environ.get("PEERS_CRASH") == "1"
# A job stays in the queue while it runs, guarded by an in-progress key that expires
# job_timeout + 10 s after the start; then another worker runs it again.  Default job
# timeout 300 s, shortened to 2 s for the crash test (=> recovery after ~12 s).
JOB_TIMEOUT_S = 2 if CRASH else 300
# arq reads the queue every poll_delay (default 0.5 s), up to queue_read_limit jobs, and
# runs up to max_jobs at a time; the tuned row polls every 1 ms (ArqPeer.tuning)
POLL_DELAY_S = 0.001 if common.tuned() else 0.5
REDIS = RedisSettings(host=common.REDIS_HOST, port=common.REDIS_PORT, database=common.REDIS_DB)


async def job(ctx: dict[str, Any], job_id: int, t_enq: float, sleep_s: float) -> None:
    await common.run_job_async(job_id, t_enq, sleep_s, asyncio.sleep)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [func(job, name="job", timeout=JOB_TIMEOUT_S)]
    redis_settings = REDIS
    max_jobs = 10  # arq's default (100 drained no faster here)
    poll_delay = POLL_DELAY_S


class ArqPeer(common.Peer):
    name = "arq"
    dists = ("arq", "redis")
    is_async = True
    settings: ClassVar[dict[str, str]] = {
        "storage": "Redis (server persistence: see notes)",
        "batch": "none (enqueue_job per job, awaited one after another)",
        "worker": f"arq arq_peer.WorkerSettings, max_jobs=10 (default), poll_delay "
        f"{POLL_DELAY_S:g} s" + (" (default)" if POLL_DELAY_S == 0.5 else ""),
        "recovery": "in-progress key expiry: job timeout 300 s -> 2 s, so re-run after ~12 s; "
        "max_tries=5 (default)",
    }
    tuning: ClassVar[str] = (
        "poll_delay 0.5 s -> 1 ms (Worker docs: the duration between polls of the queue "
        "for new jobs; each poll reads up to queue_read_limit jobs, so the default's "
        "0.5 s pause between batches, not the jobs, bounds the drain; 10 ms drained alike "
        "with a 3x higher latency p50).  max_jobs stays 10: 100 did not drain faster"
    )
    recovery_s = 15.0

    def reset(self) -> None:
        common.flush_redis()

    def worker_argv(self, crash: bool) -> list[str]:
        return [common.venv_bin("arq"), "arq_peer.WorkerSettings"]

    async def open_producer_async(self) -> Any:
        return await create_pool(REDIS)

    async def close_producer_async(self, prod: Any) -> None:
        await prod.aclose()

    async def enqueue_async(self, prod: Any, spec: common.Spec) -> None:
        await prod.enqueue_job("job", *spec)


PEER = ArqPeer()

if __name__ == "__main__":
    common.main(__file__)
