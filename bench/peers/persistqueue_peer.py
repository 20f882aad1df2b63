"""persist-queue ``SQLiteAckQueue``: a library queue, the worker is our own loop."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import common
from persistqueue import Empty, SQLiteAckQueue
from persistqueue.serializers import json as json_serializer

STATE = common.state_dir("persistqueue")
QDIR = STATE / "q"
POLL_S = 0.01  # blocking get() only wakes on a put in the same process, else ticks 10 s


def open_queue() -> SQLiteAckQueue:
    # auto_resume=True (default): unacked items of a dead consumer go back to ready
    # when the queue is opened. multithreading=True: one object shared by threads. JSON, not
    # persist-queue's default pickle: the same payload encoding as every other system here.
    return SQLiteAckQueue(
        str(QDIR), multithreading=True, auto_resume=True, serializer=json_serializer
    )


class PersistQueuePeer(common.Peer):
    name = "persistqueue"
    dists = ("persist-queue",)
    settings: ClassVar[dict[str, str]] = {
        "storage": "SQLite file, WAL, synchronous=FULL (SQLite default; no setting)",
        "batch": "none (put() commits each item)",
        "worker": "library only: our loop get(block=False)/run/ack, 1 consumer, 10 ms poll "
        "when empty",
        "recovery": "auto_resume=True (default): unacked items are made ready again when the "
        "queue is reopened",
    }
    recovery_s = 0.0

    def __init__(self) -> None:
        self._q: SQLiteAckQueue | None = None

    def open_producer(self) -> Any:
        if self._q is None:
            self._q = open_queue()
        return self._q

    def enqueue_sync(self, prod: Any, spec: common.Spec) -> None:
        prod.put(spec)

    def worker_argv(self, crash: bool) -> list[str]:
        return self.self_worker_argv()

    def run_worker(self, crash: bool) -> None:
        q = open_queue()
        while True:
            try:
                item = q.get(block=False)
            except Empty:
                time.sleep(POLL_S)
                continue
            common.run_job_sync(*item)
            q.ack(item)


PEER = PersistQueuePeer()

if __name__ == "__main__":
    common.main(__file__)
