"""A FastAPI app that hands work to conveyor: each web process is a *producer* (it enqueues
and reads, and runs nothing), so any number of them share one file with the worker processes.

    uvicorn app:app --workers 2             # the web processes, in this folder
    conveyor worker --db signups.db --handlers jobs:registry   # the jobs, in another process

``CONVEYOR_DB`` names the file (default ``signups.db``, in the current folder).
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

import conveyor

DB = os.environ.get("CONVEYOR_DB", "signups.db")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # No handlers here: names are checked against what worker processes declared in the
    # file, and known_handlers lets the app start before any worker ever ran.
    async with conveyor.open_queue(DB, known_handlers=["send_welcome"]) as queue:
        app.state.queue = queue
        yield


app = FastAPI(lifespan=lifespan)


class Signup(BaseModel):
    email: str


@app.post("/signups", status_code=202)
async def sign_up(signup: Signup, request: Request) -> dict[str, int]:
    queue: conveyor.Queue = request.app.state.queue
    job = await queue.enqueue("send_welcome", {"email": signup.email})
    return {"job": job.id, "web_process": os.getpid()}


@app.get("/jobs/{job_id}")
async def job_status(job_id: int, request: Request, wait: float = 0) -> conveyor.Job:
    """The job (a route may return a Job: it is answered as ``Job.to_dict()``, with its schema
    in the OpenAPI document); with ``wait``, up to that many seconds for it to finish first."""
    queue: conveyor.Queue = request.app.state.queue
    job = await queue.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job has id {job_id}")
    if wait > 0 and not job.status.is_terminal:
        with suppress(conveyor.WaitTimeout):
            job = await queue.wait(job_id, timeout=wait)
    return job
