"""conveyor embedded in a trio program: enqueue, run with retries, wait, inspect."""

import random

import trio

import conveyor

registry = conveyor.Registry()


@registry.handler("resize", max_attempts=5, backoff=conveyor.Backoff(initial=0.1, jitter=0.1))
async def resize(payload: dict[str, str]) -> dict[str, str]:
    conveyor.current_job().set_progress(0.5, "decoding")
    await trio.sleep(0.05)  # the real work would go here
    if random.random() < 0.3:
        raise OSError("flaky storage")  # retried with backoff
    return {"thumbnail": payload["path"].replace(".png", ".thumb.png")}


async def main() -> None:
    async with conveyor.open_queue("conveyor-quickstart.db", handlers=registry, workers=8) as queue:
        urgent = await queue.enqueue("resize", {"path": "cover.png"}, priority=1)
        batch = await queue.enqueue_many(
            [conveyor.JobSpec("resize", {"path": f"page-{n}.png"}, priority=5) for n in range(20)]
        )
        for job in [urgent, *batch]:
            done = await queue.wait(job.id, timeout=30)
            print(
                f"job {done.id}: {done.status.value} after {done.attempts} attempt(s)", done.result
            )
        print(await queue.stats())


trio.run(main)
