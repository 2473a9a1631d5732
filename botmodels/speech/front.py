"""Speech routes: botserver's `/api/speech/*` and OpenAI's `/v1/audio/*`.

Check the request -> decode the audio (PyAV, off the event loop) -> run the job through the
runner's batchable API (botmodels/dispatch.py batches concurrent requests; a remote botmodels by
URL; in-process without a dispatcher in tests) -> encode the response.

The routes (botmodels/speech/routes.py) are Starlette routes mounted by service.py, not
`@bentoml.api` methods, because botserver sends audio as a multipart `file` *or* (older callers) as
the raw body, and `/v1/audio/speech` answers raw audio bytes: a BentoML API binds one typed input
schema and would reject one of the two bodies before our code runs. They still pass through the
service's auth, limits and error-shape middleware (added with `add_asgi_middleware`, which wraps
mounted apps too)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from prometheus_client import Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from botmodels.config import Settings
from botmodels.dispatch import BatchInfer, run_on_runner
from botmodels.errors import InvalidInput, PayloadTooLarge, runner_errors
from botmodels.media import read_upload
from botmodels.outputs import OutputStore
from botmodels.peers import batch_items
from botmodels.pool import RunnerPool
from botmodels.remote import RemoteRunner
from botmodels.speech import audio as audio_io
from botmodels.speech.schemas import (
    DetectLanguageResponse,
    SpeechGenerationResponse,
    SpeechToTextResponse,
    TtsJob,
)
from runners.stt import SAMPLE_RATE, SttJob, SttResult
from runners.tts import TtsResult, check_tts_speed, check_tts_text

STT_ROUTE = "/runners/stt/transcribe"
TTS_ROUTE = "/runners/tts/synthesize"
STT_API = "transcribe_batch"
TTS_API = "synthesize_batch"

# OpenAI's voice names: OpenAI clients send one of them by default, and none is installed, so
# each speaks as an installed voice (SpeechFrontend.resolve_voice).
OPENAI_VOICES = frozenset(
    ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
)
TRANSCRIPTION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")


# --- reading requests --------------------------------------------------------------------------
async def _read_audio(request: Request) -> tuple[bytes, dict[str, list[str]]]:
    """(audio bytes, every other form field's values) from a multipart `file` or the raw body."""
    upload = await read_upload(request, raw="audio", what="the audio", max_fields=64)
    return upload.data, upload.lists


def _field(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


async def read_json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # Recursion: nested too deep
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    return body


# --- formats -----------------------------------------------------------------------------------
def _timestamp(seconds: float, sep: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def to_srt(result: SttResult) -> str:
    blocks = [
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(result.segments, 1)
    ]
    return "\n".join(blocks)


def to_vtt(result: SttResult) -> str:
    blocks = [
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n"
        for s in result.segments
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def language_name(code: str | None) -> str:
    """OpenAI's verbose_json names the language in English ("english")."""
    if not code:
        return ""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return str(LANGUAGES.get(code, code))


def verbose_json(result: SttResult, task: str, words: bool, segments: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": task,
        "language": language_name(result.language),
        "duration": result.duration,
        "text": result.text,
    }
    if segments:
        body["segments"] = [
            s.model_dump(exclude={"words"}) | {"text": s.text} for s in result.segments
        ]
    if words:
        body["words"] = [w.model_dump() for s in result.segments for w in s.words]
    return body


# --- the runner routes (service.py's batchable APIs) --------------------------------------------
# --- batching ----------------------------------------------------------------------------------
BATCH_SIZES = Histogram(
    "botmodels_speech_batch_size",
    "Jobs per speech runner call",
    ["runner"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)


# --- the frontend ------------------------------------------------------------------------------
class SpeechFrontend:
    def __init__(
        self,
        settings: Settings,
        pool: RunnerPool,
        outputs: OutputStore,
        remotes: dict[str, RemoteRunner],
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.outputs = outputs
        self.remotes = remotes
        self.batch_infer: BatchInfer | None = None
        # Each runner's batches on one long-lived OS thread: CTranslate2 and onnxruntime keep an
        # OpenMP team per calling thread, and a pool that hands calls to different threads
        # leaves idle teams spinning against the busy one (measured: served 2-8x slower than
        # in-process).
        self._executors = {
            kind: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"botmodels-{kind}")
            for kind in ("stt", "tts")
        }

    # dispatch ------------------------------------------------------------------------------
    async def run_local(self, kind: str, jobs: list[Any]) -> list[Any]:
        """A batch on this process's runner (the batchable APIs' body)."""
        async with self.pool.acquire(kind) as runner:  # a peer's call may be the first
            method = runner.transcribe if kind == "stt" else runner.synthesize
            BATCH_SIZES.labels(runner=kind).observe(len(jobs))
            loop = asyncio.get_running_loop()
            with runner_errors():
                results: list[Any] = await loop.run_in_executor(self._executors[kind], method, jobs)
        return results

    async def _run(self, kind: str, job: Any, result_type: Any) -> Any:
        remote = self.remotes.get(kind)

        async def on_remote(jobs: list[Any]) -> list[Any]:
            assert remote is not None
            route = STT_ROUTE if kind == "stt" else TTS_ROUTE
            items = await remote.post(route, {"jobs": [j.model_dump(mode="json") for j in jobs]})
            return [result_type.model_validate(items[0])]

        (result,) = await run_on_runner(
            STT_API if kind == "stt" else TTS_API,
            [job],
            kind=kind,
            pool=self.pool,
            batch_infer=self.batch_infer,
            local=functools.partial(self.run_local, kind),
            remote=on_remote if remote is not None else None,
        )
        return result

    async def _decode(self, data: bytes, param: str = "file") -> Any:
        if len(data) > self.settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"`{param}` is {len(data)} bytes; the limit is {self.settings.max_upload_bytes}",
                param=param,
            )
        return await asyncio.to_thread(
            audio_io.decode,
            data,
            rate=SAMPLE_RATE,
            max_seconds=self.settings.stt_max_audio_s,
            param=param,
        )

    def _check_language(self, language: str | None) -> str | None:
        if not language:
            return None
        code = language.strip().lower().replace("_", "-").split("-")[0]
        known: list[str] = list(getattr(self.pool.loaded("stt"), "languages", []))
        if known and code not in known:
            raise InvalidInput(
                f"`language` {language!r} is not one this Whisper model knows; use an ISO-639-1 "
                f"code, one of: {', '.join(known)}",
                param="language",
                code="unknown_language",
            )
        return code

    async def transcribe(self, data: bytes, *, param: str = "file", **options: Any) -> SttResult:
        """`data` (audio in any container) transcribed; `param` is the field errors name."""
        samples = await self._decode(data, param)
        job = SttJob.from_array(samples, **options)
        result: SttResult = await self._run("stt", job, SttResult)
        return result

    # botserver -----------------------------------------------------------------------------
    async def api_to_text(self, request: Request) -> Response:
        data, fields = await _read_audio(request)
        language = self._check_language(_field(fields, "language"))
        result = await self.transcribe(data, language=language)
        body = SpeechToTextResponse(
            text=result.text,
            language=result.language,
            confidence=round(result.confidence, 4),
            duration=result.duration,
        )
        return JSONResponse(body.model_dump())

    async def api_detect_language(self, request: Request) -> Response:
        data, _ = await _read_audio(request)
        result = await self.transcribe(data, task="detect")
        body = DetectLanguageResponse(
            language=result.language, confidence=round(result.language_probability, 4)
        )
        return JSONResponse(body.model_dump())

    def _check_text(self, text: object, param: str) -> str:
        with runner_errors():
            return check_tts_text(text, self.settings.tts_max_chars, param)

    @staticmethod
    def _check_speed(speed: object) -> float:
        with runner_errors():
            return check_tts_speed(speed)

    def check_runner_call(self, kind: str, payload: dict[str, Any]) -> AbstractContextManager[Any]:
        """`/runners/stt/transcribe` and `/runners/tts/synthesize` from a peer: the public
        routes' limits for every job."""
        s = self.settings
        size = s.stt_max_batch_size if kind == "stt" else s.tts_max_batch_size
        jobs = batch_items(payload, "jobs", size, f"BOTMODELS_{kind.upper()}_MAX_BATCH_SIZE")
        for i, job in enumerate(jobs):
            if kind == "tts":
                self._check_text(job.get("text"), "text")
                self._check_speed(job.get("speed", 1.0))
                continue
            audio = job.get("audio")
            # base64 of float32 samples: 3 bytes per 4 characters, 4 bytes per sample
            limit = int(s.stt_max_audio_s * SAMPLE_RATE) * 4 * 4 // 3 + 4
            if isinstance(audio, str) and len(audio) > limit:
                raise InvalidInput(
                    f"`jobs[{i}].audio` is longer than {s.stt_max_audio_s} s "
                    "(BOTMODELS_STT_MAX_AUDIO_S)",
                    param="audio",
                )
            language = job.get("language")
            if language is not None:
                if not isinstance(language, str):
                    raise InvalidInput("`language` must be a string", param="language")
                self._check_language(language)
        return contextlib.nullcontext()

    # voices ----------------------------------------------------------------------------------
    def _installed_voices(self) -> dict[str, Any] | None:
        """The local runner's voices by name, or None when it is remote or not ready."""
        runner = self.pool.loaded("tts")
        return None if runner is None else dict(runner.voices)

    def resolve_voice(self, name: str | None, language: str | None = None) -> str | None:
        """The installed voice to ask the runner for, given a request's `voice` and `language`.

        An installed voice is itself; an alias in BOTMODELS_TTS_VOICE_MAP is its target; one of
        OpenAI's names not in the map is None: the runner's first voice of `language`, or its
        default voice. Anything else is returned as it is, and the runner answers it with the
        400 that lists the installed voices. (`language` is the caller's: it takes part in the
        runner's choice, not here.)"""
        if name is None:
            return None
        installed = self._installed_voices()
        if installed is not None and name.lower() in {v.lower() for v in installed}:
            return name
        key = name.strip().lower()
        target = self.settings.tts_voice_map.get(key)
        if target is not None:
            if installed is not None and target.lower() not in {v.lower() for v in installed}:
                raise InvalidInput(
                    f"`voice` {name!r} maps to {target!r} (BOTMODELS_TTS_VOICE_MAP), which is "
                    f"not installed; available voices: {', '.join(installed)}",
                    param="voice",
                    code="unknown_voice",
                )
            return target
        if key in OPENAI_VOICES:
            return None
        return name

    def voice_aliases(self) -> dict[str, str | None]:
        """Every alias resolve_voice knows: OpenAI's names and the map's (None: the default)."""
        aliases: dict[str, str | None] = {name: None for name in sorted(OPENAI_VOICES)}
        aliases.update(self.settings.tts_voice_map)
        return aliases

    @staticmethod
    def _optional_str(body: dict[str, Any], key: str) -> str | None:
        value = body.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise InvalidInput(f"`{key}` must be a string", param=key)
        return value

    async def _synthesize(self, job: TtsJob, param: str) -> TtsResult:
        try:
            await self._check_job(job)
            result: TtsResult = await self._run("tts", job, TtsResult)
        except InvalidInput as exc:
            if exc.param == "text":  # the runner names its job's field; ours is `param`
                exc.param = param
            raise
        if result.samples().size == 0:
            raise InvalidInput(
                f"`{param}` produced no speech (no pronounceable characters)", param=param
            )
        return result

    async def _check_job(self, job: TtsJob) -> None:
        # Fail before queueing when the runner is local: a bad voice, or text that speaks for
        # too long, never joins (and so never fails) a batch. Phonemizing is quick but not free.
        runner = self.pool.loaded("tts")
        if runner is not None:
            with runner_errors():
                await asyncio.to_thread(runner.check, job)

    async def api_generate(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await read_json(request)
        text = self._check_text(body.get("prompt"), "prompt")
        language = self._optional_str(body, "language")
        job = TtsJob(
            text=text,
            voice=self.resolve_voice(self._optional_str(body, "voice"), language),
            language=language,
        )
        result = await self._synthesize(job, "prompt")
        samples = result.samples()
        wav = await asyncio.to_thread(audio_io.wav_bytes, samples, result.sample_rate)
        saved = await asyncio.to_thread(self.outputs.save, "audio", wav, "wav")
        response = SpeechGenerationResponse(
            file_path=saved.url_path,
            generation_time=round(time.perf_counter() - started, 3),
            voice=result.voice,
            duration=round(samples.size / result.sample_rate, 3),
        )
        return JSONResponse(response.model_dump())

    # OpenAI --------------------------------------------------------------------------------
    async def openai_transcriptions(self, request: Request) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "multipart/form-data":
            raise InvalidInput(
                "this route takes multipart/form-data with the audio in `file` (OpenAI's API)",
                param="file",
            )
        data, fields = await _read_audio(request)
        fmt = _field(fields, "response_format") or "json"
        if fmt not in TRANSCRIPTION_FORMATS:
            raise InvalidInput(
                f"`response_format` {fmt!r} is not one of {', '.join(TRANSCRIPTION_FORMATS)}",
                param="response_format",
            )
        raw_temperature = _field(fields, "temperature") or "0"
        try:
            temperature = float(raw_temperature)
        except ValueError:
            temperature = -1.0
        if not 0.0 <= temperature <= 1.0:
            raise InvalidInput(
                f"`temperature` must be a number from 0 to 1, got {raw_temperature!r}",
                param="temperature",
            )
        granularities = fields.get("timestamp_granularities", []) or ["segment"]
        bad = sorted(set(granularities) - {"word", "segment"})
        if bad:
            raise InvalidInput(
                f"`timestamp_granularities` takes word and/or segment, got {bad}",
                param="timestamp_granularities",
            )
        words = "word" in granularities
        if words and self._engine() == "transformers":
            raise InvalidInput(
                "word timestamps need the CTranslate2 Whisper engine; this model is served by "
                "transformers (segment timestamps only)",
                param="timestamp_granularities",
            )
        prompt = _field(fields, "prompt")
        result = await self.transcribe(
            data,
            language=self._check_language(_field(fields, "language")),
            prompt=prompt or None,
            temperature=temperature,
            word_timestamps=words and fmt == "verbose_json",
        )
        if fmt == "text":
            return PlainTextResponse(result.text + "\n")
        if fmt == "srt":
            return PlainTextResponse(to_srt(result))
        if fmt == "vtt":
            return PlainTextResponse(to_vtt(result), media_type="text/vtt")
        if fmt == "verbose_json":
            segments = "segment" in granularities or not words
            return JSONResponse(verbose_json(result, "transcribe", words, segments))
        return JSONResponse({"text": result.text})

    def _engine(self) -> str | None:
        return getattr(self.pool.loaded("stt"), "engine", None)

    async def openai_speech(self, request: Request) -> Response:
        body = await read_json(request)
        text = self._check_text(body.get("input"), "input")
        fmt = body.get("response_format", "mp3")
        if fmt not in SPEECH_FORMATS:
            raise InvalidInput(
                f"`response_format` {fmt!r} is not one of {', '.join(SPEECH_FORMATS)}",
                param="response_format",
            )
        language = self._optional_str(body, "language")
        job = TtsJob(
            text=text,
            voice=self.resolve_voice(self._optional_str(body, "voice"), language),
            language=language,
            speed=self._check_speed(body.get("speed", 1.0)),
        )
        result = await self._synthesize(job, "input")
        encoded = await asyncio.to_thread(
            audio_io.encode, result.samples(), result.sample_rate, fmt
        )
        return Response(encoded, media_type=audio_io.CONTENT_TYPES[fmt])

    async def voices(self) -> list[dict[str, Any]]:
        """The installed voices. An unloaded runner is loaded to list them (it is enabled and
        healthy: an empty list would say it has none); a remote or failed one lists none."""
        slot = self.pool.slot("tts")
        if slot is None or slot.state in ("remote", "failed"):
            return []
        async with self.pool.acquire("tts") as runner:
            return [v.describe() for v in runner.voices.values()]

    # the video editor ----------------------------------------------------------------------
    async def editor_tts(self, request: Request) -> Response:
        """`POST /api/audio/tts` (botserver's video editor): `{text, voice, speed, language}` ->
        the audio bytes, which botserver saves as `.mp3` as they come (so mp3 unless the caller
        names another `response_format`). The same checks and synthesis as `/v1/audio/speech`."""
        body = await read_json(request)
        text = self._check_text(body.get("text"), "text")
        fmt: Any = body.get("response_format")
        if fmt is None:
            fmt = "mp3"
        if fmt not in SPEECH_FORMATS:
            raise InvalidInput(
                f"`response_format` {fmt!r} is not one of {', '.join(SPEECH_FORMATS)}",
                param="response_format",
            )
        speed = body.get("speed")
        language = self._optional_str(body, "language")
        job = TtsJob(
            text=text,
            voice=self._editor_voice(body, language),
            language=language,
            speed=self._check_speed(1.0 if speed is None else speed),
        )
        result = await self._synthesize(job, "text")
        encoded = await asyncio.to_thread(
            audio_io.encode, result.samples(), result.sample_rate, fmt
        )
        return Response(encoded, media_type=audio_io.CONTENT_TYPES[fmt])

    def _editor_voice(self, body: dict[str, Any], language: str | None) -> str | None:
        """The editor's voice name -> what the TTS job carries. botserver sends OpenAI's
        `alloy` unless its caller chose a voice; every name goes through this one call."""
        return self.resolve_voice(self._optional_str(body, "voice"), language)
