"""Handlers that tests/test_process_handlers.py runs in worker processes: a worker imports
them by module and name, so they live here, at the top level of an importable module."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import conveyor


def note_pid(payload: dict[str, Any]) -> None:
    """Write this process's id to the file the payload names, if it names one."""
    if isinstance(payload, dict) and "pid_file" in payload:
        Path(payload["pid_file"]).write_text(str(os.getpid()))


def echo(payload: Any) -> Any:
    """The payload back, with what ``current_job()`` says."""
    job = conveyor.current_job()
    return {
        "payload": payload,
        "echoed": job.payload,
        "id": job.id,
        "name": job.name,
        "attempt": job.attempt,
        "pid": os.getpid(),
        "after": {str(job_id): result for job_id, result in job.dependency_results.items()},
    }


def spin(payload: dict[str, Any]) -> None:
    """A busy loop that never ends (nothing a thread could interrupt)."""
    note_pid(payload)
    while True:
        pass


def exit_3(payload: dict[str, Any]) -> None:
    note_pid(payload)
    os._exit(3)


def segfault(payload: dict[str, Any]) -> None:
    note_pid(payload)
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)


def hog(payload: dict[str, Any]) -> int:
    """Take ``payload["mib"]`` MiB, 16 MiB at a time (each byte touched), and hold it for
    ``payload["hold"]`` seconds (default 1); with ``"free"``, free it before returning."""
    note_pid(payload)
    held = [b"x" * (16 * 2**20) for _ in range(payload["mib"] // 16)]
    time.sleep(payload.get("hold", 1.0))
    count = len(held)
    if payload.get("free"):
        del held
    return count


def progress(payload: int) -> str:
    job = conveyor.current_job()
    for step in range(1, payload + 1):
        job.set_progress(step / payload, f"step {step}")
    time.sleep(0.5)
    return "done"


def fail(payload: object) -> None:
    raise conveyor.Fail("no use retrying")


def unserializable(payload: object) -> object:
    return {1, 2}
