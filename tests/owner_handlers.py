"""Handlers for the tests that run several worker processes on one file: each attempt appends
``job id attempt`` to a log of its own process, so that a test can tell which process ran
what, and how many times."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

import conveyor

registry = conveyor.Registry()


def _log(payload: Any) -> None:
    context = conveyor.current_job()
    log = Path(payload["dir"]) / f"ran-{os.getpid()}.log"
    with log.open("a") as out:
        out.write(f"{context.id} {context.attempt}\n")


@registry.handler
async def record(payload: Any) -> dict[str, int]:
    """Log the attempt, sleep ``seconds`` (0 by default), return the process id."""
    _log(payload)
    await anyio.sleep(payload.get("seconds", 0))
    return {"pid": os.getpid()}
