"""Retention: the background purge of finished jobs older than the queue's ``retention``.

:func:`keep_for` runs in the queue's nursery of each process that opened the queue with
``retention=`` (a producer as well as a worker; several processes may: deleting is idempotent
and the database serialises their writes). Its contract:

- **What**: finished jobs (the terminal statuses, :data:`conveyor._job.TERMINAL`: completed,
  failed, cancelled) whose ``finished_at`` is at or before the queue clock's ``now -
  retention``; nothing else (pending, scheduled, waiting and running jobs have no
  ``finished_at``). Exactly what :meth:`Queue.purge` deletes: their dependency rows go with
  them, and their idempotency keys are released (a later enqueue with one makes a new job).
- **When**: once when the queue opens, then every :func:`interval` seconds, slept on the
  event loop's clock (a mock clock drives it in tests).
- **How**: first a read (on the read connection, never the writer) of whether anything is
  old enough, so an idle round writes nothing; then commands to the store, each deleting at
  most :data:`PURGE_BATCH` rows, the oldest first: each is its own short write transaction
  (shared, as group commit does, with what other commands wait then), and the next is sent
  only once it is answered, so commands that arrived meanwhile go first. It stops when a
  batch deletes fewer than :data:`PURGE_BATCH`.
- **Reports**: one INFO record on the ``conveyor`` logger per round that deleted jobs (how
  many, with ``extra`` fields ``conveyor_event="purged"``, ``conveyor_purged``,
  ``conveyor_retention``); nothing when none. A round that fails (a database fault) is logged
  at WARNING and tried again at the next interval.
- **Cancellation and closing**: it returns once the queue is closing (:class:`QueueClosed`)
  and ends at once when cancelled. The store applies each batch shielded, so a batch in flight
  is committed whole or not at all: nothing is left half-purged, and what is left over is
  purged by the next round of a queue with retention.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import anyio

from ._actors.messages import Purge, Reply
from ._errors import QueueClosed
from ._job import TERMINAL
from ._storage import sqlite as storage

if TYPE_CHECKING:
    from ._runtime import Runtime

logger = logging.getLogger("conveyor")

PURGE_BATCH: Final = 1000
"""Most jobs one purge transaction deletes: at about 10 µs a row with its index entries, a
batch holds the single writer for milliseconds, not for the whole backlog."""

MAX_INTERVAL: Final = 60.0
MIN_INTERVAL: Final = 1.0


def interval(retention: float) -> float:
    """Seconds between rounds: a tenth of ``retention``, so a job outlives it by at most about
    10 %, but at most a minute (an idle round costs one indexed read) and at least a second
    (a tiny retention does not make it spin)."""
    return max(MIN_INTERVAL, min(retention / 10, MAX_INTERVAL))


async def keep_for(runtime: Runtime, retention: float) -> None:
    """Purge finished jobs older than ``retention`` seconds, in the background, until the
    queue closes (see the module's contract)."""
    while True:
        try:
            await purge_old(runtime, retention)
        except QueueClosed:
            return
        except Exception as exc:
            logger.warning(
                "conveyor could not purge finished jobs older than %s s: %r; it tries again "
                "in %s s",
                retention,
                exc,
                interval(retention),
                extra={"conveyor_event": "purge_failed", "conveyor_retention": retention},
            )
        await anyio.sleep(interval(retention))


async def purge_old(runtime: Runtime, retention: float) -> int:
    """One round: delete, batch by batch, the finished jobs older than ``retention``; how
    many. Raises :class:`QueueClosed` once the queue is closing."""
    before = runtime.clock() - retention
    if not await runtime.read(lambda conn: storage.any_to_purge(conn, before, TERMINAL)):
        return 0
    total = batches = 0
    while True:
        limit = PURGE_BATCH
        reply: Reply[int] = Reply()
        await runtime.send(Purge(retention, TERMINAL, reply, limit=limit))
        purged = await reply.get()
        total += purged
        batches += 1
        if purged < limit:
            break
    if total:
        logger.info(
            "conveyor purged %d finished jobs older than its retention of %s s (%d batches)",
            total,
            retention,
            batches,
            extra={
                "conveyor_event": "purged",
                "conveyor_purged": total,
                "conveyor_retention": retention,
            },
        )
    return total
