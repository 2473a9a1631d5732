"""The speech routes of the mounted Starlette app: multipart *or* raw body, binary answers
(botmodels/speech/front.py says why they are Starlette routes)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from botmodels.api import json_errors
from botmodels.speech.front import SpeechFrontend


def routes(front: Callable[[], SpeechFrontend]) -> list[Route]:
    """`front()` is the service's speech front (it raises 503 while the service starts).
    Each handler's name is its OpenAPI operation (botmodels/openapi.py)."""

    @json_errors
    async def speech_to_text(request: Request) -> Response:
        return await front().api_to_text(request)

    @json_errors
    async def speech_detect_language(request: Request) -> Response:
        return await front().api_detect_language(request)

    @json_errors
    async def speech_generate(request: Request) -> Response:
        return await front().api_generate(request)

    @json_errors
    async def audio_transcriptions(request: Request) -> Response:
        return await front().openai_transcriptions(request)

    @json_errors
    async def audio_speech(request: Request) -> Response:
        return await front().openai_speech(request)

    @json_errors
    async def editor_tts(request: Request) -> Response:
        return await front().editor_tts(request)

    @json_errors
    async def speech_voices(_: Request) -> JSONResponse:
        speech = front()
        voices = await speech.voices()
        return JSONResponse({"voices": voices, "aliases": speech.voice_aliases()})

    return [
        Route("/api/speech/totext", speech_to_text, methods=["POST"]),
        Route("/api/speech/to-text", speech_to_text, methods=["POST"]),
        Route("/api/speech/detect_language", speech_detect_language, methods=["POST"]),
        Route("/api/speech/generate", speech_generate, methods=["POST"]),
        Route("/api/speech/voices", speech_voices, methods=["GET"]),
        Route("/v1/audio/transcriptions", audio_transcriptions, methods=["POST"]),
        Route("/v1/audio/speech", audio_speech, methods=["POST"]),
        Route("/api/audio/tts", editor_tts, methods=["POST"]),  # botserver's video editor
    ]
