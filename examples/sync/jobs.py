"""The queue of the sync examples: one per process, opened on first use, closed at exit.

A WSGI process (Flask, Django) has no event loop: it uses conveyor's blocking API. The queue
runs its jobs in this very process here; run them elsewhere with ``workers=0`` and
``conveyor worker --db signups.db --handlers jobs:registry``.
"""

import atexit
import contextlib
import os
import threading

import conveyor

registry = conveyor.Registry()


@registry.handler("send_welcome", max_attempts=5)
async def send_welcome(payload: dict[str, str]) -> str:
    return f"welcome mail sent to {payload['email']}"


_lock = threading.Lock()
_stack = contextlib.ExitStack()
_queue: conveyor.blocking.BlockingQueue | None = None


def queue() -> conveyor.blocking.BlockingQueue:
    """The process's queue on ``CONVEYOR_DB`` (default ``signups.db``)."""
    global _queue
    with _lock:
        if _queue is None:
            db = os.environ.get("CONVEYOR_DB", "signups.db")
            _queue = _stack.enter_context(
                conveyor.blocking.open_queue(db, handlers=registry, workers=4)
            )
            atexit.register(close)
        return _queue


def close() -> None:
    """Shut the queue down gracefully (at exit, or by hand)."""
    global _queue
    with _lock:
        _queue = None
        _stack.close()
