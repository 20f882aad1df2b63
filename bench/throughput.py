"""conveyor's own speed and memory, embedded on SQLite (issue #2). Run by hand, never in CI.

    .venv/bin/python bench/throughput.py [--quick] [--synchronous normal|full]

Prints one table: enqueue_many jobs/s, single enqueue jobs/s from 1 and from 100 concurrent
producers, drain jobs/s of no-op async jobs with 8 workers, enqueue-to-start latency p50/p99
at idle and at half the measured drain rate, and peak RSS of a process that runs jobs from a
file holding 1,000,000 (and, for comparison, 10,000) pending jobs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

import conveyor

WORKERS = 8


def fresh_db(directory: Path, name: str) -> Path:
    path = directory / f"{name}.db"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def idle_registry() -> conveyor.Registry:
    """For a process that only fills the file: its jobs never finish, and leaving the queue
    (with no grace) returns them to pending untouched."""
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: object) -> None:
        await trio.sleep_forever()

    return registry


def noop_registry(on_start: Callable[[float], None] | None = None) -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: object) -> None:
        if on_start is not None:
            on_start(time.time())

    return registry


async def bench_enqueue_many(db: Path, jobs: int, sync: str) -> float:
    specs = [conveyor.JobSpec("noop", {"n": n}, delay=3600) for n in range(jobs)]
    async with conveyor.open_queue(db, handlers=noop_registry(), synchronous=sync) as queue:
        start = time.perf_counter()
        for chunk in range(0, jobs, 10_000):
            await queue.enqueue_many(specs[chunk : chunk + 10_000])
        return jobs / (time.perf_counter() - start)


async def bench_single(db: Path, jobs: int, producers: int, sync: str) -> float:
    async with conveyor.open_queue(db, handlers=noop_registry(), synchronous=sync) as queue:

        async def produce(count: int) -> None:
            for n in range(count):
                await queue.enqueue("noop", {"n": n}, delay=3600)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(producers):
                nursery.start_soon(produce, jobs // producers)
        return (jobs // producers * producers) / (time.perf_counter() - start)


async def bench_drain(db: Path, jobs: int, sync: str) -> float:
    async with conveyor.open_queue(
        db, handlers=idle_registry(), synchronous=sync, shutdown_grace=0
    ) as queue:
        for chunk in range(0, jobs, 10_000):
            size = min(10_000, jobs - chunk)
            await queue.enqueue_many([conveyor.JobSpec("noop", run_at=0) for _ in range(size)])
    all_started = trio.Event()
    started = 0

    def count(_: float) -> None:
        nonlocal started
        started += 1
        if started == jobs:
            all_started.set()

    start = time.perf_counter()
    async with conveyor.open_queue(
        db, handlers=noop_registry(count), workers=WORKERS, synchronous=sync
    ):
        await all_started.wait()
    # Leaving the block waits for the last outcomes to be committed.
    return jobs / (time.perf_counter() - start)


async def bench_latency(db: Path, rate: float, seconds: float, sync: str) -> tuple[float, float]:
    """p50 and p99 of enqueue-to-start in ms, jobs offered at ``rate`` per second."""
    count = max(int(rate * seconds), 50)
    enqueued: dict[int, float] = {}
    started: dict[int, float] = {}
    all_started = trio.Event()
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: int) -> None:
        started[payload] = time.time()
        if len(started) == count:
            all_started.set()

    async with conveyor.open_queue(
        db, handlers=registry, workers=WORKERS, synchronous=sync
    ) as queue:
        begin = trio.current_time()

        async def offer(n: int) -> None:
            enqueued[n] = time.time()
            await queue.enqueue("noop", n)

        async with trio.open_nursery() as nursery:
            for n in range(count):
                await trio.sleep_until(begin + n / rate)
                nursery.start_soon(offer, n)
        with trio.fail_after(60):
            await all_started.wait()
    latencies = sorted((started[n] - enqueued[n]) * 1000 for n in range(count))
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


def peak_rss_mb(db: Path, pending: int) -> float:
    """Peak RSS of a fresh process that opens ``db`` (``pending`` jobs, half of them due) and
    runs a fifth of them, at most 20,000."""
    run = min(20_000, pending // 5)
    code = f"""
import trio, conveyor
registry = conveyor.Registry()
done = 0
@registry.handler("noop")
async def noop(payload):
    global done
    done += 1
async def main():
    async with conveyor.open_queue({str(db)!r}, handlers=registry, workers={WORKERS}):
        while done < {run}:
            await trio.sleep(0.05)
trio.run(main)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the forking parent.
status = open("/proc/self/status").read()
print(int(status.split("VmHWM:")[1].split()[0]) / 1024)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return float(out.strip().splitlines()[-1])


async def fill(db: Path, pending: int) -> None:
    async with conveyor.open_queue(db, handlers=idle_registry(), shutdown_grace=0) as queue:
        for chunk in range(0, pending, 50_000):
            size = min(50_000, pending - chunk)
            # Half are due now, half scheduled for later: the claim query must cope with both.
            await queue.enqueue_many(
                [
                    conveyor.JobSpec("noop", {"n": chunk + n}, run_at=0 if n % 2 else 4e9)
                    for n in range(size)
                ]
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal")
    args = parser.parse_args()
    sync = args.synchronous
    scale = 10 if args.quick else 1

    def row(label: str, value: str) -> None:
        print(f"{label:<62} {value}", flush=True)

    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        directory = Path(tmp)
        bulk = trio.run(bench_enqueue_many, fresh_db(directory, "bulk"), 200_000 // scale, sync)
        row("enqueue_many, jobs/s", f"{bulk:,.0f}")
        one = trio.run(bench_single, fresh_db(directory, "one"), 10_000 // scale, 1, sync)
        row("enqueue, 1 producer, jobs/s", f"{one:,.0f}")
        many = trio.run(bench_single, fresh_db(directory, "many"), 50_000 // scale, 100, sync)
        row("enqueue, 100 producers, jobs/s", f"{many:,.0f}")
        drain = trio.run(bench_drain, fresh_db(directory, "drain"), 50_000 // scale, sync)
        row(f"drain, {WORKERS} workers, no-op async jobs, jobs/s", f"{drain:,.0f}")
        seconds = 5 / scale**0.5
        for label, rate in (("100 jobs/s (idle)", 100.0), ("half the drain rate", drain / 2)):
            db = fresh_db(directory, "latency")
            p50, p99 = trio.run(bench_latency, db, rate, seconds, sync)
            row(f"latency enqueue->start at {label}, p50 / p99 ms", f"{p50:.2f} / {p99:.2f}")
        for pending in (10_000, 1_000_000 // scale):
            db = fresh_db(directory, f"rss{pending}")
            trio.run(fill, db, pending)
            rss = peak_rss_mb(db, pending)
            row(f"peak RSS running jobs with {pending:,} pending, MB", f"{rss:.0f}")
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nsynchronous={sync}; this process's peak RSS {own_rss:.0f} MB")


if __name__ == "__main__":
    main()
