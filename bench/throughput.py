"""conveyor's own speed and memory, embedded on SQLite. Run by hand, never in CI.

    .venv/bin/python bench/throughput.py [--quick] [--only ROW,ROW]

Prints one table: enqueue_many jobs/s, single enqueue jobs/s from 1 and 100 producers, drain of
no-op jobs with 8 workers (async on trio at synchronous normal and full, async on asyncio, sync
handlers in threads), enqueue-to-start latency p50/p99 at idle, a 10,000-step fan-out/fan-in
workflow, 1,000 schedules ticking every second (and idle), the cost of one claim in a file
of 1,000,000 pending jobs half of which are scheduled for later, and the peak RSS of a process
that runs jobs from that file; handlers in worker processes (``process=True``): the time per
no-op job with one worker, and 1,000 CPU-bound jobs of ~20 ms on as many workers as cores,
against the same jobs in threads. Every row also prints the CPU time per job where it means one.

Before and after a change, in one run: ``PYTHONPATH=<old checkout>/src`` runs the same rows on
the old code (only the public API is used, but for the claim row, which times
``Writer.claim`` of either version directly).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.from_thread

import conveyor

T = TypeVar("T")

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
        await anyio.sleep_forever()

    return registry


def counting_registry(jobs: int, done: anyio.Event, *, sync: bool) -> conveyor.Registry:
    """A no-op handler that sets ``done`` once it has run ``jobs`` times."""
    registry = conveyor.Registry()
    lock = threading.Lock()
    count = 0

    def note() -> bool:
        nonlocal count
        with lock:
            count += 1
            return count == jobs

    if sync:

        @registry.handler("noop")
        def noop_sync(payload: object) -> None:
            if note():
                anyio.from_thread.run_sync(done.set)

    else:

        @registry.handler("noop")
        async def noop(payload: object) -> None:
            if note():
                done.set()

    return registry


def process_noop(payload: object) -> None:
    """A no-op handler for ``process=True``: at the top level, so a worker imports it."""


def burn(iterations: int) -> int:
    """CPU-bound work (the GIL held throughout): ``iterations`` rounds of arithmetic."""
    total = 0
    for n in range(iterations):
        total = (total + n * n) % 1_000_003
    return total


def iterations_for(seconds: float) -> int:
    """How many rounds of :func:`burn` take ``seconds`` here (the fastest of 5 tries)."""
    probe = 100_000
    best = min(_timed(burn, probe) for _ in range(5))
    return max(int(probe * seconds / best), 1)


def _timed(function: Callable[[int], object], argument: int) -> float:
    start = time.perf_counter()
    function(argument)
    return time.perf_counter() - start


def process_registry(process: bool) -> conveyor.Registry:
    """``noop`` and ``burn``, in worker processes or in threads. The functions are taken from
    this file imported as a module: a worker process cannot import ``__main__`` by name."""
    this = importlib.import_module(Path(__file__).stem)
    registry = conveyor.Registry()
    registry.handler("noop", process=process)(this.process_noop)
    registry.handler("burn", process=process)(this.burn)
    return registry


async def bench_process(
    db: Path, name: str, payload: int, jobs: int, workers: int, process: bool
) -> float:
    """Seconds for ``workers`` to drain ``jobs`` ready ``name`` jobs, from the enqueue to the
    last one's end; the workers (and their processes) are started by a first round of jobs."""
    registry = process_registry(process)
    async with conveyor.open_queue(db, handlers=registry, workers=workers) as queue:
        warm = await queue.enqueue_many([conveyor.JobSpec("noop") for _ in range(workers * 2)])
        await queue.wait_all([job.id for job in warm], timeout=60)
        start = time.perf_counter()
        batch = await queue.enqueue_many([conveyor.JobSpec(name, payload) for _ in range(jobs)])
        done = await queue.wait_all([job.id for job in batch], timeout=3600)
        elapsed = time.perf_counter() - start
    assert all(job.status is conveyor.JobStatus.COMPLETED for job in done)
    return elapsed


async def bench_enqueue_many(db: Path, jobs: int, sync: str) -> float:
    specs = [conveyor.JobSpec("noop", {"n": n}, delay=3600) for n in range(jobs)]
    async with conveyor.open_queue(db, handlers=idle_registry(), synchronous=sync) as queue:
        start = time.perf_counter()
        for chunk in range(0, jobs, 10_000):
            await queue.enqueue_many(specs[chunk : chunk + 10_000])
        return jobs / (time.perf_counter() - start)


