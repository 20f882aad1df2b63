"""A queue in a child process, for the tests that kill processes (run by test_persistence.py).

python crash_child.py produce DB   enqueue jobs from 20 tasks forever, print "ack ID" each
python crash_child.py killer DB    run a job whose handler SIGKILLs its own process
python crash_child.py hold DB      open the queue, print "open", sleep
"""

from __future__ import annotations

import os
import signal
import sys

import trio

import conveyor

registry = conveyor.Registry()


@registry.handler("noop")
async def noop(payload: object) -> object:
    return payload


@registry.handler("suicide", max_attempts=3)
async def suicide(payload: None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def produce(db: str) -> None:
    async with conveyor.open_queue(db, handlers=registry, workers=4) as queue:

        async def producer(n: int) -> None:
            for i in range(1_000_000):
                job = await queue.enqueue("noop", {"producer": n, "i": i})
                say(f"ack {job.id}")

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(producer, n)


async def killer(db: str) -> None:
    async with conveyor.open_queue(db, handlers=registry, workers=1) as queue:
        job = await queue.enqueue("suicide", idempotency_key="the-one")
        say(f"status {(await queue.wait(job.id)).status.value}")


async def hold(db: str) -> None:
    async with conveyor.open_queue(db, handlers=registry):
        say("open")
        await trio.sleep_forever()


if __name__ == "__main__":
    mode, db = sys.argv[1], sys.argv[2]
    trio.run({"produce": produce, "killer": killer, "hold": hold}[mode], db)
