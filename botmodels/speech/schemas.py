"""Items of the batchable speech runner APIs, and the botserver-shaped responses.

Job items carry audio as raw little-endian float32 bytes (base64 in JSON, so a remote botmodels
can run them too; in-process, BentoML's dispatcher passes the objects as they are).
"""

from __future__ import annotations

import math
import re
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from botmodels.config import get_settings
from botmodels.errors import InvalidInput

SAMPLE_RATE = 16_000  # Whisper's input rate
MIN_SPEED, MAX_SPEED = 0.25, 4.0  # OpenAI's bounds; a VITS call's audio grows as 1/speed
# C0 control characters but tab, line feed, vertical tab, form feed and carriage return; DEL;
# lone surrogates (JSON's "\ud800"). espeak cannot take NUL or a string that is not valid UTF-8,
# and none of them is text. C1 controls (U+0080-U+009F) pass: they are what cp1252 quotes and
# dashes become when text is decoded as Latin-1, and espeak skips them.
_UNSPEAKABLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\ud800-\udfff]")


def check_samples(audio: npt.NDArray[np.float32], param: str = "audio") -> None:
    # Whisper turns NaN or infinite samples into endless garbage text, not an error.
    if not np.isfinite(audio).all():
        raise InvalidInput(
            f"`{param}` has samples that are not finite numbers (NaN or infinity)", param=param
        )


class SttJob(BaseModel):
    """One transcription (or language detection) for the batchable STT API. Validated when
    built, so a bad job sent to the runner's route is that request's 400; the runner checks
    the language against its model."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    audio: bytes = Field(description="mono float32 little-endian samples at 16 kHz")
    language: str | None = None
    task: Literal["transcribe", "translate", "detect"] = "transcribe"
    prompt: str | None = None
    temperature: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    word_timestamps: bool = False

    @field_validator("audio")
    @classmethod
    def _audio(cls, audio: bytes) -> bytes:
        if len(audio) % 4:
            raise ValueError(f"is {len(audio)} bytes, not whole float32 samples (4 bytes each)")
        try:
            check_samples(np.frombuffer(audio, dtype="<f4"))
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return audio

    @classmethod
    def from_array(cls, audio: npt.NDArray[np.float32], **options: object) -> SttJob:
        return cls(audio=audio.astype("<f4", copy=False).tobytes(), **options)

    def samples(self) -> npt.NDArray[np.float32]:
        return np.frombuffer(self.audio, dtype="<f4")


class WordOut(BaseModel):
    word: str
    start: float
    end: float
    probability: float


class SegmentOut(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[WordOut] = Field(default_factory=list)


class SttResult(BaseModel):
    text: str
    language: str | None = Field(description="ISO 639-1 code; None when there was no speech")
    language_probability: float
    duration: float = Field(description="seconds of audio received")
    speech_duration: float = Field(description="seconds left after voice-activity filtering")
    segments: list[SegmentOut] = Field(default_factory=list)

    @property
    def confidence(self) -> float:
        """exp(mean token log-probability), duration-weighted over segments: 0..1."""
        if not self.segments:
            return 0.0
        weights = [max(s.end - s.start, 1e-3) for s in self.segments]
        mean = sum(w * s.avg_logprob for w, s in zip(weights, self.segments, strict=True))
        return float(min(1.0, np.exp(mean / sum(weights))))


def check_tts_text(text: object, max_chars: int, param: str = "text") -> str:
    """The text rules of every way into the TTS runner; InvalidInput names `param`."""
    if not isinstance(text, str):
        raise InvalidInput(f"`{param}` must be a string", param=param)
    if not text.strip():
        raise InvalidInput(f"`{param}` is empty; send the text to speak", param=param)
    if len(text) > max_chars:
        raise InvalidInput(
            f"`{param}` has {len(text)} characters; the limit is {max_chars}",
            param=param,
            code="text_too_long",
        )
    bad = _UNSPEAKABLE.search(text)
    if bad is not None:
        raise InvalidInput(
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
        raise InvalidInput(
            f"`{param}` must be a number from {MIN_SPEED} to {MAX_SPEED}, got {speed!r}",
            param=param,
        )
    return float(speed)


class TtsJob(BaseModel):
    """One text to speak. Validated when built (so a bad job sent to the runner's route is
    that request's 400, not a failure of the batch it would join); the runner checks again
    with its own limits."""

    text: str
    voice: str | None = None
    language: str | None = None
    speed: float = 1.0

    @field_validator("text")
    @classmethod
    def _text(cls, text: str) -> str:
        try:
            return check_tts_text(text, get_settings().tts_max_chars)
        except InvalidInput as exc:  # pydantic reports ValueErrors as validation errors
            raise ValueError(exc.message) from None

    @field_validator("speed")
    @classmethod
    def _speed(cls, speed: float) -> float:
        try:
            return check_tts_speed(speed)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None


class TtsResult(BaseModel):
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    audio: bytes = Field(description="mono float32 little-endian samples")
    sample_rate: int
    voice: str

    def samples(self) -> npt.NDArray[np.float32]:
        return np.frombuffer(self.audio, dtype="<f4")


# --- botserver's routes (contract: exact fields it reads, plus a few extra) --------------------
class SpeechToTextResponse(BaseModel):
    text: str
    language: str | None
    confidence: float
    duration: float


class DetectLanguageResponse(BaseModel):
    language: str | None
    confidence: float


class GenerationResponse(BaseModel):
    status: Literal["completed"] = "completed"
    file_path: str
    generation_time: float
    error: str | None = None
    voice: str | None = None
    duration: float | None = None
