"""RQ on Redis, worker = ``rq worker`` (forks a work horse per job: RQ's default)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import common
from redis import Redis
from rq import Queue, Retry

CRASH = os.environ.get("PEERS_CRASH") == "1"
MAINTENANCE_S = 5  # default 600 s: how often a worker cleans the started-job registry


def job(job_id: int, t_enq: float, sleep_s: float) -> None:
    common.run_job_sync(job_id, t_enq, sleep_s)


def _retry() -> Retry | None:
    # an abandoned job is re-queued only if it has retries left, else it goes to the
    # FailedJobRegistry: the documented way to get at-least-once is Retry(max=...)
    return Retry(max=3) if CRASH else None


class RqPeer(common.Peer):
    name = "rq"
    dists = ("rq", "redis")
    settings: ClassVar[dict[str, str]] = {
        "storage": "Redis (server persistence: see notes)",
        "batch": "Queue.enqueue_many() with Queue.prepare_data() (one pipeline per 1,000)",
        "worker": "rq worker (default Worker: one job at a time, fork per job)",
        "recovery": f"abandoned jobs (heartbeat = job_monitoring_interval 30 s + 60 s) are "
        f"re-queued by registry cleanup if Retry(max=3); maintenance interval "
        f"600 s -> {MAINTENANCE_S} s",
    }
    recovery_s = 100.0

    def reset(self) -> None:
        common.flush_redis()

    def worker_argv(self, crash: bool) -> list[str]:
        argv = [common.venv_bin("rq"), "worker", "-u", common.REDIS_URL, "bench"]
        return argv + (["--maintenance-interval", str(MAINTENANCE_S)] if crash else [])

    def open_producer(self) -> Any:
        return Queue("bench", connection=Redis.from_url(common.REDIS_URL))

    def close_producer(self, prod: Any) -> None:
        prod.connection.close()

    def enqueue_sync(self, prod: Any, spec: common.Spec) -> None:
        prod.enqueue(job, *spec, retry=_retry())

    def bulk_sync(self, prod: Any, specs: Sequence[common.Spec]) -> None:
        prod.enqueue_many([Queue.prepare_data(job, args=s, retry=_retry()) for s in specs])


PEER = RqPeer()

if __name__ == "__main__":
    common.main(__file__)
