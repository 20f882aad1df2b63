"""litequeue ``LiteQueue`` (embedded SQLite): a library queue, the worker is our own loop."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import common
from litequeue import LiteQueue

STATE = common.state_dir("litequeue")
DB = STATE / "litequeue.db"
POLL_S = 0.001 if common.tuned() else 0.01  # our loop's sleep when the queue is empty
LOCK_TIMEOUT_S = 2  # locked longer than this = its consumer died (jobs take 5 ms)


class LiteQueuePeer(common.Peer):
    name = "litequeue"
    dists = ("litequeue",)
    settings: ClassVar[dict[str, str]] = {
        "storage": "SQLite file, WAL, synchronous=NORMAL (hard-coded by litequeue)",
        "batch": "put() calls inside LiteQueue.transaction() (one commit per 1,000)",
        "worker": f"library only: our loop pop()/run/done(), 1 consumer, {POLL_S * 1000:g} ms "
        "poll when empty",
        "recovery": f"documented list_locked(threshold)+retry(): every 1 s, messages locked "
        f"> {LOCK_TIMEOUT_S} s are made ready again",
    }
    tuning: ClassVar[str] = (
        "our poll when empty 10 ms -> 1 ms (latency).  litequeue documents nothing else that "
        "bears on the drain: its options are the file, maxsize, the table name and SQLite's "
        "cache size, and pop() sorts the ready messages by message_id each time (prune() "
        "removes only done ones; it did not help here)"
    )
    recovery_s = LOCK_TIMEOUT_S + 1

    def open_producer(self) -> Any:
        return LiteQueue(str(DB))  # one connection per producer thread

    def close_producer(self, prod: Any) -> None:
        prod.close()

    def enqueue_sync(self, prod: Any, spec: common.Spec) -> None:
        prod.put(json.dumps(spec))

    def bulk_sync(self, prod: Any, specs: Sequence[common.Spec]) -> None:
        with prod.transaction():
            for s in specs:
                prod.put(json.dumps(s))

    def worker_argv(self, crash: bool) -> list[str]:
        return self.self_worker_argv()

    def run_worker(self, crash: bool) -> None:
        q = LiteQueue(str(DB))
        next_reap = 0.0
        while True:
            now = time.monotonic()
            if now >= next_reap:
                for m in list(q.list_locked(LOCK_TIMEOUT_S)):
                    q.retry(m.message_id)
                next_reap = now + 1.0
            msg = q.pop()
            if msg is None:
                time.sleep(POLL_S)
                continue
            common.run_job_sync(*json.loads(msg.data))
            q.done(msg.message_id)


PEER = LiteQueuePeer()

if __name__ == "__main__":
    common.main(__file__)
