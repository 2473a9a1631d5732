"""Speech-to-text: Whisper, with Silero voice-activity filtering and language detection.

Two engines, chosen by what the store folder holds:
  * CTranslate2 (faster-whisper's converted format, `model.bin`): the CPU speed anchor, int8 or
    float32 on CPU, float16 / int8_float16 on CUDA. Requests are batched for real: the speech
    chunks of every job in a batch are encoded in one call and decoded in one `generate` call,
    each with its own prompt (language, task).
    On CPU, short clips of a batch are also *packed*: several clips, with 0.5 s of silence
    between them, share one 30 s window (`_decode_packed`; its decisions are pure functions
    in runners/stt_packing.py), because there the encoder's full window, not decoding, is most
    of the cost of a short clip.
  * transformers (`config.json` with `model_type = "whisper"`): any hub Whisper; bitsandbytes
    8-bit / 4-bit on CUDA (written for it, not run here: no GPU), torch dynamic int8 on CPU.

Reads top to bottom: load -> voice activity -> features -> language -> decode -> segments.
The folder also holds `vad/silero_vad.onnx` (copied from the `silero-vad` package at import).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from runners.base import Device, InvalidItem, Quantization
from runners.stt_packing import (
    PACK_DETECT_CONFIDENCE,
    PACK_MAX_FRAMES,
    Candidate,
    Chunk,
    Window,
    is_silent,
    pack_language,
    plan_windows,
    split_clips,
    window_features,
)

log = logging.getLogger("botmodels.runners.stt")

SAMPLE_RATE = 16_000  # Whisper's input rate
MODEL_ID = "Systran/faster-whisper-base"
VAD_FILE = "vad/silero_vad.onnx"
CHUNK_SECONDS = 30  # Whisper's window
# faster-whisper's defaults: punctuation merged into the neighbouring word's timestamps.
PREPEND_PUNCTUATION = "\"'\u201c\u00bf([{-"
APPEND_PUNCTUATION = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"


# --- errors: what the runner refuses (the platform answers each as a 400) --------------------
class InvalidAudio(InvalidItem):
    """The samples are not whole float32 numbers, or not finite."""

    param = "audio"


class UnknownLanguage(InvalidItem):
    """The requested language is not one this Whisper model knows."""

    param = "language"
    code = "unknown_language"


# --- items: a batch's jobs and results ------------------------------------------------------
# Job items carry audio as raw little-endian float32 bytes (base64 in JSON, so a remote
# botmodels can run them too; in-process, BentoML's dispatcher passes the objects as they are).
def check_samples(audio: npt.NDArray[np.float32], param: str = "audio") -> None:
    # Whisper turns NaN or infinite samples into endless garbage text, not an error.
    if not np.isfinite(audio).all():
        raise InvalidAudio(
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
        except InvalidAudio as exc:  # pydantic reports plain ValueErrors as validation errors
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


# --- the model ------------------------------------------------------------------------------
class Vad:
    """Silero VAD (ONNX) from the store folder. Stateful model: one audio at a time."""

    def __init__(self, path: Path) -> None:
        from silero_vad.utils_vad import OnnxWrapper

        self._model = OnnxWrapper(str(path), force_onnx_cpu=True)
        self._lock = threading.Lock()

    def speech(self, audio: npt.NDArray[np.float32]) -> list[dict[str, int]]:
        """Speech spans in samples at 16 kHz: [{"start", "end"}, …]; [] for silence."""
        import torch
        from silero_vad import get_speech_timestamps

        with self._lock:
            self._model.reset_states()
            spans = get_speech_timestamps(
                torch.from_numpy(audio.copy()),  # frombuffer arrays are read-only
                self._model,
                sampling_rate=SAMPLE_RATE,
                min_silence_duration_ms=1000,  # keep phrases whole: Whisper wants context
                speech_pad_ms=200,
            )
        return [{"start": int(s["start"]), "end": int(s["end"])} for s in spans]


PACKED_CLIPS = Counter(
    "botmodels_stt_packed_clips",
    "Short clips offered for a shared Whisper window (CPU), by outcome: kept; refused (its "
    "text could not be placed safely, decoded again alone); unsure (language detection under "
    f"{PACK_DETECT_CONFIDENCE}, decoded alone)",
    ["outcome"],
)


def _chunks(
    job_index: int, audio: npt.NDArray[np.float32], spans: list[dict[str, int]]
) -> list[Chunk]:
    from faster_whisper.vad import collect_chunks

    pieces, metadata = collect_chunks(audio, spans, max_duration=CHUNK_SECONDS)
    return [
        Chunk(job_index, piece, float(meta["offset"]), float(meta["duration"]))
        for piece, meta in zip(pieces, metadata, strict=True)
        if piece.size
    ]


def _restore(segments: list[SegmentOut], spans: list[dict[str, int]]) -> list[SegmentOut]:
    """Speech-only times -> times in the original audio (VAD removed the silences)."""
    from faster_whisper.vad import SpeechTimestampsMap

    ts_map = SpeechTimestampsMap(spans, SAMPLE_RATE)
    for segment in segments:
        if segment.words:
            for word in segment.words:
                index = ts_map.get_chunk_index((word.start + word.end) / 2)
                word.start = ts_map.get_original_time(word.start, index)
                word.end = ts_map.get_original_time(word.end, index)
            segment.start, segment.end = segment.words[0].start, segment.words[-1].end
        else:
            segment.start = ts_map.get_original_time(segment.start)
            segment.end = ts_map.get_original_time(segment.end, is_end=True)
    return segments


def _group_key(job: SttJob) -> tuple[Any, ...]:
    # Jobs that share decoding options decode together; language is per item, not per group.
    return (job.task, job.prompt, job.temperature, job.word_timestamps)


class SttRunner:
    kind = "stt"

    def __init__(
        self,
        model_dir: Path,
        *,
        quantization: Quantization,
        device: Device,
        max_batch_chunks: int = 16,
        beam_size: int = 5,
        pack: bool = True,
    ) -> None:
        self.model_dir = model_dir
        self.quantization = quantization
        self.device = device
        self.max_batch_chunks = max_batch_chunks
        self.beam_size = beam_size
        self.pack = pack
        # Clips offered for packing, by outcome (also on /metrics: PACKED_CLIPS).
        self.pack_outcomes = {"kept": 0, "refused": 0, "unsure": 0}
        self.engine = "ctranslate2" if (model_dir / "model.bin").is_file() else "transformers"
        self.dtype = "float32"
        self._lock = threading.Lock()  # one batch at a time: the engine already uses every core
        self._model: Any = None
        self._processor: Any = None
        self.vad: Vad | None = None
        self.languages: list[str] = []

    # 1. Load --------------------------------------------------------------------------------
    def load(self) -> None:
        started = time.perf_counter()
        vad_path = self.model_dir / VAD_FILE
        if not vad_path.is_file():
            raise FileNotFoundError(f"{vad_path} is missing: re-import the model")
        self.vad = Vad(vad_path)
        if self.engine == "ctranslate2":
            self._load_ctranslate2()
        else:
            self._load_transformers()
        log.info(
            "stt model %s loaded (%s, %s, %s) in %.1f s",
            self.model_dir.name,
            self.engine,
            self.device,
            self.dtype,
            time.perf_counter() - started,
        )

    def _load_ctranslate2(self) -> None:
        from faster_whisper import WhisperModel

        # CTranslate2 has no MPS backend; CUDA uses fp16 (or int8 weights, fp16 compute).
        device = "cuda" if self.device == "cuda" else "cpu"
        if device == "cuda":
            compute = "float16" if self.quantization == "none" else "int8_float16"
        else:
            compute = "float32" if self.quantization == "none" else "int8"
        if self.quantization == "4bit":
            log.warning("CTranslate2 has no 4-bit Whisper kernels; using %s", compute)
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - macOS
            threads = os.cpu_count() or 1
        self._model = WhisperModel(
            str(self.model_dir), device=device, compute_type=compute, cpu_threads=threads
        )
        self.dtype = compute
        self.languages = list(self._model.supported_languages)

    def _load_transformers(self) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        kwargs: dict[str, Any] = {}
        if self.device == "cuda" and self.quantization in ("int8", "4bit"):
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_8bit=True)
                if self.quantization == "int8"
                else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16)
            )
            kwargs["device_map"] = {"": "cuda"}
            self.dtype = f"bnb-{self.quantization}"
        elif self.device in ("cuda", "mps"):
            kwargs["dtype"] = torch.float16
            self.dtype = "float16"
        self._processor = WhisperProcessor.from_pretrained(self.model_dir)
        model: Any = WhisperForConditionalGeneration.from_pretrained(self.model_dir, **kwargs)
        if "device_map" not in kwargs:
            model = model.to(self.device)
        if self.device == "cpu" and self.quantization == "int8":
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
            self.dtype = "qint8-dynamic"
        model.eval()
        self._model = model
        lang_to_id = dict(getattr(model.generation_config, "lang_to_id", None) or {})
        self.languages = sorted(token.strip("<|>") for token in lang_to_id)

    # 2. Predict a batch ---------------------------------------------------------------------
    def transcribe(self, jobs: list[SttJob]) -> list[SttResult]:
        """Jobs in, one result per job, in order. Silence gives empty text, not an error."""
        if self._model is None or self.vad is None:
            raise RuntimeError("SttRunner.transcribe() called before load()")
        for job in jobs:  # a bad job fails the batch before any work
            self.check(job)
        audios = [job.samples() for job in jobs]
        spans = [self.vad.speech(audio) for audio in audios]
        chunks = [c for i, a in enumerate(audios) for c in _chunks(i, a, spans[i])]

        results: list[SttResult] = [
            SttResult(
                text="",
                language=None,
                language_probability=0.0,
                duration=round(audio.size / SAMPLE_RATE, 3),
                speech_duration=round(sum(s["end"] - s["start"] for s in sp) / SAMPLE_RATE, 3),
            )
            for audio, sp in zip(audios, spans, strict=True)
        ]
        groups: dict[tuple[Any, ...], list[Chunk]] = {}
        for chunk in chunks:
            groups.setdefault(_group_key(jobs[chunk.job]), []).append(chunk)

        decoded: list[tuple[Chunk, str, float, list[SegmentOut]]] = []
        with self._lock:
            for group in groups.values():
                decoded.extend(self._decode_group(group, jobs))
        # Packing can decode a job's chunks out of order: the job's first chunk decides.
        decoded.sort(key=lambda item: (item[0].job, item[0].offset))
        segments: dict[int, list[SegmentOut]] = {i: [] for i in range(len(jobs))}
        for chunk, language, probability, found in decoded:
            result = results[chunk.job]
            if result.language is None:
                result.language = language
                result.language_probability = round(probability, 4)
            segments[chunk.job].extend(found)

        for index, result in enumerate(results):
            found = [s for s in segments[index] if s.text.strip()]
            for number, segment in enumerate(found):
                segment.id = number
            result.segments = _restore(found, spans[index]) if found else []
            result.text = "".join(s.text for s in result.segments).strip()
            if jobs[index].language and result.language is None and spans[index]:
                result.language = jobs[index].language
        return results

    def check(self, job: SttJob) -> None:
        """Refuse (InvalidItem) a language this model does not know, or samples that are not
        finite numbers."""
        if job.language and self.languages and job.language not in self.languages:
            raise UnknownLanguage(
                f"`language` {job.language!r} is not one this Whisper model knows; use an "
                f"ISO-639-1 code, one of: {', '.join(self.languages)}"
            )
        check_samples(job.samples())

    def _decode_group(
        self, group: list[Chunk], jobs: list[SttJob]
    ) -> list[tuple[Chunk, str, float, list[SegmentOut]]]:
        out: list[tuple[Chunk, str, float, list[SegmentOut]]] = []
        rest = group
        if len(group) > 1 and self._packs(jobs[group[0].job]):
            out, rest = self._decode_packed(group, jobs)
        decode = self._decode_ct2 if self.engine == "ctranslate2" else self._decode_hf
        for start in range(0, len(rest), self.max_batch_chunks):
            out.extend(decode(rest[start : start + self.max_batch_chunks], jobs))
        return out

    def _packs(self, job: SttJob) -> bool:
        # Only CPU: a GPU runs a batch of windows in parallel, so packing would only add risk.
        # Word timestamps need the per-clip alignment pass, which packing does not do.
        return (
            self.pack
            and self.engine == "ctranslate2"
            and self.device == "cpu"
            and job.task in ("transcribe", "translate")
            and not job.word_timestamps
        )

    def _detector(self, mel: npt.NDArray[np.float32]) -> Callable[[int], tuple[str, float]]:
        """`detect(frames)` for `pack_language`: the encoder over the clip's mel padded (or cut)
        to `frames`, then Whisper's language token with its probability."""
        from faster_whisper.audio import pad_or_trim

        model = self._model

        def detect(frames: int) -> tuple[str, float]:
            encoded = model.encode(pad_or_trim(mel, frames)[None].astype(np.float32))
            token, probability = model.model.detect_language(encoded)[0][0]
            return str(token)[2:-2], float(probability)

        return detect

    def _decode_packed(
        self, group: list[Chunk], jobs: list[SttJob]
    ) -> tuple[list[tuple[Chunk, str, float, list[SegmentOut]]], list[Chunk]]:
        """Decode short clips several to a 30 s window. Returns (results, clips left over)."""
        model = self._model
        window_frames = int(model.feature_extractor.nb_max_frames)
        left: list[Chunk] = []
        candidates: list[Candidate] = []
        for chunk in group:
            mel = model.feature_extractor(chunk.audio)[..., :-1]  # exactly as for one clip
            if mel.shape[-1] > PACK_MAX_FRAMES:
                left.append(chunk)  # long: it has a window's worth on its own
                continue
            detected = pack_language(
                jobs[chunk.job].language,
                bool(model.model.is_multilingual),
                int(mel.shape[-1]),
                self._detector(mel),
            )
            if detected is None:
                self._count("unsure", 1)
                left.append(chunk)
                continue
            candidates.append(Candidate(chunk, mel, *detected))

        windows, alone = plan_windows(candidates, window_frames)
        left.extend(alone)
        out: list[tuple[Chunk, str, float, list[SegmentOut]]] = []
        for start in range(0, len(windows), self.max_batch_chunks):
            part = windows[start : start + self.max_batch_chunks]
            first = jobs[part[0].clips[0].chunk.job]
            tokenizers = self._tokenizers([w.language for w in part], first)
            encoder_output = model.encode(window_features(part, window_frames))
            generated = self._generate_ct2(
                encoder_output, [w.language for w in part], tokenizers, first
            )
            for window, result in zip(part, generated, strict=True):
                placed = self._split_window(window, result, tokenizers[window.language], first)
                for clip, segments in zip(window.clips, placed, strict=True):
                    if segments is None:
                        left.append(clip.chunk)
                    else:
                        out.append((clip.chunk, window.language, clip.probability, segments))
                kept = sum(segments is not None for segments in placed)
                self._count("kept", kept)
                self._count("refused", len(window.clips) - kept)
        return out, left

    @staticmethod
    def _split_window(
        window: Window, result: Any, tokenizer: Any, job: SttJob
    ) -> list[list[SegmentOut] | None]:
        """`split_clips` over one window's generated tokens, as each clip's segments."""
        from faster_whisper.transcribe import get_compression_ratio

        tokens: list[int] = list(result.sequences_ids[0])
        avg_logprob = float(result.scores[0] * len(tokens) / (len(tokens) + 1))
        no_speech_prob = float(result.no_speech_prob)
        placed = split_clips(
            window.clips,
            tokens,
            timestamp_begin=tokenizer.timestamp_begin,
            decode=tokenizer.decode,
            avg_logprob=avg_logprob,
            no_speech_prob=no_speech_prob,
            tail=window.tail,
        )
        return [
            None
            if segments is None
            else [
                SegmentOut(
                    id=0,
                    seek=int(clip.chunk.offset * 100),
                    start=s.start,
                    end=s.end,
                    text=s.text,
                    tokens=s.tokens,
                    temperature=job.temperature,
                    avg_logprob=avg_logprob,
                    compression_ratio=get_compression_ratio(s.text),
                    no_speech_prob=no_speech_prob,
                )
                for s in segments
            ]
            for clip, segments in zip(window.clips, placed, strict=True)
        ]

    def _count(self, outcome: str, clips: int) -> None:
        self.pack_outcomes[outcome] += clips
        PACKED_CLIPS.labels(outcome=outcome).inc(clips)

    def _tokenizers(self, languages: list[str], job: SttJob) -> dict[str, Any]:
        """One faster-whisper tokenizer per language, for the job's task."""
        from faster_whisper.tokenizer import Tokenizer

        task = "translate" if job.task == "translate" else "transcribe"
        return {
            lang: Tokenizer(
                self._model.hf_tokenizer,
                self._model.model.is_multilingual,
                task=task,
                language=lang,
            )
            for lang in languages
        }

    def _generate_ct2(
        self,
        encoder_output: Any,
        languages: list[str],
        tokenizers: dict[str, Any],
        job: SttJob,
    ) -> list[Any]:
        """One `generate` call: a prompt per row (its language), the job's decoding options."""
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self._model
        base = tokenizers[languages[0]]
        previous = base.encode(" " + job.prompt.strip()) if job.prompt else []
        prompts = [
            model.get_prompt(tokenizers[lang], previous_tokens=previous, without_timestamps=False)
            for lang in languages
        ]
        sampling = job.temperature > 0
        return list(
            model.model.generate(
                encoder_output,
                prompts,
                beam_size=1 if sampling else self.beam_size,
                patience=1.0,
                length_penalty=1.0,
                max_length=model.max_length,
                suppress_blank=True,
                suppress_tokens=get_suppressed_tokens(base, [-1]),
                return_scores=True,
                return_no_speech_prob=True,
                sampling_temperature=job.temperature if sampling else 1.0,
                sampling_topk=0 if sampling else 1,
            )
        )

    def _decode_ct2(
        self, part: list[Chunk], jobs: list[SttJob]
    ) -> list[tuple[Chunk, str, float, list[SegmentOut]]]:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import get_compression_ratio

        model = self._model
        first = jobs[part[0].job]
        features = np.stack(
            [pad_or_trim(model.feature_extractor(c.audio)[..., :-1]) for c in part]
        ).astype(np.float32)
        encoder_output = model.encode(features)

        # Language: the requested one, else Whisper's language token with its probability.
        languages: list[tuple[str, float]] = []
        detected = None
        for i, chunk in enumerate(part):
            wanted = jobs[chunk.job].language
            if wanted:
                languages.append((wanted, 1.0))
                continue
            if not model.model.is_multilingual:
                languages.append(("en", 1.0))
                continue
            if detected is None:
                detected = model.model.detect_language(encoder_output)
            token, probability = detected[i][0]
            languages.append((token[2:-2], float(probability)))
        out: list[tuple[Chunk, str, float, list[SegmentOut]]] = []
        if first.task == "detect":
            return [(c, lang, p, []) for c, (lang, p) in zip(part, languages, strict=True)]

        tokenizers = self._tokenizers([lang for lang, _ in languages], first)
        base = tokenizers[languages[0][0]]
        results = self._generate_ct2(
            encoder_output, [lang for lang, _ in languages], tokenizers, first
        )
        per_chunk: list[list[dict[str, Any]]] = []
        sizes: list[int] = []
        for chunk, (lang, _), result in zip(part, languages, results, strict=True):
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            size = int(math.ceil(chunk.duration) * model.frames_per_second)
            sizes.append(size)
            subsegments, _, _ = model._split_segments_by_timestamps(
                tokenizer=tokenizers[lang],
                tokens=tokens,
                time_offset=chunk.offset,
                segment_size=size,
                segment_duration=chunk.duration,
                seek=0,
            )
            silent = is_silent(result.no_speech_prob, avg_logprob)
            per_chunk.append(
                [
                    {
                        **sub,
                        "seek": int(chunk.offset * model.frames_per_second),
                        "avg_logprob": avg_logprob,
                        "no_speech_prob": result.no_speech_prob,
                    }
                    for sub in ([] if silent else subsegments)
                ]
            )
        if first.word_timestamps and any(per_chunk):
            # Word-level splitting depends on the language only for zh/ja/th/lo/my/yue; the
            # group's first language is used for the whole batch.
            model.add_word_timestamps(
                per_chunk,
                base,
                encoder_output,
                sizes,
                PREPEND_PUNCTUATION,
                APPEND_PUNCTUATION,
                0.0,
            )
        for chunk, (lang, probability), subs in zip(part, languages, per_chunk, strict=True):
            found = []
            for sub in subs:
                text = tokenizers[lang].decode(sub["tokens"])
                found.append(
                    SegmentOut(
                        id=0,
                        seek=sub["seek"],
                        start=round(sub["start"], 3),
                        end=round(sub["end"], 3),
                        text=text,
                        tokens=list(sub["tokens"]),
                        temperature=first.temperature,
                        avg_logprob=float(sub["avg_logprob"]),
                        compression_ratio=get_compression_ratio(text),
                        no_speech_prob=float(sub["no_speech_prob"]),
                        words=[
                            WordOut(
                                word=w["word"],
                                start=float(w["start"]),
                                end=float(w["end"]),
                                probability=float(w["probability"]),
                            )
                            for w in sub.get("words", [])
                        ],
                    )
                )
            out.append((chunk, lang, probability, found))
        return out

    def _decode_hf(
        self, part: list[Chunk], jobs: list[SttJob]
    ) -> list[tuple[Chunk, str, float, list[SegmentOut]]]:
        import torch

        model, processor = self._model, self._processor
        first = jobs[part[0].job]
        features = processor.feature_extractor(
            [c.audio for c in part], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features.to(model.device, dtype=model.dtype)
        config = model.generation_config
        lang_to_id: dict[str, int] = dict(getattr(config, "lang_to_id", None) or {})

        languages: list[tuple[str, float]] = []
        with torch.inference_mode():
            need = [i for i, c in enumerate(part) if not jobs[c.job].language]
            probs: dict[int, tuple[str, float]] = {}
            if need and lang_to_id:
                # One decoder step from <|startoftranscript|>: softmax over the language tokens.
                start = torch.full((len(need), 1), config.decoder_start_token_id)
                logits = model(input_features=features[need], decoder_input_ids=start).logits
                ids = torch.tensor(list(lang_to_id.values()))
                p = torch.softmax(logits[:, -1, ids].float(), dim=-1)
                names = [t.strip("<|>") for t in lang_to_id]
                for row, i in enumerate(need):
                    best = int(p[row].argmax())
                    probs[i] = (names[best], float(p[row, best]))
            for i, chunk in enumerate(part):
                wanted = jobs[chunk.job].language
                languages.append((wanted, 1.0) if wanted else probs.get(i, ("en", 1.0)))
            if first.task == "detect":
                return [(c, lang, pr, []) for c, (lang, pr) in zip(part, languages, strict=True)]

            kwargs: dict[str, Any] = {
                "task": "translate" if first.task == "translate" else "transcribe",
                "language": [lang for lang, _ in languages] if lang_to_id else None,
                "max_new_tokens": int(getattr(config, "max_new_tokens", None) or 440),
                "return_dict_in_generate": True,
                "output_scores": True,
            }
            if first.prompt:
                kwargs["prompt_ids"] = processor.get_prompt_ids(first.prompt, return_tensors="pt")
            if first.temperature > 0:
                kwargs.update(do_sample=True, temperature=first.temperature)
            else:
                kwargs["num_beams"] = self.beam_size
            generated = model.generate(input_features=features, **kwargs)
            scores = model.compute_transition_scores(
                generated.sequences, generated.scores, normalize_logits=True
            )
        texts = processor.batch_decode(generated.sequences, skip_special_tokens=True)
        out: list[tuple[Chunk, str, float, list[SegmentOut]]] = []
        for row, (chunk, (lang, probability)) in enumerate(zip(part, languages, strict=True)):
            finite = scores[row][torch.isfinite(scores[row])]
            avg = float(finite.mean()) if finite.numel() else 0.0
            text = " " + texts[row].strip()
            segment = SegmentOut(
                id=0,
                seek=int(chunk.offset * 100),
                start=round(chunk.offset, 3),
                end=round(chunk.offset + chunk.duration, 3),
                text=text,
                tokens=[int(t) for t in generated.sequences[row].tolist()],
                temperature=first.temperature,
                avg_logprob=avg,
                compression_ratio=len(text.encode()) / max(1, len(set(text.encode()))),
                no_speech_prob=0.0,
            )
            out.append((chunk, lang, probability, [segment]))
        return out


def build_tiny(folder: Path) -> None:
    """A 1-layer, 32-wide random Whisper (transformers format) with a locally trained byte-level
    BPE tokenizer, the special tokens generation needs, and four language tokens."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    languages = ["en", "pt", "es", "de"]
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in languages],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world", "olá mundo"] * 4
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = WhisperTokenizer(
        tokenizer_object=bpe,
        unk_token="<|endoftext|>",  # noqa: S106 - a token, not a password
        bos_token="<|endoftext|>",  # noqa: S106
        eos_token="<|endoftext|>",  # noqa: S106
        pad_token="<|endoftext|>",  # noqa: S106
    )
    ids: dict[str, int] = {}
    for token in specials:
        token_id = bpe.token_to_id(token)
        assert token_id is not None, token
        ids[token] = token_id
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=bpe.get_vocab_size(),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in languages},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        is_multilingual=True,
        max_new_tokens=8,  # random weights never stop on their own: keep tests fast
        forced_decoder_ids=None,
        begin_suppress_tokens=[],
        suppress_tokens=[],
    )
    model.save_pretrained(folder)
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer
    )
    processor.save_pretrained(folder)
