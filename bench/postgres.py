"""conveyor on PostgreSQL, side by side with procrastinate on the same server, in one run.

    sudo .venv-bench/bin/python bench/postgres.py [--jobs 50000] [--workers 64] [--peer-jobs 5000]

Prints one table: ``enqueue_many`` and single enqueues (1 and 100 producers); the drain of
``--jobs`` no-op jobs by one queue in this process (straight to the server), and by 1 and by 3
worker hosts (network namespaces, each a ``conveyor worker`` process with ``--workers`` slots,
reaching the server through a ``socat`` relay); enqueue to start latency across hosts (p50,
p99); and procrastinate's drain of ``--peer-jobs`` jobs at concurrency 1 (its default), 10
and ``--workers`` (when procrastinate is installed, as in the bench virtualenv). Run by hand on
a quiet machine, as root; never in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import psycopg
import trio

import conveyor

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

from netns import missing_tools, network_host, start_worker  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/test"
SCHEMA = "bench_conveyor"
PEER_SCHEMA = "bench_procrastinate"
Q_UNFINISHED = (
    f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.jobs WHERE status = 'pending' AND scheduled = 0) "
    f"OR EXISTS (SELECT 1 FROM {SCHEMA}.jobs WHERE status = 'running')"
)


def reset(schema: str) -> None:
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def url() -> str:
    return f"{SERVER}?schema={SCHEMA}"


async def bulk(jobs: int) -> float:
    reset(SCHEMA)
    async with conveyor.open_queue(url(), known_handlers=["noop"]) as queue:
        specs = [conveyor.JobSpec("noop", {"n": n}, delay=3600) for n in range(jobs)]
        start = time.perf_counter()
        for chunk in range(0, jobs, 10_000):
            await queue.enqueue_many(specs[chunk : chunk + 10_000])
        return jobs / (time.perf_counter() - start)


async def single(jobs: int, producers: int) -> float:
    reset(SCHEMA)
    async with conveyor.open_queue(url(), known_handlers=["noop"]) as queue:

        async def produce(count: int) -> None:
            for n in range(count):
                await queue.enqueue("noop", {"n": n}, delay=3600)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(producers):
                nursery.start_soon(produce, jobs // producers)
        return jobs / (time.perf_counter() - start)


async def drain(jobs: int, hosts: int, workers: int, scratch: Path) -> float:
    """Enqueue ``jobs``, then start ``hosts`` worker hosts and time them until all ran."""
    reset(SCHEMA)
    async with conveyor.open_queue(url(), known_handlers=["noop"], workers=0) as queue:
        for chunk in range(0, jobs, 10_000):
            await queue.enqueue_many([conveyor.JobSpec("noop")] * min(10_000, jobs - chunk))
        # Paused until every host is up, so that their start-up is not timed.
        await queue.pause("noop")
        with ExitStack() as stack:
            made = [stack.enter_context(network_host(index + 1)) for index in range(hosts)]
            for host in made:
                start_worker(host, SCHEMA, scratch, workers=workers, handlers=_NOOP, path=HERE)
            start = time.perf_counter()
            await queue.resume("noop")
            # Polled: the other processes' progress is what is measured. (A cheap look, on
            # the partial indexes: counting by status would load the server being measured.)
            with psycopg.connect(SERVER, autocommit=True) as look:
                while look.execute(Q_UNFINISHED).fetchone() != (False,):  # noqa: ASYNC110
                    await trio.sleep(0.02)
            return jobs / (time.perf_counter() - start)


_NOOP = "noop_handlers:registry"


async def drain_here(jobs: int, workers: int) -> float:
    """The drain by a queue in this process, reaching the server directly (no relay)."""
    reset(SCHEMA)
    registry = conveyor.Registry()
    registry.handler("noop")(_noop)
    async with conveyor.open_queue(url(), known_handlers=["noop"], workers=0) as queue:
        for chunk in range(0, jobs, 10_000):
            await queue.enqueue_many([conveyor.JobSpec("noop")] * min(10_000, jobs - chunk))
    async with conveyor.open_queue(url(), handlers=registry, workers=workers):
        start = time.perf_counter()
        with psycopg.connect(SERVER, autocommit=True) as look:
            while look.execute(Q_UNFINISHED).fetchone() != (False,):  # noqa: ASYNC110
                await trio.sleep(0.02)
        return jobs / (time.perf_counter() - start)


async def _noop(payload: object) -> None:
    return None


async def latency(samples: int, scratch: Path) -> tuple[float, float]:
    """Enqueue one job at a time, paced, into an idle worker host; started_at - created_at."""
    reset(SCHEMA)
    async with conveyor.open_queue(url(), known_handlers=["noop"], workers=0) as queue:
        with network_host(1) as host:
            start_worker(host, SCHEMA, scratch, workers=4, handlers=_NOOP, path=HERE)
            waits: list[float] = []
            for _ in range(samples):
                job = await queue.enqueue("noop")
                done = await queue.wait(job.id, timeout=30)
                assert done.started_at is not None
                waits.append(done.started_at - done.created_at)
                await trio.sleep(0.02)
    waits.sort()
    return waits[len(waits) // 2] * 1000, waits[int(len(waits) * 0.99) - 1] * 1000


def procrastinate_drain(jobs: int, concurrency: int) -> float | None:
    try:
        import procrastinate
    except ImportError:
        return None
    reset(PEER_SCHEMA)
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {PEER_SCHEMA}")
    conninfo = f"{SERVER}?options=-csearch_path%3D{PEER_SCHEMA}"
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async def run() -> float:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            for chunk in range(0, jobs, 1000):
                await noop.batch_defer_async(*[{}] * min(1000, jobs - chunk))
            start = time.perf_counter()
            worker = asyncio.create_task(app.run_worker_async(concurrency=concurrency, wait=False))
            await worker
            return jobs / (time.perf_counter() - start)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--peer-jobs", type=int, default=5_000)
    args = parser.parse_args()
    reason = missing_tools()
    if reason is not None:
        sys.exit(f"cannot make worker hosts: {reason}")
    rows: list[tuple[str, str]] = []

    def row(what: str, value: str) -> None:
        rows.append((what, value))
        print(f"{what:<64} {value}", flush=True)

    def measure(function: Callable[..., object], *arguments: object) -> object:
        return trio.run(function, *arguments)

    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)
        row(f"enqueue_many of {args.jobs:,} specs, jobs/s", f"{measure(bulk, args.jobs):,.0f}")
        row("single enqueue, 1 producer, jobs/s", f"{measure(single, 2_000, 1):,.0f}")
        row("single enqueue, 100 producers, jobs/s", f"{measure(single, 20_000, 100):,.0f}")
        rate = measure(drain_here, args.jobs, args.workers)
        row(
            f"drain of {args.jobs:,}, 1 process here x {args.workers} workers, jobs/s",
            f"{rate:,.0f}",
        )
        for hosts in (1, 3):
            rate = measure(drain, args.jobs, hosts, args.workers, where)
            row(
                f"drain of {args.jobs:,}, {hosts} host(s) x {args.workers} workers, jobs/s",
                f"{rate:,.0f}",
            )
        p50, p99 = measure(latency, 300, where)  # type: ignore[misc]
        row("enqueue -> start across hosts, p50 / p99 ms", f"{p50:.2f} / {p99:.2f}")
    for concurrency in (1, 10, args.workers):
        rate = procrastinate_drain(args.peer_jobs, concurrency)
        shown = "not installed (use the bench virtualenv)" if rate is None else f"{rate:,.0f}"
        row(f"procrastinate drain of {args.peer_jobs:,}, concurrency {concurrency}, jobs/s", shown)
    print()
    print("| measure | value |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