async def bench_single(db: Path, jobs: int, producers: int, sync: str) -> float:
    async with conveyor.open_queue(db, handlers=idle_registry(), synchronous=sync) as queue:

        async def produce(count: int) -> None:
            for n in range(count):
                await queue.enqueue("noop", {"n": n}, delay=3600)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(producers):
                tg.start_soon(produce, jobs // producers)
        return (jobs // producers * producers) / (time.perf_counter() - start)


async def fill_ready(db: Path, jobs: int) -> None:
    async with conveyor.open_queue(db, handlers=idle_registry(), shutdown_grace=0) as queue:
        for chunk in range(0, jobs, 10_000):
            size = min(10_000, jobs - chunk)
            await queue.enqueue_many([conveyor.JobSpec("noop", run_at=0) for _ in range(size)])


async def bench_drain(db: Path, jobs: int, sync: str, thread_handlers: bool) -> tuple[float, float]:
    """Jobs/s and CPU µs per job of a queue that drains ``jobs`` ready no-op jobs."""
    await fill_ready(db, jobs)
    done = anyio.Event()
    registry = counting_registry(jobs, done, sync=thread_handlers)
    start, cpu = time.perf_counter(), time.process_time()
    async with conveyor.open_queue(db, handlers=registry, workers=WORKERS, synchronous=sync):
        await done.wait()
    # Leaving the block waits for the last outcomes to be committed.
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return jobs / elapsed, cpu / jobs * 1e6


async def bench_latency(db: Path, rate: float, seconds: float, sync: str) -> tuple[float, float]:
    """p50 and p99 of enqueue-to-start in ms, jobs offered at ``rate`` per second."""
    count = max(int(rate * seconds), 50)
    enqueued: dict[int, float] = {}
    started: dict[int, float] = {}
    all_started = anyio.Event()
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: int) -> None:
        started[payload] = time.perf_counter()
        if len(started) == count:
            all_started.set()

    async with conveyor.open_queue(
        db, handlers=registry, workers=WORKERS, synchronous=sync
    ) as queue:
        begin = anyio.current_time()

        async def offer(n: int) -> None:
            enqueued[n] = time.perf_counter()
            await queue.enqueue("noop", n)

        async with anyio.create_task_group() as tg:
            for n in range(count):
                await anyio.sleep_until(begin + n / rate)
                tg.start_soon(offer, n)
        with anyio.fail_after(60):
            await all_started.wait()
    latencies = sorted((started[n] - enqueued[n]) * 1000 for n in range(count))
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


async def fill_half_scheduled(db: Path, pending: int) -> None:
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


def claim_cost_us(db: Path) -> tuple[float, float]:
    """µs per claim of 8 jobs: the first claims of the file, then after half the due jobs."""
    from conveyor._storage.sqlite import Writer

    writer = Writer(str(db))
    try:

        def claims(count: int) -> float:
            start = time.perf_counter()
            for _ in range(count):
                writer.begin()
                writer.claim(WORKERS, time.time())
                writer.commit()
            return (time.perf_counter() - start) / count * 1e6

        first = claims(200)
        due = writer._conn.execute("SELECT count(*) FROM jobs WHERE run_at <= 1").fetchone()[0]
        for _ in range(due // 2 // 1000):
            writer.begin()
            writer.claim(1000, time.time())
            writer.commit()
        return first, claims(200)
    finally:
        writer.close()


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


def run(backend: str, function: Callable[..., Awaitable[T]], *args: object) -> T:
    return anyio.run(function, *args, backend=backend)


async def bench_workflow(db: Path, fan: int) -> tuple[float, float]:
    """Seconds to store a fan-out/fan-in workflow (one root, ``fan`` steps after it, one last
    step after all of them), and jobs/s from that store to the last step's completion."""
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: object) -> None:
        pass

    flow = conveyor.Workflow()
    root = flow.add("noop")
    middle = [flow.add("noop", after=[root]) for _ in range(fan)]
    flow.add("noop", after=middle)
    async with conveyor.open_queue(db, handlers=registry, workers=WORKERS) as queue:
        start = time.perf_counter()
        jobs = await queue.enqueue_workflow(flow)
        stored = time.perf_counter()
        await queue.wait(jobs[-1].id, timeout=600)
        done = time.perf_counter()
    return stored - start, (fan + 2) / (done - start)


async def bench_schedules(
    db: Path, count: int, every: float, seconds: float
) -> tuple[float, float]:
    """Ticks/s and process CPU µs per tick for ``count`` schedules ticking every ``every`` s,
    over ``seconds`` of wall time (ticks of no-op jobs, run as they come)."""
    registry = conveyor.Registry()
    ticks = 0

    @registry.handler("noop")
    async def noop(payload: object) -> None:
        nonlocal ticks
        ticks += 1

    async with conveyor.open_queue(db, handlers=registry, workers=WORKERS) as queue:
        for n in range(count):
            await queue.schedule(f"s{n}", "noop", every=every)
        ticks = 0
        cpu = time.process_time()
        await anyio.sleep(seconds)
        cpu = time.process_time() - cpu
    return ticks / seconds, cpu / max(ticks, 1) * 1e6


async def bench_idle_schedules(db: Path, count: int, seconds: float) -> float:
    """Process CPU, % of one core, of a queue holding ``count`` schedules none of which is
    due: what the timer costs while it waits."""
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: object) -> None:
        pass

    async with conveyor.open_queue(db, handlers=registry, workers=WORKERS) as queue:
        for n in range(count):
            await queue.schedule(f"s{n}", "noop", every=86400)
        cpu = time.process_time()
        await anyio.sleep(seconds)
        return (time.process_time() - cpu) / seconds * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", default="", help="comma-separated row names (default: all)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    only = set(filter(None, args.only.split(",")))

    def wanted(name: str) -> bool:
        return not only or name in only

    def row(label: str, value: str) -> None:
        print(f"{label:<66} {value}", flush=True)

    drain_jobs = 50_000 // scale
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        directory = Path(tmp)
        if wanted("bulk"):
            db = fresh_db(directory, "bulk")
            bulk = run("trio", bench_enqueue_many, db, 50_000 // scale, "normal")
            row("enqueue_many of 50,000 prepared specs, jobs/s", f"{bulk:,.0f}")
        if wanted("single"):
            db = fresh_db(directory, "one")
            one = run("trio", bench_single, db, 10_000 // scale, 1, "normal")
            row("enqueue, 1 producer, jobs/s", f"{one:,.0f}")
            many = run(
                "trio", bench_single, fresh_db(directory, "many"), 50_000 // scale, 100, "normal"
            )
            row("enqueue, 100 producers, jobs/s", f"{many:,.0f}")
        drains = [
            ("drain", "trio", "normal", False, "async on trio"),
            ("drain-full", "trio", "full", False, "async on trio, synchronous=full"),
            ("drain-asyncio", "asyncio", "normal", False, "async on asyncio"),
            ("drain-threads", "trio", "normal", True, "sync handlers in threads, trio"),
        ]
        for name, backend, sync, threads, label in drains:
            if wanted(name):
                db = fresh_db(directory, name)
                rate, cpu = run(backend, bench_drain, db, drain_jobs, sync, threads)
                row(f"drain, {WORKERS} workers, no-op, {label}, jobs/s", f"{rate:,.0f}")
                row("    CPU time per job, µs (both threads)", f"{cpu:.0f}")
        if wanted("latency"):
            db = fresh_db(directory, "latency")
            p50, p99 = run("trio", bench_latency, db, 100.0, 5 / scale**0.5, "normal")
            row(
                "latency enqueue->start at 100 jobs/s (idle), p50 / p99 ms",
                f"{p50:.2f} / {p99:.2f}",
            )
        if wanted("workflow"):
            fan = 10_000 // scale
            stored, rate = run("trio", bench_workflow, fresh_db(directory, "workflow"), fan)
            row(f"workflow 1 -> {fan:,} -> 1: enqueue_workflow, s", f"{stored:.2f}")
            row("    drained, jobs/s (from the enqueue to the last step's end)", f"{rate:,.0f}")
        if wanted("schedules"):
            count = 1000 // scale
            rate, cpu = run("trio", bench_schedules, fresh_db(directory, "sched"), count, 1.0, 10)
            row(f"{count:,} schedules every 1 s: ticks/s", f"{rate:,.0f}")
            row("    CPU per tick (enqueue, run, complete), µs", f"{cpu:.0f}")
            idle = run("trio", bench_idle_schedules, fresh_db(directory, "idle"), count, 10)
            row(f"{count:,} schedules, none due: CPU of one core, %", f"{idle:.2f}")
        if wanted("million"):
            pending = 1_000_000 // scale
            db = fresh_db(directory, "million")
            run("trio", fill_half_scheduled, db, pending)
            first, later = claim_cost_us(db)
            row(
                f"claim of {WORKERS} in {pending:,} pending (half scheduled), µs: first / later",
                f"{first:.0f} / {later:.0f}",
            )
            db = fresh_db(directory, "rss")
            run("trio", fill_half_scheduled, db, pending)
            rss = peak_rss_mb(db, pending)
            row(f"peak RSS running jobs with {pending:,} pending, MB", f"{rss:.0f}")
        if wanted("process"):
            noops = 2_000 // scale
            per_job = {}
            for process in (True, False):
                db = fresh_db(directory, f"noop-{process}")
                elapsed = run("trio", bench_process, db, "noop", None, noops, 1, process)
                per_job[process] = elapsed / noops * 1e6
            row(
                "process=True no-op, 1 worker: µs per job (in a thread instead)",
                f"{per_job[True]:,.0f} ({per_job[False]:,.0f})",
            )
            cores = os.cpu_count() or 1
            cpu_jobs = 1_000 // scale
            rounds = iterations_for(0.020)
            took = {}
            for process in (True, False):
                db = fresh_db(directory, f"cpu-{process}")
                took[process] = run(
                    "trio", bench_process, db, "burn", rounds, cpu_jobs, cores, process
                )
            row(
                f"{cpu_jobs:,} CPU jobs of ~20 ms, {cores} workers: s in processes / in threads",
                f"{took[True]:.2f} / {took[False]:.2f} ({took[False] / took[True]:.2f}x)",
            )


if __name__ == "__main__":
    main()
