"""A Starlette app that serves conveyor's own HTTP API and dashboard under ``/queue/``, beside
routes of its own, and runs the jobs in the same process.

    uvicorn mounted:app             # in this folder; the dashboard at http://127.0.0.1:8000/queue/

``CONVEYOR_DB`` names the file (default ``signups.db``, in the current folder);
``CONVEYOR_TOKEN``, if set, is the bearer token the API and the dashboard ask for.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from jobs import registry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import conveyor
from conveyor.service import Service

DB = os.environ.get("CONVEYOR_DB", "signups.db")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with conveyor.open_queue(DB, handlers=registry) as queue:
        # The service refuses requests naming another host than these (DNS rebinding): give
        # the names clients use, as `conveyor serve --allowed-host` does.
        service = Service(
            queue,
            registry=registry,
            token=os.environ.get("CONVEYOR_TOKEN"),
            allowed_hosts=["localhost"],
        )
        app.mount("/queue", service.asgi)
        app.state.queue = queue
        try:
            yield
        finally:
            service.close()


async def sign_up(request: Request) -> JSONResponse:
    queue: conveyor.Queue = request.app.state.queue
    signup = await request.json()
    job = await queue.enqueue("send_welcome", {"email": signup["email"]})
    # A Job is JSON-ready through to_dict(); under FastAPI a route may return it as it is.
    return JSONResponse(job.to_dict(), status_code=202)


app = Starlette(routes=[Route("/signups", sign_up, methods=["POST"])], lifespan=lifespan)
