"""A Flask app enqueueing through conveyor's blocking API.

flask --app flask_app run        # in this folder
"""

from flask import Flask, request
from jobs import queue

app = Flask(__name__)


@app.post("/signups")
def sign_up() -> tuple[dict[str, int], int]:
    job = queue().enqueue("send_welcome", {"email": request.get_json()["email"]})
    return {"job": job.id}, 202


@app.get("/jobs/<int:job_id>")
def job_status(job_id: int) -> tuple[dict[str, object], int]:
    job = queue().get(job_id)
    if job is None:
        return {"error": f"no job has id {job_id}"}, 404
    return {"id": job.id, "status": job.status.value, "result": job.result}, 200
