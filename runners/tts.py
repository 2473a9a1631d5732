"""Text-to-speech: Piper voices (VITS exported to ONNX, espeak-ng phonemes) and transformers VITS
models (e.g. Meta's MMS-TTS), several voices per store folder.

The store folder holds any mix of:
  * Piper voices: `<name>.onnx` + `<name>.onnx.json` (at any depth);
  * transformers VITS models: a folder whose `config.json` says `model_type = "vits"`.
Each becomes a voice named after its dataset (`joe`) or folder, with its language (`en_US`,
`por`…). A request picks one by `voice` and/or `language`; an unknown one is a 400 that lists
what exists. Piper is GPL-3.0 software (the voice itself is MIT): see the README, Models.

Long text is spoken in bounded pieces: one model call per piece of at most `PHONEMES_PER_CALL`
phonemes (characters for VITS), cut at sentence ends, then after punctuation, then between
words. A VITS model's memory grows with the audio of one call (the decoder upsamples the whole
utterance at once) and onnxruntime keeps what one call took, so an unbounded sentence (espeak
ends a sentence only at punctuation followed by a capital) would take gigabytes and keep them.

Reads top to bottom: load voices -> pick a voice -> check a job -> synthesize a batch.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from runners.base import Device, InvalidItem, Quantization

log = logging.getLogger("botmodels.runners.tts")

# Phonemes (VITS: characters) in one model call at speed 1; a slower speed stretches each into
# more audio, so proportionally fewer go into one call. Chosen where the call's working memory
# stays small (docs/design.md, TTS and long text) while pieces still sound like phrases.
PHONEMES_PER_CALL = 100
SENTENCE_PAUSE_S = 0.15  # between sentences, as a speaker would pause
CLAUSE_PAUSE_S = 0.1  # where a sentence was cut after a punctuation mark
WORD_PAUSE_S = 0.05  # where it was cut between words (a cut inside a word has none)
FADE_S = 0.005  # each piece fades in and out, so no cut clicks
# ASCII and CJK (ideographic and full-width) clause and sentence punctuation
_CLAUSE_ENDS = frozenset(",;:.!?\u3001\u3002\uff0c\uff01\uff1f\uff1b\uff1a")

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


MIN_SPEED, MAX_SPEED = 0.25, 4.0  # OpenAI's bounds; a VITS call's audio grows as 1/speed
# C0 control characters but tab, line feed, vertical tab, form feed and carriage return; DEL;
# lone surrogates (JSON's "\ud800"). espeak cannot take NUL or a string that is not valid UTF-8,
# and none of them is text. C1 controls (U+0080-U+009F) pass: they are what cp1252 quotes and
# dashes become when text is decoded as Latin-1, and espeak skips them.
_UNSPEAKABLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\ud800-\udfff]")


# --- errors: what the runner refuses (the platform answers each as a 400) --------------------
class InvalidText(InvalidItem):
    """The text is not a string, is empty, is too long, or is not plain text."""

    param = "text"


class InvalidSpeed(InvalidItem):
    """The speed is not a number within OpenAI's bounds."""

    param = "speed"


class UnknownVoice(InvalidItem):
    """No installed voice has the requested name, or speaks the requested language."""

    param = "voice"
    code = "unknown_voice"


# --- items: a batch's jobs and results ------------------------------------------------------
def check_tts_text(text: object, max_chars: int | None, param: str = "text") -> str:
    """The text rules of every way into the TTS runner (`max_chars` None: no length limit);
    InvalidText names `param`."""
    if not isinstance(text, str):
        raise InvalidText(f"`{param}` must be a string", param=param)
    if not text.strip():
        raise InvalidText(f"`{param}` is empty; send the text to speak", param=param)
    if max_chars is not None and len(text) > max_chars:
        raise InvalidText(
            f"`{param}` has {len(text)} characters; the limit is {max_chars}",
            param=param,
            code="text_too_long",
        )
    bad = _UNSPEAKABLE.search(text)
    if bad is not None:
        raise InvalidText(
            f"`{param}` has a control character or a lone surrogate "
            f"(U+{ord(bad.group()):04X} at index {bad.start()}); send plain text",
            param=param,
        )
    return text


def check_tts_speed(speed: object, param: str = "speed") -> float:
    if (
        isinstance(speed, bool)
        or not isinstance(speed, int | float)
        or not math.isfinite(speed)
        or not MIN_SPEED <= speed <= MAX_SPEED
    ):
        raise InvalidSpeed(
            f"`{param}` must be a number from {MIN_SPEED} to {MAX_SPEED}, got {speed!r}",
            param=param,
        )
    return float(speed)


