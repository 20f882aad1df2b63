"""procrastinate on PostgreSQL; the worker is ``App.run_worker_async`` (what the
``procrastinate worker`` command runs) plus, for the crash test, the documented
"retry stalled jobs" loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar

import common
import psycopg
from procrastinate import App, PsycopgConnector

SCHEMA = "peers_procrastinate"  # dropped and re-created before every run
CONNINFO = f"{common.PG_DSN}?options=-csearch_path%3D{SCHEMA}"
# procrastinate's default is 1; the tuned row runs sub-workers, as its docs advise for
# async tasks (the benchmark's job is one)
CONCURRENCY = 10 if common.tuned() else 1
HEARTBEAT_S = 1.0  # default update_heartbeat_interval 10 s
STALLED_AFTER_S = 3.0  # default seconds_since_heartbeat 30 s

app = App(connector=PsycopgConnector(conninfo=CONNINFO))


@app.task(name="job")
async def job(job_id: int, t_enq: float, sleep_s: float) -> None:
    await common.run_job_async(job_id, t_enq, sleep_s, asyncio.sleep)


async def _retry_stalled() -> None:
    # procrastinate's documented recipe (howto/production/retry_stalled_jobs), run
    # every second instead of from a periodic task
    while True:
        for j in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER_S):
            await app.job_manager.retry_job(j)
        await asyncio.sleep(1.0)


async def _worker(crash: bool) -> None:
    async with app.open_async():
        reaper = asyncio.create_task(_retry_stalled()) if crash else None
        try:
            await app.run_worker_async(
                concurrency=CONCURRENCY,
                **({"update_heartbeat_interval": HEARTBEAT_S} if crash else {}),
            )
        finally:
            if reaper is not None:
                reaper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reaper


class ProcrastinatePeer(common.Peer):
    name = "procrastinate"
    dists = ("procrastinate", "psycopg")
    is_async = True
    settings: ClassVar[dict[str, str]] = {
        "storage": "PostgreSQL 15 (synchronous_commit=on, fsync=on: server defaults)",
        "batch": "Task.batch_defer_async() (one INSERT per 1,000)",
        "worker": f"App.run_worker_async, concurrency={CONCURRENCY}"
        + (" (default)" if CONCURRENCY == 1 else "")
        + ", LISTEN/NOTIFY on (default)",
        "recovery": f"retry_stalled_jobs recipe every 1 s: heartbeat 10 s -> {HEARTBEAT_S:g} s, "
        f"stalled after 30 s -> {STALLED_AFTER_S:g} s",
    }
    tuning: ClassVar[str] = (
        "concurrency 1 -> 10 (docs, howto 'Execute multiple jobs at the same time': async "
        "tasks run in concurrent sub-workers of one worker).  Polling stays a fallback: "
        "LISTEN/NOTIFY wakes the worker on every defer"
    )
    recovery_s = STALLED_AFTER_S + 2

    def reset(self) -> None:
        with psycopg.connect(common.PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            conn.execute(f"CREATE SCHEMA {SCHEMA}")
        with psycopg.connect(CONNINFO, autocommit=True) as conn:
            conn.execute(app.schema_manager.get_schema())

    def worker_argv(self, crash: bool) -> list[str]:
        return self.self_worker_argv()

    def run_worker(self, crash: bool) -> None:
        asyncio.run(_worker(crash))

    async def open_producer_async(self) -> Any:
        await app.open_async()
        return app

    async def close_producer_async(self, prod: Any) -> None:
        await app.close_async()

    async def enqueue_async(self, prod: Any, spec: common.Spec) -> None:
        jid, t_enq, sleep_s = spec
        await job.defer_async(job_id=jid, t_enq=t_enq, sleep_s=sleep_s)

    async def bulk_async(self, prod: Any, specs: Sequence[common.Spec]) -> None:
        await job.batch_defer_async(*({"job_id": j, "t_enq": t, "sleep_s": s} for j, t, s in specs))


PEER = ProcrastinatePeer()

if __name__ == "__main__":
    common.main(__file__)
