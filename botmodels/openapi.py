"""The one OpenAPI document of the service: every route, served at `/docs.json`.

BentoML documents only its own `@bentoml.api` routes, declares error bodies it never sends here
(`{"error": string}`), and has no types for the generation routes' `Any` parameters. This module
builds the whole document instead, from the two route tables the service really has:

* BentoML's APIs (`service.apis`): request and response schemas from their pydantic IO models,
  except where a route takes `Any` and checks fields by hand (the generation routes and the
  embeddings `input`): there the request schema below says what those checks accept, with the
  bounds read from the settings;
* the mounted Starlette app (`status_app`): each route's endpoint, by name, has an operation
  below (request body, media types, parameters, answers). A route whose endpoint has none is
  left out, and tests/test_openapi.py fails on it.

Auth comes from the real rule (`botmodels.routes.is_open_path`), and every error is declared in
the one shape `botmodels.errors.error_body` sends. botmodels.patches (workaround 13) serves the
result where BentoML serves its own: `/docs.json`, the Swagger UI at `/`, and the Bento's
`apis/openapi.yaml`. BentoML's `/schema.json` is a different document (what BentoML's own
clients read to call the APIs) and stays BentoML's.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Route

from botmodels.config import Settings
from botmodels.data.front import DEFAULT_FIELD, MIN_VALUES, SAMPLE_ROWS
from botmodels.data.schemas import DetectResponse
from botmodels.editor.rembg import RemoveBackgroundRequest, RemoveBackgroundResponse
from botmodels.editor.schemas import (
    BeatsRequest,
    BeatsResponse,
    EnhanceRequest,
    EnhanceResponse,
    TranscribeRequest,
    TranscribeResponse,
    WaveformRequest,
    WaveformResponse,
)
from botmodels.generation.front import MAX_SEED
from botmodels.generation.schemas import GenerationResponse as MediaGenerationResponse
from botmodels.llm.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    ModelList,
    TextCompletion,
)
from botmodels.outputs import CONTENT_TYPES as OUTPUT_CONTENT_TYPES
from botmodels.rerank.schemas import RerankResponse
from botmodels.routes import DEPRECATED_PATHS, is_open_path
from botmodels.speech.audio import CONTENT_TYPES as AUDIO_CONTENT_TYPES
from botmodels.speech.front import SPEECH_FORMATS, TRANSCRIPTION_FORMATS
from botmodels.speech.schemas import (
    DetectLanguageResponse,
    SpeechGenerationResponse,
    SpeechToTextResponse,
)
from botmodels.vision.scan import BarcodeScanRequest
from botmodels.vision.schemas import (
    AnalyzeResponse,
    BarcodeResponse,
    DescribeResponse,
    OcrResponse,
    QrCodeResponse,
    VideoDescribeResponse,
    VqaResponse,
)

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
# Width and height are multiples of the runner's latent grid (runners/image.py,
# runners/video.py: size_multiple): 8 for the Stable Diffusion and ModelScope pipelines, 16 for
# FLUX.1 and Wan 2.1 (VAE scale x patch size). The document is per bundle, not per loaded model:
# it states 8 and says where 16 applies; the runner's check answers 400 naming its grid.
SIZE_MULTIPLE = 8
GRID_NOTE = "16 on FLUX.1 and Wan 2.1"

JSON = "application/json"


# --- schemas of answers built by hand (service.py, jobs.py, speech.py) ------------------------
class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong, for people; names the rule and value")
    type: str = Field(
        description="follows the status: invalid_request_error (400, 413, 415), "
        "authentication_error (401), not_found_error (404), rate_limit_error (429), "
        "service_unavailable (503), server_error (5xx)"
    )
    code: str | None = Field(description="machine-readable cause, e.g. invalid_input")
    param: str | None = Field(description="the request field at fault, when there is one")


class Error(BaseModel):
    """The one error shape: every non-2xx answer (but the health routes' 503) has this body."""

    error: ErrorDetail


class RunnerHealth(BaseModel):
    state: Literal["pending", "loading", "ready", "failed", "remote"]
    healthy: bool
    error: str | None = None


class HealthReport(BaseModel):
    """`status` is `starting` (only `version` with it) until the service is constructed."""

    status: Literal["healthy", "loading", "unhealthy", "starting"]
    version: str
    device: str | None = None
    profile: str | None = None
    runners: dict[str, RunnerHealth] | None = None
    unhealthy_runners: list[str] | None = Field(
        None, description="the runners that are not usable (only when there are any)"
    )


class EmbeddingsHealth(BaseModel):
    status: Literal["ok", "unavailable"]


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    runner: str
    state: Literal["pending", "loading", "ready", "failed", "remote"]
    loaded: bool
    store_tag: str
    quantization: str | None
    remote_url: str | None = Field(None, description="only for a runner served elsewhere")
    source: str | None = None
    revision: str | None = None
    sha256: str | None = None
    synthetic: bool | None = Field(None, description="random weights: outputs mean nothing")
    device: str | None = None
    dtype: str | None = None
    load_seconds: float | None = None
    engine: str | None = Field(
        None,
        description="embeddings: the engine that runs (onnx, torchscript or eager), after the "
        "load check against PyTorch float32",
    )
    compute: str | None = None
    error: str | None = None


class ModelsList(BaseModel):
    models: list[ModelInfo]


class JobProgress(BaseModel):
    step: int
    total_steps: int
    fraction: float


class Job(BaseModel):
    id: str
    object: Literal["generation.job", "editor.job"]
    kind: Literal["image", "video", "video_enhance", "video_remove_background"] = Field(
        description="a generation (`image`, `video`: progress in denoising steps) or the video "
        "editor's work (progress in frames)"
    )
    status: Literal["queued", "running", "completed", "failed", "cancelled", "interrupted"]
    progress: JobProgress
    created_at: float
    started_at: float | None
    finished_at: float | None
    result: MediaGenerationResponse | EnhanceResponse | RemoveBackgroundResponse | None
    error: ErrorDetail | None
    result_url: str


class CancelledJobResult(BaseModel):
    status: Literal["cancelled"]
    file_path: None
    error: None
    job_id: str


class Voice(BaseModel):
    voice: str
    language: str | None
    engine: str


class VoicesList(BaseModel):
    voices: list[Voice] = Field(description="empty while the TTS runner is not loaded")
    aliases: dict[str, str | None] = Field(
        description="names also accepted as `voice` (OpenAI's, BOTMODELS_TTS_VOICE_MAP's) and "
        "the voice each speaks as; null: the first installed voice of the request's `language`, "
        "or the default voice"
    )


class Transcription(BaseModel):
    text: str


class VerboseTranscription(BaseModel):
    model_config = ConfigDict(extra="allow")

    task: str
    language: str
    duration: float
    text: str
    segments: list[dict[str, Any]] | None = None
    words: list[dict[str, Any]] | None = None


# --- building blocks ------------------------------------------------------------------------------
class _Components:
    """`components.schemas`, filled as operations reference models (one name, one schema)."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def add(self, name: str, schema: dict[str, Any]) -> None:
        if name in self.schemas and self.schemas[name] != schema:
            raise ValueError(f"two different schemas are both named {name!r}")
        self.schemas[name] = schema

    def inline(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A pydantic JSON schema with its `$defs` moved into the components."""
        schema = copy.deepcopy(schema)
        for name, definition in schema.pop("$defs", {}).items():
            self.add(name, definition)
        return schema

    def ref(self, model: type[BaseModel], name: str | None = None) -> dict[str, Any]:
        name = name or model.__name__
        schema = self.inline(model.model_json_schema(ref_template=REF, mode="serialization"))
        schema["title"] = name
        self.add(name, schema)
        return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


_ERROR_REF = {"$ref": REF.format(model="Error")}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying (when the server can tell)",
        "schema": {"type": "integer"},
    }
}
_ERROR_TEXT: dict[int, str] = {
    400: "bad input: invalid JSON or field, empty or corrupt upload (the message names the rule)",
    401: "missing or wrong key or signature, or a replayed signature",
    404: "no such thing (the message says what)",
    409: "the job failed or was interrupted; its error is the body",
    413: "body over the size limit for its content type, or media over its length limit",
    415: "a content type this route does not take (the body's real format is sniffed)",
    429: "too many requests in flight, or the runner's queue is full",
    500: "internal error; the server log has the details",
    503: "the runner is disabled, loading, failed to load, unreachable or overloaded",
    504: "not answered within BOTMODELS_REQUEST_TIMEOUT_S",
}


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {"description": _ERROR_TEXT[status], "content": _json(_ERROR_REF)}
    if status in (429, 503):
        response["headers"] = _RETRY_AFTER
    return response


