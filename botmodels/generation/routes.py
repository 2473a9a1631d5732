"""The generation domain's Starlette routes: generated files and jobs (BentoML APIs are POST-only;
these are GET, HEAD and DELETE). Its POST routes are BentoML APIs in service.py.

The handlers reach the running service through getters: the routes are mounted when service.py
is imported, the service is constructed later (and until then a getter raises a 503).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from botmodels.errors import NotFoundError, error_response, error_type
from botmodels.generation.jobs import JobManager, result_status
from botmodels.outputs import OutputStore, content_type


def _no_job() -> Response:
    return error_response(NotFoundError("no such job (or it expired)", code="job_not_found"))


def generation_routes(
    outputs: Callable[[], OutputStore], jobs: Callable[[], JobManager]
) -> list[Route]:
    """`/outputs/{kind}/{name}` and `/api/jobs/{job_id}[/result|/cancel]`."""

    async def get_output(request: Request) -> Response:
        """Generated files: open without a key (botserver hands the URL to bot scripts); the
        128-bit random name is the secret, and only names of that exact shape resolve."""
        path = outputs().resolve(request.url.path)
        if path is None:
            return error_response(NotFoundError("no such output (it may have expired)"))
        # nosniff: a browser opening the URL must take the type we send, never guess it.
        return FileResponse(
            path, media_type=content_type(path), headers={"X-Content-Type-Options": "nosniff"}
        )

    async def get_job(request: Request) -> Response:
        job = await jobs().get(request.path_params["job_id"])
        if job is None:
            return _no_job()
        return JSONResponse(job.public())

    async def get_job_result(request: Request) -> Response:
        """The finished job's generation response (200), or its status while it runs (202); a
        cancelled job answers as cancelled; a failed one with its error, in the one shape."""
        job = await jobs().get(request.path_params["job_id"])
        if job is None:
            return _no_job()
        if job.status == "completed" and job.result is not None:
            if outputs().resolve(str(job.result.get("file_path"))) is None:
                return error_response(
                    NotFoundError("this job's file has expired", code="result_expired")
                )
            return JSONResponse(job.result)
        if job.status in ("failed", "interrupted") and job.error is not None:
            status = job.http_status or result_status(job.status, job.error)
            # The record says why the job ended; this answer's type follows this answer's
            # status (an interrupted job's 409: nothing to fetch, resubmit it).
            error = {**job.error, "type": error_type(status)}
            return JSONResponse({"error": error}, status_code=status)
        if job.status == "cancelled":
            return JSONResponse(
                {"status": "cancelled", "file_path": None, "error": None, "job_id": job.id}
            )
        return JSONResponse(job.public(), status_code=202)

    async def cancel_job(request: Request) -> Response:
        job = await jobs().cancel(request.path_params["job_id"])
        if job is None:
            return _no_job()
        return JSONResponse(job.public())

    return [
        Route("/outputs/{kind}/{name}", get_output, methods=["GET", "HEAD"]),
        Route("/api/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/api/jobs/{job_id}", cancel_job, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/result", get_job_result, methods=["GET"]),
        Route("/api/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    ]
