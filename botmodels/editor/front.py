"""The video editor's audio routes: the audio named by `audio_url` (botmodels/fetch.py's rules),
decoded as an upload is (botmodels/speech/audio.py), then transcribed on the speech runner or
reduced to a waveform. Starlette routes (botmodels/editor/routes.py), like the speech routes."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import numpy.typing as npt
from starlette.requests import Request

from botmodels.config import Settings
from botmodels.editor.beats_front import beats_from_bytes
from botmodels.editor.rembg import RembgFrontend, RemoveBackgroundResponse
from botmodels.editor.schemas import (
    BeatsRequest,
    BeatsResponse,
    TranscribedSegment,
    TranscribedWord,
    TranscribeRequest,
    TranscribeResponse,
    WaveformRequest,
    WaveformResponse,
)
from botmodels.fetch import Fetcher
from botmodels.media import read_json_model
from botmodels.speech import audio as audio_io
from botmodels.speech.front import SpeechFrontend

# The waveform's decoding rate: the envelope of speech and music at display resolution.
WAVEFORM_RATE = 16_000


def peak_envelope(
    samples: npt.NDArray[np.float32], rate: int, per_second: int
) -> npt.NDArray[np.float32]:
    """max |sample| in each window of `rate / per_second` samples (the last one may be
    shorter), clipped to [0, 1]: what a timeline draws."""
    if samples.size == 0:
        return np.zeros(0, dtype=np.float32)
    count = math.ceil(samples.size * per_second / rate)
    starts = (np.arange(count, dtype=np.int64) * rate) // per_second
    peaks = np.maximum.reduceat(np.abs(samples), starts)
    clipped: npt.NDArray[np.float32] = np.clip(peaks, 0.0, 1.0).astype(np.float32)
    return clipped


class EditorFrontend:
    def __init__(
        self,
        settings: Settings,
        fetcher: Fetcher,
        speech: SpeechFrontend,
        rembg: RembgFrontend | None = None,
    ) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self.speech = speech
        self.rembg = rembg

    async def transcribe(self, request: Request) -> TranscribeResponse:
        body = await read_json_model(request, TranscribeRequest)
        language = (body.language or "").strip()
        checked = None if language.lower() in ("", "auto") else language
        checked = self.speech._check_language(checked)
        data = await self.fetcher.fetch(body.audio_url, param="audio_url")
        # Word times need the CTranslate2 engine; botserver reads only the segments, so a
        # transformers model answers segments without words rather than refusing.
        words = body.word_timestamps and self.speech._engine() != "transformers"
        result = await self.speech.transcribe(
            data, param="audio_url", language=checked, word_timestamps=words
        )
        segments = [
            TranscribedSegment(
                start=s.start,
                end=s.end,
                text=s.text.strip(),
                confidence=round(min(1.0, math.exp(s.avg_logprob)), 4),
                words=[
                    TranscribedWord(
                        word=w.word, start=w.start, end=w.end, probability=w.probability
                    )
                    for w in s.words
                ],
            )
            for s in result.segments
        ]
        return TranscribeResponse(
            segments=segments, language=result.language, text=result.text, duration=result.duration
        )

    async def waveform(self, request: Request) -> WaveformResponse:
        body = await read_json_model(request, WaveformRequest)
        data = await self.fetcher.fetch(body.audio_url, param="audio_url")
        samples = await asyncio.to_thread(
            audio_io.decode,
            data,
            rate=WAVEFORM_RATE,
            max_seconds=self.settings.stt_max_audio_s,
            param="audio_url",
        )
        peaks = await asyncio.to_thread(
            peak_envelope, samples, WAVEFORM_RATE, body.samples_per_second
        )
        return WaveformResponse(
            samples=[round(float(p), 4) for p in peaks],
            duration_ms=round(samples.size * 1000 / WAVEFORM_RATE),
            sample_rate=body.samples_per_second,
        )

    async def detect_beats(self, request: Request) -> BeatsResponse:
        body = await read_json_model(request, BeatsRequest)
        data = await self.fetcher.fetch(body.audio_url, param="audio_url")
        answer = await beats_from_bytes(
            data,
            body.model_dump(),
            max_bytes=self.settings.max_upload_bytes,
            max_seconds=self.settings.stt_max_audio_s,
        )
        return BeatsResponse.model_validate(answer)

    async def remove_background(self, request: Request) -> RemoveBackgroundResponse:
        if self.rembg is None:  # pragma: no cover - service.py always builds it
            raise RuntimeError("the editor front was built without the segment front")
        return await self.rembg.remove_background(request, self.fetcher)
