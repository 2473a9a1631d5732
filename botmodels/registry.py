"""Every runner kind botmodels knows, once: how its runner is built from a stored model, how its
tiny (random-weight) model is made for the `tiny` profile, and the service's class attribute
that references its stored model. `KNOWN_RUNNERS` (botmodels/config.py) is this table's keys.

A new kind is an entry here, its `runners/<kind>.py`, and its domain under `botmodels/`.

Importing this module imports no runner (so no numpy, torch or model): each factory and tiny
builder imports its runner module when it is called, and the runners import torch inside their
functions. config.py imports this module, so it stays as cheap as config.
"""

from __future__ import annotations

import importlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from runners.base import Device, Quantization

if TYPE_CHECKING:
    from runners.embeddings import EmbeddingsRunner
    from runners.image import ImageRunner
    from runners.llm import LlmRunner
    from runners.ocr import OcrRunner
    from runners.rerank import RerankRunner
    from runners.segment import SegmentRunner
    from runners.stt import SttRunner
    from runners.tts import TtsRunner
    from runners.video import VideoRunner
    from runners.vision import VisionRunner

log = logging.getLogger("botmodels")

Factory = Callable[[Path, Quantization, Device], Any]
TinyBuilder = Callable[[Path], None]
Exporter = Callable[[Path], None]


def _make_embeddings(path: Path, quantization: Quantization, device: Device) -> EmbeddingsRunner:
    from botmodels.config import get_settings
    from runners.embeddings import EmbeddingsRunner

    settings = get_settings()
    return EmbeddingsRunner(
        path,
        quantization=quantization,
        device=device,
        engine=settings.embeddings_engine_choice,
        workers=settings.embeddings_workers,
        threads=settings.threads,
    )


def _make_image(path: Path, quantization: Quantization, device: Device) -> ImageRunner:
    from runners.image import ImageRunner

    return ImageRunner(path, quantization=quantization, device=device)


def _make_video(path: Path, quantization: Quantization, device: Device) -> VideoRunner:
    from runners.video import VideoRunner

    return VideoRunner(path, quantization=quantization, device=device)


# Weak: once the pool unloads both kinds, the shared model is freed.
_vision_runners: weakref.WeakValueDictionary[Path, VisionRunner] = weakref.WeakValueDictionary()


def _make_vision(path: Path, quantization: Quantization, device: Device) -> VisionRunner:
    # vision.<profile> and vqa.<profile> may name one stored model (SmolVLM2 answers both):
    # both kinds share one loaded copy.
    from botmodels.config import get_settings
    from runners.vision import VisionRunner

    runner = _vision_runners.get(path)
    if runner is None:
        settings = get_settings()
        runner = VisionRunner(
            path,
            quantization=quantization,
            device=device,
            max_new_tokens=settings.vision_max_new_tokens,
            cpu_dtype=cpu_dtype(settings.vision_cpu_dtype),
        )
        _vision_runners[path] = runner
    return runner


def _make_ocr(path: Path, quantization: Quantization, device: Device) -> OcrRunner:
    from runners.ocr import OcrRunner

    return OcrRunner(path, quantization=quantization, device=device)


def _make_stt(path: Path, quantization: Quantization, device: Device) -> SttRunner:
    from botmodels.config import get_settings
    from runners.stt import SttRunner

    settings = get_settings()
    return SttRunner(
        path,
        quantization=quantization,
        device=device,
        max_batch_chunks=2 * settings.stt_max_batch_size,
        beam_size=settings.stt_beam_size,
        pack=settings.stt_pack,
    )


def _make_tts(path: Path, quantization: Quantization, device: Device) -> TtsRunner:
    from botmodels.config import get_settings
    from runners.tts import TtsRunner

    settings = get_settings()
    return TtsRunner(
        path,
        quantization=quantization,
        device=device,
        max_chars=settings.tts_max_chars,
        max_phonemes=settings.tts_max_phonemes,
    )


def _make_segment(path: Path, quantization: Quantization, device: Device) -> SegmentRunner:
    from runners.segment import SegmentRunner

    return SegmentRunner(path, quantization=quantization, device=device)


def _make_rerank(path: Path, quantization: Quantization, device: Device) -> RerankRunner:
    from botmodels.config import get_settings
    from runners.rerank import RerankRunner

    settings = get_settings()
    return RerankRunner(
        path,
        quantization=quantization,
        device=device,
        torchscript=settings.rerank_torchscript,
        max_length=settings.rerank_max_tokens,
    )


def cpu_dtype(setting: str) -> str:
    """`auto`: bfloat16 where the CPU computes it natively (Linux's flags), else float32."""
    if setting != "auto":
        return setting
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:
        return "float32"
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


