"""The vision routes of the mounted Starlette app (botmodels/vision/front.py says why they are
Starlette routes): each path, aliases included, and the front method that answers it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from botmodels.api import json_errors
from botmodels.vision.front import VisionFrontend

VISION_ROUTES = {
    "/api/vision/describe": "describe",
    "/api/vision/describe-video": "describe_video",
    "/api/vision/describe_video": "describe_video",
    "/api/vision/vqa": "vqa",
    "/api/vision/qrcode": "qrcode",
    "/api/vision/barcode": "barcode",
    "/api/vision/ocr": "ocr",
    "/ocr": "ocr",  # older botserver
    "/api/vision/analyze": "analyze",
    "/api/image/describe": "describe",  # upstream botmodels' name, deprecated
    "/api/video/describe": "describe_video",  # upstream botmodels' name, deprecated
}


def _handler(
    front: Callable[[], VisionFrontend], name: str
) -> Callable[[Request], Awaitable[Response]]:
    @json_errors
    async def handler(request: Request) -> Response:
        result = await getattr(front(), name)(request)
        return JSONResponse(result.model_dump(mode="json"))

    handler.__name__ = f"vision_{name}"  # the OpenAPI operation (botmodels/openapi.py)
    return handler


def routes(front: Callable[[], VisionFrontend]) -> list[Route]:
    """`front()` is the service's vision front (it raises 503 while the service starts)."""
    return [Route(p, _handler(front, n), methods=["POST"]) for p, n in VISION_ROUTES.items()]
