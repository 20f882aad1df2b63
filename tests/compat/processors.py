"""Processors for the QueueManager facade's tests: functions of a file's path, importable by
name from the worker processes. Each appends the path to ``<folder>/done.log`` when it ends."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _log(file_path: str) -> None:
    with open(Path(file_path).parent / "done.log", "a") as log:
        log.write(f"{file_path}\n")


def analyse(file_path: str) -> dict[str, int]:
    """The file's size, as a real analysis would return a result."""
    size = os.path.getsize(file_path)
    _log(file_path)
    return {"bytes": size}


def flaky(file_path: str) -> str:
    """Fails the first time it sees a file (a marker beside it remembers), then succeeds."""
    marker = Path(f"{file_path}.seen")
    if not marker.exists():
        marker.touch()
        raise OSError(f"could not read {file_path} (the first time)")
    _log(file_path)
    return "analysed on retry"


def hangs(file_path: str) -> None:
    """Never ends by itself."""
    time.sleep(3600)


def always_fails(file_path: str) -> None:
    """Logs each attempt in ``attempts.log`` beside the file, then fails."""
    with open(Path(file_path).parent / "attempts.log", "a") as log:
        log.write(f"{file_path}\n")
    raise OSError(f"cannot analyse {file_path}")
