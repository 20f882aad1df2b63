"""taskito (SQLite storage, Rust core), worker = ``taskito worker``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import common
from taskito import Queue

STATE = common.state_dir("taskito")
DB = STATE / "taskito.db"
CRASH = os.environ.get("PEERS_CRASH") == "1"
# A running job whose timeout passed is "stale" and reaped by the scheduler (every
# scheduler_reap_interval polls of 50 ms); default timeout 300 s, shortened for the
# crash test.
JOB_TIMEOUT_S = 2 if CRASH else 300

# Defaults otherwise (quickstart): the scheduler polls every 50 ms and dispatched ~4 jobs
# per poll here (~70 jobs/s); scheduler_poll_interval_ms=5 + scheduler_batch_size=64
# drained ~470 jobs/s in a quick check.
queue = Queue(db_path=str(DB), workers=0)  # 0 = one worker thread per CPU


@queue.task(timeout=JOB_TIMEOUT_S, max_retries=3)
def job(job_id: int, t_enq: float, sleep_s: float) -> None:
    common.run_job_sync(job_id, t_enq, sleep_s)


class TaskitoPeer(common.Peer):
    name = "taskito"
    dists = ("taskito",)
    settings: ClassVar[dict[str, str]] = {
        "storage": "SQLite file, WAL, synchronous=NORMAL (taskito's own pragmas)",
        "batch": "Queue.enqueue_many() (one transaction per 1,000)",
        "worker": "taskito worker --app taskito_peer:queue, workers=0 (= CPU count, 2 threads), "
        "scheduler poll 50 ms, batch 1 (defaults)",
        "recovery": "stale-job reaper: job timeout shortened 300 s -> 2 s, max_retries=3",
    }
    recovery_s = 5.0

    def worker_argv(self, crash: bool) -> list[str]:
        return [common.venv_bin("taskito"), "worker", "--app", "taskito_peer:queue"]

    def enqueue_sync(self, prod: Any, spec: common.Spec) -> None:
        job.delay(*spec)

    def bulk_sync(self, prod: Any, specs: Sequence[common.Spec]) -> None:
        queue.enqueue_many(job.name, [tuple(s) for s in specs])


PEER = TaskitoPeer()

if __name__ == "__main__":
    common.main(__file__)
