"""How processes on one file wake each other: a doorbell per process.

A doorbell is a Unix datagram socket in Linux's abstract namespace (no file to create or clean
up, no path-length limit; it vanishes with the process). After a commit that another process
may care about, the store rings the other owners' doorbells with one byte per kind of news:

- :data:`READY`: jobs may have become ready: owners with handlers claim for their free slots;
- :data:`CHANGED`: jobs changed status: waits and progress that follow them look again;
- :data:`CANCEL`: a cancel was requested of a job running in another process.

Ringing costs one ``sendto`` per other owner, and an idle process sleeps in ``recv``: nothing
polls. A ring that is lost (a full socket buffer, a platform without abstract sockets) only
delays the news until the next heartbeat, when every process looks anyway.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Final, Protocol

import anyio

READY: Final = "r"
CHANGED: Final = "d"
CANCEL: Final = "c"
KINDS: Final = frozenset({READY, CHANGED, CANCEL})

_MAX_RINGS: Final = 256
"""Datagrams read per wake-up at most: the rest are read on the next turn."""


class DoorbellLike(Protocol):
    """How a process hears the others' news and rings them: :class:`Doorbell` on SQLite,
    ``NOTIFY``/``LISTEN`` on PostgreSQL."""

    name: str | None

    def ring(self, doorbells: Iterable[str], kinds: str) -> None: ...

    async def listen(self, on_ring: Callable[[set[str]], None]) -> None: ...

    def close(self) -> None: ...


class Doorbell:
    """This process's doorbell, and the means to ring others'."""

    def __init__(self) -> None:
        self.name: str | None = None
        """The name others ring (stored with the owner); ``None`` where there is no
        abstract namespace (not Linux): then others cannot ring, and heartbeats carry news."""
        self._socket: socket.socket | None = None
        if sys.platform.startswith("linux"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            name = f"conveyor-{os.getpid()}-{secrets.token_hex(8)}"
            sock.bind("\0" + name)
            self._socket, self.name = sock, name

    def ring(self, doorbells: Iterable[str], kinds: str) -> None:
        """Send ``kinds`` to each of ``doorbells``; one that is gone or full is skipped."""
        if self._socket is None or not kinds:
            return
        message = kinds.encode()
        for name in doorbells:
            with contextlib.suppress(OSError):
                self._socket.sendto(message, "\0" + name)

    async def listen(self, on_ring: Callable[[set[str]], None]) -> None:
        """Call ``on_ring`` with the kinds of news rung since the last call, for as long as
        this runs (where there is no doorbell, it just waits to be cancelled)."""
        if self._socket is None:
            await anyio.sleep_forever()
            return
        while True:
            await anyio.wait_readable(self._socket)
            kinds: set[str] = set()
            for _ in range(_MAX_RINGS):
                try:
                    kinds.update(self._socket.recv(16).decode(errors="replace"))
                except BlockingIOError:
                    break
            if kinds:
                on_ring(kinds)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