def _responses(ok: dict[str, Any], errors: Iterable[int], **extra: Any) -> dict[str, Any]:
    answers: dict[str, Any] = dict(ok)
    answers.update({str(status): _error(status) for status in sorted(set(errors))})
    answers.update(extra)
    return answers


def _ok(description: str, content: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, "content": content}}


# Statuses every route of a kind can answer. Keyed routes pass the limits middleware (429) and
# the auth check (401); a route with a body can be refused for its size (413) or type (415);
# every route may time out (504) or fail (500).
_ANY = (500, 504)
_KEYED = (401, 429)
_WITH_BODY = (400, 413, 415)
_RUNNER = (503,)


def _text(limit: int, description: str) -> dict[str, Any]:
    """A non-blank string of at most `limit` characters (what the routes' checks accept)."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": limit,
        "pattern": r"\S",
        "description": description,
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    schema["type"] = [schema["type"], "null"]
    return schema


def _binary(description: str, media: str = "application/octet-stream") -> dict[str, Any]:
    return {
        "type": "string",
        "format": "binary",
        "contentMediaType": media,
        "description": description,
    }


# --- request bodies of the BentoML APIs that take `Any` (checked by hand) -----------------------
def _generation_fields(s: Settings, kind: Literal["image", "video"]) -> dict[str, Any]:
    """What botmodels/generation.py's check_image / check_video accept, bounds from settings."""
    prompt_chars = s.image_max_prompt_chars if kind == "image" else s.video_max_prompt_chars
    low = s.image_min_size if kind == "image" else s.video_min_size
    high = s.image_max_size if kind == "image" else s.video_max_size
    max_steps = s.image_max_steps if kind == "image" else s.video_max_steps
    max_guidance = s.image_max_guidance if kind == "image" else s.video_max_guidance
    default_steps = s.image_default_steps if kind == "image" else s.video_default_steps
    default_guidance = s.image_default_guidance if kind == "image" else s.video_default_guidance
    size = {
        "type": "integer",
        "minimum": low,
        "maximum": high,
        "multipleOf": SIZE_MULTIPLE,
        "description": f"pixels, a multiple of {SIZE_MULTIPLE} ({GRID_NOTE}); omitted or null: "
        "the model's native size",
    }
    fields: dict[str, Any] = {
        "prompt": _text(prompt_chars, "what to generate"),
        "negative_prompt": _nullable(
            {
                "type": "string",
                "maxLength": prompt_chars,
                "description": "what to avoid"
                + (
                    " (400 where the served model has no guidance: FLUX)" if kind == "image" else ""
                ),
            }
        ),
        "steps": _nullable(
            {
                "type": "integer",
                "minimum": 1,
                "maximum": max_steps,
                "description": f"denoising steps; omitted or null: {default_steps}; "
                "moved into the served model's `steps_range` (GET /api/models)",
            }
        ),
        "width": _nullable(size),
        "height": _nullable(size),
        "guidance_scale": _nullable(
            {
                "type": "number",
                "minimum": 0,
                "maximum": max_guidance,
                "description": f"classifier-free guidance; omitted or null: "
                f"{default_guidance}; moved into the served model's `guidance_range`",
            }
        ),
        "seed": _nullable(
            {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_SEED,
                "description": "omitted or null: drawn at random and returned",
            }
        ),
        "model": {
            "type": ["string", "null"],
            "description": f"the stored {kind} model's name, with or without its version, or "
            f"`{kind}`; omitted, null or empty: the served model. Another name is a 404",
        },
    }
    if kind == "video":
        fields["num_frames"] = _nullable(
            {
                "type": "integer",
                "minimum": 1,
                "maximum": s.video_max_frames,
                "description": f"omitted or null: {s.video_default_frames}",
            }
        )
        fields["fps"] = _nullable(
            {
                "type": "integer",
                "minimum": 1,
                "maximum": s.video_max_fps,
                "description": f"omitted or null: {s.video_default_fps}",
            }
        )
    return fields


def _generation_body(s: Settings, kind: Literal["image", "video"]) -> dict[str, Any]:
    return {"type": "object", "required": ["prompt"], "properties": _generation_fields(s, kind)}


