"""The drain's floor on this machine: DESIGN §3's shape with nothing else. Run by hand.

    .venv/bin/python bench/drain_floor.py [--jobs 50000] [--slots 8] [--synchronous full]
                                          [--peers-job RECORDS] [--on-thread]

One trio task applies each batch on the event loop's thread (as conveyor does for small
batches): one transaction completes the attempts that ended and claims the best ready jobs for
the free slots only, with conveyor's own claim and completion statements, on a file that
conveyor's ``enqueue_many`` filled (so the same schema and indexes). ``--slots`` worker tasks
run the no-op handler and hand their outcomes back through a list and an event. There are no
``Job`` values, changes, listeners, cancel scopes, timeouts, limits, leases or progress: what
conveyor's drain (``bench/throughput.py --only drain``) costs beyond this figure is its own
Python, which is what to trim. Prints jobs/s, CPU µs a job and jobs a transaction.

``--peers-job`` runs the peers harness's job body instead of a no-op (``bench/peers/common.py``:
two lines appended to ``RECORDS`` a job): the most any queue of this shape could drain in
``run_all.py``'s drain measure, which also counts the worker's start-up. ``--on-thread`` runs
each transaction on a thread (``trio.to_thread``) while the worker tasks go on, instead of on
the loop.
"""

from __future__ import annotations

import argparse
import collections
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import conveyor
from conveyor._storage.sqlite import Q_CLAIM, Q_COMPLETE_ALL

OWNER = 1_000_000
"""The owner id the claims write and the completions check: no process's."""


async def fill(db: Path, jobs: int) -> None:
    """Fill ``db`` with ``jobs`` ready no-op jobs."""
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: object) -> None:
        await trio.sleep_forever()

    async with conveyor.open_queue(db, handlers=registry, workers=0) as queue:
        for start in range(0, jobs, 10_000):
            size = min(10_000, jobs - start)
            await queue.enqueue_many([conveyor.JobSpec("noop", run_at=0) for _ in range(size)])


def peers_job(records: Path) -> Callable[[Any], Awaitable[None]]:
    """The job body of the peers harness, recording into ``records``."""
    os.environ["PEERS_RECORD"] = str(records)
    sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
    import common  # bench/peers is not a package

    async def job(row: Any) -> None:
        await common.run_job_async(row[0], row[8], 0.0, trio.sleep)  # id, created_at

    return job


async def noop(row: Any) -> None:
    return None


async def drain(
    connection: sqlite3.Connection,
    jobs: int,
    slots: int,
    job: Callable[[Any], Awaitable[None]],
    on_thread: bool,
) -> None:
    ready: collections.deque[Any] = collections.deque()
    ended: list[tuple[int, int, str]] = []
    events = {"job": trio.Event(), "ended": trio.Event()}
    claim = Q_CLAIM.format(names="?")

    async def worker() -> None:
        while True:
            while not ready:
                await events["job"].wait()
            row = ready.popleft()
            await job(row)
            ended.append((row[0], row[5], "null"))
            events["ended"].set()

    def write(outcomes: list[tuple[int, int, str]], free: int, now: float) -> tuple[int, Any]:
        """One transaction: complete ``outcomes``, claim for ``free`` slots."""
        completed = 0
        connection.execute("BEGIN IMMEDIATE")
        if outcomes:
            statement = Q_COMPLETE_ALL.format(attempts=", ".join(["(?, ?, ?)"] * len(outcomes)))
            params = [value for outcome in outcomes for value in outcome]
            completed = len(connection.execute(statement, (now, *params, OWNER)).fetchall())
        rows = connection.execute(claim, (now, OWNER, "noop", free)).fetchall() if free else []
        connection.execute("COMMIT")
        return completed, rows

    claimed = done = transactions = 0
    async with trio.open_nursery() as nursery:
        for _ in range(slots):
            nursery.start_soon(worker)
        start, cpu = time.perf_counter(), time.process_time()
        while done < jobs:
            events["ended"] = trio.Event()
            now = time.time()
            outcomes, ended[:] = ended[:], []
            free = slots - (claimed - done - len(outcomes))
            if on_thread:
                completed, rows = await trio.to_thread.run_sync(write, outcomes, free, now)
            else:
                completed, rows = write(outcomes, free, now)
            done += completed
            transactions += 1
            claimed += len(rows)
            if rows:
                ready.extend(rows)
                events["job"].set()
                events["job"] = trio.Event()
            if done < jobs and not ended:
                await events["ended"].wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        nursery.cancel_scope.cancel()
    print(
        f"floor: drained {jobs:,} jobs with {slots} slots: {jobs / elapsed:,.0f} jobs/s, "
        f"{cpu / jobs * 1e6:.0f} µs CPU a job, {jobs / transactions:.1f} jobs a transaction"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal")
    parser.add_argument("--peers-job", type=Path, metavar="RECORDS")
    parser.add_argument("--on-thread", action="store_true")
    args = parser.parse_args()
    job = noop if args.peers_job is None else peers_job(args.peers_job)
    with tempfile.TemporaryDirectory() as directory:
        db = Path(directory) / "floor.db"
        trio.run(fill, db, args.jobs)
        connection = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA synchronous = {args.synchronous.upper()}")
        trio.run(drain, connection, args.jobs, args.slots, job, args.on_thread)
        connection.close()


if __name__ == "__main__":
    main()
