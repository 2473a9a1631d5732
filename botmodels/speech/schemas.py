"""The speech domain's HTTP-facing models: the botserver-shaped responses, and the runner
route's TTS job with this instance's text limit.

The batch items themselves (`SttJob`, `SttResult`, `TtsJob`, `TtsResult`) belong to their
runners (runners/stt.py, runners/tts.py), which read no settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, field_validator

from botmodels.config import get_settings
from runners import tts


class TtsJob(tts.TtsJob):
    """One text to speak. Validated when built (so a bad job sent to the runner's route is
    that request's 400, not a failure of the batch it would join); the runner checks again
    with its own limits."""

    @field_validator("text")
    @classmethod
    def _text(cls, text: str) -> str:  # replaces the runner item's rule: with the length limit
        return cls.checked_text(text, get_settings().tts_max_chars)


# --- botserver's routes (contract: exact fields it reads, plus a few extra) --------------------
class SpeechToTextResponse(BaseModel):
    text: str
    language: str | None
    confidence: float
    duration: float


class DetectLanguageResponse(BaseModel):
    language: str | None
    confidence: float


class SpeechGenerationResponse(BaseModel):
    status: Literal["completed"] = "completed"
    file_path: str
    generation_time: float
    error: str | None = None
    voice: str | None = None
    duration: float | None = None