def _size_pattern(low: int, high: int) -> str:
    """OpenAI's `size`, "WIDTHxHEIGHT", as parse_size and the size checks accept it: each side
    one of the allowed sizes (leading zeros allowed: they are read as an int)."""
    first = -(-low // SIZE_MULTIPLE) * SIZE_MULTIPLE
    sides = "|".join(str(side) for side in range(first, high + 1, SIZE_MULTIPLE))
    return f"^0*(?:{sides})[xX]0*(?:{sides})$"


def _openai_images_body(s: Settings) -> dict[str, Any]:
    fields = _generation_fields(s, "image")
    del fields["width"], fields["height"]
    fields["seed"]["description"] += f"; seed + n - 1 must be at most {MAX_SEED}"
    ignored = {"description": "accepted for OpenAI compatibility and ignored"}
    fields.update(
        {
            "n": _nullable(
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": s.image_max_n,
                    "description": "images to make (seeds seed, seed+1, …); omitted or null: 1",
                }
            ),
            "size": _nullable(
                {
                    "type": "string",
                    "pattern": _size_pattern(s.image_min_size, s.image_max_size),
                    "description": f"WIDTHxHEIGHT, e.g. 512x512: each {s.image_min_size} to "
                    f"{s.image_max_size} and a multiple of {SIZE_MULTIPLE} ({GRID_NOTE}); "
                    "omitted or null: the model's native size",
                }
            ),
            "response_format": {
                "enum": ["url", "b64_json", None],
                "description": "omitted or null: url",
            },
            "quality": ignored,
            "style": ignored,
            "user": ignored,
        }
    )
    return {"type": "object", "required": ["prompt"], "properties": fields}


def _embeddings_input(s: Settings) -> dict[str, Any]:
    text = _text(s.embeddings_max_chars, "a text to embed")
    return {
        "description": "a string, or a list of strings (token ids are refused)",
        "anyOf": [
            text,
            {"type": "array", "minItems": 1, "maxItems": s.embeddings_max_inputs, "items": text},
        ],
    }


# API name -> the request body it really accepts, where its signature does not say (`Any`).
def _bounded(fields: dict[str, Any]) -> dict[str, Any]:
    """A public route's field as a runner item's: required, never null."""
    schema = dict(fields)
    types = schema.get("type")
    if isinstance(types, list):
        schema["type"] = next(t for t in types if t != "null")
    schema.pop("description", None)
    return schema


def _list_body(field: str, items: dict[str, Any], most: int, setting: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [field],
        "properties": {
            field: {
                "type": "array",
                "minItems": 1,
                "maxItems": most,
                "items": items,
                "description": f"at most {most} per call ({setting})",
            }
        },
    }


def _runner_tasks_body(s: Settings, kind: Literal["image", "video"]) -> dict[str, Any]:
    """What botmodels.peers lets through to a generation runner route: the public checks."""
    public = _generation_fields(s, kind)
    names = ["prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed"]
    if kind == "video":
        names += ["num_frames", "fps"]
    properties: dict[str, Any] = {"task_id": {"type": "string"}}
    for name in names:
        properties[name] = public[name] if name == "negative_prompt" else _bounded(public[name])
    task = {
        "type": "object",
        "required": [n for n in ["task_id", *names] if n != "negative_prompt"],
        "properties": properties,
    }
    most = s.image_max_batch_size if kind == "image" else s.video_max_batch_size
    return _list_body("tasks", task, most, f"BOTMODELS_{kind.upper()}_MAX_BATCH_SIZE")


def _runner_tts_body(s: Settings) -> dict[str, Any]:
    job = {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": _bounded(_text(s.tts_max_chars, "")),
            "voice": {"type": ["string", "null"]},
            "language": {"type": ["string", "null"]},
            "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0, "default": 1.0},
        },
    }
    return _list_body("jobs", job, s.tts_max_batch_size, "BOTMODELS_TTS_MAX_BATCH_SIZE")


def _runner_texts_body(s: Settings) -> dict[str, Any]:
    text = _bounded(_text(s.embeddings_max_chars, ""))
    return _list_body("texts", text, s.embeddings_max_inputs, "BOTMODELS_EMBEDDINGS_MAX_INPUTS")


def _runner_pairs_body(s: Settings) -> dict[str, Any]:
    text = {"type": "string", "maxLength": s.rerank_max_chars}
    pair = {
        "type": "object",
        "required": ["query", "document"],
        "properties": {"query": text, "document": text},
    }
    return _list_body("pairs", pair, s.rerank_max_documents, "BOTMODELS_RERANK_MAX_DOCUMENTS")


# The /runners/* APIs: their items as botmodels.peers checks them.
_RUNNER_BODIES: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "generate_images": lambda s: _runner_tasks_body(s, "image"),
    "generate_videos": lambda s: _runner_tasks_body(s, "video"),
    "synthesize_batch": _runner_tts_body,
    "embed_batch": _runner_texts_body,
    "rerank_batch": _runner_pairs_body,
}

_REQUEST_BODIES: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "image_generate": lambda s: _generation_body(s, "image"),
    "image_job": lambda s: _generation_body(s, "image"),
    "video_generate": lambda s: _generation_body(s, "video"),
    "video_job": lambda s: _generation_body(s, "video"),
    "create_images": _openai_images_body,
}
_REQUEST_FIELDS: dict[str, dict[str, Callable[[Settings], dict[str, Any]]]] = {
    "create_embeddings": {"input": _embeddings_input},
}
_GENERATION_APIS = frozenset(_REQUEST_BODIES)
# The job routes answer 202 with the job, not their declared output.
_JOB_APIS = frozenset({"image_job", "video_job"})

_TAGS = [
    {"name": "OpenAI-compatible", "description": "OpenAI's request and response shapes"},
    {"name": "Embeddings"},
    {"name": "Rerank", "description": "documents ranked by relevance to a query"},
    {"name": "Vision", "description": "captions, visual questions, OCR, QR codes, barcodes"},
    {"name": "Speech", "description": "speech-to-text and text-to-speech"},
    {"name": "Generation", "description": "image and video generation, and its jobs"},
    {"name": "Video editor", "description": "botserver's video editor: audio and video by URL"},
    {"name": "Data", "description": "statistics on rows of a table (botserver's DETECT)"},
    {"name": "Language models", "description": "chat and text completions (botserver's LLM)"},
    {"name": "Runners", "description": "batchable runner APIs (what a split-out runner serves)"},
    {"name": "Status", "description": "health, models and the key check"},
    {"name": "Infrastructure", "description": "BentoML's probes, metrics and these docs"},
]


def _api_tag(name: str, route: str) -> str:
    if route.startswith("/runners/"):
        return "Runners"
    if route.startswith("/v1/"):
        return "OpenAI-compatible"
    if name in _GENERATION_APIS:
        return "Generation"
    return "Status"


