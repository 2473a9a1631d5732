"""Speech benchmark: served vs in-process STT, batching, TTS speed, int8 vs float32.

    python scripts/bench_speech.py                # offline models (imports them if needed)
    python scripts/bench_speech.py --repeats 5 --skip-serve

Measures, with the offline models (Whisper base CTranslate2 + Piper `joe`):
  1. STT real-time factor (seconds of compute per second of audio), in-process runner vs the
     same engine served by `bentoml serve` over HTTP (`/api/speech/totext`): served overhead.
  2. 8 concurrent transcriptions against the server (batched) vs the same 8 sent one by one,
     in paired rounds, with the batch sizes and packing outcomes from /metrics; and
     in-process, one batch of 8 vs 8 single calls (and that their texts agree).
  3. TTS real-time factor (Piper, in-process and served `/v1/audio/speech`).
  4. int8 vs float32 Whisper: speed and word error rate on the fixed sentences.
Prints a Markdown table for docs/benchmarks.md. Numbers depend on the machine: run it idle.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from botmodels.config import Quantization
from scripts.serverproc import Server, samples

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please send the invoice to the finance team before Friday.",
    "It is going to rain tomorrow in the morning.",
    "Our meeting has been moved to half past three in the afternoon.",
    "The new branch opens next week with twelve people on the team.",
    "Can you tell me how much the delivery to Lisbon costs?",
    "She bought apples, bread and a bottle of milk at the market.",
    "Turn off the lights when you leave the office tonight.",
]
KEY = "bench-key-0123456789abcdef"


def wer(reference: str, hypothesis: str) -> float:
    import re

    def words(text: str) -> list[str]:
        return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()

    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / max(1, len(ref))


def stored_path(tag: str) -> Path:
    import bentoml

    return Path(bentoml.models.get(tag).path)


def speak_all(tts: Any) -> tuple[list[npt.NDArray[np.float32]], float, float]:
    """Piper speaks every sentence: (16 kHz audio per sentence, compute s, audio s)."""
    from botmodels.speech import audio
    from runners.tts import TtsJob

    clips, compute, seconds = [], 0.0, 0.0
    for sentence in SENTENCES:
        started = time.perf_counter()
        result = tts.synthesize([TtsJob(text=sentence)])[0]
        compute += time.perf_counter() - started
        samples = result.samples()
        seconds += samples.size / result.sample_rate
        clips.append(audio.resample(samples, result.sample_rate, 16_000))
    return clips, compute, seconds


def in_process(
    clips: list[npt.NDArray[np.float32]], quantization: Quantization, repeats: int
) -> dict[str, Any]:
    from runners.stt import SttJob, SttRunner

    runner = SttRunner(
        stored_path("stt-whisper-base-ct2:latest"), quantization=quantization, device="cpu"
    )
    runner.load()
    runner.transcribe([SttJob.from_array(clips[0])])  # warm-up
    audio_s = sum(c.size for c in clips) / 16_000
    singles: list[float] = []
    texts: list[str] = []
    for _ in range(repeats):
        started = time.perf_counter()
        texts = [runner.transcribe([SttJob.from_array(c)])[0].text for c in clips]
        singles.append(time.perf_counter() - started)
    batched: list[float] = []
    batch_texts: list[str] = []
    for _ in range(repeats):
        started = time.perf_counter()
        batch_texts = [r.text for r in runner.transcribe([SttJob.from_array(c) for c in clips])]
        batched.append(time.perf_counter() - started)
    return {
        "quantization": quantization,
        "rtf": statistics.median(singles) / audio_s,
        "one_by_one_s": statistics.median(singles),
        "batch_s": statistics.median(batched),
        "wer": statistics.mean(wer(s, t) for s, t in zip(SENTENCES, texts, strict=True)),
        "batch_wer": statistics.mean(
            wer(s, t) for s, t in zip(SENTENCES, batch_texts, strict=True)
        ),
        "batch_equals_single": sum(a == b for a, b in zip(texts, batch_texts, strict=True)),
    }


def served(clips: list[npt.NDArray[np.float32]], repeats: int) -> dict[str, Any]:
    import httpx

    from botmodels.speech import audio

    server = Server(
        {
            "BOTMODELS_API_KEYS": KEY,
            "BOTMODELS_RUNNERS": "stt,tts",
            "BOTMODELS_PROFILE": "offline",
            "BOTMODELS_HOME": tempfile.mkdtemp(prefix="bench-speech-"),
        }
    )
    url = server.url
    headers = {"X-API-Key": KEY}
    wavs = [audio.wav_bytes(c, 16_000) for c in clips]
    audio_s = sum(c.size for c in clips) / 16_000
    try:
        server.wait_ready(timeout=300)
        with httpx.Client(base_url=url, headers=headers, timeout=600) as client:

            def post(data: bytes) -> str:
                response = client.post(
                    "/api/speech/totext", files={"file": ("a.wav", data, "audio/wav")}
                )
                response.raise_for_status()
                return str(response.json()["text"])

            # No CTranslate2 model lives in this process now: its idle OpenMP threads would
            # compete with the server's (measured: interleaving in-process and served calls
            # made the served ones 2-7x slower).
            post(wavs[0])  # warm-up

            def one_by_one() -> float:
                started = time.perf_counter()
                for data in wavs:
                    post(data)
                return time.perf_counter() - started

            async def concurrent() -> float:
                async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as aclient:
                    started = time.perf_counter()
                    responses = await asyncio.gather(
                        *(
                            aclient.post(
                                "/api/speech/totext", files={"file": ("a.wav", d, "audio/wav")}
                            )
                            for d in wavs
                        )
                    )
                    for response in responses:
                        response.raise_for_status()
                    return time.perf_counter() - started

            def counters() -> dict[str, float]:
                text = client.get("/metrics").text
                packed = samples(text, "botmodels_stt_packed_clips_total")
                sizes = samples(text, "botmodels_speech_batch_size_count")
                summed = samples(text, "botmodels_speech_batch_size_sum")
                return {
                    **{k.split('"')[1]: v for k, v in packed.items()},
                    "batches": sizes.get('runner="stt"', 0.0),
                    "jobs": summed.get('runner="stt"', 0.0),
                }

            # Paired rounds: the machine's speed drifts within minutes, so each concurrent
            # pass is compared with the one-by-one pass just before it.
            rounds = []
            for _ in range(repeats):
                single_s = one_by_one()
                before = counters()
                concurrent_s = asyncio.run(concurrent())
                after = counters()
                delta = {k: after[k] - before.get(k, 0.0) for k in after}
                rounds.append((single_s, concurrent_s, delta))

            tts_compute, tts_audio = 0.0, 0.0
            for sentence in SENTENCES:
                started = time.perf_counter()
                response = client.post(
                    "/v1/audio/speech",
                    json={"input": sentence, "voice": "joe", "response_format": "pcm"},
                )
                response.raise_for_status()
                tts_compute += time.perf_counter() - started
                tts_audio += len(response.content) / 2 / audio.PCM_RATE

        singles = [r[0] for r in rounds]
        return {
            "rtf": statistics.median(singles) / audio_s,
            "one_by_one_s": statistics.median(singles),
            "rounds": rounds,
            "speedup": statistics.median(single / batched for single, batched, _ in rounds),
            "tts_rtf": tts_compute / tts_audio,
        }
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-serve", action="store_true")
    args = parser.parse_args()

    from scripts.import_models import main as import_models

    if import_models(["offline", "--runners", "stt,tts"]) != 0:
        return 1
    from runners.tts import TtsRunner

    tts = TtsRunner(stored_path("tts-piper-joe-en-us:latest"), quantization="none", device="cpu")
    tts.load()
    speak_all(tts)  # warm-up
    clips, tts_compute, tts_audio = speak_all(tts)
    audio_s = sum(c.size for c in clips) / 16_000
    print(f"\n{len(clips)} clips, {audio_s:.1f} s of speech; cores: {len(os.sched_getaffinity(0))}")
    print(f"TTS in-process: RTF {tts_compute / tts_audio:.3f}")

    results = [in_process(clips, q, args.repeats) for q in ("int8", "none")]
    gc.collect()  # the in-process models (and their thread pools) go before the server starts
    for r in results:
        print(
            f"STT in-process {r['quantization']}: RTF {r['rtf']:.3f}, 8 one by one "
            f"{r['one_by_one_s']:.2f} s, one batch of 8 {r['batch_s']:.2f} s "
            f"({r['one_by_one_s'] / r['batch_s']:.2f}x), WER {r['wer']:.3f} (batched "
            f"{r['batch_wer']:.3f}), batch text == single text for {r['batch_equals_single']}/8"
        )
    if not args.skip_serve:
        s = served(clips, args.repeats)
        overhead = s["rtf"] / results[0]["rtf"] - 1
        print(
            f"STT served int8: RTF {s['rtf']:.3f} (overhead vs in-process {overhead:+.1%}); "
            f"8 concurrent vs one by one, median of {len(s['rounds'])} paired rounds: "
            f"{s['speedup']:.2f}x; TTS served RTF {s['tts_rtf']:.3f}"
        )
        for single, batched, delta in s["rounds"]:
            print(
                f"  round: one by one {single:.2f} s, concurrent {batched:.2f} s "
                f"({single / batched:.2f}x); {delta['jobs']:.0f} jobs in {delta['batches']:.0f} "
                f"batches; packed clips kept {delta.get('kept', 0):.0f}, refused "
                f"{delta.get('refused', 0):.0f}, language unsure {delta.get('unsure', 0):.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
