"""One settings object for the whole bundle: every knob is a `BOTMODELS_*` environment variable.

Nothing here touches a model or the network; reading the environment is the only side effect.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from botmodels.registry import KINDS
from runners.base import Quantization as Quantization  # the runners' vocabulary

Profile = Literal["offline", "cpu", "gpu", "tiny"]

# Every runner kind the bundle knows (botmodels/registry.py). A kind that is not enabled loads
# nothing.
KNOWN_RUNNERS: tuple[str, ...] = tuple(KINDS)
DEFAULT_RUNNERS: tuple[str, ...] = tuple(name for name, kind in KINDS.items() if kind.default)


def _available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware), not the host's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS has no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_networks(value: object, setting: str) -> object:
    """Comma-separated CIDRs (a bare address is one host) -> networks. A CIDR with host bits
    set (`10.0.0.5/8`) is refused rather than widened: it usually means one host or a typo."""
    if not isinstance(value, str):
        return value
    networks: list[Network] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=True))
        except ValueError as exc:
            raise ValueError(
                f"{setting}={value!r}: {part!r} is not a CIDR (e.g. 127.0.0.1/32, ::1/128, "
                f"10.0.0.0/8): {exc}"
            ) from None
    return networks


def is_loopback_host(host: str) -> bool:
    """A bind address only this machine can reach: 127.0.0.0/8, ::1 or `localhost`."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


# The `*_max_latency_ms` settings fed BentoML's dispatcher, which botmodels no longer uses.
_NO_EFFECT = (
    "Accepted for compatibility; no effect: botmodels' dispatcher holds no request and cancels "
    "no queued work (docs/design.md, Dispatch and batching)."
)


_IDLE = "This runner's BOTMODELS_IDLE_UNLOAD_S (unset: the global one; 0: never)."

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}