def _bentoml_operation(
    api: Any, service_name: str, s: Settings, c: _Components
) -> tuple[str, dict[str, Any]]:
    """One `@bentoml.api` route: POST, JSON in and out (what every API of this service takes)."""
    body = c.inline(api.input_spec.model_json_schema(ref_template=REF, mode="validation"))
    if api.name in _REQUEST_BODIES:
        body = _REQUEST_BODIES[api.name](s)
    elif api.name in _RUNNER_BODIES:
        body = _RUNNER_BODIES[api.name](s)
    for field, schema in _REQUEST_FIELDS.get(api.name, {}).items():
        body["properties"][field] = schema(s)
    body.pop("title", None)

    # BentoML subclasses a returned model into its IO descriptor: document the model itself.
    model = next(
        (
            cls
            for cls in api.output_spec.__mro__
            if issubclass(cls, BaseModel) and not cls.__module__.startswith("_bentoml_sdk")
        ),
        None,
    )
    answer = (
        c.ref(model)
        if model is not None and model is not BaseModel
        else c.inline(api.output_spec.model_json_schema(ref_template=REF, mode="serialization"))
    )
    if api.name in _JOB_APIS:
        ok = _ok("the job, queued: poll GET /api/jobs/{id}", _json(c.ref(Job)), status=202)
    else:
        ok = _ok("the result", _json(answer))

    errors: set[int] = {*_ANY, *_KEYED, *_WITH_BODY}
    if api.name != "ping":
        errors.add(503)
    if api.name in _GENERATION_APIS:
        errors.add(404)  # an unknown `model`
    operation = {
        "tags": [_api_tag(api.name, api.route)],
        "summary": " ".join((api.doc or api.name).split()).split(". ")[0].rstrip("."),
        "description": _dedent(api.doc or ""),
        "operationId": f"{service_name}__{api.name}",
        "x-bentoml-name": api.name,
        "requestBody": {"required": True, "content": _json(body)},
        "responses": _responses(ok, errors),
    }
    return api.route, operation


def _dedent(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines())


# --- the mounted Starlette routes ---------------------------------------------------------------
def _upload_body(
    fields: dict[str, Any], *, raw: tuple[str, ...] = (), required: tuple[str, ...] = ("file",)
) -> dict[str, Any]:
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": list(required),
                "properties": fields,
            }
        }
    }
    for media in raw:
        content[media] = {"schema": {"type": "string", "format": "binary"}}
    return {"required": True, "content": content}


def _image_file() -> dict[str, Any]:
    return _binary(
        "the image (PNG, JPEG, GIF, BMP, TIFF, WebP, PPM, ICO); the bytes are sniffed, the "
        "declared name and type are ignored. Or send the image as the raw body instead",
        "image/*",
    )


# Every vision upload also takes the raw file as the body (botserver's HEAR AS QRCODE/VIDEO and
# OCR keyword send application/octet-stream); its other fields then come from the query string.
_RAW_IMAGE = ("application/octet-stream", "image/*")
_RAW_VIDEO = ("application/octet-stream", "video/*")


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A form field's twin in the query string, for a raw body (the form field wins)."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"with a raw body: {schema.get('description', name)}; the form field "
        "wins when both are sent",
        "schema": {k: v for k, v in schema.items() if k != "description"},
    }


