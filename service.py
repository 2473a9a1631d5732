"""botmodels: the entry service. Routes, auth and wiring only; models live in `runners/`.

All enabled runners share this one worker process (one torch, one CUDA context, one memory
budget); each runner's work goes through a batchable API so concurrent requests are batched.
A runner can instead be served by another botmodels (`BOTMODELS_<RUNNER>_URL`).
Importing this module loads no model: models load in a background thread once the server starts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from botmodels import openapi, patches, routes
from botmodels.api import batch_errors, json_errors
from botmodels.auth import Authenticator, AuthMiddleware
from botmodels.config import Quantization, get_settings
from botmodels.device import Device
from botmodels.dispatch import BatchInfer
from botmodels.embeddings.front import BATCH_API, BATCH_ROUTE, EmbeddingsFrontend
from botmodels.embeddings.schemas import EmbeddedText, EmbeddingResponse
from botmodels.errors import (
    BotModelsError,
    NotFoundError,
    RunnerUnavailable,
    error_response,
    error_type,
    handle_exception,
)
from botmodels.generation.front import (
    IMAGE_BATCH_ROUTE,
    VIDEO_BATCH_ROUTE,
    GeneratedFile,
    GenerationFrontend,
    GenerationResponse,
    ImagesResponse,
    ImageTask,
    VideoTask,
)
from botmodels.generation.jobs import JobManager, JobStore
from botmodels.http import ErrorShapeMiddleware, LimitsMiddleware
from botmodels.keys import load_api_keys
from botmodels.outputs import OutputStore, content_type
from botmodels.peers import RunnerCheck, RunnerRouteGuard
from botmodels.pool import RunnerPool
from botmodels.remote import RemoteRunner
from botmodels.shutdown import Shutdown, ShutdownMiddleware
from botmodels.speech.front import STT_ROUTE, TTS_ROUTE, SpeechFrontend
from botmodels.speech.schemas import SttJob, SttResult, TtsJob, TtsResult
from botmodels.status import Pong
from botmodels.store import find_stored, load_manifest
from botmodels.vision.front import (
    CAPTION_ROUTE,
    OCR_ROUTE,
    VQA_ROUTE,
    VisionFrontend,
    answer_items,
    caption_items,
    ocr_items,
)
from botmodels.vision.schemas import OcrAnswerOut, OcrJobIn, VisionAnswerOut, VisionJobIn
from runners.embeddings import EmbeddingsRunner
from runners.image import ImageRunner
from runners.ocr import OcrRunner
from runners.stt import SttRunner
from runners.tts import TtsRunner
from runners.video import VideoRunner
from runners.vision import VisionRunner

log = logging.getLogger("botmodels")
patches.apply()

settings = get_settings()
VERSION = "0.1.0"  # pyproject.toml's version; tests/test_config.py keeps them equal
shutdown = Shutdown(settings.shutdown_grace_s)  # botmodels/shutdown.py: what SIGTERM does


def _make_embeddings(path: Path, quantization: Quantization, device: Device) -> EmbeddingsRunner:
    settings = get_settings()
    return EmbeddingsRunner(
        path,
        quantization=quantization,
        device=device,
        torchscript=settings.embeddings_torchscript,
        workers=settings.embeddings_workers,
        threads=settings.threads,
    )


def _make_image(path: Path, quantization: Quantization, device: Device) -> ImageRunner:
    return ImageRunner(path, quantization=quantization, device=device)


def _make_video(path: Path, quantization: Quantization, device: Device) -> VideoRunner:
    return VideoRunner(path, quantization=quantization, device=device)


_vision_runners: dict[Path, VisionRunner] = {}


def _make_vision(path: Path, quantization: Quantization, device: Device) -> VisionRunner:
    # vision.gpu and vqa.gpu name one stored BLIP-2: both kinds share one loaded copy.
    if path not in _vision_runners:
        _vision_runners[path] = VisionRunner(
            path,
            quantization=quantization,
            device=device,
            max_new_tokens=settings.vision_max_new_tokens,
        )
    return _vision_runners[path]


def _make_ocr(path: Path, quantization: Quantization, device: Device) -> OcrRunner:
    return OcrRunner(path, quantization=quantization, device=device)


def _make_stt(path: Path, quantization: Quantization, device: Device) -> SttRunner:
    current = get_settings()
    return SttRunner(
        path,
        quantization=quantization,
        device=device,
        max_batch_chunks=2 * current.stt_max_batch_size,
        beam_size=current.stt_beam_size,
        pack=current.stt_pack,
    )


def _make_tts(path: Path, quantization: Quantization, device: Device) -> TtsRunner:
    current = get_settings()
    return TtsRunner(
        path,
        quantization=quantization,
        device=device,
        max_chars=current.tts_max_chars,
        max_phonemes=current.tts_max_phonemes,
    )


FACTORIES = {
    "embeddings": _make_embeddings,
    "vision": _make_vision,
    "vqa": _make_vision,
    "ocr": _make_ocr,
    "stt": _make_stt,
    "tts": _make_tts,
    "image": _make_image,
    "video": _make_video,
}


def _authenticator() -> Authenticator:
    # Runs when the server builds its middleware stack (start-up), never at import.
    current = get_settings()
    return Authenticator(
        load_api_keys(current),
        tolerance_s=current.signature_tolerance_s,
        replay_ttl_s=current.replay_cache_s,
        replay_path=current.replay_cache_path,
    )


class _LazyAuth(AuthMiddleware):
    def __init__(self, app: Any) -> None:
        current = get_settings()
        limit = max(current.max_upload_bytes, current.max_json_bytes)
        super().__init__(app, _authenticator(), max_body_bytes=limit)


class _RunnerGuard(RunnerRouteGuard):
    def __init__(self, app: Any) -> None:
        checks: dict[str, RunnerCheck] = {}

        def table() -> dict[str, RunnerCheck]:
            if not checks:
                checks.update(_service().runner_checks())
            return checks

        super().__init__(app, table)


class _Limits(LimitsMiddleware):
    def __init__(self, app: Any) -> None:
        current = get_settings()
        super().__init__(
            app,
            max_concurrency=current.max_concurrency,
            max_json_bytes=current.max_json_bytes,
            max_upload_bytes=current.max_upload_bytes,
            json_paths=routes.JSON_PATHS,
        )


# --- GET routes (BentoML APIs are POST-only) ---------------------------------------------------
_instance: BotModels | None = None


def _service() -> BotModels:
    if _instance is None:
        raise RunnerUnavailable(
            "botmodels is starting; retry shortly", headers={"Retry-After": "2"}
        )
    return _instance


async def api_health(_: Request) -> JSONResponse:
    if _instance is None:  # the worker is up, the service not yet constructed
        return JSONResponse({"status": "starting", "version": VERSION}, status_code=503)
    body, status = await _instance.health()
    return JSONResponse(body, status_code=status)


async def embeddings_health(_: Request) -> JSONResponse:
    if shutdown.draining:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    ok = _instance is not None and await _instance.runner_usable("embeddings")
    return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)


async def api_models(_: Request) -> JSONResponse:
    return JSONResponse({"models": _instance.models() if _instance is not None else []})


async def get_output(request: Request) -> Response:
    """Generated files: open without a key (botserver hands the URL to bot scripts); the
    128-bit random name is the secret, and only names of that exact shape resolve."""
    outputs = _service().outputs
    path = outputs.resolve(request.url.path)
    if path is None:
        return error_response(NotFoundError("no such output (it may have expired)"))
    # nosniff: a browser opening the URL must take the type we send, never guess from the bytes.
    return FileResponse(
        path, media_type=content_type(path), headers={"X-Content-Type-Options": "nosniff"}
    )


async def get_job(request: Request) -> Response:
    job = await _service().jobs.get(request.path_params["job_id"])
    if job is None:
        return error_response(NotFoundError("no such job (or it expired)", code="job_not_found"))
    return JSONResponse(job.public())


async def get_job_result(request: Request) -> Response:
    """The finished job's generation response (200), or its status while it runs (202); a
    cancelled job answers as cancelled; a failed one with its error, in the one shape."""
    job = await _service().jobs.get(request.path_params["job_id"])
    if job is None:
        return error_response(NotFoundError("no such job (or it expired)", code="job_not_found"))
    if job.status == "completed" and job.result is not None:
        if _service().outputs.resolve(str(job.result.get("file_path"))) is None:
            return error_response(
                NotFoundError("this job's file has expired", code="result_expired")
            )
        return JSONResponse(job.result)
    if job.status in ("failed", "interrupted") and job.error is not None:
        status = 500 if job.status == "failed" and job.error.get("type") == "server_error" else 409
        if job.error.get("code") in ("runner_unavailable", "runner_loading", "runner_failed"):
            status = 503
        # The record says why the job ended; this answer's type follows this answer's status
        # (an interrupted job's 409: nothing to fetch, resubmit it).
        error = {**job.error, "type": error_type(status)}
        return JSONResponse({"error": error}, status_code=status)
    if job.status == "cancelled":
        return JSONResponse(
            {"status": "cancelled", "file_path": None, "error": None, "job_id": job.id}
        )
    return JSONResponse(job.public(), status_code=202)


async def cancel_job(request: Request) -> Response:
    job = await _service().jobs.cancel(request.path_params["job_id"])
    if job is None:
        return error_response(NotFoundError("no such job (or it expired)", code="job_not_found"))
    return JSONResponse(job.public())


def _vision_route(name: str) -> Callable[[Request], Awaitable[Response]]:
    """A vision route (botmodels/vision.py says why these are Starlette routes)."""

    @json_errors
    async def handler(request: Request) -> Response:
        result = await getattr(_service().vision, name)(request)
        return JSONResponse(result.model_dump(mode="json"))

    handler.__name__ = f"vision_{name}"
    return handler


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
}


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


status_app = Starlette(
    routes=[
        Route("/api/health", api_health, methods=["GET"]),
        Route("/health", embeddings_health, methods=["GET", "HEAD"]),
        Route("/api/models", api_models, methods=["GET"]),
        Route("/outputs/{kind}/{name}", get_output, methods=["GET", "HEAD"]),
        Route("/api/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/api/jobs/{job_id}", cancel_job, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/result", get_job_result, methods=["GET"]),
        Route("/api/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        *(Route(p, _vision_route(n), methods=["POST"]) for p, n in VISION_ROUTES.items()),
        Route("/api/speech/totext", speech_to_text, methods=["POST"]),
        Route("/api/speech/to-text", speech_to_text, methods=["POST"]),
        Route("/api/speech/detect_language", speech_detect_language, methods=["POST"]),
        Route("/api/speech/generate", speech_generate, methods=["POST"]),
        Route("/api/speech/voices", speech_voices, methods=["GET"]),
        Route("/v1/audio/transcriptions", audio_transcriptions, methods=["POST"]),
        Route("/v1/audio/speech", audio_speech, methods=["POST"]),
    ],
    exception_handlers={BotModelsError: handle_exception},
)


def _model_ref(kind: str) -> Any:
    """Class-level reference to the profile's stored model for `kind`, so `bentoml build` lists
    it and `bentoml export` carries it. Reads the manifest and the store's index, loads nothing.

    A model missing from the store is not referenced: `bentoml serve` refuses to start at all
    over a missing class-level model, and we want the other runners up and the missing one
    reported by /api/health instead."""
    spec = load_manifest(settings.manifest).get(kind, {}).get(settings.profile)
    if spec is None or kind not in settings.runners or settings.remote_url(kind) is not None:
        return None
    if find_stored(spec.tag) is None:
        log.warning("model %s is not in the store; runner %s will report it", spec.tag, kind)
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
    tracing={"excluded_urls": routes.UNTRACED_PATHS},
)
class BotModels:
    embeddings_model = _model_ref("embeddings")
    image_model = _model_ref("image")
    video_model = _model_ref("video")
    vision_model = _model_ref("vision")
    vqa_model = _model_ref("vqa")
    ocr_model = _model_ref("ocr")
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
            self.settings.outputs_root,
            self.settings.outputs_max_age_s,
            self.settings.outputs_max_bytes,
        )
        self.generation = GenerationFrontend(self.settings, self.pool, self.outputs)
        self.jobs = JobManager(
            JobStore(self.settings.jobs_path), self.generation, self.settings.outputs_max_age_s
        )
        self.vision = VisionFrontend(self.settings, self.pool, self.remotes)
        self.speech = SpeechFrontend(self.settings, self.pool, self.outputs, self.remotes)
        _instance = self

    def bind_batch_infer(self, batch_infer: BatchInfer) -> None:
        """Called by botmodels.dispatch.wire_service once BentoML's dispatchers exist."""
        if self.settings.embeddings_batching:
            self.embeddings.batch_infer = batch_infer
        self.generation.batch_infer = batch_infer
        self.vision.batch_infer = batch_infer
        self.speech.batch_infer = batch_infer

    def runner_checks(self) -> dict[str, RunnerCheck]:
        """What a `/runners/*` call from a peer must pass (botmodels/peers.py)."""
        return {
            BATCH_ROUTE: self.embeddings.check_runner_call,
            CAPTION_ROUTE: functools.partial(self.vision.check_runner_call, "vision"),
            VQA_ROUTE: functools.partial(self.vision.check_runner_call, "vqa"),
            OCR_ROUTE: functools.partial(self.vision.check_runner_call, "ocr"),
            IMAGE_BATCH_ROUTE: functools.partial(self.generation.check_runner_call, "image"),
            VIDEO_BATCH_ROUTE: functools.partial(self.generation.check_runner_call, "video"),
            STT_ROUTE: functools.partial(self.speech.check_runner_call, "stt"),
            TTS_ROUTE: functools.partial(self.speech.check_runner_call, "tts"),
        }

    def batch_concurrency(self) -> dict[str, int]:
        """Batches each batchable API may run at once (BentoML's dispatcher allows one)."""
        return {BATCH_API: self.embeddings.concurrency}

    @bentoml.on_startup
    def start_loading(self) -> None:
        def load() -> None:
            self.pool.load_all()
            patches.freeze_heap()

        threading.Thread(target=load, name="botmodels-load", daemon=True).start()

    @bentoml.on_startup
    def take_over_signals(self) -> None:
        """SIGTERM drains instead of stopping at once (botmodels/shutdown.py); runs inside the
        server, after uvicorn installed the handlers it is passed on to."""
        shutdown.on_drain(self.stop_generations)
        shutdown.install()

    async def stop_generations(self) -> None:
        """Draining: stop every generation at its next step; wait for the jobs to end."""
        await self.jobs.interrupt_all()  # and every blocking generation (frontend.cancel_all)
        await self.jobs.wait_idle()

    @bentoml.on_shutdown
    async def interrupt_jobs(self) -> None:
        """The server is stopping (after a drain, or without one): no job is left `running`."""
        await self.jobs.interrupt_all()

    async def __is_ready__(self) -> bool:
        if shutdown.draining or not self.pool.settled:
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
        if self.remotes:
            usable = list(await asyncio.gather(*(self.runner_usable(k) for k in kinds)))
        else:  # no task per runner: a probe is answered in the loop turn it started in
            usable = [self.pool.slots[k].state == "ready" for k in kinds]
        runners: dict[str, Any] = {}
        for kind, ok in zip(kinds, usable, strict=True):
            slot = self.pool.slots[kind]
            entry: dict[str, Any] = {"state": slot.state, "healthy": ok}
            if slot.error:
                entry["error"] = slot.error
            runners[kind] = entry
        failed = [k for k, ok in zip(kinds, usable, strict=True) if not ok]
        loading = [k for k in failed if self.pool.slots[k].state in ("pending", "loading")]
        if shutdown.draining:
            status = "shutting_down"
        elif not failed:
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
        return body, 200 if not failed and not shutdown.draining else 503

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
    async def embed_batch(self, texts: list[str]) -> list[EmbeddedText]:
        """The embeddings runner: one batch of texts in, one vector per text out."""
        return await self.embeddings.run_local(texts)

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

    # --- vision (public routes: VISION_ROUTES above) -----------------------------------------
    @bentoml.api(
        route=CAPTION_ROUTE,
        batchable=True,
        max_batch_size=settings.vision_max_batch_size,
        max_latency_ms=settings.vision_max_latency_ms,
    )
    @batch_errors
    def caption_batch(self, items: list[VisionJobIn]) -> list[VisionAnswerOut]:
        """The caption runner: one batch of images (and optional prompts) in, captions out.
        In-process the items are runners.vision.VisionJob objects (no PNG round trip)."""
        return caption_items(self.pool.local("vision"), items)

    @bentoml.api(
        route=VQA_ROUTE,
        batchable=True,
        max_batch_size=settings.vqa_max_batch_size,
        max_latency_ms=settings.vqa_max_latency_ms,
    )
    @batch_errors
    def vqa_batch(self, items: list[VisionJobIn]) -> list[VisionAnswerOut]:
        """The VQA runner: one batch of (image, question) in, answers out."""
        return answer_items(self.pool.local("vqa"), items)

    @bentoml.api(
        route=OCR_ROUTE,
        batchable=True,
        max_batch_size=settings.ocr_max_batch_size,
        max_latency_ms=settings.ocr_max_latency_ms,
    )
    @batch_errors
    def ocr_batch(self, items: list[OcrJobIn]) -> list[OcrAnswerOut]:
        """The OCR runner: one batch of (PNG, language) in, text and confidences out."""
        return ocr_items(self.pool.local("ocr"), items)

    # --- image and video generation ------------------------------------------------------------
    @bentoml.api(
        route=IMAGE_BATCH_ROUTE,
        batchable=True,
        max_batch_size=settings.image_max_batch_size,
        max_latency_ms=settings.image_max_latency_ms,
    )
    def generate_images(self, tasks: list[ImageTask]) -> list[GeneratedFile]:
        """The image runner: same-shape tasks share one pipeline call; writes the PNGs."""
        return self.generation.run_image_batch(tasks)

    @bentoml.api(
        route=VIDEO_BATCH_ROUTE,
        batchable=True,
        max_batch_size=settings.video_max_batch_size,
        max_latency_ms=settings.video_max_latency_ms,
    )
    def generate_videos(self, tasks: list[VideoTask]) -> list[GeneratedFile]:
        """The video runner: same-shape tasks share one pipeline call; writes the MP4s."""
        return self.generation.run_video_batch(tasks)

    @bentoml.api(route="/api/image/generate")
    @json_errors
    async def image_generate(
        self,
        prompt: Any = None,
        steps: Any = None,
        width: Any = None,
        height: Any = None,
        guidance_scale: Any = None,
        seed: Any = None,
        negative_prompt: Any = None,
        model: Any = None,
    ) -> GenerationResponse:
        """botserver's IMAGE keyword: blocks until the PNG is written under /outputs/images/.
        Fields are checked by hand so that each error names its rule (see botmodels.generation).
        """
        self.generation.check_model("image", model)
        task = self.generation.check_image(
            prompt=prompt,
            negative_prompt=negative_prompt,
            steps=steps,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
            seed=seed,
        )
        return await self.generation.generate("image", task)

    @bentoml.api(route="/api/video/generate")
    @json_errors
    async def video_generate(
        self,
        prompt: Any = None,
        num_frames: Any = None,
        fps: Any = None,
        steps: Any = None,
        width: Any = None,
        height: Any = None,
        guidance_scale: Any = None,
        seed: Any = None,
        negative_prompt: Any = None,
        model: Any = None,
    ) -> GenerationResponse:
        """botserver's VIDEO keyword: blocks until the H.264 MP4 is written under
        /outputs/videos/. For work longer than the caller's timeout, use /api/video/jobs."""
        self.generation.check_model("video", model)
        task = self.generation.check_video(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_frames=num_frames,
            fps=fps,
            steps=steps,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
            seed=seed,
        )
        return await self.generation.generate("video", task)

    @bentoml.api(route="/api/image/jobs")
    @json_errors
    async def image_job(
        self,
        prompt: Any = None,
        steps: Any = None,
        width: Any = None,
        height: Any = None,
        guidance_scale: Any = None,
        seed: Any = None,
        negative_prompt: Any = None,
        model: Any = None,
    ) -> dict[str, Any]:
        """Submit an image generation as a job: 202 with its id at once; poll
        GET /api/jobs/{id}, fetch GET /api/jobs/{id}/result, cancel POST /api/jobs/{id}/cancel.
        """
        self.generation.check_model("image", model)
        task = self.generation.check_image(
            prompt=prompt,
            negative_prompt=negative_prompt,
            steps=steps,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
            seed=seed,
        )
        job = await self.jobs.submit("image", task)
        return JSONResponse(job.public(), status_code=202)  # type: ignore[return-value]

    @bentoml.api(route="/api/video/jobs")
    @json_errors
    async def video_job(
        self,
        prompt: Any = None,
        num_frames: Any = None,
        fps: Any = None,
        steps: Any = None,
        width: Any = None,
        height: Any = None,
        guidance_scale: Any = None,
        seed: Any = None,
        negative_prompt: Any = None,
        model: Any = None,
    ) -> dict[str, Any]:
        """Submit a video generation as a job (see /api/image/jobs)."""
        self.generation.check_model("video", model)
        task = self.generation.check_video(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_frames=num_frames,
            fps=fps,
            steps=steps,
            width=width,
            height=height,
            guidance_scale=guidance_scale,
            seed=seed,
        )
        job = await self.jobs.submit("video", task)
        return JSONResponse(job.public(), status_code=202)  # type: ignore[return-value]

    @bentoml.api(route="/v1/images/generations")
    @json_errors
    async def create_images(
        self,
        ctx: bentoml.Context,
        prompt: Any = None,
        model: Any = None,
        n: Any = None,
        size: Any = None,
        response_format: Any = None,
        seed: Any = None,
        steps: Any = None,
        guidance_scale: Any = None,
        negative_prompt: Any = None,
        quality: Any = None,
        style: Any = None,
        user: Any = None,
    ) -> ImagesResponse:
        """OpenAI-compatible image generation. `quality`, `style` and `user` are accepted and
        ignored; `seed`, `steps`, `guidance_scale` and `negative_prompt` are extensions."""
        base = (
            str(self.settings.public_url) if self.settings.public_url else str(ctx.request.base_url)
        )
        return await self.generation.openai_images(
            prompt=prompt,
            model=model,
            n=n,
            size=size,
            response_format=response_format,
            seed=seed,
            steps=steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            base_url=base,
        )

    # --- speech ------------------------------------------------------------------------------
    @bentoml.api(
        route=STT_ROUTE,
        batchable=True,
        max_batch_size=settings.stt_max_batch_size,
        max_latency_ms=settings.stt_max_latency_ms,
    )
    async def transcribe_batch(self, jobs: list[SttJob]) -> list[SttResult]:
        """The speech-to-text runner: one batch of jobs in, one result per job out."""
        return await self.speech.run_local("stt", jobs)

    @bentoml.api(
        route=TTS_ROUTE,
        batchable=True,
        max_batch_size=settings.tts_max_batch_size,
        max_latency_ms=settings.tts_max_latency_ms,
    )
    @batch_errors
    async def synthesize_batch(self, jobs: list[TtsJob]) -> list[TtsResult]:
        """The text-to-speech runner: one batch of jobs in, one audio per job out."""
        return await self.speech.run_local("tts", jobs)


# Outermost first. Shutdown first (while draining, new work is refused before anything else
# runs). Errors are shaped next; credentials are checked before anything looks at the body (a
# wrong key is a 401 whatever the body); then limits and content type; then the public routes'
# rules for the runner routes that peers call.
_service_obj: Any = BotModels  # a bentoml.Service once decorated; its stubs don't say so
_service_obj.add_asgi_middleware(
    ShutdownMiddleware, state=shutdown, probe_paths=routes.HEALTH_PATHS
)
_service_obj.add_asgi_middleware(ErrorShapeMiddleware)
_service_obj.add_asgi_middleware(_LazyAuth)
_service_obj.add_asgi_middleware(_Limits)
_service_obj.add_asgi_middleware(_RunnerGuard)
# /docs.json documents every route, the mounted ones included (botmodels/openapi.py).
patches.document_service(
    _service_obj,
    lambda: openapi.build_document(_service_obj, status_app, get_settings(), version=VERSION),
)
