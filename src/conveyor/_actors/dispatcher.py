"""The dispatcher: knows the free worker slots and which worker runs which job (DESIGN §3).

It keeps no copy of pending jobs: when a slot is free and work may be ready it asks the store to
claim that many, and hands what comes back to the workers. It is the only owner of the running
jobs' cancel scopes, so "cancel the running job J" is a message to it.
"""

from __future__ import annotations

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .messages import (
    Assignment,
    CancelRunning,
    Claim,
    Claimed,
    Close,
    DispatcherMessage,
    InterruptAll,
    Outcome,
    SlotFree,
    StopReason,
    StoreCommand,
    WorkReady,
    tell,
)


class Dispatcher:
    def __init__(
        self,
        *,
        slots: int,
        inbox: MemoryObjectReceiveStream[DispatcherMessage],
        store: MemoryObjectSendStream[StoreCommand],
        workers: MemoryObjectSendStream[Assignment],
    ) -> None:
        self._slots = slots
        self._inbox = inbox
        self._store = store
        self._workers = workers
        self._running: dict[int, Assignment] = {}
        self._claim_in_flight = False
        # Until a claim comes back short, there may be ready jobs in the database.
        self._work_may_be_ready = True
        self._closing: anyio.Event | None = None

    async def run(self) -> None:
        async with self._inbox, self._workers:
            await self._claim_if_useful()
            async for message in self._inbox:
                await self._handle(message)
                # Take in whatever else is already here (slots freed together) before claiming,
                # so that one claim fills them all.
                while True:
                    try:
                        await self._handle(self._inbox.receive_nowait())
                    except anyio.WouldBlock:
                        break
                await self._claim_if_useful()
                if self._closing is not None and self._is_idle():
                    self._closing.set()

    async def _handle(self, message: DispatcherMessage) -> None:
        if isinstance(message, WorkReady):
            self._work_may_be_ready = True
        elif isinstance(message, Claimed):
            self._claim_in_flight = False
            self._work_may_be_ready = len(message.jobs) == message.requested
            await self._start(message)
        elif isinstance(message, SlotFree):
            del self._running[message.job_id]
        elif isinstance(message, CancelRunning):
            self._cancel(message.job_id, "cancel")
        elif isinstance(message, Close):
            self._closing = message.idle
        elif isinstance(message, InterruptAll):
            for job_id in list(self._running):
                self._cancel(job_id, "shutdown")

    async def _start(self, claimed: Claimed) -> None:
        for job in claimed.jobs:
            if self._closing is not None:
                # Claimed just before the queue began to close: give the job back untouched.
                await self._store.send(Outcome(job.id, job.attempts, "interrupted"))
                continue
            assignment = Assignment(job, anyio.CancelScope())
            self._running[job.id] = assignment
            tell(self._workers, assignment)

    def _cancel(self, job_id: int, reason: StopReason) -> None:
        # The job may have finished already (its SlotFree came first): nothing to cancel then.
        assignment = self._running.get(job_id)
        if assignment is not None and assignment.reason is None:
            assignment.reason = reason
            assignment.scope.cancel()

    async def _claim_if_useful(self) -> None:
        free = self._slots - len(self._running)
        if (
            free > 0
            and self._work_may_be_ready
            and not self._claim_in_flight
            and self._closing is None
        ):
            self._claim_in_flight = True
            await self._store.send(Claim(free))

    def _is_idle(self) -> bool:
        return not self._running and not self._claim_in_flight