def _starlette_operations(s: Settings, c: _Components) -> dict[str, dict[str, Any]]:
    """Endpoint name -> its operation (the same for every path and method it is routed at)."""
    vision_errors = {*_ANY, *_KEYED, *_WITH_BODY, *_RUNNER}
    speech_errors = vision_errors
    language_query = {
        "name": "language",
        "in": "query",
        "required": False,
        "description": "tesseract code(s) (eng, por, spa, eng+por) or two-letter code; the form "
        f"field wins when both are sent; default {s.ocr_default_language}",
        "schema": {"type": "string", "maxLength": 64},
    }
    language_field = {
        "type": "string",
        "maxLength": 64,
        "description": "tesseract code(s) (eng, por, spa, eng+por) or two-letter code (en, pt, "
        f"es); unknown or not installed: 400; default {s.ocr_default_language}",
    }
    prompt_field = {
        "type": "string",
        "maxLength": s.vision_max_prompt_chars,
        "description": "the caption's opening words",
    }
    question_field = _text(s.vision_max_prompt_chars, "the question")
    num_frames_field = {
        "type": "integer",
        "minimum": 1,
        "maximum": s.vision_max_video_frames,
        "description": f"frames to caption; default {s.vision_default_video_frames}",
    }
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "the `id` a job route answered (job_…)",
    }
    audio_upload = _upload_body(
        {
            "file": _binary(
                "the audio: any format FFmpeg decodes (wav, mp3, ogg/opus, flac, m4a…)"
            ),
            "language": {
                "type": "string",
                "description": "ISO-639-1 code; omitted: detected. Unknown: 400",
            },
        },
        raw=("application/octet-stream", "audio/*"),
    )
    json_object = {"type": "object"}
    # The health routes skip the error-shape middleware (their 503 body is the report), so a
    # crash there is Starlette's plain-text 500; their 504 is still the timeout's JSON error.
    health_errors = {
        "500": {"description": _ERROR_TEXT[500], "content": {"text/plain": {"schema": {}}}},
        "504": _error(504),
    }
    tts_voice = {
        "type": ["string", "null"],
        "description": "an installed voice or an alias (GET /api/speech/voices: OpenAI's names "
        "are aliases); unknown: 400 naming the installed ones",
    }
    tts_language = {
        "type": ["string", "null"],
        "description": "picks a voice of this language when `voice` is not given",
    }
    job_ok = _ok("the job", _json(c.ref(Job)))
    return {
        "api_health": {
            "tags": ["Status"],
            "summary": "Health of the service and of every enabled runner",
            "responses": {
                "200": {
                    "description": "every runner usable",
                    "content": _json(c.ref(HealthReport)),
                },
                "503": {
                    "description": "a runner is not usable, or the service is starting",
                    "content": _json(c.ref(HealthReport)),
                },
                **health_errors,
            },
        },
        "embeddings_health": {
            "tags": ["Status"],
            "summary": "botserver's embedding and LLM probe: 200 when embeddings and the "
            "language model (each where enabled) can be served",
            "responses": {
                "200": {"description": "ready", "content": _json(c.ref(EmbeddingsHealth))},
                "503": {"description": "not ready", "content": _json(c.ref(EmbeddingsHealth))},
                **health_errors,
            },
        },
        "api_models": {
            "tags": ["Status"],
            "summary": "Per runner: store tag, source, revision, device, dtype, state, load time",
            "responses": _responses(_ok("the runners", _json(c.ref(ModelsList))), {*_ANY, *_KEYED}),
        },
        "get_output": {
            "tags": ["Generation"],
            "summary": "A generated file (no key: the random name is the secret)",
            "parameters": [
                {
                    "name": "kind",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "audio, images or videos",
                },
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "<32 hex>.<extension>, as a `file_path` named it",
                },
            ],
            "responses": _responses(
                _ok(
                    "the file",
                    {
                        media: {"schema": {"type": "string", "format": "binary"}}
                        for media in sorted(set(OUTPUT_CONTENT_TYPES.values()))
                    },
                ),
                {*_ANY, 404, 503},
            ),
        },
        "get_job": {
            "tags": ["Generation"],
            "summary": "A job: status, progress (step n of N), result or error",
            "parameters": [job_id],
            "responses": _responses(job_ok, {*_ANY, *_KEYED, 404, 503}),
        },
        "cancel_job": {
            "tags": ["Generation"],
            "summary": "Cancel a job (the pipeline stops at its next step); a finished job is "
            "answered as it is",
            "parameters": [job_id],
            "responses": _responses(job_ok, {*_ANY, *_KEYED, 404, 503}),
        },
        "get_job_result": {
            "tags": ["Generation"],
            "summary": "A finished job's answer; 202 with the job while it runs",
            "parameters": [job_id],
            "responses": _responses(
                _ok(
                    "the blocking route's answer, or the cancelled job",
                    _json(
                        {
                            "anyOf": [
                                c.ref(MediaGenerationResponse),
                                c.ref(EnhanceResponse),
                                c.ref(RemoveBackgroundResponse),
                                c.ref(CancelledJobResult),
                            ]
                        }
                    ),
                ),
                {*_ANY, *_KEYED, 404, 409, 503},
                **_ok("still queued or running: the job", _json(c.ref(Job)), status=202),
            ),
        },
        "vision_describe": {
            "tags": ["Vision"],
            "summary": "Caption an image",
            "parameters": [_query("prompt", prompt_field)],
            "requestBody": _upload_body(
                {"file": _image_file(), "prompt": prompt_field}, raw=_RAW_IMAGE
            ),
            "responses": _responses(
                _ok("the caption", _json(c.ref(DescribeResponse))), vision_errors
            ),
        },
        "vision_describe_video": {
            "tags": ["Vision"],
            "summary": "Describe a video from captions of evenly sampled frames",
            "parameters": [_query("num_frames", num_frames_field)],
            "requestBody": _upload_body(
                {
                    "file": _binary(
                        "the video (mp4, webm, mov, mkv, avi…); or send it as the raw body",
                        "video/*",
                    ),
                    "num_frames": num_frames_field,
                },
                raw=_RAW_VIDEO,
            ),
            "responses": _responses(
                _ok("the description", _json(c.ref(VideoDescribeResponse))), vision_errors
            ),
        },
        "vision_vqa": {
            "tags": ["Vision"],
            "summary": "Answer a question about an image",
            "parameters": [_query("question", question_field)],
            "requestBody": _upload_body(
                {"file": _image_file(), "question": question_field},
                raw=_RAW_IMAGE,
                required=("file", "question"),
            ),
            "responses": _responses(_ok("the answer", _json(c.ref(VqaResponse))), vision_errors),
        },
        "vision_qrcode": {
            "tags": ["Vision"],
            "summary": "Read QR codes (none found: 200 with success false)",
            "requestBody": _upload_body({"file": _image_file()}, raw=_RAW_IMAGE),
            "responses": _responses(
                _ok("the codes found", _json(c.ref(QrCodeResponse))), vision_errors
            ),
        },
        "vision_barcode": {
            "tags": ["Vision"],
            "summary": "Read barcodes (none found: 200 with success false)",
            "requestBody": _upload_body({"file": _image_file()}, raw=_RAW_IMAGE),
            "responses": _responses(
                _ok("the codes found", _json(c.ref(BarcodeResponse))), vision_errors
            ),
        },
        "vision_ocr": {
            "tags": ["Vision"],
            "summary": "Read the text in an image (tesseract)",
            "parameters": [language_query],
            "requestBody": _upload_body(
                {"file": _image_file(), "language": language_field}, raw=_RAW_IMAGE
            ),
            "responses": _responses(_ok("the text", _json(c.ref(OcrResponse))), vision_errors),
        },
        "vision_analyze": {
            "tags": ["Vision"],
            "summary": "Caption, OCR and codes at once (a part whose runner is down is "
            "reported in `error`)",
            "parameters": [language_query],
            "requestBody": _upload_body(
                {"file": _image_file(), "language": language_field}, raw=_RAW_IMAGE
            ),
            "responses": _responses(
                _ok("what was found", _json(c.ref(AnalyzeResponse))), vision_errors
            ),
        },
        "speech_to_text": {
            "tags": ["Speech"],
            "summary": "Transcribe audio (silence: empty text)",
            "requestBody": audio_upload,
            "responses": _responses(
                _ok("the transcription", _json(c.ref(SpeechToTextResponse))), speech_errors
            ),
        },
        "speech_detect_language": {
            "tags": ["Speech"],
            "summary": "Detect the spoken language",
            "requestBody": audio_upload,
            "responses": _responses(
                _ok("the language", _json(c.ref(DetectLanguageResponse))), speech_errors
            ),
        },
        "speech_generate": {
            "tags": ["Speech"],
            "summary": "Speak a text into a WAV file under /outputs/audio/",
            "requestBody": {
                "required": True,
                "content": _json(
                    {
                        **json_object,
                        "required": ["prompt"],
                        "properties": {
                            "prompt": _text(s.tts_max_chars, "the text to speak"),
                            "voice": tts_voice,
                            "language": tts_language,
                        },
                    }
                ),
            },
            "responses": _responses(
                _ok(
                    "the file written",
                    _json(c.ref(SpeechGenerationResponse, "SpeechGenerationResponse")),
                ),
                speech_errors,
            ),
        },
        "speech_voices": {
            "tags": ["Speech"],
            "summary": "The installed voices and their languages",
            "responses": _responses(_ok("the voices", _json(c.ref(VoicesList))), {*_ANY, *_KEYED}),
        },
        "audio_transcriptions": {
            "tags": ["OpenAI-compatible", "Speech"],
            "summary": "OpenAI's transcriptions (multipart only)",
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            **json_object,
                            "required": ["file"],
                            "properties": {
                                "file": _binary("the audio: any format FFmpeg decodes"),
                                "model": {"type": "string", "description": "accepted, ignored"},
                                "language": {"type": "string", "description": "ISO-639-1 code"},
                                "prompt": {"type": "string"},
                                "response_format": {
                                    "enum": list(TRANSCRIPTION_FORMATS),
                                    "description": "default json",
                                },
                                "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                                "timestamp_granularities[]": {
                                    "type": "array",
                                    "items": {"enum": ["word", "segment"]},
                                    "description": "word needs verbose_json and the "
                                    "CTranslate2 engine",
                                },
                            },
                        }
                    }
                },
            },
            "responses": _responses(
                _ok(
                    "the transcription in `response_format`",
                    {
                        JSON: {
                            "schema": {"anyOf": [c.ref(Transcription), c.ref(VerboseTranscription)]}
                        },
                        "text/plain": {"schema": {"type": "string"}},
                        "text/vtt": {"schema": {"type": "string"}},
                    },
                ),
                speech_errors,
            ),
        },
        "data_detect": _detect_operation(s, c),
        "rerank": _rerank_operation(s, c),
        "audio_speech": {
            "tags": ["OpenAI-compatible", "Speech"],
            "summary": "OpenAI's text-to-speech: the audio bytes",
            "requestBody": {
                "required": True,
                "content": _json(
                    {
                        **json_object,
                        "required": ["input"],
                        "properties": {
                            "input": _text(s.tts_max_chars, "the text to speak"),
                            "model": {"description": "accepted, ignored"},
                            "voice": tts_voice,
                            "language": tts_language,
                            "response_format": {
                                "enum": list(SPEECH_FORMATS),
                                "description": "default mp3; pcm is 24 kHz s16le",
                            },
                            "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0},
                        },
                    }
                ),
            },
            "responses": _responses(
                _ok(
                    "the audio in `response_format`",
                    {
                        media: {"schema": {"type": "string", "format": "binary"}}
                        for media in sorted(set(AUDIO_CONTENT_TYPES.values()))
                    },
                ),
                speech_errors,
            ),
        },
        "editor_tts": {
            "tags": ["Speech"],
            "summary": "botserver's video editor: speak a text, answer the audio bytes (mp3)",
            "requestBody": {
                "required": True,
                "content": _json(
                    {
                        **json_object,
                        "required": ["text"],
                        "properties": {
                            "text": _text(s.tts_max_chars, "the text to speak"),
                            "voice": tts_voice,
                            "language": tts_language,
                            "speed": {
                                "type": ["number", "null"],
                                "minimum": 0.25,
                                "maximum": 4.0,
                                "description": "default 1",
                            },
                            "response_format": {
                                "enum": list(SPEECH_FORMATS),
                                "description": "default mp3 (botserver saves the bytes as .mp3)",
                            },
                        },
                    }
                ),
            },
            "responses": _responses(
                _ok(
                    "the audio in `response_format`",
                    {
                        media: {"schema": {"type": "string", "format": "binary"}}
                        for media in sorted(set(AUDIO_CONTENT_TYPES.values()))
                    },
                ),
                speech_errors,
            ),
        },
    }


