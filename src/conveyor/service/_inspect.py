"""``conveyor inspect``: read a queue's file directly, with no server.

The file is in WAL mode, so a read-only connection sees a consistent snapshot without blocking
or disturbing a server that writes to it: reading is safe while a server runs, and inspect does
not refuse then. It refuses files that are missing, not conveyor databases, or newer than this
conveyor understands.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from typing import Any, Final

from .._errors import DatabaseError
from .._job import JobStatus
from .._storage import sqlite as storage
from ._models import job_to_dict

FAILED_SHOWN: Final = 20


class InspectError(Exception):
    """The file cannot be inspected; the message says why."""


def inspect_file(path: str, *, now: float | None = None) -> dict[str, Any]:
    """A report on the queue stored in ``path``: counts by status and handler, the oldest
    pending job, and the newest failed jobs with their errors."""
    if not os.path.isfile(path):
        raise InspectError(f"{path} does not exist (or is not a file)")
    now = time.time() if now is None else now
    try:
        conn = storage.open_reader(path)
    except DatabaseError as exc:
        raise InspectError(str(exc)) from None
    with contextlib.closing(conn):
        try:
            application_id, version = storage.read_identity(conn)
            if application_id != storage.APPLICATION_ID or version == 0:
                raise InspectError(f"{path} is not a conveyor database")
            if version > storage.SCHEMA_VERSION:
                raise InspectError(
                    f"{path} has schema version {version}, newer than this conveyor "
                    f"understands ({storage.SCHEMA_VERSION}); upgrade conveyor to inspect it"
                )
            if version < storage.SCHEMA_VERSION:
                # inspect only reads; the upgrade is a write, made by the queue's own writer.
                raise InspectError(
                    f"{path} has schema version {version}, older than this conveyor's "
                    f"({storage.SCHEMA_VERSION}); open it once with this conveyor (conveyor "
                    f"serve, or open_queue) to upgrade it, then inspect it"
                )
            counts = storage.read_counts(conn, now - 60)
            failed = storage.list_jobs(
                conn, status=JobStatus.FAILED, name=None, limit=FAILED_SHOWN, before=None
            )
        except sqlite3.Error as exc:
            raise InspectError(f"cannot read {path}: {exc}") from None
    oldest = counts.oldest_pending_created_at
    return {
        "path": os.path.abspath(path),
        "by_status": {status.value: n for status, n in counts.by_status().items()},
        "by_name": {
            name: {status.value: n for status, n in statuses.items()}
            for name, statuses in counts.by_name().items()
        },
        "oldest_pending_age": None if oldest is None else max(now - oldest, 0.0),
        "failed": [job_to_dict(job) for job in failed],
    }
