"""Items of the batchable speech runner APIs, and the botserver-shaped responses.

Job items carry audio as raw little-endian float32 bytes (base64 in JSON, so a remote botmodels
can run them too; in-process, BentoML's dispatcher passes the objects as they are).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

SAMPLE_RATE = 16_000  # Whisper's input rate


class SttJob(BaseModel):
    """One transcription (or language detection) for the batchable STT API."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    audio: bytes = Field(description="mono float32 little-endian samples at 16 kHz")
    language: str | None = None
    task: Literal["transcribe", "translate", "detect"] = "transcribe"
    prompt: str | None = None
    temperature: float = 0.0
    word_timestamps: bool = False

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


class TtsJob(BaseModel):
    text: str
    voice: str | None = None
    language: str | None = None
    speed: float = 1.0


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