class TtsJob(BaseModel):
    """One text to speak. Validated when built against every text rule but the length, which
    is the caller's setting: the runner checks it with its own `max_chars`, and the platform's
    wire model (botmodels/speech/schemas.py) with its configured limit."""

    text: str
    voice: str | None = None
    language: str | None = None
    speed: float = 1.0

    @field_validator("text")
    @classmethod
    def _text(cls, text: str) -> str:
        return cls.checked_text(text, None)

    @field_validator("speed")
    @classmethod
    def _speed(cls, speed: float) -> float:
        try:
            return check_tts_speed(speed)
        except InvalidSpeed as exc:
            raise ValueError(exc.message) from None

    @staticmethod
    def checked_text(text: str, max_chars: int | None) -> str:
        """`check_tts_text` for a validator: pydantic reports plain ValueErrors as validation
        errors."""
        try:
            return check_tts_text(text, max_chars)
        except InvalidText as exc:
            raise ValueError(exc.message) from None


class TtsResult(BaseModel):
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    audio: bytes = Field(description="mono float32 little-endian samples")
    sample_rate: int
    voice: str

    def samples(self) -> npt.NDArray[np.float32]:
        return np.frombuffer(self.audio, dtype="<f4")


# --- voices ---------------------------------------------------------------------------------
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

    def __init__(
        self,
        model_dir: Path,
        *,
        quantization: Quantization,
        device: Device,
        max_chars: int = 4096,
        max_phonemes: int = 10_000,
    ) -> None:
        self.model_dir = model_dir
        self.quantization = quantization
        self.device = device
        self.max_chars = max_chars
        self.max_phonemes = max_phonemes
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
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        config = json.loads(config_path.read_text(encoding="utf-8"))
        options = onnxruntime.SessionOptions()
        # Every call has a new input length. With the memory pattern, onnxruntime plans each new
        # shape's tensors as one block, and its arena keeps the largest block it was asked for;
        # without it, tensors come from the arena one by one and are reused across calls. (No
        # arena at all gave a higher peak: docs/benchmarks.md, text-to-speech memory.)
        options.enable_mem_pattern = False
        providers = (
            [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})]
            if self.device == "cuda"
            else ["CPUExecutionProvider"]
        )
        model = PiperVoice(
            config=PiperConfig.from_dict(config),
            session=onnxruntime.InferenceSession(
                str(onnx), sess_options=options, providers=providers
            ),
        )
        language = str(config.get("language", {}).get("code") or config["espeak"]["voice"])
        name = str(config.get("dataset") or onnx.stem)
        # onnxruntime sessions are thread-safe; piper locks its espeak-ng calls itself.
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
                raise UnknownVoice(
                    f"`voice` {voice!r} is not installed; available voices: {listing}"
                )
        if language:
            candidates = [v for v in candidates if language_matches(language, v.language)]
            if not candidates:
                raise UnknownVoice(
                    f"no installed voice speaks `language` {language!r}"
                    + (f" as {voice!r}" if voice else "")
                    + f"; available voices: {listing}",
                    param="language",
                    code="unknown_language",
                )
        return candidates[0]

    # 3. Check a job ------------------------------------------------------------------------
    def check(self, job: TtsJob) -> Voice:
        """Refuse (InvalidItem) what this runner will not speak: bad text or speed, an unknown
        voice, or text that makes more speech than `max_phonemes` allows. Cheap next to
        synthesis (it phonemizes, it runs no model): the front runs it before a job joins a
        batch."""
        check_tts_text(job.text, self.max_chars)
        check_tts_speed(job.speed)
        voice = self.pick(job.voice, job.language)
        units = sum(len(s) for s in self._sentences(voice, job.text))
        counted = units / job.speed
        if counted > self.max_phonemes:
            what = "phonemes" if voice.engine == "piper" else "characters"
            slower = f" (at speed {job.speed:g}, counted as {counted:.0f})" if job.speed < 1 else ""
            raise InvalidText(
                f"the text makes {units} {what} of speech{slower}; the limit is "
                f"{self.max_phonemes}: send shorter text",
                param="text",
                code="text_too_long",
            )
        return voice

    @staticmethod
    def _sentences(voice: Voice, text: str) -> list[list[str]]:
        """Piper: espeak's sentences of phonemes. VITS: the text as one run of characters."""
        if voice.engine == "piper":
            return [s for s in voice.model.phonemize(text) if s]
        return [list(text)]

    # 4. Synthesize a batch ------------------------------------------------------------------
    def synthesize(self, jobs: list[TtsJob]) -> list[TtsResult]:
        if not self.voices:
            raise RuntimeError("TtsRunner.synthesize() called before load()")
        voices = [self.check(job) for job in jobs]  # a bad job fails the batch before any work
        results = []
        for job, voice in zip(jobs, voices, strict=True):
            assert voice.lock is not None
            with voice.lock:
                audio = _join(
                    self._piper(voice, job) if voice.engine == "piper" else self._vits(voice, job),
                    voice.sample_rate,
                )
            results.append(
                TtsResult(
                    audio=audio.astype("<f4", copy=False).tobytes(),
                    sample_rate=voice.sample_rate,
                    voice=voice.name,
                )
            )
        return results

    def _piper(self, voice: Voice, job: TtsJob) -> list[tuple[npt.NDArray[np.float32], float]]:
        """(audio, pause after it) per piece; each sentence scaled to full range, as Piper does."""
        from piper import SynthesisConfig

        model = voice.model
        config = SynthesisConfig(length_scale=model.config.length_scale / job.speed)
        limit = _per_call(job.speed)
        pieces: list[tuple[npt.NDArray[np.float32], float]] = []
        for sentence in self._sentences(voice, job.text):
            cut = split_units(sentence, limit)
            if not cut:  # only spaces
                continue
            raw = [
                np.asarray(
                    model.phoneme_ids_to_audio(model.phonemes_to_ids(units), config), np.float32
                ).reshape(-1)
                for units, _ in cut
            ]
            peak = max(float(np.max(np.abs(a), initial=0.0)) for a in raw)
            scale = 1.0 / peak if peak >= 1e-8 else 0.0
            pieces += [
                (np.clip(a * scale, -1.0, 1.0), pause)
                for a, (_, pause) in zip(raw, cut, strict=True)
            ]
        return pieces

    def _vits(self, voice: Voice, job: TtsJob) -> list[tuple[npt.NDArray[np.float32], float]]:
        import torch

        voice.model.speaking_rate = job.speed
        torch.manual_seed(0)  # VITS samples its durations: same text, same audio
        pieces: list[tuple[npt.NDArray[np.float32], float]] = []
        for units, pause in split_units(list(job.text), _per_call(job.speed)):
            inputs = voice.tokenizer("".join(units), return_tensors="pt").to(voice.model.device)
            if inputs["input_ids"].shape[-1] == 0:
                continue
            with torch.inference_mode():
                waveform = voice.model(**inputs).waveform[0]
            pieces.append((waveform.float().cpu().numpy().astype(np.float32), pause))
        return pieces


