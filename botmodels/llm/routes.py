"""The language model's routes of the mounted Starlette app: a stream is a Starlette response
(BentoML's streaming APIs send raw chunks, not one SSE event per write)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from botmodels.api import json_errors
from botmodels.llm.front import LlmFrontend


def routes(front: Callable[[], LlmFrontend]) -> list[Route]:
    """`front()` is the service's LLM front (it raises 503 while the service starts).
    Each handler's name is its OpenAPI operation (botmodels/openapi.py)."""

    @json_errors
    async def chat_completions(request: Request) -> Response:
        return await front().chat(request)

    @json_errors
    async def text_completions(request: Request) -> Response:
        return await front().completions(request)

    @json_errors
    async def list_models(_: Request) -> Response:
        return JSONResponse(await front().models())

    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", text_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
    ]
