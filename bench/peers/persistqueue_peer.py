"""persist-queue ``SQLiteAckQueue``: a library queue, the worker is our own loop."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import common
from persistqueue import Empty, SQLiteAckQueue
from persistqueue.serializers import json as json_serializer

STATE = common.state_dir("persistqueue")
QDIR = STATE / "q"
TUNED = common.tuned()
# blocking get() only wakes on a put in the same process, else ticks 10 s: our loop polls
POLL_S = 0.001 if TUNED else 0.01
# Acked items stay in the table (status "acked") until clear_acked_data() deletes them, and
# get() steps over them from the oldest row: the drain slows as they pile up.  Tuned: the
# worker clears them every CLEAR_EVERY acks (clear_acked_data's defaults: delete up to
# 1,000, keep the latest 1,000).
CLEAR_EVERY = 1000 if TUNED else 0


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
        "worker": f"library only: our loop get(block=False)/run/ack, 1 consumer, "
        f"{POLL_S * 1000:g} ms poll when empty"
        + (f", clear_acked_data() every {CLEAR_EVERY:,} acks" if CLEAR_EVERY else ""),
        "recovery": "auto_resume=True (default): unacked items are made ready again when the "
        "queue is reopened",
    }
    tuning: ClassVar[str] = (
        "clear_acked_data() every 1,000 acks (the README's ack-queue cleanup, issue #77: "
        "acked items stay in the table until it is called, and get() steps over them); our "
        "poll when empty 10 ms -> 1 ms (latency)"
    )
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
        acked = 0
        while True:
            try:
                item = q.get(block=False)
            except Empty:
                time.sleep(POLL_S)
                continue
            common.run_job_sync(*item)
            q.ack(item)
            acked += 1
            if CLEAR_EVERY and acked % CLEAR_EVERY == 0:
                q.clear_acked_data()


PEER = PersistQueuePeer()

if __name__ == "__main__":
    common.main(__file__)
