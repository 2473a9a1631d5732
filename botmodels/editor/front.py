"""The video editor's routes: the audio named by `audio_url` (botmodels/fetch.py's rules),
decoded as an upload is (botmodels/speech/audio.py), then transcribed on the speech runner or
reduced to a waveform; the video named by `video_url` enhanced (botmodels/editor/enhance.py)
into /outputs/videos/. Starlette routes (botmodels/editor/routes.py), like the speech routes.

Enhance and remove-background also run as jobs (`/jobs` after the route, on generation's job
manager): the request is checked as the blocking route checks it (a bad one is answered at
once), then the work runs without the request timeout and stops between frames when the job is
cancelled."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from starlette.requests import Request
from starlette.responses import JSONResponse

from botmodels.config import Settings
from botmodels.editor import enhance as video_enhance
from botmodels.editor.beats_front import beats_from_bytes
from botmodels.editor.rembg import RembgFrontend, RemoveBackgroundResponse
from botmodels.editor.schemas import (
    BeatsRequest,
    BeatsResponse,
    EnhanceRequest,
    EnhanceResponse,
    TranscribedSegment,
    TranscribedWord,
    TranscribeRequest,
    TranscribeResponse,
    WaveformRequest,
    WaveformResponse,
)
from botmodels.editor.videoio import Watch
from botmodels.errors import Overloaded
from botmodels.fetch import Fetcher
from botmodels.media import read_json_model
from botmodels.outputs import OutputStore
from botmodels.speech import audio as audio_io
from botmodels.speech.front import SpeechFrontend

if TYPE_CHECKING:
    from botmodels.generation.front import Control
    from botmodels.generation.jobs import JobManager

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


@dataclass(frozen=True)
class _EnhanceWork:
    data: bytes
    options: video_enhance.EnhanceOptions
    info: video_enhance.VideoInfo
    base: str
    url: str


class EditorFrontend:
    def __init__(
        self,
        settings: Settings,
        fetcher: Fetcher,
        speech: SpeechFrontend,
        outputs: OutputStore,
        rembg: RembgFrontend | None = None,
    ) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self.speech = speech
        self.rembg = rembg
        self.outputs = outputs
        self.jobs: JobManager | None = None  # service.py binds generation's job manager
        self._enhancing = 0
        self._enhancing_lock = threading.Lock()

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

    async def enhance(self, request: Request) -> EnhanceResponse:
        """Each filter runs unless the body says `false` (botserver sends null for what its
        caller left out). The video is checked (container, size, frame count) before any frame
        is decoded; the work runs in a worker thread and stops at BOTMODELS_REQUEST_TIMEOUT_S,
        so a request the caller gave up on leaves no file behind."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        work = await self._prepare_enhance(request)
        try:
            return await self._run_enhance(work, deadline, None)
        finally:
            self._leave_enhance()

    async def enhance_job(self, request: Request) -> JSONResponse:
        """`/api/video/enhance/jobs`: the body checked and the video probed now, the filters in
        a job (BOTMODELS_EDITOR_MAX_ENHANCING counts it until it ends)."""
        jobs = self._jobs()
        work = await self._prepare_enhance(request)

        async def run(control: Control) -> dict[str, Any]:
            done = await self._run_enhance(work, math.inf, control)
            return done.model_dump(mode="json")

        passes = 2 if work.options.stabilize or work.options.color_correct else 1
        request_record = {"video_url": work.url, **vars(work.options)}
        return await jobs.submit_work(
            "video_enhance",
            request_record,
            work.info.frames * passes,
            run,
            self._leave_enhance,
        )

    async def remove_background_job(self, request: Request) -> JSONResponse:
        """`/api/video/remove-background/jobs`: checked and probed now, the frames in a job."""
        if self.rembg is None:  # pragma: no cover - service.py always builds it
            raise RuntimeError("the editor front was built without the segment front")
        jobs = self._jobs()
        rembg = self.rembg
        work = await rembg.prepare(request, self.fetcher)

        async def run(control: Control) -> dict[str, Any]:
            done = await rembg.run(work, control)
            return done.model_dump(mode="json")

        record = {"video_url": work.url, "replacement": work.label}
        return await jobs.submit_work("video_remove_background", record, work.frames, run)

    def _jobs(self) -> JobManager:
        if self.jobs is None:  # pragma: no cover - service.py binds it
            raise RuntimeError("the editor front was built without the job manager")
        return self.jobs

    async def _prepare_enhance(self, request: Request) -> _EnhanceWork:
        """The body, the fetch and the probe; on success the caller holds an enhancing slot
        (`_leave_enhance`)."""
        body = await read_json_model(request, EnhanceRequest)
        options = video_enhance.EnhanceOptions(
            upscale=body.upscale_factor or 1,
            denoise=body.denoise is not False,
            stabilize=body.stabilize is not False,
            color_correct=body.color_correct is not False,
        )
        data = await self.fetcher.fetch(body.video_url, param="video_url")
        self._enter_enhance()
        try:
            info = await asyncio.to_thread(
                video_enhance.probe,
                data,
                max_frames=self.settings.editor_max_frames,
                max_pixels=self.settings.editor_max_pixels,
                upscale=options.upscale,
            )
        except BaseException:
            self._leave_enhance()
            raise
        base = str(self.settings.public_url) if self.settings.public_url else str(request.base_url)
        return _EnhanceWork(data, options, info, base.rstrip("/"), body.video_url)

    async def _run_enhance(
        self, work: _EnhanceWork, deadline: float, watch: Watch | None
    ) -> EnhanceResponse:
        result: list[video_enhance.Enhanced] = []

        def write(path: Path) -> None:
            result.append(
                video_enhance.enhance(
                    work.data, work.options, path, info=work.info, deadline=deadline, watch=watch
                )
            )

        saved = await asyncio.to_thread(self.outputs.save, "videos", write, "mp4")
        done = result[0]
        return EnhanceResponse(
            enhanced_url=work.base + saved.url_path,
            enhancements=done.enhancements,
            file_path=saved.url_path,
            frame_count=done.frame_count,
            fps=done.fps,
            width=done.width,
            height=done.height,
        )

    def _enter_enhance(self) -> None:
        with self._enhancing_lock:
            limit = self.settings.editor_max_enhancing
            if self._enhancing >= limit:
                raise Overloaded(
                    f"{self._enhancing} videos are being enhanced (the limit is {limit}, "
                    f"BOTMODELS_EDITOR_MAX_ENHANCING); retry later",
                    headers={"Retry-After": "30"},
                )
            self._enhancing += 1

    def _leave_enhance(self) -> None:
        with self._enhancing_lock:
            self._enhancing -= 1
