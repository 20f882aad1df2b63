"""Drop-in facades for the queue managers conveyor replaces, over conveyor itself.

``TaskQueueManager`` (with ``TaskPriority``, ``TaskChain``, ``TaskGroup``, ``wait_for_task``,
``schedule_recurring_task``, ``create_workflow`` and the module-level ``task_queue``) stands for
the SQLite task queue, async; :mod:`conveyor.compat.tasks` holds all of it with its own
``TaskStatus``. ``QueueManager`` and ``get_queue_manager`` stand for the parallel
file-processing queue manager (its documented interface, blocking, with the work in worker
processes), and ``TaskStatus`` here is its; ``QueuedTaskManager`` stands for the
background-task manager's queued adapter (async). See the README's sections on migrating for
the status tables and every difference in behaviour.
"""

from ._queue_manager import QueueManager, TaskStatus, get_queue_manager, process_file
from ._queued_task_manager import CANNOT_RESUME, QueuedTaskManager
from ._task_queue import (
    RecurringTask,
    TaskChain,
    TaskGroup,
    TaskPriority,
    TaskQueueManager,
    create_workflow,
    schedule_recurring_task,
    task_queue,
    wait_for_task,
)

__all__ = [
    "CANNOT_RESUME",
    "QueueManager",
    "QueuedTaskManager",
    "RecurringTask",
    "TaskChain",
    "TaskGroup",
    "TaskPriority",
    "TaskQueueManager",
    "TaskStatus",
    "create_workflow",
    "get_queue_manager",
    "process_file",
    "schedule_recurring_task",
    "task_queue",
    "wait_for_task",
]
