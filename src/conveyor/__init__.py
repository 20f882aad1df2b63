"""conveyor: a durable job queue for structured-concurrency Python, on SQLite.

Register handlers on a :class:`Registry`, open the queue with :func:`open_queue` inside a trio or
asyncio (anyio) program, and enqueue jobs; they run on workers in priority order, with retries,
delays, timeouts and cancellation, and survive crashes and restarts.
"""

from . import blocking
from ._context import JobContext, current_job
from ._errors import (
    ConveyorError,
    DatabaseError,
    DatabaseInUse,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidArgument,
    JobNotFound,
    NoJobContext,
    NotJSONSerializable,
    QueueClosed,
    QueueFull,
    SchemaTooNew,
    UnknownHandler,
    WaitTimeout,
)
from ._events import Change
from ._job import Event, Job, JobDict, JobSpec, JobStatus
from ._queue import BatchProgress, Queue, Stats, WorkflowGraph
from ._registry import Handler, Registry
from ._retry import Backoff, Fail, Retry
from ._runtime import open_queue
from ._schedule import Schedule
from ._workflow import Step, Workflow

__all__ = [
    "Backoff",
    "BatchProgress",
    "Change",
    "ConveyorError",
    "DatabaseError",
    "DatabaseInUse",
    "DatabaseUnavailable",
    "Event",
    "Fail",
    "Handler",
    "IdempotencyConflict",
    "InvalidArgument",
    "Job",
    "JobContext",
    "JobDict",
    "JobNotFound",
    "JobSpec",
    "JobStatus",
    "NoJobContext",
    "NotJSONSerializable",
    "Queue",
    "QueueClosed",
    "QueueFull",
    "Registry",
    "Retry",
    "Schedule",
    "SchemaTooNew",
    "Stats",
    "Step",
    "UnknownHandler",
    "WaitTimeout",
    "Workflow",
    "WorkflowGraph",
    "blocking",
    "current_job",
    "open_queue",
]

# Public exceptions are shown by the name they are imported by: a handler raising Fail fails
# its job with "conveyor.Fail: ..." (in the stored error, the dashboard, tracebacks and logs),
# not "conveyor._retry.Fail". Only exceptions: other classes keep their modules, where their
# annotations' names resolve (typing.get_type_hints, attrs.resolve_types, cattrs, autodoc).
for _name in __all__:
    _value = globals()[_name]
    if (
        isinstance(_value, type)
        and issubclass(_value, BaseException)
        and _value.__module__.startswith("conveyor._")
    ):
        _value.__module__ = __name__
del _name, _value
