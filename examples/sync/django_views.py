"""Django views enqueueing through conveyor's blocking API (route them in your urls.py)."""

import json

from django.http import HttpRequest, JsonResponse
from jobs import queue


def sign_up(request: HttpRequest) -> JsonResponse:
    job = queue().enqueue("send_welcome", {"email": json.loads(request.body)["email"]})
    return JsonResponse({"job": job.id}, status=202)


def job_status(request: HttpRequest, job_id: int) -> JsonResponse:
    job = queue().get(job_id)
    if job is None:
        return JsonResponse({"error": f"no job has id {job_id}"}, status=404)
    return JsonResponse({"id": job.id, "status": job.status.value, "result": job.result})
