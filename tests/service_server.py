"""Runs a real ``conveyor serve`` process on a free loopback port, for the service tests."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

TESTS = Path(__file__).parent
CONVEYOR = str(Path(sys.executable).parent / "conveyor")

engine = "asyncio"
"""The ``--engine`` of the servers :func:`running_server` starts; set by the ``engine``
fixture, which runs a test once on each engine."""

both_engines = pytest.mark.usefixtures("engine")
"""Runs the test once on each engine."""


@attrs.frozen
class Server:
    process: subprocess.Popen[str]
    url: str
    stderr: list[str] = attrs.field(factory=list)
    """What the server printed on stderr after its start line, read as it comes (an unread
    pipe would fill up and stop the server, which logs every request)."""
    reader: threading.Thread | None = None
    announcement: str = ""
    """The line saying where it serves."""

    def stderr_after_exit(self) -> str:
        """Everything on stderr after the start line, once the server has exited."""
        self.process.wait(timeout=30)
        if self.reader is not None:
            self.reader.join(timeout=10)
        return "".join(self.stderr)


def conveyor(
    *args: str, cwd: Path = TESTS, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the ``conveyor`` command and return what it did."""
    return subprocess.run(
        [CONVEYOR, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@contextlib.contextmanager
def running_server(
    db: Path | str, *args: str, handlers: str = "service_handlers:registry"
) -> Iterator[Server]:
    """``conveyor serve`` on ``db`` (a file, or a PostgreSQL URL); stopped with SIGTERM on
    exit unless already stopped."""
    command = [CONVEYOR, "serve", "--db", str(db), "--handlers", handlers, "--port", "0"]
    process = subprocess.Popen(
        [*command, "--engine", engine, *args],
        cwd=TESTS,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader: threading.Thread | None = None
    try:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            found = re.search(r" on (http://\S+) ", line)
            if found:
                break
        else:
            raise AssertionError(f"conveyor serve did not start: {''.join(lines)}")
        printed: list[str] = []
        reader = threading.Thread(target=printed.extend, args=(process.stderr,), daemon=True)
        reader.start()
        yield Server(process, found.group(1), printed, reader, line)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        if reader is not None:
            reader.join(timeout=10)  # at the end of the pipe, now that the server is gone
        if process.stderr is not None:
            process.stderr.close()
