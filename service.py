"""botmodels: the entry service. Routes, auth and wiring only; models live in `runners/`.

All enabled runners share this one worker process (one torch, one CUDA context, one memory
budget); each runner's work goes through a batchable API so concurrent requests are batched.
A runner can instead be served by another botmodels (`BOTMODELS_<RUNNER>_URL`).
Importing this module loads no model: models load in a background thread once the server starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from botmodels import patches
from botmodels.api import json_errors
from botmodels.auth import Authenticator, AuthMiddleware
from botmodels.config import Quantization, get_settings
from botmodels.device import Device
from botmodels.embeddings import BATCH_ROUTE, BatchInfer, EmbeddingsFrontend, encode_batch
from botmodels.http import ErrorShapeMiddleware, LimitsMiddleware
from botmodels.keys import load_api_keys
from botmodels.outputs import OutputStore, serve_output
from botmodels.pool import RunnerPool
from botmodels.remote import RemoteRunner
from botmodels.schemas import EmbeddedText, EmbeddingResponse, Pong
from botmodels.speech import STT_ROUTE, TTS_ROUTE, SpeechFrontend
from botmodels.speech_schemas import SttJob, SttResult, TtsJob, TtsResult
from botmodels.store import load_manifest
from runners.embeddings import EmbeddingsRunner
from runners.stt import SttRunner
from runners.tts import TtsRunner

log = logging.getLogger("botmodels")
patches.apply()

settings = get_settings()
VERSION = "0.1.0"  # pyproject.toml's version; tests/test_config.py keeps them equal


def _make_embeddings(path: Path, quantization: Quantization, device: Device) -> EmbeddingsRunner:
    return EmbeddingsRunner(path, quantization=quantization, device=device)


def _make_stt(path: Path, quantization: Quantization, device: Device) -> SttRunner:
    current = get_settings()
    return SttRunner(
        path,
        quantization=quantization,
        device=device,
        max_batch_chunks=2 * current.stt_max_batch_size,
        beam_size=current.stt_beam_size,
    )


def _make_tts(path: Path, quantization: Quantization, device: Device) -> TtsRunner:
    return TtsRunner(path, quantization=quantization, device=device)


FACTORIES = {"embeddings": _make_embeddings, "stt": _make_stt, "tts": _make_tts}
# Routes whose body must be JSON: anything else is a 415 before BentoML tries to parse it.
JSON_ROUTES = frozenset({"/v1/embeddings", BATCH_ROUTE, "/api/ping"}) | {
    "/api/speech/generate",
    "/v1/audio/speech",
    STT_ROUTE,
    TTS_ROUTE,
}


def _authenticator() -> Authenticator:
    # Runs when the server builds its middleware stack (start-up), never at import.
    current = get_settings()
    return Authenticator(
        load_api_keys(current),
        tolerance_s=current.signature_tolerance_s,
        replay_ttl_s=current.replay_cache_s,
    )


class _LazyAuth(AuthMiddleware):
    def __init__(self, app: Any) -> None:
        current = get_settings()
        limit = max(current.max_upload_bytes, current.max_json_bytes)
        super().__init__(app, _authenticator(), max_body_bytes=limit)


class _Limits(LimitsMiddleware):
    def __init__(self, app: Any) -> None:
        current = get_settings()
        super().__init__(
            app,
            max_concurrency=current.max_concurrency,
            max_json_bytes=current.max_json_bytes,
            max_upload_bytes=current.max_upload_bytes,
            json_paths=JSON_ROUTES,
        )


# --- GET routes (BentoML APIs are POST-only) ---------------------------------------------------
_instance: BotModels | None = None


def _service() -> BotModels:
    if _instance is None:
        raise RuntimeError("service not started")
    return _instance


async def api_health(_: Request) -> JSONResponse:
    body, status = await _service().health()
    return JSONResponse(body, status_code=status)


async def embeddings_health(_: Request) -> JSONResponse:
    ok = await _service().runner_usable("embeddings")
    return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)


async def api_models(_: Request) -> JSONResponse:
    return JSONResponse({"models": _service().models()})


# --- speech (Starlette routes: multipart *or* raw body, binary answers; see botmodels/speech.py)
@json_errors
async def speech_to_text(request: Request) -> Response:
    return await _service().speech.api_to_text(request)


@json_errors
async def speech_detect_language(request: Request) -> Response:
    return await _service().speech.api_detect_language(request)


@json_errors
async def speech_generate(request: Request) -> Response:
    return await _service().speech.api_generate(request)


@json_errors
async def audio_transcriptions(request: Request) -> Response:
    return await _service().speech.openai_transcriptions(request)


@json_errors
async def audio_speech(request: Request) -> Response:
    return await _service().speech.openai_speech(request)


async def speech_voices(_: Request) -> JSONResponse:
    return JSONResponse({"voices": _service().speech.voices()})


async def outputs(request: Request) -> Response:
    return await serve_output(request, _service().outputs)


status_app = Starlette(
    routes=[
        Route("/api/health", api_health, methods=["GET"]),
        Route("/health", embeddings_health, methods=["GET", "HEAD"]),
        Route("/api/models", api_models, methods=["GET"]),
        Route("/api/speech/totext", speech_to_text, methods=["POST"]),
        Route("/api/speech/to-text", speech_to_text, methods=["POST"]),
        Route("/api/speech/detect_language", speech_detect_language, methods=["POST"]),
        Route("/api/speech/generate", speech_generate, methods=["POST"]),
        Route("/api/speech/voices", speech_voices, methods=["GET"]),
        Route("/v1/audio/transcriptions", audio_transcriptions, methods=["POST"]),
        Route("/v1/audio/speech", audio_speech, methods=["POST"]),
        Route("/outputs/{kind}/{name}", outputs, methods=["GET", "HEAD"]),
    ]
)


def _model_ref(kind: str) -> Any:
    """Class-level reference to the profile's stored model for `kind`, so `bentoml build` lists
    it and `bentoml export` carries it. Lazy: this only reads the manifest."""
    spec = load_manifest(settings.manifest).get(kind, {}).get(settings.profile)
    if spec is None or kind not in settings.runners or settings.remote_url(kind) is not None:
        return None
    return bentoml.models.BentoModel(spec.tag)


@bentoml.asgi_app(status_app, path="/")
@bentoml.service(
    name="botmodels",
    workers=1,
    threads=max(2, len(settings.runners)),
    http={"host": settings.host, "port": settings.port},
    traffic={"timeout": settings.request_timeout_s},
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/v1/embeddings", BATCH_ROUTE, "/livez", "/readyz", "/metrics"]},
)
class BotModels:
    embeddings_model = _model_ref("embeddings")
    stt_model = _model_ref("stt")
    tts_model = _model_ref("tts")

    def __init__(self) -> None:
        global _instance
        self.settings = get_settings()
        self.pool = RunnerPool(self.settings, FACTORIES)
        self.remotes: dict[str, RemoteRunner] = {}
        for kind, slot in self.pool.slots.items():
            if slot.remote_url is not None:
                key = load_api_keys(self.settings)[0]
                self.remotes[kind] = RemoteRunner(
                    slot.remote_url, key, self.settings.request_timeout_s
                )
        self.embeddings = EmbeddingsFrontend(
            self.settings, self.pool, self.remotes.get("embeddings")
        )
        self.outputs = OutputStore(
            self.settings.outputs_dir or self.settings.home / "outputs",
            max_age_s=self.settings.outputs_max_age_s,
            max_bytes=self.settings.outputs_max_bytes,
        )
        self.speech = SpeechFrontend(self.settings, self.pool, self.outputs, self.remotes)
        _instance = self

    def bind_batch_infer(self, batch_infer: BatchInfer) -> None:
        """Called by botmodels.patches once BentoML's dispatchers exist (see its docstring)."""
        self.embeddings.batch_infer = batch_infer

    @bentoml.on_startup
    def start_loading(self) -> None:
        def load() -> None:
            self.pool.load_all()
            patches.freeze_heap()

        threading.Thread(target=load, name="botmodels-load", daemon=True).start()

    async def __is_ready__(self) -> bool:
        if not self.pool.settled:
            return False
        return not self.pool.slots or any(
            s.state in ("ready", "remote") for s in self.pool.slots.values()
        )

    # --- status ----------------------------------------------------------------------------
    async def runner_usable(self, kind: str) -> bool:
        slot = self.pool.slot(kind)
        if slot is None:
            return False
        if slot.state == "remote":
            return await self.remotes[kind].ready()
        return slot.state == "ready"

    async def health(self) -> tuple[dict[str, Any], int]:
        kinds = list(self.pool.slots)
        usable = await asyncio.gather(*(self.runner_usable(k) for k in kinds))
        runners: dict[str, Any] = {}
        for kind, ok in zip(kinds, usable, strict=True):
            slot = self.pool.slots[kind]
            entry: dict[str, Any] = {"state": slot.state, "healthy": ok}
            if slot.error:
                entry["error"] = slot.error
            runners[kind] = entry
        failed = [k for k, ok in zip(kinds, usable, strict=True) if not ok]
        loading = [k for k in failed if self.pool.slots[k].state in ("pending", "loading")]
        if not failed:
            status = "healthy"
        elif len(loading) == len(failed):
            status = "loading"
        else:
            status = "unhealthy"
        devices = sorted({s.device for s in self.pool.slots.values() if s.device})
        body = {
            "status": status,
            "version": VERSION,
            "device": devices[0] if len(devices) == 1 else (",".join(devices) or "none"),
            "profile": self.settings.profile,
            "runners": runners,
        }
        if failed:
            body["unhealthy_runners"] = failed
        return body, 200 if not failed else 503

    def models(self) -> list[dict[str, Any]]:
        return [slot.describe() for slot in self.pool.slots.values()]

    @bentoml.api(route="/api/ping")
    async def ping(self) -> Pong:
        """Authenticated no-op: lets a client check its key (and measures framework overhead)."""
        return Pong(version=VERSION)

    # --- embeddings --------------------------------------------------------------------------
    @bentoml.api(
        route=BATCH_ROUTE,
        batchable=True,
        max_batch_size=settings.embeddings_max_batch_size,
        max_latency_ms=settings.embeddings_max_latency_ms,
    )
    def embed_batch(self, texts: list[str]) -> list[EmbeddedText]:
        """The embeddings runner: one batch of texts in, one vector per text out."""
        runner: EmbeddingsRunner = self.pool.local("embeddings")
        return encode_batch(runner.embed(texts))

    @bentoml.api(route="/v1/embeddings")
    @json_errors
    async def create_embeddings(
        self,
        input: Annotated[Any, Field(description="a string or a list of strings")],
        model: str = "",
        encoding_format: Literal["float", "base64"] = "float",
        dimensions: int | None = None,
        user: str | None = None,
    ) -> EmbeddingResponse:
        """OpenAI-compatible embeddings. `model` is accepted for compatibility; the response
        names the model actually used."""
        return await self.embeddings.create(input, encoding_format, dimensions)

    # --- speech ------------------------------------------------------------------------------
    @bentoml.api(
        route=STT_ROUTE,
        batchable=True,
        max_batch_size=settings.stt_max_batch_size,
        max_latency_ms=settings.stt_max_latency_ms,
    )
    def transcribe_batch(self, jobs: list[SttJob]) -> list[SttResult]:
        """The speech-to-text runner: one batch of jobs in, one result per job out."""
        runner: SttRunner = self.pool.local("stt")
        return runner.transcribe(jobs)

    @bentoml.api(
        route=TTS_ROUTE,
        batchable=True,
        max_batch_size=settings.tts_max_batch_size,
        max_latency_ms=settings.tts_max_latency_ms,
    )
    def synthesize_batch(self, jobs: list[TtsJob]) -> list[TtsResult]:
        """The text-to-speech runner: one batch of jobs in, one audio per job out."""
        runner: TtsRunner = self.pool.local("tts")
        return runner.synthesize(jobs)


# Outermost first. Errors are shaped last; credentials are checked before anything looks at the
# body (a wrong key is a 401 whatever the body); then limits and content type.
_service_obj: Any = BotModels  # a bentoml.Service once decorated; its stubs don't say so
_service_obj.add_asgi_middleware(ErrorShapeMiddleware)
_service_obj.add_asgi_middleware(_LazyAuth)
_service_obj.add_asgi_middleware(_Limits)
