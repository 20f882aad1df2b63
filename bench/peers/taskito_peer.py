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
TUNED = common.tuned()
# A running job whose timeout passed is "stale" and reaped by the scheduler (every
# scheduler_reap_interval = 100 polls); default timeout 300 s, shortened for the crash test.
JOB_TIMEOUT_S = 2 if CRASH else 300

# Default row: the defaults otherwise (quickstart): the scheduler polls every 50 ms and
# claims one job per poll round (~70 jobs/s here).  Tuned row: TaskitoPeer.tuning.
POLL_MS = 1 if TUNED else 50
BATCH = 64 if TUNED else 1
queue = Queue(
    db_path=str(DB),
    workers=0,  # 0 = one worker thread per CPU
    scheduler_poll_interval_ms=POLL_MS,
    scheduler_batch_size=BATCH,
)


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
        f"scheduler poll {POLL_MS} ms, batch {BATCH}"
        + (", log level WARNING" if TUNED else " (defaults)"),
        "recovery": "stale-job reaper: job timeout shortened 300 s -> 2 s, max_retries=3",
    }
    tuning: ClassVar[str] = (
        "scheduler_poll_interval_ms 50 -> 1 (Queue docs: lower values improve scheduling "
        "precision at the cost of CPU); scheduler_batch_size 1 -> 64 (docs: higher values "
        "batch-claim for greater throughput); TASKITO_LOG_LEVEL=WARNING (the level "
        "taskito.log_config documents: no INFO line per task).  push_dispatch would wake "
        "the scheduler on enqueue, but this wheel lacks its cargo feature (it logs so and "
        "keeps polling)"
    )
    recovery_s = 5.0

    def worker_argv(self, crash: bool) -> list[str]:
        return [common.venv_bin("taskito"), "worker", "--app", "taskito_peer:queue"]

    def worker_env(self, crash: bool) -> dict[str, str]:
        return super().worker_env(crash) | ({"TASKITO_LOG_LEVEL": "WARNING"} if TUNED else {})

    def enqueue_sync(self, prod: Any, spec: common.Spec) -> None:
        job.delay(*spec)

    def bulk_sync(self, prod: Any, specs: Sequence[common.Spec]) -> None:
        # enqueue_many does not apply the task's timeout (the jobs would get 300 s)
        queue.enqueue_many(job.name, [tuple(s) for s in specs], timeout=JOB_TIMEOUT_S)


PEER = TaskitoPeer()

if __name__ == "__main__":
    common.main(__file__)
