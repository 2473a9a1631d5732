"""The video editor's routes of the mounted Starlette app, and the front method behind each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from botmodels.api import json_errors
from botmodels.editor.front import EditorFrontend

EDITOR_ROUTES = {
    "/api/audio/transcribe": "transcribe",
    "/api/audio/waveform": "waveform",
    "/api/audio/detect-beats": "detect_beats",
    "/api/video/remove-background": "remove_background",
    "/api/video/enhance": "enhance",
    "/api/video/enhance/jobs": "enhance_job",
    "/api/video/remove-background/jobs": "remove_background_job",
}


def _handler(
    front: Callable[[], EditorFrontend], name: str
) -> Callable[[Request], Awaitable[Response]]:
    @json_errors
    async def handler(request: Request) -> Response:
        result = await getattr(front(), name)(request)
        if isinstance(result, Response):  # a job, 202
            return result
        return JSONResponse(result.model_dump(mode="json"))

    handler.__name__ = f"editor_{name}"  # the OpenAPI operation (botmodels/openapi.py)
    return handler


def routes(front: Callable[[], EditorFrontend]) -> list[Route]:
    """`front()` is the service's editor front (it raises 503 while the service starts)."""
    return [Route(p, _handler(front, n), methods=["POST"]) for p, n in EDITOR_ROUTES.items()]
