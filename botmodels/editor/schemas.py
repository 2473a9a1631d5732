"""The video editor's bodies and answers, as botserver's botvideo crate sends and reads them
(`botvideo/src/engine/effects.rs` transcribe_audio, `chat_ai.rs` generate_waveform): it reads
`segments[].start/end` in seconds (and multiplies by 1000), `text`, `confidence`, `language`;
`samples`, `duration_ms` and `sample_rate`, the waveform's values per second (its default, 10,
is its `samples_per_second` default); `chat_ai.rs` enhance_video reads `enhanced_url` (a string,
handed on as it is) and `enhancements` (strings) and ignores the rest."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# A waveform is for drawing: past this many values per second no screen shows more.
MAX_SAMPLES_PER_SECOND = 1000
MAX_URL_CHARS = 4096


class TranscribeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    audio_url: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="an http(s) URL allowed by BOTMODELS_FETCH_ALLOW, or an absolute path under "
        "BOTMODELS_FETCH_ROOTS",
    )
    language: str | None = Field(
        "auto", max_length=16, description="ISO-639-1 code, or `auto` (detected)"
    )
    word_timestamps: bool = Field(
        True, description="each segment's words with their times (CTranslate2 Whisper only)"
    )


class TranscribedWord(BaseModel):
    word: str
    start: float = Field(description="seconds")
    end: float = Field(description="seconds")
    probability: float


class TranscribedSegment(BaseModel):
    start: float = Field(description="seconds from the start of the audio")
    end: float = Field(description="seconds from the start of the audio")
    text: str
    confidence: float = Field(description="exp(mean token log-probability), 0..1")
    words: list[TranscribedWord] = Field(default_factory=list)


class TranscribeResponse(BaseModel):
    segments: list[TranscribedSegment]
    language: str | None = Field(description="ISO 639-1 code; null when there was no speech")
    text: str
    duration: float = Field(description="seconds of audio")


class WaveformRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    audio_url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    samples_per_second: int = Field(10, ge=1, le=MAX_SAMPLES_PER_SECOND)


class WaveformResponse(BaseModel):
    samples: list[float] = Field(
        description="the peak of |sample| in each window of 1/sample_rate s, 0..1"
    )
    duration_ms: int
    sample_rate: int = Field(description="values per second in `samples` (samples_per_second)")


class BeatsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    audio_url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    # Checked by hand (botmodels/editor/beats_front.py) so the error names the range.
    sensitivity: Any = Field(
        None,
        description="0 (only the most accented beats) to 1 (every beat); omitted or null: 0.5",
        json_schema_extra={"type": ["number", "null"], "minimum": 0, "maximum": 1},
    )


class Beat(BaseModel):
    time_ms: int = Field(description="milliseconds from the start of the audio")
    strength: float = Field(description="how much louder the sound gets at the beat, 0..1")
    type: Literal["downbeat", "beat"]


class BeatsResponse(BaseModel):
    beats: list[Beat]
    tempo_bpm: float = Field(description="beats per minute; 0 when no beat was found")


class EnhanceRequest(BaseModel):
    """botserver sends every field, `null` for what its caller left out (`Option<_>`)."""

    model_config = ConfigDict(extra="ignore")

    video_url: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="an http(s) URL allowed by BOTMODELS_FETCH_ALLOW, or an absolute path under "
        "BOTMODELS_FETCH_ROOTS",
    )
    upscale_factor: int | None = Field(
        None, ge=1, le=4, description="width and height times this (Lanczos); null: 1"
    )
    denoise: bool | None = Field(None, description="null: true")
    stabilize: bool | None = Field(None, description="null: true")
    color_correct: bool | None = Field(None, description="null: true")


class EnhanceResponse(BaseModel):
    enhanced_url: str = Field(
        description="absolute URL of the MP4 under /outputs/videos/ (BOTMODELS_PUBLIC_URL, or "
        "the request's own base); no key needed, kept BOTMODELS_OUTPUTS_MAX_AGE_S"
    )
    enhancements: list[str] = Field(
        description="what was applied, in order: `denoise`, `stabilize`, `color_correct`, "
        "`upscale_lanczos_<n>x`"
    )
    file_path: str = Field(description="the same file's URL path, /outputs/videos/<name>.mp4")
    frame_count: int
    fps: float
    width: int
    height: int