def _url_operations(c: _Components) -> dict[str, dict[str, Any]]:
    """The routes whose input is named by URL or path (botmodels/fetch.py): a JSON body; a
    source refused by the fetch settings or unreachable is a 400, one over the upload limit a
    413, one that does not arrive within BOTMODELS_FETCH_TIMEOUT_S a 504."""
    errors = {*_ANY, *_KEYED, *_WITH_BODY}
    slow = {
        "504": {
            "description": "the URL did not answer in full within BOTMODELS_FETCH_TIMEOUT_S, "
            "or the request took over BOTMODELS_REQUEST_TIMEOUT_S",
            "content": _json(_ERROR_REF),
        }
    }

    fetch_slow = {
        "504": {
            "description": "the URL did not answer in full within BOTMODELS_FETCH_TIMEOUT_S",
            "content": _json(_ERROR_REF),
        }
    }
    job_queued = _ok("the job, queued: poll GET /api/jobs/{id}", _json(c.ref(Job)), status=202)

    def body(model: type[BaseModel]) -> dict[str, Any]:
        schema = c.inline(model.model_json_schema(ref_template=REF, mode="validation"))
        schema.pop("title", None)
        return {"required": True, "content": _json(schema)}

    return {
        "barcode_scan": {
            "tags": ["Vision"],
            "summary": "botserver's SCAN BARCODE: read barcodes in the image at a path or URL "
            "(none found: 200 with success false)",
            "requestBody": body(BarcodeScanRequest),
            "responses": _responses(
                _ok("the codes found", _json(c.ref(BarcodeResponse))), errors, **slow
            ),
        },
        "editor_transcribe": {
            "tags": ["Video editor", "Speech"],
            "summary": "Transcribe the audio at a URL into timed segments (seconds)",
            "requestBody": body(TranscribeRequest),
            "responses": _responses(
                _ok("the segments", _json(c.ref(TranscribeResponse))), {*errors, 503}, **slow
            ),
        },
        "editor_waveform": {
            "tags": ["Video editor"],
            "summary": "The peak envelope of the audio at a URL, for a timeline",
            "requestBody": body(WaveformRequest),
            "responses": _responses(
                _ok("the envelope", _json(c.ref(WaveformResponse))), errors, **slow
            ),
        },
        "editor_detect_beats": {
            "tags": ["Video editor"],
            "summary": "Beats (every fourth a downbeat) and the tempo of the audio at a URL",
            "requestBody": body(BeatsRequest),
            "responses": _responses(_ok("the beats", _json(c.ref(BeatsResponse))), errors, **slow),
        },
        "editor_remove_background": {
            "tags": ["Video editor"],
            "summary": "Replace the background of the video at a URL (a person segmentation "
            "model's mask per frame) with a colour or an image; every frame kept, same fps",
            "requestBody": body(RemoveBackgroundRequest),
            "responses": _responses(
                _ok("the processed MP4", _json(c.ref(RemoveBackgroundResponse))),
                {*errors, 503},
                **slow,
            ),
        },
        "editor_enhance": {
            "tags": ["Video editor"],
            "summary": "Denoise, stabilise, colour-correct and upscale the video at a URL",
            "description": "Each filter runs unless its field is `false` (`null` counts as "
            "absent). Denoise: a motion-adaptive 3-frame temporal median and a light blur; "
            "stabilise: the camera's shake (global translation by phase correlation) removed, "
            "the uncovered border repeating the edge; colour: gray-world white balance and a "
            "0.5-99.5 percentile stretch measured over the whole video; upscale: Lanczos (no "
            "super-resolution model). The answer is an H.264 MP4 under /outputs/videos/ with "
            "every frame at the source's rate; AAC and MP3 audio is copied, other audio is "
            "dropped. The work must finish within BOTMODELS_REQUEST_TIMEOUT_S (then it stops, "
            "504, no file kept; longer work goes to /api/video/enhance/jobs): "
            "BOTMODELS_EDITOR_MAX_FRAMES and BOTMODELS_EDITOR_MAX_PIXELS bound it.",
            "requestBody": body(EnhanceRequest),
            "responses": _responses(
                _ok("the enhanced video's URL", _json(c.ref(EnhanceResponse))),
                {*errors, 413, 415},
                **slow,
            ),
        },
        "editor_enhance_job": {
            "tags": ["Video editor"],
            "summary": "Enhance the video at a URL as a job (no request timeout)",
            "description": "The body of /api/video/enhance, checked (and the video fetched and "
            "probed) before the answer: a bad one is its 4xx, not a failed job. Poll GET "
            "/api/jobs/{id} (progress: frames done of the total, both passes counted), fetch "
            "GET /api/jobs/{id}/result (/api/video/enhance's answer), cancel POST "
            "/api/jobs/{id}/cancel (the work stops between frames, no file kept).",
            "requestBody": body(EnhanceRequest),
            "responses": _responses(job_queued, {*errors, 413, 415, 429}, **fetch_slow),
        },
        "editor_remove_background_job": {
            "tags": ["Video editor"],
            "summary": "Replace the background of the video at a URL as a job",
            "description": "The body of /api/video/remove-background, checked before the "
            "answer; then as /api/video/enhance/jobs (progress: frames done of the total).",
            "requestBody": body(RemoveBackgroundRequest),
            "responses": _responses(job_queued, {*errors, 413, 415, 503}, **fetch_slow),
        },
    }


