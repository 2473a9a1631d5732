"""The rerank route of the mounted Starlette app: `POST /v1/rerank` (botmodels/rerank/front.py).

A Starlette route, not a BentoML API: `documents` takes strings or `{text}` objects, checked by
hand so that each error names the item, in the one error shape."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from botmodels.api import json_errors
from botmodels.rerank.front import RerankFrontend


def routes(front: Callable[[], RerankFrontend]) -> list[Route]:
    """`front()` is the service's rerank front (it raises 503 while the service starts).
    The handler's name is its OpenAPI operation (botmodels/openapi.py)."""

    @json_errors
    async def rerank(request: Request) -> Response:
        return await front().api_rerank(request)

    return [Route("/v1/rerank", rerank, methods=["POST"])]
