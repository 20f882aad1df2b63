"""huey with SqliteHuey (file storage), consumer = ``huey_consumer``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import common
from huey import SqliteHuey

STATE = common.state_dir("huey")
DB = STATE / "huey.db"
# the consumer's options; the tuned row's are explained by HueyPeer.tuning
TUNED = common.tuned()
CONSUMER_ARGS = (
    ["-k", "thread", "-w", "1", "-q", "-d", "0.001", "-m", "0.1"]
    if TUNED
    else ["-k", "process", "-w", "2"]
)

# fsync=None leaves SQLite's default synchronous=FULL in WAL mode (huey only offers
# fsync=True -> FULL or fsync=False -> OFF).
huey = SqliteHuey("bench", filename=str(DB), journal_mode="wal")


@huey.task()
def job(job_id: int, t_enq: float, sleep_s: float) -> None:
    common.run_job_sync(job_id, t_enq, sleep_s)


class HueyPeer(common.Peer):
    name = "huey"
    dists = ("huey",)
    settings: ClassVar[dict[str, str]] = {
        "storage": "SqliteHuey file, WAL, synchronous=FULL (huey's default; its fsync=False "
        "would mean OFF)",
        "batch": "none (one enqueue per call)",
        "worker": "huey_consumer "
        + " ".join(CONSUMER_ARGS)
        + ("" if TUNED else " (docs: processes for CPU-bound work, 1 per core)"),
        "recovery": "none: a task is deleted from the queue when dequeued, in-flight tasks die "
        "with the worker",
    }
    tuning: ClassVar[str] = (
        "-k process -w 2 -> -k thread -w 1 (consumer docs: thread workers for tasks neither "
        "CPU- nor IO-heavy; here more workers, threads or processes, contend for SQLite's "
        "write lock: 2 threads ~1.9k jobs/s, 1 thread ~2.7-3.1k); -q (only errors logged, "
        "not 2 lines per task); -d 0.001 -m 0.1 (polling interval when the queue is empty, "
        "default 0.1 s, and the cap of its backoff, default 10 s: for the latency measure)"
    )
    recovery_s = 0.0

    def worker_argv(self, crash: bool) -> list[str]:
        return [common.venv_bin("huey_consumer"), "huey_peer.huey", *CONSUMER_ARGS]

    def enqueue_sync(self, prod: Any, spec: common.Spec) -> None:
        job(*spec)

    def bulk_sync(self, prod: Any, specs: Sequence[common.Spec]) -> None:
        for s in specs:
            job(*s)


PEER = HueyPeer()

if __name__ == "__main__":
    common.main(__file__)
