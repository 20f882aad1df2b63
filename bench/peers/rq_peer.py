"""RQ on Redis, worker = ``rq worker`` (forks a work horse per job: RQ's default)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import common
from redis import Redis
from rq import Queue, Retry

CRASH = os.environ.get("PEERS_CRASH") == "1"
TUNED = common.tuned()
MAINTENANCE_S = 5  # default 600 s: how often a worker cleans the started-job registry
# An idle worker blocks on the queue for its TTL - 15 s (default 420 s) between maintenance
# passes; crash test: 20 s, so that the passes happen every MAINTENANCE_S once it is idle
WORKER_TTL_S = 20
# tuned: no fork per job, quiet logs (RqPeer.tuning)
TUNED_ARGS = ["--worker-class", "rq.worker.SimpleWorker", "--quiet"] if TUNED else []
# A SimpleWorker keeps a job's heartbeat for its timeout (default 180 s) + 60 s; in the crash
# test the tuned row shortens the timeout to 30 s, so that an abandoned job is found after
# 90 s, as with the default Worker (job_monitoring_interval 30 s + 60 s)
JOB_TIMEOUT_S = 30 if CRASH and TUNED else None


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
        "worker": "rq worker --worker-class rq.worker.SimpleWorker --quiet (one job at a time, "
        "in the worker process)"
        if TUNED
        else "rq worker (default Worker: one job at a time, fork per job)",
        "recovery": "abandoned jobs (heartbeat = "
        + ("job timeout, 180 s -> 30 s, + 60 s" if TUNED else "job_monitoring_interval 30 s + 60 s")
        + f") are re-queued by registry cleanup if Retry(max=3); maintenance interval "
        f"600 s -> {MAINTENANCE_S} s, worker TTL 420 s -> {WORKER_TTL_S} s (an idle worker "
        "runs maintenance between blocking dequeues of TTL - 15 s)",
    }
    tuning: ClassVar[str] = (
        "--worker-class rq.worker.SimpleWorker (RQ docs, 'Notes on performance': it skips "
        "the fork per job, for jobs of single-digit milliseconds whose code is trusted); "
        "--quiet (CLI: less output, no INFO lines per job).  One process: `rq worker-pool` "
        "would be several"
    )
    recovery_s = 100.0

    def reset(self) -> None:
        common.flush_redis()

    def worker_argv(self, crash: bool) -> list[str]:
        argv = [common.venv_bin("rq"), "worker", "-u", common.REDIS_URL, "bench", *TUNED_ARGS]
        recovery = ["--maintenance-interval", str(MAINTENANCE_S), "--worker-ttl", str(WORKER_TTL_S)]
        return argv + (recovery if crash else [])

    def open_producer(self) -> Any:
        return Queue("bench", connection=Redis.from_url(common.REDIS_URL))

    def close_producer(self, prod: Any) -> None:
        prod.connection.close()

    def enqueue_sync(self, prod: Any, spec: common.Spec) -> None:
        prod.enqueue(job, *spec, retry=_retry(), job_timeout=JOB_TIMEOUT_S)

    def bulk_sync(self, prod: Any, specs: Sequence[common.Spec]) -> None:
        prod.enqueue_many(
            [Queue.prepare_data(job, args=s, retry=_retry(), timeout=JOB_TIMEOUT_S) for s in specs]
        )


PEER = RqPeer()

if __name__ == "__main__":
    common.main(__file__)
