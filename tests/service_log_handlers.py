"""Handlers for the tests of what ``conveyor serve`` logs (a real process)."""

from __future__ import annotations

import time
from typing import Any

import conveyor

registry = conveyor.Registry()


@registry.handler
async def stall(payload: Any) -> str:
    """Blocks the event loop for ``payload`` seconds: the watchdog logs a WARNING, then an INFO
    once the loop runs again."""
    time.sleep(payload)  # noqa: ASYNC251 (the point: it blocks the loop)
    return "stalled"
