"""Speech-to-text: Whisper, with Silero voice-activity filtering and language detection.

Two engines, chosen by what the store folder holds:
  * CTranslate2 (faster-whisper's converted format, `model.bin`): the CPU speed anchor, int8 or
    float32 on CPU, float16 / int8_float16 on CUDA. Requests are batched for real: the speech
    chunks of every job in a batch are encoded in one call and decoded in one `generate` call,
    each with its own prompt (language, task).
    On CPU, short clips of a batch are also *packed*: several clips, with 0.5 s of silence
    between them, share one 30 s window (see `_decode_packed`), because there the encoder's full
    window, not decoding, is most of the cost of a short clip.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter

from botmodels.errors import InvalidInput
from botmodels.speech.schemas import (
    SAMPLE_RATE,
    SegmentOut,
    SttJob,
    SttResult,
    WordOut,
    check_samples,
)
from runners.base import Device, Quantization

log = logging.getLogger("botmodels.runners.stt")

MODEL_ID = "Systran/faster-whisper-base"
VAD_FILE = "vad/silero_vad.onnx"
CHUNK_SECONDS = 30  # Whisper's window
NO_SPEECH_PROB = 0.6  # Whisper's own rule for a window with no speech
LOGPROB_FLOOR = -1.0
# Packing (CPU): clips up to 15 s share a window, 0.5 s of silence apart, and a throw-away
# copy of the shortest ends the window. A clip keeps its packed result only if each of its
# segments sits inside it (within the tolerance) and it got text; a clip in doubt is decoded
# again on its own, the others keep theirs (`_split_packed`). Auto-detected languages come from
# the clip's own frames (padded on a second try) and must be confident, or the clip is decoded
# on its own.
PACK_MAX_FRAMES = 1500
PACK_GAP_FRAMES = 50
# The tolerance: Whisper puts the boundary between two clips' segments at the next clip's
# speech onset, which the VAD's 0.2 s padding puts 0.2 s into that clip; measured over 170
# such boundaries, 0.06-0.21 s in, and up to 0.3 s with wider gaps. 0.2 s refused a clip in
# two of four served rounds of 8. 0.3 s leaves 0.1 s of the next clip's speech: less than a
# word.
PACK_TOLERANCE_S = 0.3
PACK_DETECT_CONFIDENCE = 0.9
PACK_DETECT_RETRY_FRAMES = 1000
TIME_PRECISION = 0.02  # seconds per Whisper timestamp token
# faster-whisper's defaults: punctuation merged into the neighbouring word's timestamps.
PREPEND_PUNCTUATION = "\"'\u201c\u00bf([{-"
APPEND_PUNCTUATION = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"


@dataclass
class _Chunk:
    job: int
    audio: npt.NDArray[np.float32]
    offset: float  # seconds, in speech-only time
    duration: float


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


# A clip in a packed window: (chunk, its mel frames, language probability, first frame).
_Packed = tuple[_Chunk, npt.NDArray[np.float32], float, int]


def _tail(items: list[_Packed], position: int) -> _Packed:
    """A copy of the shortest clip, placed at `position`: the window's throw-away last clip."""
    chunk, mel, probability, _ = min(items, key=lambda item: item[1].shape[-1])
    return chunk, mel, probability, position


