"""dramatiq on Redis, worker = ``dramatiq dramatiq_peer`` (defaults: CPU-count
processes x 8 threads)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import common
import dramatiq
from dramatiq.brokers.redis import RedisBroker

CRASH = os.environ.get("PEERS_CRASH") == "1"
# Messages of a worker whose heartbeat is older than heartbeat_timeout (default 60 s)
# are re-queued by the maintenance that runs on maintenance_chance per million
# commands (default 1,000).  Crash test: 2 s and 100,000.
_opts: dict[str, Any] = {"heartbeat_timeout": 2000, "maintenance_chance": 100_000} if CRASH else {}
broker = RedisBroker(url=common.REDIS_URL, **_opts)
TUNED = common.tuned()
PREFETCH = 64  # tuned: messages each worker process fetches ahead (default 2 x threads)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench")
def job(job_id: int, t_enq: float, sleep_s: float) -> None:
    common.run_job_sync(job_id, t_enq, sleep_s)


class DramatiqPeer(common.Peer):
    name = "dramatiq"
    dists = ("dramatiq", "redis")
    settings: ClassVar[dict[str, str]] = {
        "storage": "Redis (server persistence: see notes)",
        "batch": "none for Redis (actor.send per message)",
        "worker": "dramatiq dramatiq_peer: --processes 2 (default = CPUs) --threads 8 (default)"
        + (f", dramatiq_queue_prefetch={PREFETCH}" if TUNED else ""),
        "recovery": "unacked messages of dead workers re-queued by broker maintenance: "
        "heartbeat_timeout 60 s -> 2 s, maintenance_chance 0.1 % -> 10 %",
    }
    tuning: ClassVar[str] = (
        f"dramatiq_queue_prefetch 16 (2 x threads) -> {PREFETCH} (documented environment "
        "variable: the messages each worker process fetches ahead; 256 and 1,000 drained "
        "less)"
    )
    recovery_s = 10.0

    def reset(self) -> None:
        common.flush_redis()

    def worker_argv(self, crash: bool) -> list[str]:
        return [common.venv_bin("dramatiq"), "dramatiq_peer"]

    def worker_env(self, crash: bool) -> dict[str, str]:
        prefetch = {"dramatiq_queue_prefetch": str(PREFETCH)} if TUNED else {}
        return super().worker_env(crash) | prefetch

    def enqueue_sync(self, prod: Any, spec: common.Spec) -> None:
        job.send(*spec)

    def bulk_sync(self, prod: Any, specs: Sequence[common.Spec]) -> None:
        for s in specs:
            job.send(*s)


PEER = DramatiqPeer()

if __name__ == "__main__":
    common.main(__file__)
