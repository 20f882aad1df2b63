"""Small tools the tests share."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import conveyor

POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
"""The PostgreSQL database the core behaviour tests also run on, each in a schema of its own."""


@functools.cache
def postgres_unreachable() -> str | None:
    """Why the tests' PostgreSQL cannot be used (``None``: it can)."""
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except Exception as exc:
        return f"no PostgreSQL at {POSTGRES_URL} ({exc})"
    return None


@contextlib.contextmanager
def fresh_schema(prefix: str) -> Iterator[str]:
    """The name of a schema of its own on the tests' PostgreSQL, dropped afterwards; the test
    is skipped, saying why, where there is no server."""
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)
    import psycopg

    schema = f"{prefix}_{secrets.token_hex(8)}"
    try:
        yield schema
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


QueueOpener = Callable[..., AbstractAsyncContextManager[conveyor.Queue]]
"""What the ``open_test_queue`` fixture is: ``open_queue`` on the test's file and clock."""


async def wait_all(queue: conveyor.Queue, jobs: list[conveyor.Job]) -> list[conveyor.Job]:
    """Every job of ``jobs`` once finished, in order."""
    return [await queue.wait(job.id, timeout=60) for job in jobs]


class Gate:
    """Handlers wait on it to stay running until the test opens it."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self._open = anyio.Event()

    async def pass_through(self) -> None:
        self.entered.set()
        await self._open.wait()

    def open(self) -> None:
        self._open.set()


def service_registry(gate: Gate) -> conveyor.Registry:
    """The handlers of the service tests: ``echo`` returns its payload, ``explode`` fails for
    good, ``blocked`` runs until ``gate`` opens, ``stubborn`` too, even when cancelled."""
    registry = conveyor.Registry()

    @registry.handler
    async def echo(payload: Any) -> Any:
        return payload

    @registry.handler(max_attempts=1)
    async def explode(payload: Any) -> None:
        raise conveyor.Fail("boom: the handler gave up")

    @registry.handler
    async def blocked(payload: Any) -> None:
        await gate.pass_through()

    @registry.handler
    async def stubborn(payload: Any) -> None:
        with anyio.CancelScope(shield=True):  # a cancel waits until the gate opens
            await gate.pass_through()

    return registry


def free_port() -> int:
    """A loopback port no one listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_answering(url: str, server: subprocess.Popen[bytes], logs: Path) -> None:
    """Return once ``url`` answers (within 60 s); fail with the server's ``logs`` if it exits
    or never does."""
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, logs.read_text()
        try:
            httpx.get(url, timeout=5)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, logs.read_text()
            time.sleep(0.1)
