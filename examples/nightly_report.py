"""A nightly report that runs a chain: a schedule enqueues one job each night at 03:00 Paris
time, and that job stores the report's three steps as a chain (each runs once the one before it
completed, and gets its result).

    python examples/nightly_report.py        # runs until Ctrl-C
"""

from __future__ import annotations

from typing import Any

import trio

import conveyor

registry = conveyor.Registry()
queue: conveyor.Queue  # set by main() once the queue is open; handlers run inside it


@registry.handler("nightly")
async def nightly(payload: dict[str, Any]) -> list[int]:
    flow = conveyor.Workflow.chain(
        [
            conveyor.JobSpec("extract", {"day": payload["day"]}),
            conveyor.JobSpec("transform"),
            conveyor.JobSpec("email_report", {"to": "ops@example.com"}),
        ]
    )
    return [job.id for job in await queue.enqueue_workflow(flow)]


@registry.handler("extract")
async def extract(payload: dict[str, str]) -> dict[str, int]:
    return {"orders": 42}  # the real query would go here


@registry.handler("transform")
async def transform(payload: None) -> dict[str, float]:
    (extracted,) = conveyor.current_job().dependency_results.values()
    return {"revenue": extracted["orders"] * 9.5}


@registry.handler("email_report")
async def email_report(payload: dict[str, str]) -> str:
    (report,) = conveyor.current_job().dependency_results.values()
    return f"sent {report['revenue']:.2f} to {payload['to']}"


async def main(
    path: str = "conveyor-nightly.db", cadence: dict[str, Any] | None = None, **options: Any
) -> None:
    """Open the queue (``options`` go to ``open_queue``), store the schedule (``cadence``:
    ``schedule``'s ``every``/``cron`` arguments, 03:00 Paris time by default) and run until
    cancelled."""
    global queue
    async with conveyor.open_queue(path, handlers=registry, **options) as queue:
        await queue.schedule(
            "nightly-report",
            "nightly",
            {"day": "yesterday"},
            **(cadence or {"cron": "0 3 * * *", "timezone": "Europe/Paris"}),
        )
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
