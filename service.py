"""botmodels: the entry service. Routes, auth and wiring only; models live in `runners/`.

All enabled runners share this one worker process (one torch, one CUDA context, one memory
budget); each runner's work goes through a batchable API so concurrent requests are batched.
A runner can instead be served by another botmodels (`BOTMODELS_<RUNNER>_URL`).
Importing this module loads no model: models load in a background thread once the server starts.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import bentoml
from pydantic import Field
from starlette.applications import Starlette

from botmodels import openapi, patches, registry, routes, status
from botmodels.api import batch_errors, json_errors
from botmodels.auth import auth_from_settings
from botmodels.config import get_settings
from botmodels.data import routes as data_routes
from botmodels.data.front import DataFrontend
from botmodels.dispatch import BatchInfer
from botmodels.editor import routes as editor_routes
from botmodels.editor.front import EditorFrontend
from botmodels.editor.rembg import SEGMENT_ROUTE, MaskJobIn, MaskOut, RembgFrontend, mask_items
from botmodels.embeddings.front import BATCH_API, BATCH_ROUTE, EmbeddingsFrontend
from botmodels.embeddings.schemas import EmbeddedText, EmbeddingResponse
from botmodels.errors import BotModelsError, RunnerUnavailable, handle_exception
from botmodels.fetch import Fetcher
from botmodels.generation.front import IMAGE_BATCH_ROUTE, VIDEO_BATCH_ROUTE, GenerationFrontend
from botmodels.generation.jobs import JobManager, job_store
from botmodels.generation.routes import generation_routes
from botmodels.generation.schemas import (
    GeneratedFile,
    GenerationResponse,
    ImageRequest,
    ImagesResponse,
    ImageTask,
    OpenAIImagesRequest,
    VideoRequest,
    VideoTask,
)
from botmodels.http import ErrorShapeMiddleware, limits_from_settings
from botmodels.keys import load_api_keys
from botmodels.llm import routes as llm_routes
from botmodels.llm.front import LlmFrontend
from botmodels.llm.proxy import OpenAIRemote
from botmodels.outputs import OutputStore
from botmodels.peers import RunnerCheck, RunnerRouteGuard
from botmodels.pool import RunnerPool, check_budgets, stored_estimates
from botmodels.remote import RemoteRunner
from botmodels.rerank import routes as rerank_routes
from botmodels.rerank.front import BATCH_ROUTE as RERANK_ROUTE
from botmodels.rerank.front import RerankFrontend
from botmodels.rerank.schemas import RerankPair, RerankScore
from botmodels.shutdown import Shutdown, ShutdownMiddleware
from botmodels.speech import routes as speech_routes
from botmodels.speech.front import STT_ROUTE, TTS_ROUTE, SpeechFrontend
from botmodels.speech.schemas import TtsJob
from botmodels.status import Pong
from botmodels.vision import routes as vision_routes
from botmodels.vision import scan as barcode_scan
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
from runners.stt import SttJob, SttResult
from runners.tts import TtsResult

patches.apply()

settings = get_settings()
if settings.memory_budget is not None or settings.gpu_memory_budget is not None:
    # Here, in the process `bentoml serve` runs first, so that it exits with the reason: raised
    # in a worker's start-up hook it would only get the worker restarted, never ready.
    check_budgets(settings, stored_estimates(settings))
VERSION = "0.1.0"  # pyproject.toml's version; tests/test_store.py keeps them equal
shutdown = Shutdown(settings.shutdown_grace_s)  # botmodels/shutdown.py: what SIGTERM does


# --- the mounted Starlette app: GET routes, and bodies a BentoML API cannot take -------------
_instance: BotModels | None = None


def _service() -> BotModels:
    if _instance is None:
        raise RunnerUnavailable(
            "botmodels is starting; retry shortly", headers={"Retry-After": "2"}
        )
    return _instance


@functools.cache  # an exception is not cached: asked again until the service exists
def _runner_checks() -> dict[str, RunnerCheck]:
    return _service().runner_checks()


status_app = Starlette(
    routes=[
        *status.routes(lambda: _instance, shutdown, VERSION),
        *generation_routes(lambda: _service().outputs, lambda: _service().jobs),
        *vision_routes.routes(lambda: _service().vision),
        *speech_routes.routes(lambda: _service().speech),
        *barcode_scan.routes(get_settings, lambda: _service().fetcher),
        *editor_routes.routes(lambda: _service().editor),
        *data_routes.routes(lambda: _service().data),
        *llm_routes.routes(lambda: _service().llm),
        *rerank_routes.routes(lambda: _service().rerank),
    ],
    exception_handlers={BotModelsError: handle_exception},
)


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
@registry.with_model_refs  # `<kind>_model`: each enabled kind's stored model, for `bentoml build`
class BotModels:
    def __init__(self) -> None:
        global _instance
        self.settings = get_settings()
        self.pool = RunnerPool(self.settings, registry.factories())
        self.remotes: dict[str, RemoteRunner] = {}
        for kind, slot in self.pool.slots.items():
            if slot.remote_url is not None:
                key = load_api_keys(self.settings)[0]
                if kind == "llm":  # any OpenAI-compatible server (botmodels/llm/proxy.py)
                    llm_key = self.settings.llm_key
                    self.remotes[kind] = OpenAIRemote(
                        slot.remote_url,
                        llm_key.get_secret_value().encode() if llm_key else key,
                        self.settings.request_timeout_s,
                    )
                    continue
                self.remotes[kind] = RemoteRunner(
                    slot.remote_url, key, self.settings.request_timeout_s
                )
        self.embeddings = EmbeddingsFrontend(
            self.settings, self.pool, self.remotes.get("embeddings")
        )
        self.outputs: OutputStore = OutputStore(
            self.settings.outputs_root,
            self.settings.outputs_max_age_s,
            self.settings.outputs_max_bytes,
        )
        self.generation = GenerationFrontend(self.settings, self.pool, self.outputs)
        self.jobs: JobManager = JobManager(
            job_store(self.settings), self.generation, self.settings.outputs_max_age_s
        )
        self.vision: VisionFrontend = VisionFrontend(self.settings, self.pool, self.remotes)
        self.speech: SpeechFrontend = SpeechFrontend(
            self.settings, self.pool, self.outputs, self.remotes
        )
        self.fetcher: Fetcher = Fetcher(self.settings)  # every input named by URL or path
        self.rembg: RembgFrontend = RembgFrontend(
            self.settings, self.pool, self.outputs, self.remotes
        )
        self.editor: EditorFrontend = EditorFrontend(
            self.settings, self.fetcher, self.speech, self.outputs, rembg=self.rembg
        )
        self.editor.jobs = self.jobs  # long videos as jobs, on generation's job manager
        self.data: DataFrontend = DataFrontend(self.settings)
        remote_llm = self.remotes.get("llm")
        self.llm: LlmFrontend = LlmFrontend(
            self.settings,
            lambda: self.pool.acquire("llm"),
            pool=self.pool,
            remote=remote_llm if isinstance(remote_llm, OpenAIRemote) else None,
        )
        self.rerank: RerankFrontend = RerankFrontend(
            self.settings, self.pool, self.embeddings, self.remotes.get("rerank")
        )
        _instance = self

    def bind_batch_infer(self, batch_infer: BatchInfer) -> None:
        """Called by botmodels.dispatch.wire_service once the dispatchers exist."""
        if self.settings.embeddings_batching:
            self.embeddings.batch_infer = batch_infer
        self.generation.batch_infer = batch_infer
        self.vision.batch_infer = batch_infer
        self.speech.batch_infer = batch_infer
        self.rembg.batch_infer = batch_infer
        if self.settings.rerank_batching:
            self.rerank.batch_infer = batch_infer

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
            SEGMENT_ROUTE: self.rembg.check_runner_call,
            RERANK_ROUTE: self.rerank.check_runner_call,
        }

    def batch_concurrency(self) -> dict[str, int]:
        """Batches each batchable API may run at once (one unless listed here)."""
        return {BATCH_API: self.embeddings.concurrency}

    @bentoml.on_startup
    def start_loading(self) -> None:
        """Log the memory plan, load the BOTMODELS_PRELOAD runners in the background (the
        others on first use), start the idle reaper (botmodels/pool.py)."""
        self.pool.on_loaded = patches.freeze_heap
        self.pool.start()

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
        self.jobs.close()

    async def __is_ready__(self) -> bool:
        if shutdown.draining or not self.pool.settled:
            return False
        return not self.pool.slots or any(
            s.state == "remote" or self.pool.usable(s.kind) for s in self.pool.slots.values()
        )

    async def runner_usable(self, kind: str) -> bool:
        return await status.runner_usable(self.pool, self.remotes, kind)

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

    # --- vision (public routes: botmodels/vision/routes.py) ----------------------------------
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
        with self.pool.acquire("vision") as runner:  # a peer's call may be the first
            return caption_items(runner, items)

    @bentoml.api(
        route=VQA_ROUTE,
        batchable=True,
        max_batch_size=settings.vqa_max_batch_size,
        max_latency_ms=settings.vqa_max_latency_ms,
    )
    @batch_errors
    def vqa_batch(self, items: list[VisionJobIn]) -> list[VisionAnswerOut]:
        """The VQA runner: one batch of (image, question) in, answers out."""
        with self.pool.acquire("vqa") as runner:  # a peer's call may be the first
            return answer_items(runner, items)

    @bentoml.api(
        route=OCR_ROUTE,
        batchable=True,
        max_batch_size=settings.ocr_max_batch_size,
        max_latency_ms=settings.ocr_max_latency_ms,
    )
    @batch_errors
    def ocr_batch(self, items: list[OcrJobIn]) -> list[OcrAnswerOut]:
        """The OCR runner: one batch of (PNG, language) in, text and confidences out."""
        with self.pool.acquire("ocr") as runner:  # a peer's call may be the first
            return ocr_items(runner, items)

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

    @bentoml.api(route="/api/image/generate", input_spec=ImageRequest)
    @json_errors
    async def image_generate(self, **body: Any) -> GenerationResponse:
        """botserver's IMAGE keyword: blocks until the PNG is written under /outputs/images/.
        Fields are checked by hand so that each error names its rule (see botmodels.generation).
        """
        return await self.generation.api_generate("image", body)

    @bentoml.api(route="/api/video/generate", input_spec=VideoRequest)
    @json_errors
    async def video_generate(self, **body: Any) -> GenerationResponse:
        """botserver's VIDEO keyword: blocks until the H.264 MP4 is written under
        /outputs/videos/. For work longer than the caller's timeout, use /api/video/jobs."""
        return await self.generation.api_generate("video", body)

    @bentoml.api(route="/api/image/jobs", input_spec=ImageRequest)
    @json_errors
    async def image_job(self, **body: Any) -> dict[str, Any]:
        """Submit an image generation as a job: 202 with its id at once; poll
        GET /api/jobs/{id}, fetch GET /api/jobs/{id}/result, cancel POST /api/jobs/{id}/cancel.
        """
        return await self.jobs.api_submit("image", body)  # type: ignore[return-value]

    @bentoml.api(route="/api/video/jobs", input_spec=VideoRequest)
    @json_errors
    async def video_job(self, **body: Any) -> dict[str, Any]:
        """Submit a video generation as a job (see /api/image/jobs)."""
        return await self.jobs.api_submit("video", body)  # type: ignore[return-value]

    @bentoml.api(route="/v1/images/generations", input_spec=OpenAIImagesRequest)
    @json_errors
    async def create_images(self, ctx: bentoml.Context, **body: Any) -> ImagesResponse:
        """OpenAI-compatible image generation. `quality`, `style` and `user` are accepted and
        ignored; `seed`, `steps`, `guidance_scale` and `negative_prompt` are extensions."""
        return await self.generation.api_openai_images(body, str(ctx.request.base_url))

    # --- speech ------------------------------------------------------------------------------
    @bentoml.api(
        route=STT_ROUTE,
        batchable=True,
        max_batch_size=settings.stt_max_batch_size,
        max_latency_ms=settings.stt_max_latency_ms,
    )
    @batch_errors
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

    # --- the video editor's segmentation (public route: botmodels/editor/rembg.py) -----------
    @bentoml.api(
        route=SEGMENT_ROUTE,
        batchable=True,
        max_batch_size=settings.segment_max_batch_size,
        max_latency_ms=settings.segment_max_latency_ms,
    )
    @batch_errors
    def segment_masks(self, items: list[MaskJobIn]) -> list[MaskOut]:
        """The segment runner: one batch of frames in, one foreground mask per frame out.
        In-process the items are PIL images (no PNG round trip)."""
        with self.pool.acquire("segment") as runner:  # a peer's call may be the first
            return mask_items(runner, items)

    # --- rerank (public route /v1/rerank: botmodels/rerank/routes.py) -----------------------
    @bentoml.api(
        route=RERANK_ROUTE,
        batchable=True,
        max_batch_size=settings.rerank_max_batch_size,
    )
    @batch_errors
    async def rerank_batch(self, pairs: list[RerankPair]) -> list[RerankScore]:
        """The rerank runner: one batch of (query, document) pairs in, one score per pair out."""
        return await self.rerank.run_local(pairs)


# Outermost first. Shutdown first (while draining, new work is refused before anything else
# runs). Errors are shaped next; credentials are checked before anything looks at the body (a
# wrong key is a 401 whatever the body); then limits and content type; then the public routes'
# rules for the runner routes that peers call.
_service_obj: Any = BotModels  # a bentoml.Service once decorated; its stubs don't say so
_service_obj.add_asgi_middleware(
    ShutdownMiddleware, state=shutdown, probe_paths=routes.HEALTH_PATHS
)
_service_obj.add_asgi_middleware(ErrorShapeMiddleware)
_service_obj.add_asgi_middleware(auth_from_settings)
_service_obj.add_asgi_middleware(limits_from_settings)
_service_obj.add_asgi_middleware(RunnerRouteGuard, checks=_runner_checks)
# /docs.json documents every route, the mounted ones included (botmodels/openapi.py).
patches.document_service(
    _service_obj,
    lambda: openapi.build_document(_service_obj, status_app, get_settings(), version=VERSION),
)
