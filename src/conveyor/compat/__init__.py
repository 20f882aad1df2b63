"""Drop-in facades for the queue managers conveyor replaces, over conveyor itself.

``QueueManager`` and ``get_queue_manager`` stand for the parallel file-processing queue manager
(its documented interface, blocking, with the work in worker processes); ``QueuedTaskManager``
for the background-task manager's queued adapter (async). See the README's
section on migrating for the status table and every difference in behaviour.
"""

from ._queue_manager import QueueManager, TaskStatus, get_queue_manager, process_file
from ._queued_task_manager import CANNOT_RESUME, QueuedTaskManager

__all__ = [
    "CANNOT_RESUME",
    "QueueManager",
    "QueuedTaskManager",
    "TaskStatus",
    "get_queue_manager",
    "process_file",
]
