"""Every route the service answers, once, with the facts the middleware and the docs act on.

One entry per path: the `@bentoml.api` routes (entry routes and the `/runners/*` batchable APIs
that peers call), the routes of the Starlette app mounted at `/` (every alias its own entry),
BentoML's own routes, and the prefixes of mounted static trees. The facts:

* `domain`: which part of botmodels answers it (`bentoml` for BentoML's own routes).
* `open`: answered without a key (auth, limits and the docs' `security: []`); `prefix` makes
  every path under it open (generated files: their 128-bit random name is the secret).
* `json`: a POST body must be JSON; any other declared type is a 415 before BentoML parses it.
* `probe`: a health probe (`liveness`, `readiness`, `health`): its 503 body is the report itself
  (the error shape leaves it alone) and a drain never waits for it; while draining, readiness
  answers 503 and liveness keeps answering.
* `traced`: recorded by BentoML's OpenTelemetry middleware; the hot routes and the probes are
  excluded (spans are recorded even at sample rate 0).
* `optional`: BentoML mounts it only in some configurations (its new index UI).
* `deprecated`: an old name kept for old clients; the docs mark it `deprecated: true`.

Imports nothing: auth and the middleware read it on every request, and scripts import it.
tests/test_routes.py checks that every mounted and BentoML route has exactly one entry, and that
every entry is a real route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Domain = Literal[
    "bentoml",
    "status",
    "embeddings",
    "vision",
    "speech",
    "generation",
    "editor",
    "data",
    "rerank",
    "llm",
]
Probe = Literal["liveness", "readiness", "health"]


@dataclass(frozen=True)
class RouteFacts:
    path: str  # as routed: a path template for a route with parameters, a mount's path
    domain: Domain
    open: bool = False
    prefix: str | None = None
    json: bool = False
    probe: Probe | None = None
    traced: bool = True
    optional: bool = False
    deprecated: bool = False


def _bentoml(
    path: str,
    *,
    prefix: str | None = None,
    probe: Probe | None = None,
    traced: bool = True,
    optional: bool = False,
) -> RouteFacts:
    """BentoML's own routes are all open."""
    return RouteFacts(
        path, "bentoml", open=True, prefix=prefix, probe=probe, traced=traced, optional=optional
    )