def _detect_operation(s: Settings, c: _Components) -> dict[str, Any]:
    """botserver's DETECT keyword (botmodels/data/front.py has the rules)."""
    responses = _responses(
        _ok("the votes and the rows they flag", _json(c.ref(DetectResponse))),
        {*_ANY, *_KEYED, *_WITH_BODY, 503},
    )
    responses["400"] = dict(
        responses["400"],
        description="invalid JSON (`NaN` and `Infinity` included), `data` not a non-empty list "
        "of objects, or `value_field` with no numeric value in any row: then `error.code` is "
        "`unknown_field` (no row has it) or `no_numeric_values`, and `error` has two more keys, "
        f"`available_fields` (the keys of the first rows) and `data_sample` (the first "
        f"{SAMPLE_ROWS} rows)",
    )
    responses["413"] = dict(
        responses["413"],
        description="body over BOTMODELS_MAX_JSON_BYTES, or more than "
        f"{s.detect_max_rows} rows (BOTMODELS_DETECT_MAX_ROWS, code `too_many_rows`)",
    )
    row = {
        "type": "object",
        "description": "a row: any fields; only `value_field` is read, and the row is echoed "
        "in `record` when it is flagged",
    }
    return {
        "tags": ["Data"],
        "summary": "Anomalies in one numeric column: z-score, IQR and MAD votes",
        "description": "Each numeric value gets three votes: |z| > 2.5 (population std), "
        "outside q1 - 1.5·IQR … q3 + 1.5·IQR, and modified z-score 0.6745·|x - median| / MAD "
        "> 3.5. One vote lists the row; `confidence` is votes / 3. A vote whose spread is 0 "
        '(std or MAD) abstains. Numbers and numeric strings (`"12.5"`) count; a missing '
        "key, null, boolean, object, list, other text or non-finite value is skipped and "
        f"counted in `skipped`. Fewer than {MIN_VALUES} numeric values: 200 with `detected: "
        "false` and a `reason`.",
        "requestBody": {
            "required": True,
            "content": _json(
                {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": s.detect_max_rows,
                            "items": row,
                            "description": "the rows (botserver sends up to 1500)",
                        },
                        "value_field": {
                            "type": "string",
                            "minLength": 1,
                            "default": DEFAULT_FIELD,
                            "description": "the column to look at",
                        },
                    },
                }
            ),
        },
        "responses": responses,
    }


def _llm_operations(c: _Components) -> dict[str, dict[str, Any]]:
    """The language model's OpenAI routes (botmodels/llm/front.py has the rules)."""
    errors = {*_ANY, *_KEYED, *_WITH_BODY, 503}
    tags = ["OpenAI-compatible", "Language models"]
    stream_text = (
        "`stream: true`: Server-Sent Events, one `data: <chunk JSON>` event per write, ending "
        'with `data: [DONE]`; an engine failure mid-stream is a `data: {"error": {...}}` '
        "event before it"
    )

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, "content": _json(c.ref(model))}

    def answers(whole: type[BaseModel], chunk: type[BaseModel]) -> dict[str, Any]:
        content = {
            JSON: {"schema": c.ref(whole)},
            "text/event-stream": {"schema": {"type": "string"}, "x-event-schema": c.ref(chunk)},
        }
        responses = _responses(_ok(f"the answer; {stream_text}", content), errors)
        responses["400"] = dict(
            responses["400"],
            description="bad field (the message names it), or a prompt that leaves no room "
            "in the context (code `context_length_exceeded`, names the limit)",
        )
        responses["429"] = dict(
            responses["429"],
            description="the engine's running and waiting sequences are full "
            "(BOTMODELS_LLM_MAX_RUNNING + BOTMODELS_LLM_MAX_WAITING), or too many requests",
        )
        return responses

    rules = (
        "Any `model` name is the served model. `max_tokens` is clamped to the context left "
        "after the prompt (`finish_reason: length`). Unknown fields are accepted and ignored."
    )
    return {
        "chat_completions": {
            "tags": tags,
            "summary": "OpenAI chat completions: stream or not, tools, reasoning",
            "description": rules + " Tools go to the chat template; the model's tool-call "
            "markup comes back as `tool_calls`, its `<think>` as `reasoning_content`.",
            "requestBody": body(ChatCompletionRequest),
            "responses": answers(ChatCompletion, ChatCompletionChunk),
        },
        "text_completions": {
            "tags": tags,
            "summary": "OpenAI text completions: a plain prompt continued",
            "description": rules,
            "requestBody": body(CompletionRequest),
            "responses": answers(TextCompletion, TextCompletion),
        },
        "list_models": {
            "tags": tags,
            "summary": "Every served model of every runner, and the language model's aliases",
            "responses": _responses(_ok("the models", _json(c.ref(ModelList))), {*_ANY, *_KEYED}),
        },
    }


