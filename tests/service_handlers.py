"""Handlers for the service tests that run a real ``conveyor serve`` process."""

from __future__ import annotations

from typing import Any

import anyio
import sniffio

import conveyor

registry = conveyor.Registry()
not_a_registry = {"hello": None}

_failed_once: set[int] = set()


@registry.handler
async def hello(payload: Any) -> Any:
    return {"hello": payload}


@registry.handler(max_attempts=1)
async def fail_once(payload: Any) -> str:
    """Fails its first run (per job), succeeds once requeued."""
    job_id = conveyor.current_job().id
    if job_id not in _failed_once:
        _failed_once.add(job_id)
        raise conveyor.Fail("the first run of this job always fails")
    return "second time lucky"


@registry.handler
async def sleepy(payload: Any) -> str:
    conveyor.current_job().set_progress(0.5, "sleeping")
    await anyio.sleep(payload.get("seconds", 60) if isinstance(payload, dict) else 60)
    return "rested"


@registry.handler
async def event_loop(payload: Any) -> str:
    """The event loop the job runs on: the engine's."""
    return sniffio.current_async_library()
