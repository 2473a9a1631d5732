"""The data routes of the mounted Starlette app: `/api/detect` reads its body itself, so that
parsing a large table runs off the event loop and a missing column answers with the fields the
rows have (botmodels/data/front.py)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from botmodels.api import json_errors
from botmodels.data.front import DataFrontend


def routes(front: Callable[[], DataFrontend]) -> list[Route]:
    """`front()` is the service's data front (it raises 503 while the service starts).
    Each handler's name is its OpenAPI operation (botmodels/openapi.py)."""

    @json_errors
    async def data_detect(request: Request) -> Response:
        return await front().api_detect(request)

    return [Route("/api/detect", data_detect, methods=["POST"])]
