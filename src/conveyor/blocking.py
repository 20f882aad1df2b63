"""conveyor's blocking API, for programs without an event loop::

with conveyor.blocking.open_queue("conveyor.db", handlers=registry, workers=4) as queue:
    job = queue.enqueue("resize", {"path": "a.png"})
    done = queue.wait(job.id, timeout=30)
"""

from ._blocking import BlockingQueue, open_queue

__all__ = ["BlockingQueue", "open_queue"]