def _chunks(
    job_index: int, audio: npt.NDArray[np.float32], spans: list[dict[str, int]]
) -> list[_Chunk]:
    from faster_whisper.vad import collect_chunks

    pieces, metadata = collect_chunks(audio, spans, max_duration=CHUNK_SECONDS)
    return [
        _Chunk(job_index, piece, float(meta["offset"]), float(meta["duration"]))
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
        groups: dict[tuple[Any, ...], list[_Chunk]] = {}
        for chunk in chunks:
            groups.setdefault(_group_key(jobs[chunk.job]), []).append(chunk)

        decoded: list[tuple[_Chunk, str, float, list[SegmentOut]]] = []
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
        """Refuse (InvalidInput) a language this model does not know, or samples that are not
        finite numbers."""
        if job.language and self.languages and job.language not in self.languages:
            raise InvalidInput(
                f"`language` {job.language!r} is not one this Whisper model knows; use an "
                f"ISO-639-1 code, one of: {', '.join(self.languages)}",
                param="language",
                code="unknown_language",
            )
        check_samples(job.samples())

    def _decode_group(
        self, group: list[_Chunk], jobs: list[SttJob]
    ) -> list[tuple[_Chunk, str, float, list[SegmentOut]]]:
        out: list[tuple[_Chunk, str, float, list[SegmentOut]]] = []
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

    def _pack_language(
        self, chunk: _Chunk, jobs: list[SttJob], mel: npt.NDArray[np.float32]
    ) -> tuple[str, float] | None:
        """The chunk's language for packing, or None when it must be decoded on its own."""
        model = self._model
        wanted = jobs[chunk.job].language
        if wanted:
            return wanted, 1.0
        if not model.model.is_multilingual:
            return "en", 1.0
        from faster_whisper.audio import pad_or_trim

        # The encoder over the clip's own frames (CTranslate2 takes any even length): about
        # 1/20 of a 30 s window for a 3 s clip, and the same language as the full window
        # whenever it is confident (measured on the benchmark clips). Unsure on its own
        # frames, it is asked again with the clip padded to PACK_DETECT_RETRY_FRAMES: one
        # synthetic English clip gave Latvian at 0.25 on its own frames and English at 0.999
        # padded to 10 s, and that costs a third of the window a clip decoded alone needs.
        own = mel.shape[-1] + mel.shape[-1] % 2
        for frames in [own] if own >= PACK_DETECT_RETRY_FRAMES else [own, PACK_DETECT_RETRY_FRAMES]:
            encoded = model.encode(pad_or_trim(mel, frames)[None].astype(np.float32))
            token, probability = model.model.detect_language(encoded)[0][0]
            if probability >= PACK_DETECT_CONFIDENCE:
                return str(token)[2:-2], float(probability)
        return None

    def _decode_packed(
        self, group: list[_Chunk], jobs: list[SttJob]
    ) -> tuple[list[tuple[_Chunk, str, float, list[SegmentOut]]], list[_Chunk]]:
        """Decode short clips several to a 30 s window. Returns (results, clips left over)."""
        model = self._model
        window_frames = int(model.feature_extractor.nb_max_frames)
        left: list[_Chunk] = []
        by_language: dict[str, list[tuple[_Chunk, npt.NDArray[np.float32], float]]] = {}
        for chunk in group:
            mel = model.feature_extractor(chunk.audio)[..., :-1]  # exactly as for one clip
            if mel.shape[-1] > PACK_MAX_FRAMES:
                left.append(chunk)  # long: it has a window's worth on its own
                continue
            detected = self._pack_language(chunk, jobs, mel)
            if detected is None:
                self._count("unsure", 1)
                left.append(chunk)
                continue
            by_language.setdefault(detected[0], []).append((chunk, mel, detected[1]))

        # Each window ends with a copy of its shortest clip, whose text is thrown away: Whisper
        # often stops before a window's last utterance (it learnt to leave one that may be cut
        # at the window's edge to the next window), and the copy takes that place. Without it,
        # the last clip of nearly every window was decoded again on its own.
        windows: list[tuple[str, list[_Packed], _Packed]] = []
        for language, candidates in by_language.items():
            current: list[_Packed] = []
            position = 0
            for chunk, mel, probability in candidates:
                frames = mel.shape[-1]
                shortest = min([frames, *(item[1].shape[-1] for item in current)])
                if current and position + frames + PACK_GAP_FRAMES + shortest > window_frames:
                    windows.append((language, current, _tail(current, position)))
                    current, position = [], 0
                current.append((chunk, mel, probability, position))
                position += frames + PACK_GAP_FRAMES
            windows.append((language, current, _tail(current, position)))
        left.extend(w[1][0][0] for w in windows if len(w[1]) == 1)  # alone: the usual path
        windows = [w for w in windows if len(w[1]) > 1]
        out: list[tuple[_Chunk, str, float, list[SegmentOut]]] = []
        for start in range(0, len(windows), self.max_batch_chunks):
            part = windows[start : start + self.max_batch_chunks]
            features = np.zeros(
                (len(part), part[0][1][0][1].shape[0], window_frames), dtype=np.float32
            )
            for row, (_, items, tail) in enumerate(part):
                for _, mel, _, position in [*items, tail]:
                    features[row, :, position : position + mel.shape[-1]] = mel
            first = jobs[part[0][1][0][0].job]
            tokenizers = self._tokenizers([w[0] for w in part], first)
            encoder_output = model.encode(features)
            generated = self._generate_ct2(encoder_output, [w[0] for w in part], tokenizers, first)
            for (lang, items, tail), result in zip(part, generated, strict=True):
                found = _split_packed(tokenizers[lang], result, items, first, tail=tail)
                for (chunk, _, probability, _), segments in zip(items, found, strict=True):
                    if segments is None:
                        left.append(chunk)
                    else:
                        out.append((chunk, lang, probability, segments))
                kept = sum(segments is not None for segments in found)
                self._count("kept", kept)
                self._count("refused", len(items) - kept)
        return out, left

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
        self, part: list[_Chunk], jobs: list[SttJob]
    ) -> list[tuple[_Chunk, str, float, list[SegmentOut]]]:
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
        out: list[tuple[_Chunk, str, float, list[SegmentOut]]] = []
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
            silent = result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOGPROB_FLOOR
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
        self, part: list[_Chunk], jobs: list[SttJob]
    ) -> list[tuple[_Chunk, str, float, list[SegmentOut]]]:
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
        out: list[tuple[_Chunk, str, float, list[SegmentOut]]] = []
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