ROUTES: tuple[RouteFacts, ...] = (
    # --- BentoML's own: probes, metrics, docs, the Swagger UI and its static files ---------------
    _bentoml("/livez", probe="liveness", traced=False),
    _bentoml("/healthz", probe="liveness"),  # deprecated alias of /livez
    _bentoml("/readyz", probe="readiness", traced=False),
    _bentoml("/metrics", traced=False),
    _bentoml("/docs.json"),
    _bentoml("/schema.json"),
    _bentoml("/"),
    _bentoml("/static_content", prefix="/static_content/"),
    _bentoml("/assets", prefix="/assets/", optional=True),
    # --- status ------------------------------------------------------------------------------
    RouteFacts("/api/health", "status", open=True, probe="health"),
    RouteFacts("/health", "status", open=True, probe="health"),  # botserver's embedding probe
    RouteFacts("/api/models", "status"),
    RouteFacts("/api/ping", "status", json=True, traced=False),
    # --- embeddings --------------------------------------------------------------------------
    RouteFacts("/v1/embeddings", "embeddings", json=True, traced=False),
    RouteFacts("/runners/embeddings/embed", "embeddings", json=True, traced=False),
    # --- vision ------------------------------------------------------------------------------
    RouteFacts("/api/vision/describe", "vision"),
    RouteFacts("/api/vision/describe-video", "vision"),
    RouteFacts("/api/vision/describe_video", "vision"),
    RouteFacts("/api/vision/vqa", "vision"),
    RouteFacts("/api/vision/qrcode", "vision"),
    RouteFacts("/api/vision/barcode", "vision"),
    RouteFacts("/api/vision/ocr", "vision"),
    RouteFacts("/ocr", "vision"),  # older botserver
    RouteFacts("/api/vision/analyze", "vision"),
    RouteFacts("/api/image/describe", "vision", deprecated=True),  # upstream's names
    RouteFacts("/api/video/describe", "vision", deprecated=True),
    RouteFacts("/runners/vision/caption", "vision", json=True, traced=False),
    RouteFacts("/runners/vqa/answer", "vision", json=True, traced=False),
    RouteFacts("/runners/ocr/recognize", "vision", json=True, traced=False),
    RouteFacts("/api/barcode/scan", "vision", json=True),  # SCAN BARCODE: a path or URL
    # --- speech ------------------------------------------------------------------------------
    RouteFacts("/api/speech/totext", "speech"),
    RouteFacts("/api/speech/to-text", "speech"),
    RouteFacts("/api/speech/detect_language", "speech"),
    RouteFacts("/api/speech/generate", "speech", json=True),
    RouteFacts("/api/speech/voices", "speech"),
    RouteFacts("/v1/audio/transcriptions", "speech"),
    RouteFacts("/v1/audio/speech", "speech", json=True),
    RouteFacts("/api/audio/tts", "speech", json=True),  # botserver's video editor
    RouteFacts("/runners/stt/transcribe", "speech", json=True),
    RouteFacts("/runners/tts/synthesize", "speech", json=True),
    # --- the video editor (botserver's botvideo): audio and video by URL -------------------------
    RouteFacts("/api/audio/transcribe", "editor", json=True),
    RouteFacts("/api/audio/waveform", "editor", json=True),
    RouteFacts("/api/audio/detect-beats", "editor", json=True),
    RouteFacts("/api/video/remove-background", "editor", json=True),
    RouteFacts("/runners/segment/masks", "editor", json=True, traced=False),
    RouteFacts("/api/video/enhance", "editor", json=True),
    RouteFacts("/api/video/enhance/jobs", "editor", json=True),
    RouteFacts("/api/video/remove-background/jobs", "editor", json=True),
    # --- generation --------------------------------------------------------------------------
    RouteFacts("/api/image/generate", "generation", json=True),
    RouteFacts("/api/video/generate", "generation", json=True),
    RouteFacts("/api/image/jobs", "generation", json=True),
    RouteFacts("/api/video/jobs", "generation", json=True),
    RouteFacts("/v1/images/generations", "generation", json=True),
    RouteFacts("/runners/image/generate", "generation", json=True),
    RouteFacts("/runners/video/generate", "generation", json=True),
    RouteFacts("/api/jobs/{job_id}", "generation"),
    RouteFacts("/api/jobs/{job_id}/result", "generation"),
    RouteFacts("/api/jobs/{job_id}/cancel", "generation"),
    RouteFacts("/outputs/{kind}/{name}", "generation", open=True, prefix="/outputs/"),
    # --- data --------------------------------------------------------------------------------
    RouteFacts("/api/detect", "data", json=True),
    # --- language model (OpenAI) ---------------------------------------------------------------
    RouteFacts("/v1/chat/completions", "llm", json=True),
    RouteFacts("/v1/completions", "llm", json=True),
    RouteFacts("/v1/models", "llm"),
    # --- rerank ------------------------------------------------------------------------------
    RouteFacts("/v1/rerank", "rerank", json=True, traced=False),
    RouteFacts("/runners/rerank/score", "rerank", json=True, traced=False),
)

# What the middleware asks per request, derived once.
OPEN_PATHS = frozenset(r.path for r in ROUTES if r.open and r.prefix is None)
OPEN_PREFIXES = tuple(r.prefix for r in ROUTES if r.open and r.prefix is not None)
JSON_PATHS = frozenset(r.path for r in ROUTES if r.json)
HEALTH_PATHS = frozenset(r.path for r in ROUTES if r.probe is not None)
LIVENESS_PATHS = frozenset(r.path for r in ROUTES if r.probe == "liveness")
READINESS_PATHS = frozenset(r.path for r in ROUTES if r.probe == "readiness")
DEPRECATED_PATHS = frozenset(r.path for r in ROUTES if r.deprecated)
# BentoML's `tracing.excluded_urls` (workaround 9 lets these exact paths skip the URL rebuild).
UNTRACED_PATHS = [r.path for r in ROUTES if not r.traced]


def is_open_path(path: str) -> bool:
    """Answered without a key."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