def _make_llm(path: Path, quantization: Quantization, device: Device) -> LlmRunner:
    from botmodels.config import get_settings
    from runners.llm import LlmRunner

    settings = get_settings()
    return LlmRunner(
        path,
        quantization=quantization,
        device=device,
        context=settings.llm_context,
        cpu_dtype=cpu_dtype(settings.llm_cpu_dtype),
        max_running=settings.llm_max_running,
        max_waiting=settings.llm_max_waiting,
    )


def _lazy(module: str, function: str = "build_tiny") -> Callable[[Path], None]:
    """`runners.<module>.<function>(folder)`, imported only when called: a tiny model's builder
    or an import step's export."""

    def call(folder: Path) -> None:
        getattr(importlib.import_module(f"runners.{module}"), function)(folder)

    call.__qualname__ = f"runners.{module}.{function}"
    return call


@dataclass(frozen=True)
class RunnerKind:
    name: str
    runner: str  # "module:Class" under runners/: the class the factory builds
    factory: Factory  # the runner for a stored model's folder (loads nothing until `load()`)
    build_tiny: TinyBuilder | None  # None: the kind has no tiny model (ocr's data is tesseract's)
    # The import step's derived files, written into the stored model's folder once (the
    # embeddings' ONNX graph); None: the stored files are the model's own.
    export: Exporter | None = None
    # True: a profile may name no model for this kind; there the kind is off (not a failed
    # runner) and its routes do without it (rerank falls back to the embeddings).
    optional: bool = False
    # In the default BOTMODELS_RUNNERS. The language model is opt-in until models load on first
    # use: it takes minutes and ~2 GB to load on a small CPU, which every default server (and
    # every test that serves the defaults) would pay. `make serve` enables it.
    default: bool = True

    def runner_class(self) -> type[Any]:
        """The runner class, imported now (tests build runners with their own options)."""
        module, name = self.runner.split(":")
        cls: type[Any] = getattr(importlib.import_module(f"runners.{module}"), name)
        return cls

    @property
    def model_attr(self) -> str:
        """The service's class attribute that references this kind's stored model."""
        return f"{self.name}_model"


KINDS: dict[str, RunnerKind] = {
    kind.name: kind
    for kind in (
        RunnerKind(
            "embeddings",
            "embeddings:EmbeddingsRunner",
            _make_embeddings,
            _lazy("embeddings"),
            _lazy("embeddings", "export_onnx"),
        ),
        RunnerKind("vision", "vision:VisionRunner", _make_vision, _lazy("vision")),
        RunnerKind("vqa", "vision:VisionRunner", _make_vision, _lazy("vision", "build_tiny_vqa")),
        RunnerKind("ocr", "ocr:OcrRunner", _make_ocr, None),
        RunnerKind("stt", "stt:SttRunner", _make_stt, _lazy("stt")),
        RunnerKind("tts", "tts:TtsRunner", _make_tts, _lazy("tts")),
        RunnerKind("image", "image:ImageRunner", _make_image, _lazy("image")),
        RunnerKind("video", "video:VideoRunner", _make_video, _lazy("video")),
        RunnerKind("segment", "segment:SegmentRunner", _make_segment, _lazy("segment")),
        RunnerKind("rerank", "rerank:RerankRunner", _make_rerank, _lazy("rerank"), optional=True),
        RunnerKind(
            "llm",
            "llm:LlmRunner",
            _make_llm,
            _lazy("llm"),
            _lazy("llm", "export_transformers"),
            default=False,
        ),
    )
}


def factories() -> dict[str, Factory]:
    return {name: kind.factory for name, kind in KINDS.items()}


def tiny_builders() -> dict[str, TinyBuilder]:
    return {name: kind.build_tiny for name, kind in KINDS.items() if kind.build_tiny is not None}


def exporters() -> dict[str, Exporter]:
    return {name: kind.export for name, kind in KINDS.items() if kind.export is not None}


def model_ref(kind: str) -> Any:
    """Class-level reference to the profile's stored model for `kind`, so `bentoml build` lists
    it and `bentoml export` carries it. Reads the manifest and the store's index, loads nothing.

    A model missing from the store is not referenced: `bentoml serve` refuses to start at all
    over a missing class-level model, and we want the other runners up and the missing one
    reported by /api/health instead."""
    import bentoml

    from botmodels.config import get_settings
    from botmodels.store import find_stored, load_manifest

    settings = get_settings()
    spec = load_manifest(settings.manifest).get(kind, {}).get(settings.manifest_entry(kind))
    if spec is None or kind not in settings.runners or settings.remote_url(kind) is not None:
        return None
    if find_stored(spec.tag) is None:
        log.warning("model %s is not in the store; runner %s will report it", spec.tag, kind)
        return None
    return bentoml.models.BentoModel(spec.tag)


C = TypeVar("C")


def with_model_refs(cls: type[C]) -> type[C]:
    """A class decorator (under `@bentoml.service`): one model-reference attribute per kind."""
    for kind in KINDS.values():
        setattr(cls, kind.model_attr, model_ref(kind.name))
    return cls
