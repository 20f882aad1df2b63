"""Load test: enqueues over HTTP from many concurrent clients against ``conveyor serve``.

Starts ``conveyor serve`` on a free loopback port (a no-op handler, its own temporary file),
then opens ``--clients`` keep-alive connections from one trio process and sends single-job
``POST /jobs`` requests until ``--requests`` were answered or ``--seconds`` passed, whichever
comes first. Reports requests/s and latency percentiles. Loopback only; it stops by itself.

The client speaks HTTP/1.1 on raw trio sockets rather than through httpx so that, with server
and client sharing the machine's cores, the figure measures the server rather than the client.

    .venv/bin/python bench/http_load.py --clients 32 --requests 50000 --seconds 20
    .venv/bin/python bench/http_load.py --clients 32 --requests 50000 --engine trio
    .venv/bin/python bench/http_load.py --clients 16 --requests 2000 --batch 50

The server runs without its access log unless ``--access-log`` is given (its stderr is read in
a thread either way).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

HANDLERS = """
import conveyor
registry = conveyor.Registry()

@registry.handler
async def noop(payload):
    return None
"""


def _request(host: str, port: int, n: int, batch: int) -> bytes:
    if batch == 1:
        path, document = "/jobs", {"name": "noop", "payload": {"n": n}}
    else:
        jobs = [{"name": "noop", "payload": {"n": n, "i": i}} for i in range(batch)]
        path, document = "/jobs/batch", {"jobs": jobs}
    body = json.dumps(document).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _read_response(stream: trio.SocketStream, buffer: bytearray) -> int:
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buffer[:end]).decode("latin-1")
            length = int(re.search(r"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            total = end + 4 + length
            if len(buffer) >= total:
                status = int(head.split(" ", 2)[1])
                del buffer[:total]
                return status
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk


async def _client(
    host: str,
    port: int,
    budget: list[int],
    deadline: float,
    latencies: list[float],
    errors: list[int],
    batch: int,
) -> None:
    stream = await trio.open_tcp_stream(host, port)
    buffer = bytearray()
    async with stream:
        while budget[0] > 0 and trio.current_time() < deadline:
            budget[0] -= 1
            start = time.perf_counter()
            await stream.send_all(_request(host, port, budget[0], batch))
            status = await _read_response(stream, buffer)
            latencies.append(time.perf_counter() - start)
            if status not in (200, 201):
                errors.append(status)


async def _load(
    host: str, port: int, clients: int, requests: int, seconds: float, batch: int
) -> None:
    latencies: list[float] = []
    errors: list[int] = []
    budget = [requests]
    started = time.perf_counter()
    deadline = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(_client, host, port, budget, deadline, latencies, errors, batch)
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(int(len(latencies) * p), len(latencies) - 1)] * 1000

    jobs = len(latencies) * batch
    print(
        f"{jobs} enqueues over HTTP ({batch} per request) from {clients} clients in "
        f"{elapsed:.2f} s: {jobs / elapsed:,.0f} jobs/s, "
        f"{len(latencies) / elapsed:,.0f} requests/s; latency p50 {pct(0.5):.1f} ms, "
        f"p90 {pct(0.9):.1f} ms, p99 {pct(0.99):.1f} ms; non-201 answers: {len(errors)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--batch", type=int, default=1, help="jobs per request: >1 posts to /jobs/batch"
    )
    parser.add_argument("--engine", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--access-log", action="store_true", help="serve with its access log")
    args = parser.parse_args()
    conveyor = Path(sys.executable).parent / "conveyor"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "load_handlers.py").write_text(HANDLERS)
        server = subprocess.Popen(
            [
                str(conveyor),
                "serve",
                "--db",
                "load.db",
                "--handlers",
                "load_handlers:registry",
                "--port",
                "0",
                "--workers",
                str(args.workers),
                "--engine",
                args.engine,
                "--access-log" if args.access_log else "--no-access-log",
            ],
            cwd=tmp,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stderr is not None
            for line in server.stderr:
                found = re.search(r" on http://([\d.]+):(\d+) ", line)
                if found:
                    break
            else:
                raise SystemExit("conveyor serve did not start")
            # An unread pipe would fill up and stop the server.
            threading.Thread(target=server.stderr.read, daemon=True).start()
            host, port = found.group(1), int(found.group(2))
            trio.run(_load, host, port, args.clients, args.requests, args.seconds, args.batch)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