def _rerank_operation(s: Settings, c: _Components) -> dict[str, Any]:
    """Cohere's and Jina's rerank (botmodels/rerank/front.py has the rules)."""
    text = {"type": "string", "maxLength": s.rerank_max_chars}
    document = {
        "anyOf": [
            text,
            {
                "type": "object",
                "required": ["text"],
                "properties": {"text": text},
                "description": "other keys are ignored",
            },
        ]
    }
    return {
        "tags": ["OpenAI-compatible", "Rerank"],
        "summary": "Rerank documents by relevance to a query (Cohere's and Jina's shape)",
        "description": "Scores each (query, document) pair with the cross-encoder (`method: "
        "cross-encoder`), or, where no rerank runner is configured (the offline profile), by "
        "the cosine similarity of the embeddings runner's vectors (`method: embeddings`, in "
        "[-1, 1]: a weaker ranking). A cross-encoder's score is what sentence-transformers' "
        "CrossEncoder gives: the sigmoid of its logit unless the model's config names another "
        "activation (ms-marco-MiniLM-L-6-v2: the raw logit). Pairs longer than "
        f"{s.rerank_max_tokens} tokens (BOTMODELS_RERANK_MAX_TOKENS) or the model's limit lose "
        "tokens from the longer of query and document. Results are sorted by score, highest "
        "first; ties keep the request's order.",
        "requestBody": {
            "required": True,
            "content": _json(
                {
                    "type": "object",
                    "required": ["query", "documents"],
                    "properties": {
                        "query": _text(s.rerank_max_chars, "the search query"),
                        "documents": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": s.rerank_max_documents,
                            "items": document,
                            "description": "strings or `{text}` objects, at most "
                            f"{s.rerank_max_documents} (BOTMODELS_RERANK_MAX_DOCUMENTS)",
                        },
                        "top_n": {
                            "type": ["integer", "null"],
                            "minimum": 1,
                            "description": "the best n results; omitted or more than the "
                            "documents: all",
                        },
                        "return_documents": {
                            "type": "boolean",
                            "default": True,
                            "description": "each result's `document: {text}` (Jina's default; "
                            "Cohere's v1 defaults to false)",
                        },
                        "model": {
                            "type": ["string", "null"],
                            "description": "any name: the answer names the model used",
                        },
                    },
                }
            ),
        },
        "responses": _responses(
            _ok("the documents' scores, best first", _json(c.ref(RerankResponse))),
            {*_ANY, *_KEYED, *_WITH_BODY, *_RUNNER},
        ),
    }


def _infra_paths() -> dict[str, dict[str, Any]]:
    """BentoML's own routes: probes, metrics, and these docs (open, GET)."""

    def get(summary: str, content: dict[str, Any], *errors: dict[str, Any]) -> dict[str, Any]:
        responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
        for extra in errors:
            responses.update(extra)
        return {
            "get": {
                "tags": ["Infrastructure"],
                "summary": summary,
                "security": [],
                "responses": responses,
            }
        }

    text = {"text/plain": {"schema": {"type": "string"}}}
    not_ready = {"503": {"description": "not ready yet", "content": text}}
    return {
        "/livez": get("Process alive", text),
        "/healthz": get("Process alive (deprecated alias of /livez)", text),
        "/readyz": get("Ready: model loading has settled and a runner is usable", text, not_ready),
        "/metrics": get("Prometheus metrics", text),
        "/docs.json": get("This OpenAPI document", _json({"type": "object"})),
        "/schema.json": get(
            "BentoML's service schema (what BentoML's own clients read)",
            _json({"type": "object"}),
        ),
        "/": get("The Swagger UI for this document", {"text/html": {"schema": {"type": "string"}}}),
    }


def _operation_id(method: str, path: str) -> str:
    return f"{method}_" + (re.sub(r"[^a-zA-Z0-9_-]+", "_", path).strip("_") or "root")


def _with_auth(path: str, operation: dict[str, Any]) -> dict[str, Any]:
    """Open routes say so (`security: []`); keyed ones keep the document's default."""
    if is_open_path(path):
        operation = dict(operation, security=[])
        responses = operation["responses"]
        operation["responses"] = {k: v for k, v in responses.items() if k not in ("401", "429")}
    return operation


def _head(get: dict[str, Any], path: str) -> dict[str, Any]:
    """HEAD answers GET's statuses and headers with no body."""
    head = copy.deepcopy(get)
    head["summary"] = head.get("summary", "") + " (headers only)"
    head["operationId"] = _operation_id("head", path)
    head["responses"] = {
        status: {k: v for k, v in answer.items() if k != "content"}
        for status, answer in head["responses"].items()
    }
    return head


def build_document(service: Any, app: Any, settings: Settings, *, version: str) -> dict[str, Any]:
    """The OpenAPI document for the BentoML `service` with the Starlette `app` mounted at `/`."""
    c = _Components()
    c.add("Error", c.inline(Error.model_json_schema(ref_template=REF)))
    paths: dict[str, dict[str, Any]] = {}

    for api in service.apis.values():
        path, operation = _bentoml_operation(api, service.name, settings, c)
        paths.setdefault(path, {})["post"] = _with_auth(path, operation)

    operations = {
        **_starlette_operations(settings, c),
        **_url_operations(c),
        **_llm_operations(c),
    }
    for route in app.routes:
        if not isinstance(route, Route) or route.name not in operations:
            continue  # undocumented: tests/test_openapi.py names it
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue  # added below, from GET
            operation = dict(operations[route.name])
            operation["operationId"] = _operation_id(method.lower(), route.path)
            if route.path in DEPRECATED_PATHS:
                operation["deprecated"] = True
            paths.setdefault(route.path, {})[method.lower()] = _with_auth(route.path, operation)
        if route.methods and "HEAD" in route.methods and "get" in paths.get(route.path, {}):
            paths[route.path]["head"] = _head(paths[route.path]["get"], route.path)

    for path, item in _infra_paths().items():
        paths.setdefault(path, item)
        for method, operation in item.items():
            operation["operationId"] = _operation_id(method, path)

    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": service.name,
            "version": version,
            "description": _DESCRIPTION,
        },
        "tags": _TAGS,
        "security": [{"ApiKey": []}, {"Bearer": []}, {"Signature": [], "SignatureTimestamp": []}],
        "paths": paths,
        "components": {
            "schemas": c.schemas,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the same key, as OpenAI clients send it",
                },
                "Signature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-BotModels-Signature",
                    "description": 'v1=<hex HMAC-SHA256(key, "{timestamp}.{payload}")>, '
                    'payload = METHOD + "\\n" + path[?query] + "\\n" + raw body; each '
                    "signature is accepted once",
                },
                "SignatureTimestamp": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-BotModels-Timestamp",
                    "description": "unix seconds, within BOTMODELS_SIGNATURE_TOLERANCE_S of the "
                    "server's clock",
                },
            },
        },
    }


_DESCRIPTION = """\
botmodels, the AI inference sidecar of General Bots: embeddings, vision, speech, image and video
generation, language models, and anomaly detection over HTTP.

Every route but health, metrics, these docs and `/outputs/` needs a key: `X-API-Key`,
`Authorization: Bearer`, or an HMAC signature (`X-BotModels-Signature` with
`X-BotModels-Timestamp`). Every error (but the health routes' 503, whose body is the health
report) is `{"error": {"message", "type", "code", "param"}}`."""