def _per_call(speed: float) -> int:
    return max(1, int(PHONEMES_PER_CALL * min(1.0, speed)))


def split_units(units: Sequence[str], limit: int) -> list[tuple[list[str], float]]:
    """A sentence's phonemes (or characters) in pieces of at most `limit`, each with the pause
    that follows it. A cut goes after the last punctuation mark in the second half of the
    window, else at the last space there, else at the limit; the last piece ends a sentence."""
    pieces: list[tuple[list[str], float]] = []
    start = 0
    while len(units) - start > limit:
        end, floor = start + limit, start + limit // 2
        cut, pause = end, 0.0
        for at in range(end - 1, floor - 1, -1):
            if units[at] in _CLAUSE_ENDS:
                cut, pause = at + 1, CLAUSE_PAUSE_S
                break
        else:
            for at in range(end - 1, floor - 1, -1):
                if units[at].isspace():
                    cut, pause = at, WORD_PAUSE_S
                    break
        pieces.append((list(units[start:cut]), pause))
        start = cut
        while start < len(units) and units[start].isspace():
            start += 1
    pieces.append((list(units[start:]), SENTENCE_PAUSE_S))
    return [(p, pause) for p, pause in pieces if any(not u.isspace() for u in p)]


def _join(
    pieces: list[tuple[npt.NDArray[np.float32], float]], sample_rate: int
) -> npt.NDArray[np.float32]:
    """One signal: each piece faded in and out, the pauses between them as silence."""
    fade = max(1, int(FADE_S * sample_rate))
    ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)).astype(np.float32)
    total = sum(a.size for a, _ in pieces) + sum(
        int(pause * sample_rate) for _, pause in pieces[:-1]
    )
    out = np.zeros(total, dtype=np.float32)
    at = 0
    for index, (audio, pause) in enumerate(pieces):
        out[at : at + audio.size] = audio
        n = min(fade, audio.size // 2)
        out[at : at + n] *= ramp[:n]
        out[at + audio.size - n : at + audio.size] *= ramp[:n][::-1]
        at += audio.size + (int(pause * sample_rate) if index < len(pieces) - 1 else 0)
    return out


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
