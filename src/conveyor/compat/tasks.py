"""The SQLite task queue's interface, over conveyor: its users change only the imports.

``from src.core.queue import TaskQueueManager, TaskStatus, TaskPriority, task_queue`` and
``from src.core.task_utils import TaskChain, TaskGroup, wait_for_task, ...`` both become
``from conveyor.compat.tasks import ...``. See the README's section on migrating.
"""

from ._task_queue import (
    RecurringTask,
    TaskChain,
    TaskGroup,
    TaskPriority,
    TaskQueueManager,
    TaskStatus,
    create_workflow,
    schedule_recurring_task,
    task_queue,
    wait_for_task,
)

__all__ = [
    "RecurringTask",
    "TaskChain",
    "TaskGroup",
    "TaskPriority",
    "TaskQueueManager",
    "TaskStatus",
    "create_workflow",
    "schedule_recurring_task",
    "task_queue",
    "wait_for_task",
]