def _split_packed(
    tokenizer: Any,
    result: Any,
    items: list[_Packed],
    job: SttJob,
    *,
    tail: _Packed | None = None,
) -> list[list[SegmentOut] | None]:
    """Give each clip its own segments; None for a clip whose text cannot be placed safely.

    A refused clip is decoded again on its own; the others keep their packed result. Refusing
    only the clips that a doubtful segment touches keeps the batching gain: refusing the whole
    window cost the window plus every clip alone, slower than not packing at all.
    `tail` is the window's throw-away last clip: its text is dropped, and a segment that
    reaches into it from the last clip puts that clip in doubt like any other neighbour.
    """
    from faster_whisper.transcribe import get_compression_ratio

    tokens: list[int] = list(result.sequences_ids[0])
    avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
    refused: list[list[SegmentOut] | None] = [None for _ in items]
    if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOGPROB_FLOOR:
        return refused  # the usual path applies Whisper's silence rule per clip
    timed = _timed_segments(tokens, tokenizer.timestamp_begin)
    if timed is None:
        return refused  # text with no place in the window: it could be anyone's
    placed = [*items, tail] if tail is not None else items
    spans = [(position / 100, (position + mel.shape[-1]) / 100) for _, mel, _, position in placed]
    found: list[list[SegmentOut]] = [[] for _ in placed]
    doubtful: set[int] = set()
    for start, end, text_tokens in timed:
        # Whisper ends a segment where the next begins: each segment goes to the clip it
        # overlaps most, and must not reach more than the tolerance into another.
        overlaps = [min(end, finish) - max(start, begin) for begin, finish in spans]
        # (Whisper's times are multiples of 0.02 s: 1e-6 keeps 0.3 from failing as 0.3000001.)
        touched = [i for i, overlap in enumerate(overlaps) if overlap > PACK_TOLERANCE_S + 1e-6]
        if len(touched) > 1:
            doubtful.update(touched)  # across clips: never split one segment between jobs
            continue
        index = max(range(len(spans)), key=lambda i: overlaps[i])
        if overlaps[index] <= 0:
            # In a gap only: the clips on either side of it are in doubt.
            doubtful.update(i for i in (index - 1, index, index + 1) if 0 <= i < len(spans))
            continue
        if index == len(items):
            continue  # the throw-away tail's own text
        chunk, begin = items[index][0], spans[index][0]
        text = tokenizer.decode(text_tokens)
        found[index].append(
            SegmentOut(
                id=0,
                seek=int(chunk.offset * 100),
                start=round(chunk.offset + max(0.0, start - begin), 3),
                end=round(chunk.offset + min(chunk.duration, end - begin), 3),
                text=text,
                tokens=text_tokens,
                temperature=job.temperature,
                avg_logprob=float(avg_logprob),
                compression_ratio=get_compression_ratio(text),
                no_speech_prob=float(result.no_speech_prob),
            )
        )
    found = found[: len(items)]
    empty = [
        i
        for i, segments in enumerate(found)
        if i not in doubtful and not any(s.text.strip() for s in segments)
    ]
    last_placed = max((i for i, segments in enumerate(found) if segments), default=-1)
    for index in empty:
        if index > last_placed:
            # Whisper often stops before a window's last utterance (it learnt to leave one
            # that may be cut at the window's edge to the next window): the clips after the
            # last placed segment are decoded alone, their neighbours' text stands.
            doubtful.add(index)
            continue
        # A clip with no text between others: Whisper skipped it, or gave its words a
        # neighbour's times.
        doubtful.update(i for i in (index - 1, index, index + 1) if 0 <= i < len(found))
    return [None if i in doubtful else segments for i, segments in enumerate(found)]


def _timed_segments(
    tokens: list[int], timestamp_begin: int
) -> list[tuple[float, float, list[int]]] | None:
    """Whisper's `<|t0|> text <|t1|><|t1|> text <|t2|>` -> [(t0, t1, text tokens), …];
    None when a segment has no start or no end time (its place in the window is unknown)."""
    segments: list[tuple[float, float, list[int]]] = []
    start: float | None = None
    text: list[int] = []
    for token in tokens:
        if token < timestamp_begin:
            if start is None:
                return None
            text.append(token)
        elif start is None or not text:
            start = (token - timestamp_begin) * TIME_PRECISION
        else:
            segments.append((start, (token - timestamp_begin) * TIME_PRECISION, text))
            start, text = None, []
    return None if text else segments


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
