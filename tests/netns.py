"""Test hosts: network namespaces linked to this one, where PostgreSQL is relayed, each
running a real ``conveyor worker`` (used by tests/faults/test_postgres_hosts.py and
bench/postgres.py). Needs root, ``ip`` and ``socat``."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

TESTS = Path(__file__).parent
PORT = 15432
"""Where each host's relay listens, on the root side of its link."""


def missing_tools() -> str | None:
    """Why hosts cannot be made here (``None``: they can)."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    for tool in ("ip", "socat"):
        if shutil.which(tool) is None:
            return f"no {tool} on this machine"
    return None


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


@attrs.define
class Host:
    """A network namespace linked to the root namespace, where the server is relayed."""

    name: str
    address: str  # the root side of the link: the relay listens there
    relay: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def link(self) -> str:
        return f"{self.name}a"

    def url(self, schema: str) -> str:
        return f"postgresql://postgres@{self.address}:{PORT}/test?schema={schema}"

    def stderr(self) -> str:
        return "" if self.log is None else self.log.read_text()

    def cut(self) -> None:
        run("ip", "link", "set", self.link, "down")

    def restore(self) -> None:
        run("ip", "link", "set", self.link, "up")


@contextlib.contextmanager
def network_host(index: int) -> Iterator[Host]:
    tag = secrets.token_hex(2)
    name = f"cv{index}{tag}"
    octet = 100 + secrets.randbelow(100)
    root_side, host_side = f"10.{octet}.{index}.1", f"10.{octet}.{index}.2"
    host = Host(name, root_side)
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b")
        run("ip", "link", "set", f"{name}b", "netns", name)
        run("ip", "addr", "add", f"{root_side}/30", "dev", f"{name}a")
        run("ip", "link", "set", f"{name}a", "up")
        run("ip", "-n", name, "addr", "add", f"{host_side}/30", "dev", f"{name}b")
        run("ip", "-n", name, "link", "set", f"{name}b", "up")
        run("ip", "-n", name, "link", "set", "lo", "up")
        host.relay = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{PORT},bind={root_side},reuseaddr,fork",
                "TCP:127.0.0.1:5432",
            ],
            stderr=subprocess.DEVNULL,
        )
        yield host
    finally:
        for process in (host.worker, host.relay):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        with contextlib.suppress(subprocess.CalledProcessError):
            run("ip", "link", "del", f"{name}a")
        run("ip", "netns", "del", name)


def start_worker(
    host: Host,
    schema: str,
    directory: Path,
    *,
    heartbeat: float = 2.0,
    workers: int = 4,
    handlers: str = "owner_handlers:registry",
    path: Path = TESTS,
) -> None:
    """``conveyor worker`` in the host's namespace, on the queue, running ``handlers`` (a
    module of ``path``); returns once it is ready."""
    host.log = directory / f"{host.name}.err"
    with host.log.open("wb") as stderr:
        host.worker = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                host.name,
                sys.executable,
                "-c",
                "import conveyor.service; conveyor.service.main()",
                "worker",
                "--db",
                host.url(schema),
                "--handlers",
                handlers,
                "--workers",
                str(workers),
                "--heartbeat",
                str(heartbeat),
                "--shutdown-grace",
                "1",
            ],
            stderr=stderr,
            env={**os.environ, "PYTHONPATH": str(path)},
            cwd=path,
        )
    deadline = time.monotonic() + 60
    while "conveyor: worker on" not in host.stderr():
        assert host.worker.poll() is None, host.stderr()
        assert time.monotonic() < deadline, host.stderr()
        time.sleep(0.02)
