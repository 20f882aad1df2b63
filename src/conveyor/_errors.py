"""The exceptions conveyor raises to its callers.

Every error a caller can see is a :class:`ConveyorError`. Errors about a bad argument are also
:class:`ValueError` (or :class:`LookupError` for an unknown job), so code that already catches the
built-in kinds keeps working.
"""

from __future__ import annotations


class ConveyorError(Exception):
    """Base class of every error conveyor raises."""


class InvalidArgument(ConveyorError, ValueError):
    """An argument is out of range or of the wrong kind; the message names it."""


class UnknownHandler(InvalidArgument):
    """A job names a handler that is not in the queue's registry."""


class NotJSONSerializable(InvalidArgument):
    """A payload or a result cannot be stored as JSON; the message says which."""


class IdempotencyConflict(InvalidArgument):
    """An idempotency key is held by a job of another handler or payload: a key names one
    piece of work, so the enqueue is refused (nothing was written) rather than answered with
    a job that is not what was asked for."""


class QueueFull(ConveyorError):
    """The queue already holds ``max_pending`` pending jobs; nothing was written."""


class QueueClosed(ConveyorError):
    """The queue is shutting down or closed and takes no more commands."""


class WaitTimeout(ConveyorError, TimeoutError):
    """:meth:`Queue.wait` gave up: the job did not finish within the timeout."""


class JobNotFound(ConveyorError, LookupError):
    """No job has the given id (it was never created, or it was purged)."""


class DatabaseInUse(ConveyorError):
    """The database file cannot be shared safely: it is on a network file system, or a
    process running an older conveyor (one process per file) holds it."""


class DatabaseError(ConveyorError):
    """The database file cannot be used: not a conveyor database, corrupt, or unwritable."""


class DatabaseUnavailable(DatabaseError):
    """A write failed for a reason that may pass (disk full, locked, I/O error): nothing of the
    call was written, and the queue keeps running; the message says what to do. Retry later."""


class SchemaTooNew(DatabaseError):
    """The database was written by a newer conveyor whose schema this version does not know."""


class NoJobContext(ConveyorError, RuntimeError):
    """:func:`conveyor.current_job` was called outside a running job handler."""
