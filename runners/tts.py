"""Text-to-speech: Piper voices (VITS exported to ONNX, espeak-ng phonemes) and transformers VITS
models (e.g. Meta's MMS-TTS), several voices per store folder.

The store folder holds any mix of:
  * Piper voices: `<name>.onnx` + `<name>.onnx.json` (at any depth);
  * transformers VITS models: a folder whose `config.json` says `model_type = "vits"`.
Each becomes a voice named after its dataset (`joe`) or folder, with its language (`en_US`,
`por`…). A request picks one by `voice` and/or `language`; an unknown one is a 400 that lists
what exists. Piper is GPL-3.0 software (the voice itself is MIT): see the README.

Reads top to bottom: load voices -> pick a voice -> synthesize a batch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from botmodels.config import Quantization
from botmodels.device import Device
from botmodels.errors import InvalidInput
from botmodels.speech_schemas import TtsJob, TtsResult

log = logging.getLogger("botmodels.runners.tts")

MODEL_ID = "facebook/mms-tts-eng"
SAMPLE_INPUT = "The quick brown fox jumps over the lazy dog."
# ISO 639-3 (MMS) -> 639-1, for the languages botserver's users ask for most.
_ISO3 = {
    "eng": "en",
    "por": "pt",
    "spa": "es",
    "fra": "fr",
    "deu": "de",
    "ita": "it",
    "nld": "nl",
    "rus": "ru",
    "cmn": "zh",
    "jpn": "ja",
    "ara": "ar",
    "hin": "hi",
}


def language_matches(wanted: str, voice_language: str) -> bool:
    """`en` matches `en_US` and `eng`; `pt-BR` matches `pt_BR` and `por`, not `pt_PT`."""
    want = wanted.lower().replace("-", "_")
    have = voice_language.lower().replace("-", "_")
    have_base = _ISO3.get(have.split("_")[0], have.split("_")[0])
    want_base = _ISO3.get(want.split("_")[0], want.split("_")[0])
    if "_" in want:
        return want == have or (want_base == have_base and "_" not in have)
    return want_base == have_base


@dataclass
class Voice:
    name: str
    language: str
    engine: str  # "piper" | "vits"
    path: Path
    sample_rate: int = 0
    model: Any = None
    tokenizer: Any = None
    lock: threading.Lock | None = None

    def describe(self) -> dict[str, Any]:
        return {"voice": self.name, "language": self.language, "engine": self.engine}


class TtsRunner:
    kind = "tts"

    def __init__(self, model_dir: Path, *, quantization: Quantization, device: Device) -> None:
        self.model_dir = model_dir
        self.quantization = quantization
        self.device = device
        self.dtype = "float32"
        self.voices: dict[str, Voice] = {}

    # 1. Load --------------------------------------------------------------------------------
    def load(self) -> None:
        started = time.perf_counter()
        for onnx in sorted(self.model_dir.rglob("*.onnx")):
            config_path = onnx.with_name(onnx.name + ".json")
            if config_path.is_file():
                self._add(self._load_piper(onnx, config_path))
        for config_path in sorted(self.model_dir.rglob("config.json")):
            config = json.loads(config_path.read_text(encoding="utf-8"))
            if config.get("model_type") == "vits":
                self._add(self._load_vits(config_path.parent))
        if not self.voices:
            raise FileNotFoundError(
                f"no Piper (.onnx + .onnx.json) or VITS voice in {self.model_dir}"
            )
        log.info(
            "tts voices %s loaded in %.1f s",
            [v.describe() for v in self.voices.values()],
            time.perf_counter() - started,
        )

    def _add(self, voice: Voice) -> None:
        name, n = voice.name, 2
        while voice.name in self.voices:  # two voices from the same dataset: joe, joe-2
            voice.name = f"{name}-{n}"
            n += 1
        self.voices[voice.name] = voice

    def _load_piper(self, onnx: Path, config_path: Path) -> Voice:
        from piper import PiperVoice

        config = json.loads(config_path.read_text(encoding="utf-8"))
        model = PiperVoice.load(onnx, config_path=config_path, use_cuda=self.device == "cuda")
        language = str(config.get("language", {}).get("code") or config["espeak"]["voice"])
        name = str(config.get("dataset") or onnx.stem)
        # onnxruntime sessions are thread-safe; espeak-ng phonemization is not.
        return Voice(
            name,
            language,
            "piper",
            onnx,
            int(config["audio"]["sample_rate"]),
            model,
            None,
            threading.Lock(),
        )

    def _load_vits(self, folder: Path) -> Voice:
        import torch
        from transformers import AutoTokenizer, VitsModel

        tokenizer = AutoTokenizer.from_pretrained(folder)
        model: Any = VitsModel.from_pretrained(folder)
        if self.device in ("cuda", "mps"):
            model = model.to(self.device)
        if self.device == "cpu" and self.quantization == "int8":
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
            self.dtype = "qint8-dynamic"
        model.eval()
        language = str(getattr(tokenizer, "language", None) or "und")
        name = folder.name if folder != self.model_dir else f"vits-{language}"
        return Voice(
            name,
            language,
            "vits",
            folder,
            int(model.config.sampling_rate),
            model,
            tokenizer,
            threading.Lock(),
        )

    # 2. Pick a voice ------------------------------------------------------------------------
    def pick(self, voice: str | None, language: str | None) -> Voice:
        listing = ", ".join(f"{v.name} ({v.language})" for v in self.voices.values())
        candidates = list(self.voices.values())
        if voice:
            candidates = [v for v in candidates if v.name.lower() == voice.lower()]
            if not candidates:
                raise InvalidInput(
                    f"`voice` {voice!r} is not installed; available voices: {listing}",
                    param="voice",
                    code="unknown_voice",
                )
        if language:
            candidates = [v for v in candidates if language_matches(language, v.language)]
            if not candidates:
                raise InvalidInput(
                    f"no installed voice speaks `language` {language!r}"
                    + (f" as {voice!r}" if voice else "")
                    + f"; available voices: {listing}",
                    param="language",
                    code="unknown_language",
                )
        return candidates[0]

    # 3. Synthesize a batch ------------------------------------------------------------------
    def synthesize(self, jobs: list[TtsJob]) -> list[TtsResult]:
        if not self.voices:
            raise RuntimeError("TtsRunner.synthesize() called before load()")
        results = []
        for job in jobs:
            voice = self.pick(job.voice, job.language)
            assert voice.lock is not None
            with voice.lock:
                audio = (
                    self._piper(voice, job) if voice.engine == "piper" else self._vits(voice, job)
                )
            results.append(
                TtsResult(
                    audio=audio.astype("<f4", copy=False).tobytes(),
                    sample_rate=voice.sample_rate,
                    voice=voice.name,
                )
            )
        return results

    def _piper(self, voice: Voice, job: TtsJob) -> npt.NDArray[np.float32]:
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=1.0 / job.speed)
        pieces = [chunk.audio_float_array for chunk in voice.model.synthesize(job.text, config)]
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        # a short pause between sentences, as a speaker would make
        gap = np.zeros(int(0.15 * voice.sample_rate), dtype=np.float32)
        joined = [p for piece in pieces for p in (piece.astype(np.float32), gap)][:-1]
        return np.concatenate(joined)

    def _vits(self, voice: Voice, job: TtsJob) -> npt.NDArray[np.float32]:
        import torch

        inputs = voice.tokenizer(job.text, return_tensors="pt").to(voice.model.device)
        if inputs["input_ids"].shape[-1] == 0:
            return np.zeros(0, dtype=np.float32)
        voice.model.speaking_rate = job.speed
        torch.manual_seed(0)  # VITS samples its durations: same text, same audio
        with torch.inference_mode():
            waveform = voice.model(**inputs).waveform[0]
        samples: npt.NDArray[np.float32] = waveform.float().cpu().numpy().astype(np.float32)
        return samples


def build_tiny(folder: Path) -> None:
    """A random 1-layer VITS (16 wide) with a character vocabulary, language `en` (English
    letters only): the transformers path, meaningless sound."""
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    letters = list("abcdefghijklmnopqrstuvwxyz '.,?!")
    vocab = {"<pad>": 0, **{c: i + 1 for i, c in enumerate(letters)}}
    vocab_path = folder / "vocab.json"
    vocab_path.write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = VitsTokenizer(
        vocab_file=str(vocab_path), language="eng", phonemize=False, add_blank=True
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = VitsConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        flow_size=16,
        spectrogram_bins=33,
        upsample_initial_channel=16,
        upsample_rates=[8, 8, 4],
        upsample_kernel_sizes=[16, 16, 8],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1,
        duration_predictor_num_flows=1,
        duration_predictor_filter_channels=16,
        depth_separable_num_layers=1,
        sampling_rate=16_000,
    )
    VitsModel(config).eval().save_pretrained(folder)
