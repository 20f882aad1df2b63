"""conveyor over HTTP: ``conveyor serve`` (issue #4) runs the queue, producers POST to it.

The service is the only process that opens the SQLite file, so it is also the worker: the
worker process runs ``conveyor serve`` with the embedded row's handlers. For the measures that
enqueue before any worker runs (bulk, single, 50 producers; the pre-queueing of drain and
crash), the producer starts a service of its own whose one worker is parked (conveyor_peer's
``producer_registry``) and stops it before the worker's service opens the file; during the
latency measure it talks to the worker's service.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import common
import httpx
import trio

import conveyor.service

STATE = common.state_dir("conveyor_http")
DB = STATE / "conveyor.db"
PORT: Final = 18327  # not the service's default 8327, which a developer's server may hold
URL: Final = f"http://127.0.0.1:{PORT}"
WORKERS: Final = 8  # `conveyor serve`'s default when these results were measured
READY_S: Final = 60.0
PRODUCER_ENV: Final = "CONVEYOR_HTTP_PRODUCER"  # the worker process serves as a producer only


def serve_argv(handlers: str, workers: int, grace: float) -> list[str]:
    return [
        "serve",
        "--db",
        str(DB),
        "--handlers",
        handlers,
        "--workers",
        str(workers),
        "--port",
        str(PORT),
        "--shutdown-grace",
        str(grace),
        # The engine these results were measured on (the default is now asyncio, uvicorn).
        "--engine",
        "trio",
        "--no-access-log",
    ]


async def wait_ready(client: httpx.AsyncClient, server: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"conveyor serve exited with {server.returncode}; see its log")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/readyz")).status_code == 200:
                return
        await trio.sleep(0.05)
    raise RuntimeError(f"conveyor serve was not ready at {URL} within {READY_S:g} s")


class ConveyorHttpPeer(common.Peer):
    name = "conveyor_http"
    dists = ("conveyor", "fastapi", "hypercorn", "httpx")
    is_async = True
    async_backend = "trio"
    settings: ClassVar[dict[str, str]] = {
        "storage": "SQLite file, WAL, synchronous=NORMAL (conveyor's default)",
        "batch": "POST /jobs/batch (one transaction per 1,000)",
        "worker": f"conveyor serve --workers {WORKERS} (hypercorn on trio), async "
        "handler; producers: httpx.AsyncClient, one connection per producer task (pool "
        "shared); before a worker runs, a producer-only service with its one worker parked",
        "recovery": "on start: jobs left running go back to pending (the attempt counts), "
        "max_attempts=3 (default); nothing to shorten",
    }
    recovery_s = 0.0

    def worker_argv(self, crash: bool) -> list[str]:
        return self.self_worker_argv()

    def run_worker(self, crash: bool) -> None:
        if os.environ.get(PRODUCER_ENV) == "1":
            argv = serve_argv("conveyor_peer:producer_registry", 1, grace=0.0)
        else:
            argv = serve_argv("conveyor_peer:registry", WORKERS, grace=1.0)
        conveyor.service.main(argv, prog_name="conveyor")

    def _start_producer_service(self) -> subprocess.Popen[bytes]:
        # a server left on the port would answer our readiness checks and take our jobs
        with (
            contextlib.suppress(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", PORT), timeout=2),
        ):
            raise RuntimeError(f"port {PORT} is taken by another process")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(common.PEERS_DIR)
        env[PRODUCER_ENV] = "1"
        with (self.state / "server-producer.log").open("ab") as log:
            return subprocess.Popen(
                self.self_worker_argv(),
                cwd=self.state,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def open_producer_async(self) -> Any:
        client = httpx.AsyncClient(
            base_url=URL,
            timeout=60,
            limits=httpx.Limits(max_connections=common.CONCURRENT_PRODUCERS),
        )
        server = None if self.serving else self._start_producer_service()
        await wait_ready(client, server)
        return client, server

    async def close_producer_async(self, prod: Any) -> None:
        client, server = prod
        await client.aclose()
        if server is not None:
            # graceful: the parked job goes back to pending and the file is free for the worker
            server.send_signal(signal.SIGTERM)
            await trio.to_thread.run_sync(server.wait)

    async def enqueue_async(self, prod: Any, spec: common.Spec) -> None:
        client, _ = prod
        response = await client.post("/jobs", json={"name": "job", "payload": list(spec)})
        response.raise_for_status()

    async def bulk_async(self, prod: Any, specs: Sequence[common.Spec]) -> None:
        client, _ = prod
        jobs = [{"name": "job", "payload": list(s)} for s in specs]
        response = await client.post("/jobs/batch", json={"jobs": jobs})
        response.raise_for_status()


PEER = ConveyorHttpPeer()

if __name__ == "__main__":
    common.main(__file__)
