"""SAQ on Redis, worker = ``saq saq_peer.settings``."""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

import common
from saq import Queue

CRASH = os.environ.get("PEERS_CRASH") == "1"
# The sweeper (every timers.sweep s, at most once per 60 s lock) re-queues an active
# job that is past its timeout, if it has retries left.  Defaults: timeout 10 s,
# retries 1 (= no retry).  Crash test: timeout 2 s, retries 3, sweep every 1 s.
JOB_OPTS: dict[str, Any] = {"timeout": 2, "retries": 3} if CRASH else {}
CONCURRENCY = 20 if common.tuned() else 10  # SAQ's default: 10


async def job(ctx: dict[str, Any], *, job_id: int, t_enq: float, sleep_s: float) -> None:
    await common.run_job_async(job_id, t_enq, sleep_s, asyncio.sleep)


settings: dict[str, Any] = {
    "queue": Queue.from_url(common.REDIS_URL),
    "functions": [job],
    "concurrency": CONCURRENCY,
    "timers": {"sweep": 1} if CRASH else {},
}


class SaqPeer(common.Peer):
    name = "saq"
    dists = ("saq", "redis")
    is_async = True
    settings: ClassVar[dict[str, str]] = {
        "storage": "Redis (server persistence: see notes)",
        "batch": "none (Queue.enqueue per job, awaited one after another)",
        "worker": f"saq saq_peer.settings, concurrency={CONCURRENCY}"
        + (" (default)" if CONCURRENCY == 10 else ""),
        "recovery": "sweeper: job timeout 10 s -> 2 s, retries 1 -> 3, sweep timer 60 s -> 1 s "
        "(the sweep lock still allows one sweep per 60 s)",
    }
    tuning: ClassVar[str] = (
        "concurrency 10 -> 20 (Worker docs: the number of jobs processed concurrently; "
        "20-30 drained best here, within the noise of 10; 50-100 alike, 200 slower).  "
        "Dequeues block on Redis: no poll interval to tune"
    )
    recovery_s = 65.0

    def reset(self) -> None:
        common.flush_redis()

    def worker_argv(self, crash: bool) -> list[str]:
        return [common.venv_bin("saq"), "saq_peer.settings"]

    async def open_producer_async(self) -> Any:
        q = Queue.from_url(common.REDIS_URL)
        await q.connect()
        return q

    async def close_producer_async(self, prod: Any) -> None:
        await prod.disconnect()

    async def enqueue_async(self, prod: Any, spec: common.Spec) -> None:
        jid, t_enq, sleep_s = spec
        await prod.enqueue("job", job_id=jid, t_enq=t_enq, sleep_s=sleep_s, **JOB_OPTS)


PEER = SaqPeer()

if __name__ == "__main__":
    common.main(__file__)