def parse_bytes(value: object, setting: str) -> object:
    """`12GiB`, `500MB`, `1.5 GB` or a plain byte count -> bytes (KB/MB/GB are powers of 1000,
    KiB/MiB/GiB powers of 1024); empty -> None."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    number = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ").strip()
    unit = text[len(text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")) :]
    factor = _UNITS.get(unit.upper())
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if factor is None or amount <= 0 or amount != amount:  # NaN is not a size
        raise ValueError(
            f"{setting}={value!r} is not a positive size: a number with an optional unit "
            f"(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 12GiB or 500MB"
        )
    return int(amount * factor)


class Settings(BaseSettings):
    """botmodels configuration. Each field is read from `BOTMODELS_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="BOTMODELS_", extra="ignore")

    port: int = Field(8089, ge=1, le=65535, description="HTTP port (botserver's default is 8085).")
    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 inside containers.")
    profile: Profile = Field(
        "offline", description="Model set: offline, cpu, gpu, or tiny (random weights, for tests)."
    )
    runners: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RUNNERS),
        description="Enabled runner kinds, comma-separated. A disabled runner loads nothing. "
        "`llm` is opt-in (`make serve` adds it).",
    )
    model_variants: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Another model of the profile for a runner, `runner=variant` comma-separated "
        "(`image=sdxl-turbo`): the runner serves models.toml's `[<runner>.<profile>-<variant>]` "
        "entry instead of `[<runner>.<profile>]`; the import step imports that one.",
    )

    # --- auth -------------------------------------------------------------------------------
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys; each is also an HMAC signing secret. Never logged.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File with one key per line; default <home>/api-key, generated if missing.",
    )
    allow_short_keys: bool = Field(
        False,
        description="Accept keys under 16 characters (botserver's default `starter`), only when "
        "BOTMODELS_HOST is loopback (127.0.0.0/8, ::1, localhost); another bind refuses to start.",
    )
    trusted_networks: Annotated[list[Network], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated CIDRs whose requests may omit credentials (a presented "
        "credential is still checked). Botserver next door: `127.0.0.1/32,::1/128`.",
    )
    trusted_proxies: Annotated[list[Network], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed "
        "(the client is its right-most entry that is not a trusted proxy); never from others.",
    )
    signature_tolerance_s: int = Field(
        300,
        ge=1,
        le=3600,
        description="An HMAC signature's timestamp must be this close to the server's clock, s.",
    )
    replay_cache_s: int = Field(
        600,
        ge=1,
        le=86400,
        description="How long a used signature is remembered (at least until its timestamp "
        "leaves the tolerance), in <home>/replay-cache.sqlite3: shared by workers, kept "
        "across restarts.",
    )

    # --- paths ------------------------------------------------------------------------------
    home: Path = Field(
        default_factory=lambda: Path.home() / ".botmodels",
        description="Where botmodels keeps its generated key and other local state.",
    )
    manifest: Path = Field(
        default_factory=lambda: Path(__file__).resolve().parent.parent / "models.toml",
        description="Model manifest: which stored model each runner uses per profile.",
    )

    # --- limits -----------------------------------------------------------------------------
    max_json_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest JSON body.")
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="Largest upload.")
    max_concurrency: int = Field(
        512, ge=1, description="Requests in flight per worker before 429 with Retry-After."
    )
    request_timeout_s: float = Field(300.0, gt=0, description="botserver's own client timeout.")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="A connection that has not sent a complete request head (request line and "
        "headers) within this many seconds of connecting, or of its request's first byte, is "
        "closed (408 if part of a head arrived). Idle keep-alive connections keep uvicorn's own "
        "keep-alive timeout.",
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="After SIGTERM: the most seconds until the worker exits. Requests in flight "
        "get this long minus 2 s; running generations stop at their next step.",
    )

    # --- inputs named by URL or path (botmodels/fetch.py) -------------------------------------
    fetch_allow: Annotated[list[str], NoDecode] = Field(
        [],
        description="What a `*_url` field may fetch, comma-separated: host names "
        "(`media.example.com`, `*.example.com`: their public addresses only), http(s) URL "
        "prefixes, or CIDRs (`10.0.0.0/8`: the only way to allow a private, loopback or "
        "link-local address). The resolved address is checked, on every redirect too. Empty: "
        "every URL is refused.",
    )
    fetch_roots: Annotated[list[Path], NoDecode] = Field(
        [],
        description="Directories a local path input (SCAN BARCODE's `image_path`) may be read "
        "from, comma-separated; checked after resolving symlinks and `..`. Empty: every path is "
        "refused.",
    )
    fetch_path_map: Annotated[list[str], NoDecode] = Field(
        [],
        description="Paths that are another server's URL paths, comma-separated `prefix=directory` "
        "pairs: botserver's video editor names its own TTS audio `/video/audio/<file>`, a file of "
        "its VIDEO_AUDIO_DIR (`/video/audio/=/srv/botserver/audio/video`). A path input that "
        "starts with `prefix` is read from `directory` (which may then be read like a "
        "BOTMODELS_FETCH_ROOTS directory), checked after resolving symlinks and `..`.",
    )
    fetch_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="The most seconds one URL fetch may take in all (resolving, redirects, "
        "the body); past it the request is a 504.",
    )
    fetch_max_redirects: int = Field(
        5, ge=0, le=20, description="Redirects one URL fetch follows (each checked again)."
    )

    bentoml_workarounds: str = Field(
        "on",
        description="`off` runs BentoML as shipped, without the speed workarounds (only to "
        "measure them: `scripts/bench_overhead.py`); the behaviour fixes stay on. Any other "
        "value is on.",
    )

    # --- compute ----------------------------------------------------------------------------
    threads: int = Field(
        default_factory=_available_cpus, ge=1, description="torch intra-op threads per worker."
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Where models run: auto (CUDA, then MPS, then CPU), cpu, cuda or mps."
    )

    # --- residency: which models are in memory (botmodels/pool.py) ----------------------------
    preload: Annotated[list[str], NoDecode] = Field(
        ["embeddings"],
        description="Runner kinds loaded at start-up, comma-separated, or `all` (every enabled "
        "runner); /readyz waits for them. Every other enabled runner loads on its first request. "
        "Default: embeddings, botserver's hot path (knowledge-base search).",
    )
    memory_budget: Annotated[int | None, NoDecode] = Field(
        None,
        description="Most bytes of CPU memory the loaded models may take (`12GiB`, `500MB`, or "
        "bytes). Before a load over it, idle runners are unloaded, least recently used first; a "
        "model that cannot fit answers 503. Unset: no limit.",
    )
    gpu_memory_budget: Annotated[int | None, NoDecode] = Field(
        None,
        description="As BOTMODELS_MEMORY_BUDGET, for the models on the CUDA device.",
    )
    idle_unload_s: float = Field(
        0.0,
        ge=0,
        description="Unload a runner unused for this many seconds (it loads again on its next "
        "request); 0: never. Per runner: BOTMODELS_<RUNNER>_IDLE_UNLOAD_S.",
    )
    embeddings_idle_unload_s: float | None = Field(None, ge=0, description=_IDLE)
    vision_idle_unload_s: float | None = Field(None, ge=0, description=_IDLE)
    vqa_idle_unload_s: float | None = Field(None, ge=0, description=_IDLE)
    ocr_idle_unload_s: float | None = Field(None, ge=0, description=_IDLE)
    stt_idle_unload_s: float | None = Field(None, ge=0, description=_IDLE)
    tts_idle_unload_s: float | None = Field(None, ge=0, description=_IDLE)
    image_idle_unload_s: float | None = Field(None, ge=0, description=_IDLE)
    video_idle_unload_s: float | None = Field(None, ge=0, description=_IDLE)
    segment_idle_unload_s: float | None = Field(None, ge=0, description=_IDLE)
    rerank_idle_unload_s: float | None = Field(None, ge=0, description=_IDLE)
    llm_idle_unload_s: float | None = Field(None, ge=0, description=_IDLE)

    # --- embeddings runner ------------------------------------------------------------------
    embeddings_url: AnyHttpUrl | None = Field(
        None, description="Serve embeddings from a remote botmodels at this URL instead."
    )
    embeddings_quantization: Quantization | None = Field(
        None, description="Override the manifest's quantization: none, int8 or 4bit."
    )
    embeddings_batching: bool = Field(
        True, description="Adaptive batching; false runs each request alone (a baseline)."
    )
    embeddings_engine: Literal["onnx", "torchscript", "eager"] = Field(
        "onnx",
        description="How the encoder runs on the CPU: onnx (ONNX Runtime over the graph "
        "exported at import), torchscript (a PyTorch trace) or eager (PyTorch). Each is checked "
        "against PyTorch float32 at load and falls back, with a log line, to the next if it "
        "differs; CUDA and MPS always run PyTorch.",
    )
    embeddings_torchscript: bool = Field(
        True,
        description="Deprecated (use BOTMODELS_EMBEDDINGS_ENGINE=eager): false makes the "
        "torchscript engine run eager.",
    )
    embeddings_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="CPU: threads that each run a share of a batch with threads/workers torch "
        "threads (1 = one team on the whole batch; CUDA, MPS and eager models use 1). "
        "Opt-in: faster at 64 clients, slower at 1 and 16 (docs/benchmarks.md).",
    )
    embeddings_max_batch_size: int = Field(
        32,
        ge=2,
        le=1024,
        description="Most texts per embeddings batch (32 is the knee on a 2-core CPU).",
    )
    embeddings_max_latency_ms: int = Field(
        10_000,
        ge=10,
        description=_NO_EFFECT,
    )
    embeddings_max_inputs: int = Field(2048, ge=1, description="Inputs per request (OpenAI's).")
    embeddings_max_chars: int = Field(
        100_000, ge=1, description="Characters per input; longer inputs are rejected."
    )

    # --- rerank runner (a cross-encoder; without one, /v1/rerank uses the embeddings) ---------
    rerank_url: AnyHttpUrl | None = Field(
        None, description="Serve the rerank runner from a remote botmodels at this URL instead."
    )
    rerank_quantization: Quantization | None = Field(
        None, description="Override the manifest's quantization (the runner serves only none)."
    )
    rerank_batching: bool = Field(
        True,
        description="Adaptive batching of pairs; false scores each request alone (a baseline).",
    )
    rerank_torchscript: bool = Field(
        True, description="Run the cross-encoder as a TorchScript trace (checked against eager)."
    )
    rerank_max_batch_size: int = Field(
        32, ge=2, le=1024, description="Most (query, document) pairs per rerank batch."
    )
    rerank_max_documents: int = Field(
        1000, ge=1, description="Documents per /v1/rerank request (Cohere's recommended most)."
    )
    rerank_max_chars: int = Field(
        100_000,
        ge=1,
        description="Characters in the query and in each document; longer ones are rejected.",
    )
    rerank_max_tokens: int = Field(
        512,
        ge=8,
        le=8192,
        description="Most tokens of a (query, document) pair the cross-encoder reads (also capped "
        "by the model's own limit); a longer pair loses tokens from the longer of the two.",
    )

    # --- speech-to-text runner (Whisper) ----------------------------------------------------
    stt_url: AnyHttpUrl | None = Field(
        None, description="Serve speech-to-text from a remote botmodels at this URL instead."
    )
    stt_quantization: Quantization | None = Field(
        None, description="Override the manifest's quantization: none, int8 or 4bit."
    )
    stt_max_batch_size: int = Field(8, ge=1, le=64, description="Transcriptions per batch.")
    stt_beam_size: int = Field(5, ge=1, le=10, description="Beam width at temperature 0.")
    stt_pack: bool = Field(
        True,
        description="On CPU, decode short clips of a batch several to one 30 s Whisper window.",
    )
    stt_max_latency_ms: int = Field(
        120_000,
        ge=100,
        description=_NO_EFFECT,
    )
    stt_max_audio_s: float = Field(
        1800.0, gt=0, description="Longest audio accepted (after decoding), in seconds."
    )

    # --- text-to-speech runner (Piper / VITS) ------------------------------------------------
    tts_url: AnyHttpUrl | None = Field(
        None, description="Serve text-to-speech from a remote botmodels at this URL instead."
    )
    tts_quantization: Quantization | None = Field(
        None, description="TTS runner quantization (none, int8, 4bit); unset: the model manifest's."
    )
    tts_max_batch_size: int = Field(8, ge=1, le=64, description="Most texts per TTS batch.")
    tts_max_latency_ms: int = Field(
        120_000,
        ge=100,
        description=_NO_EFFECT,
    )
    tts_voice_map: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Voice aliases, `name=installed voice` comma-separated (`alloy=joe,nova=joe`). "
        "OpenAI's voice names not listed speak as the first installed voice of the request's "
        "language (or the default voice).",
    )
    tts_max_chars: int = Field(4096, ge=1, description="Longest text to speak (OpenAI's limit).")
    tts_max_phonemes: int = Field(
        10_000,
        ge=1,
        description="Most phonemes (VITS voices: characters) one request may speak, counted at "
        "speed 1 (at speed 0.5 each counts twice). Bounds a request's audio, its memory and "
        "its time; text past it is a 400.",
    )

    # --- generated files (/outputs) and jobs -------------------------------------------------
    outputs_dir: Path | None = Field(
        None, description="Where generated files are kept; default <home>/outputs."
    )
    outputs_max_age_s: float = Field(
        24 * 3600, gt=0, description="Generated files (and finished jobs) are deleted after this."
    )
    outputs_max_bytes: int = Field(
        5 * 1024**3, ge=1024, description="Oldest generated files go first beyond this total."
    )
    jobs_db: Path | None = Field(
        None, description="SQLite file holding job records; default <home>/jobs.sqlite3."
    )
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL URL (`postgresql://user:password@host:5432/database`) holding "
        "the state replicas share: job records and the HMAC replay cache (schema migrated at "
        "start). Unset: SQLite files under <home>, for one machine. Never logged; messages "
        "show it with the password as `***`.",
    )
    jobs_lease_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="With BOTMODELS_DATABASE_URL: a replica renews the lease on its queued and "
        "running jobs every third of this; a job whose lease has run out (its replica died) "
        "is marked `interrupted` by any replica.",
    )
    public_url: AnyHttpUrl | None = Field(
        None,
        description="Base URL clients reach botmodels at, for absolute `url`s in "
        "/v1/images/generations; default: the request's own host.",
    )

    # --- image runner -----------------------------------------------------------------------
    image_quantization: Quantization | None = Field(
        None, description="Override the manifest's quantization: none, int8 or 4bit (CUDA)."
    )
    image_max_batch_size: int = Field(4, ge=1, le=64, description="Images per pipeline call.")
    image_max_latency_ms: int = Field(3_600_000, ge=1000, description=_NO_EFFECT)
    image_max_queue: int = Field(
        16, ge=1, description="Images waiting or running (jobs included) before 429."
    )
    image_max_prompt_chars: int = Field(
        2000, ge=1, description="Longest image `prompt` or `negative_prompt`, characters."
    )
    image_min_size: int = Field(64, ge=8, description="Smallest image width or height, pixels.")
    image_max_size: int = Field(1536, ge=8, description="Largest width or height, pixels.")
    image_max_steps: int = Field(100, ge=1, description="Most denoising steps per image.")
    image_max_guidance: float = Field(30.0, ge=0, description="Largest image `guidance_scale`.")
    image_max_n: int = Field(4, ge=1, description="`n` of /v1/images/generations.")
    image_default_steps: int = Field(4, ge=1, description="When a request names no `steps`.")
    image_default_guidance: float = Field(
        0.0, ge=0, description="When a request names none (0 = turbo models' setting)."
    )

    # --- video runner -----------------------------------------------------------------------
    video_quantization: Quantization | None = Field(
        None, description="Override the manifest's quantization: none, int8 or 4bit (CUDA)."
    )
    video_max_batch_size: int = Field(2, ge=1, le=16, description="Most videos per pipeline call.")
    video_max_latency_ms: int = Field(
        3_600_000,
        ge=1000,
        description=_NO_EFFECT,
    )
    video_max_queue: int = Field(4, ge=1, description="Videos waiting or running before 429.")
    video_max_prompt_chars: int = Field(
        2000, ge=1, description="Longest video `prompt` or `negative_prompt`, characters."
    )
    video_min_size: int = Field(64, ge=8, description="Smallest video width or height, pixels.")
    video_max_size: int = Field(1024, ge=8, description="Largest video width or height, pixels.")
    video_max_frames: int = Field(64, ge=1, description="Most frames per video (`num_frames`).")
    video_max_fps: int = Field(60, ge=1, description="Largest video `fps`.")
    video_max_steps: int = Field(100, ge=1, description="Most denoising steps per video.")
    video_max_guidance: float = Field(30.0, ge=0, description="Largest video `guidance_scale`.")
    video_default_frames: int = Field(16, ge=1, description="When a request names no `num_frames`.")
    video_default_fps: int = Field(8, ge=1, description="When a request names no `fps`.")
    video_default_steps: int = Field(25, ge=1, description="When a request names no `steps`.")
    video_default_guidance: float = Field(
        9.0, ge=0, description="When a request names no `guidance_scale`."
    )
    # --- vision runners: captions (vision), visual questions (vqa), OCR (ocr) -----------------
    vision_url: AnyHttpUrl | None = Field(
        None, description="Serve captions from a remote botmodels at this URL instead."
    )
    vision_quantization: Quantization | None = Field(
        None, description="Override the manifest's: on CUDA int8/4bit are bitsandbytes."
    )
    # BentoML refuses a batchable API with max_batch_size 1 (at start-up): hence ge=2.
    vision_max_batch_size: int = Field(16, ge=2, le=256, description="Images per caption batch.")
    vision_max_latency_ms: int = Field(
        120_000,
        ge=10,
        description=_NO_EFFECT,
    )
    vision_max_new_tokens: int = Field(30, ge=1, le=200, description="Caption/answer length.")
    vision_cpu_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="SmolVLM's weights on the CPU (BLIP stays float32): auto = bfloat16 where "
        "the CPU has bfloat16 instructions (AVX512-BF16 or AMX), else float32, as for the llm.",
    )
    vision_max_image_pixels: int = Field(
        40_000_000,
        ge=1024,
        description="Largest image (width x height) any vision route decodes; checked from the "
        "header before decoding, so image bombs cost nothing.",
    )
    vision_max_prompt_chars: int = Field(
        500, ge=1, description="Longest `prompt` or `question`, in characters."
    )
    vision_default_video_frames: int = Field(8, ge=1, description="`num_frames` when not sent.")
    vision_max_video_frames: int = Field(32, ge=1, le=256, description="Largest `num_frames`.")
    vision_max_video_packets: int = Field(
        200_000, ge=1, description="Most video frames scanned in one upload (bounds CPU time)."
    )
    vqa_url: AnyHttpUrl | None = Field(None, description="Remote botmodels serving VQA.")
    vqa_quantization: Quantization | None = Field(
        None, description="VQA runner quantization (none, int8, 4bit); unset: the model manifest's."
    )
    vqa_max_batch_size: int = Field(
        16, ge=2, le=256, description="Most (image, question) pairs per VQA batch."
    )
    vqa_max_latency_ms: int = Field(
        120_000,
        ge=10,
        description=_NO_EFFECT,
    )
    ocr_url: AnyHttpUrl | None = Field(None, description="Remote botmodels serving OCR.")
    ocr_max_batch_size: int = Field(8, ge=2, le=256, description="Images per OCR batch.")
    ocr_max_latency_ms: int = Field(
        120_000,
        ge=10,
        description=_NO_EFFECT,
    )
    ocr_default_language: str = Field("eng", description="tesseract code used when none is sent.")

    # --- segment runner: /api/video/remove-background ---------------------------------------
    segment_url: AnyHttpUrl | None = Field(
        None, description="Serve foreground masks from a remote botmodels at this URL instead."
    )
    segment_quantization: Quantization | None = Field(
        None, description="Override the manifest's: none, or int8 (torch dynamic, CPU only)."
    )
    segment_max_batch_size: int = Field(8, ge=2, le=64, description="Frames per mask batch.")
    segment_max_latency_ms: int = Field(120_000, ge=10, description=_NO_EFFECT)
    segment_model_side: int = Field(
        512,
        ge=32,
        le=2048,
        description="Frames are shrunk to at most this many pixels a side for the model; the "
        "mask is scaled back to the frame.",
    )
    rembg_max_frames: int = Field(
        900,
        ge=1,
        description="Most frames /api/video/remove-background processes (more: 400).",
    )
    rembg_max_pixels: int = Field(
        1920 * 1080,
        ge=1024,
        description="Largest frame (width x height) /api/video/remove-background takes.",
    )
    # --- the video editor: /api/video/enhance ----------------------------------------------
    editor_max_frames: int = Field(
        1800,
        ge=1,
        description="Most frames in a video to enhance (more: 413); bounds the CPU time, which "
        "must fit in BOTMODELS_REQUEST_TIMEOUT_S.",
    )
    editor_max_pixels: int = Field(
        3840 * 2160,
        ge=1024,
        description="Largest enhanced frame (width x height after `upscale_factor`; more: 413).",
    )
    editor_max_enhancing: int = Field(
        2, ge=1, description="Videos enhanced at once per worker; one more is a 429."
    )

    # --- llm runner: the language model engine (runners/llm.py) -----------------------------
    llm_quantization: Quantization | None = Field(
        None,
        description="Override the manifest's: none (fp32 on CPU, fp16 on CUDA), int8 (torch "
        "dynamic on CPU, bitsandbytes on CUDA) or 4bit (bitsandbytes nf4).",
    )
    llm_cpu_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="The language model's weights on the CPU: auto = bfloat16 where the CPU "
        "has bfloat16 instructions (AVX512-BF16 or AMX), else float32. bfloat16 halves the "
        "weights' memory traffic, which bounds decoding; without those instructions it is slow.",
    )
    llm_context: int = Field(
        4096,
        ge=16,
        description="Most tokens (prompt + completion) one sequence may hold; the model's own "
        "maximum caps it. A longer prompt is a 400; completions are cut at it (`length`). Each "
        "running sequence's KV cache grows up to this.",
    )
    llm_max_running: int = Field(
        8,
        ge=1,
        le=256,
        description="Sequences decoded together in one batch (continuous batching); new "
        "requests join at the next step.",
    )
    llm_max_waiting: int = Field(
        32,
        ge=0,
        description="Requests queued while the batch is full; past running + waiting, a 429.",
    )

    # --- data ---------------------------------------------------------------------------------
    detect_max_rows: int = Field(
        1_000_000,
        ge=1,
        description="Most rows in one /api/detect request (more: 413). The body's size is "
        "bounded first by BOTMODELS_MAX_JSON_BYTES.",
    )

    # --- the language model's OpenAI routes (botmodels/llm/) -------------------------------
    llm_url: AnyHttpUrl | None = Field(
        None,
        description="Serve the language model (with `llm` in BOTMODELS_RUNNERS) from this "
        "OpenAI-compatible server instead (vLLM, SGLang, llama-server, another botmodels): chat "
        "and text completions are proxied, streams event by event, behind botmodels' auth, "
        "limits and metrics.",
    )
    llm_key: SecretStr | None = Field(
        None,
        description="The key sent to BOTMODELS_LLM_URL as `Authorization: Bearer`; unset, this "
        "server's own first key (as every remote runner). Never logged.",
    )
    llm_aliases: Annotated[list[str], NoDecode] = Field(
        [],
        description="Model names /v1/models lists for the language model besides its own and "
        "`default`, comma-separated. Every name a request sends is the served model.",
    )

    @field_validator("runners", mode="before")
    @classmethod
    def _parse_runners(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("llm_aliases", mode="before")
    @classmethod
    def _parse_llm_aliases(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("fetch_allow", "fetch_roots", "fetch_path_map", mode="before")
    @classmethod
    def _parse_fetch_lists(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("fetch_allow")
    @classmethod
    def _fetch_allow_entries(cls, value: list[str]) -> list[str]:
        from botmodels.fetch import AllowList

        AllowList.parse(value)  # raises ValueError naming the entry
        return value

    @field_validator("fetch_path_map")
    @classmethod
    def _fetch_path_map_entries(cls, value: list[str]) -> list[str]:
        from botmodels.fetch import parse_path_map

        parse_path_map(value)  # raises ValueError naming the entry
        return value

    @field_validator("runners")
    @classmethod
    def _known_runners(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(KNOWN_RUNNERS))
        if unknown:
            raise ValueError(
                f"unknown runner(s) {unknown}; BOTMODELS_RUNNERS takes a comma-separated subset "
                f"of {list(KNOWN_RUNNERS)}"
            )
        return list(dict.fromkeys(value))

    @field_validator("preload", mode="before")
    @classmethod
    def _parse_preload(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("preload")
    @classmethod
    def _known_preload(cls, value: list[str]) -> list[str]:
        if value == ["all"]:
            return value
        unknown = sorted(set(value) - set(KNOWN_RUNNERS))
        if unknown:
            raise ValueError(
                f"unknown runner(s) {unknown}; BOTMODELS_PRELOAD takes `all` or a comma-separated "
                f"subset of {list(KNOWN_RUNNERS)}"
            )
        return list(dict.fromkeys(value))

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _parse_memory_budget(cls, value: object) -> object:
        return parse_bytes(value, "BOTMODELS_MEMORY_BUDGET")

    @field_validator("gpu_memory_budget", mode="before")
    @classmethod
    def _parse_gpu_memory_budget(cls, value: object) -> object:
        return parse_bytes(value, "BOTMODELS_GPU_MEMORY_BUDGET")

    @field_validator("trusted_networks", mode="before")
    @classmethod
    def _parse_trusted_networks(cls, value: object) -> object:
        return _parse_networks(value, "BOTMODELS_TRUSTED_NETWORKS")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_trusted_proxies(cls, value: object) -> object:
        return _parse_networks(value, "BOTMODELS_TRUSTED_PROXIES")

    @field_validator("model_variants", mode="before")
    @classmethod
    def _parse_model_variants(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        variants: dict[str, str] = {}
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            runner, sep, variant = (x.strip() for x in part.partition("="))
            if not (sep and runner and variant):
                raise ValueError(
                    f"BOTMODELS_MODEL_VARIANTS={value!r}: {part!r} is not `runner=variant` "
                    "(e.g. image=sdxl-turbo)"
                )
            variants[runner] = variant
        return variants

    @field_validator("model_variants")
    @classmethod
    def _known_variant_runners(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(KNOWN_RUNNERS))
        if unknown:
            raise ValueError(
                f"unknown runner(s) {unknown} in BOTMODELS_MODEL_VARIANTS; known: "
                f"{', '.join(KNOWN_RUNNERS)}"
            )
        return value

    @field_validator("tts_voice_map", mode="before")
    @classmethod
    def _parse_voice_map(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        aliases: dict[str, str] = {}
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            alias, sep, voice = (x.strip() for x in part.partition("="))
            if not (sep and alias and voice):
                raise ValueError(
                    f"BOTMODELS_TTS_VOICE_MAP={value!r}: {part!r} is not `alias=voice` "
                    "(e.g. alloy=joe,nova=joe)"
                )
            aliases[alias.lower()] = voice
        return aliases

    @property
    def embeddings_engine_choice(self) -> Literal["onnx", "torchscript", "eager"]:
        """The engine asked for, with the deprecated torchscript switch applied."""
        if self.embeddings_engine == "torchscript" and not self.embeddings_torchscript:
            return "eager"
        return self.embeddings_engine

    @property
    def outputs_root(self) -> Path:
        return self.outputs_dir or self.home / "outputs"

    @property
    def jobs_path(self) -> Path:
        return self.jobs_db or self.home / "jobs.sqlite3"

    @property
    def replay_cache_path(self) -> Path:
        return self.home / "replay-cache.sqlite3"

    def manifest_entry(self, runner: str, profile: str | None = None) -> str:
        """The models.toml entry `runner` serves in `profile` (default: this one's):
        `<profile>`, or `<profile>-<variant>` where BOTMODELS_MODEL_VARIANTS names one."""
        base = profile or self.profile
        variant = self.model_variants.get(runner)
        return f"{base}-{variant}" if variant else base

    def preloaded(self, runner: str) -> bool:
        """Whether `runner` loads at start-up (BOTMODELS_PRELOAD)."""
        return self.preload == ["all"] or runner in self.preload

    def quantization_for(self, runner: str, manifest: Quantization) -> Quantization:
        """BOTMODELS_<RUNNER>_QUANTIZATION where set, else the manifest's."""
        own: Quantization | None = getattr(self, f"{runner}_quantization", None)
        return own or manifest

    def idle_unload_for(self, runner: str) -> float:
        """Seconds unused before `runner` is unloaded (0: never)."""
        own = getattr(self, f"{runner}_idle_unload_s", None)
        return float(self.idle_unload_s if own is None else own)

    def remote_url(self, runner: str) -> str | None:
        url = getattr(self, f"{runner}_url", None)
        return str(url).rstrip("/") if url is not None else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
