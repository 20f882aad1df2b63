"""Many processes on one SQLite file. Run by hand, never in CI.

    .venv/bin/python bench/processes.py [--jobs 50000] [--quick]

Prints: the drain of ``--jobs`` no-op jobs by 1, 2 and 4 worker processes (each with 8 worker
slots; the jobs are enqueued by this process, a producer, as the workers run); single enqueues/s
from 4 producer processes at once (each awaiting one enqueue after the other); and the
enqueue-to-start latency across processes at idle (a producer here, one worker process), p50 and
p99 over 200 jobs enqueued 20 ms apart.

The same file is the child: ``processes.py worker DB`` and ``processes.py produce DB N``.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

import conveyor

registry = conveyor.Registry()


@registry.handler
async def noop(payload: object) -> None:
    return None


async def worker(db: str) -> None:
    async with conveyor.open_queue(db, handlers=registry, workers=8):
        print("ready", flush=True)
        await trio.sleep_forever()


async def produce(db: str, count: int) -> None:
    async with conveyor.open_queue(db, known_handlers=["noop"]) as queue:
        began = time.perf_counter()
        for n in range(count):
            await queue.enqueue("noop", {"n": n})
        print(f"{time.perf_counter() - began}", flush=True)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)


def start_workers(db: Path, count: int) -> list[subprocess.Popen[str]]:
    workers = [spawn("worker", str(db)) for _ in range(count)]
    for child in workers:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    return workers


def stop(children: list[subprocess.Popen[str]]) -> None:
    for child in children:
        child.terminate()
    for child in children:
        child.wait()


def completed(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        count: int = conn.execute(
            "SELECT count(*) FROM jobs WHERE status = 'completed'"
        ).fetchone()[0]
        return count
    finally:
        conn.close()


def drain(directory: Path, processes: int, jobs: int) -> float:
    db = directory / f"drain-{processes}.db"
    workers = start_workers(db, processes)
    try:

        async def enqueue() -> float:
            async with conveyor.open_queue(db, known_handlers=["noop"]) as queue:
                began = time.perf_counter()
                for start in range(0, jobs, 5000):
                    await queue.enqueue_many(
                        [conveyor.JobSpec("noop", {"n": n}) for n in range(start, start + 5000)]
                    )
                while completed(db) < jobs:  # noqa: ASYNC110 (other processes do the work)
                    await trio.sleep(0.02)
                return jobs / (time.perf_counter() - began)

        return trio.run(enqueue)
    finally:
        stop(workers)


def enqueue_from_producers(directory: Path, producers: int, each: int) -> float:
    db = directory / "enqueue.db"
    # Declare the handler once, as a worker would have, then leave the producers alone.
    stop(start_workers(db, 1))
    children = [spawn("produce", str(db), str(each)) for _ in range(producers)]
    seconds = []
    for child in children:
        out, _ = child.communicate()
        seconds.append(float(out.strip()))
    return producers * each / max(seconds)


def latency(directory: Path, samples: int) -> tuple[float, float]:
    db = directory / "latency.db"
    workers = start_workers(db, 1)
    try:

        async def measure() -> list[float]:
            async with conveyor.open_queue(db, known_handlers=["noop"]) as queue:
                ids = []
                for n in range(samples):
                    ids.append((await queue.enqueue("noop", {"n": n})).id)
                    await trio.sleep(0.02)
                done = await queue.wait_all(ids, timeout=60)
                return [(job.started_at or 0.0) - job.created_at for job in done]

        waits = sorted(trio.run(measure))
        p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
        return statistics.median(waits) * 1000, p99 * 1000
    finally:
        stop(workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs per drain")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    jobs = 5000 if args.quick else args.jobs
    with tempfile.TemporaryDirectory(prefix="conveyor-processes-") as tmp:
        directory = Path(tmp)
        for processes in (1, 2, 4):
            rate = drain(directory, processes, jobs)
            print(f"drain of {jobs:,} no-op jobs, {processes} worker processes: {rate:,.0f} jobs/s")
        each = 500 if args.quick else 2000
        rate = enqueue_from_producers(directory, 4, each)
        print(f"single enqueues from 4 producer processes at once: {rate:,.0f} jobs/s")
        p50, p99 = latency(directory, 50 if args.quick else 200)
        print(f"enqueue -> start across processes at idle: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "worker":
        trio.run(worker, sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "produce":
        trio.run(produce, sys.argv[2], int(sys.argv[3]))
    else:
        main()
