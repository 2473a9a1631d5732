"""Helpers for the speech tests: word error rate, and audio in containers the server must read."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import numpy.typing as npt

from botmodels.editor.beats import SAMPLE_RATE


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level Levenshtein distance / reference length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / max(1, len(ref))


def transcode(
    samples: npt.NDArray[np.float32],
    rate: int,
    *,
    container: str,
    codec: str,
    out_rate: int,
    channels: int = 1,
) -> bytes:
    """Encode mono float32 audio into `container`/`codec` at `out_rate` with `channels`."""
    import av

    layout = "stereo" if channels == 2 else "mono"
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream: Any = out.add_stream(codec, rate=out_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        fmt = stream.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=out_rate)
        frame_size = stream.codec_context.frame_size or 1024
        fifo = av.AudioFifo()
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            fifo.write(converted)
        while fifo.samples:
            chunk = fifo.read(min(frame_size, fifo.samples), partial=True)
            if chunk is None:
                break
            for packet in stream.encode(chunk):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


Track = tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]


def click_track(
    bpm: float,
    seconds: float = 12.0,
    amplitudes: tuple[float, ...] = (0.8,),
    offset: float = 0.25,
    rate: int = SAMPLE_RATE,
) -> Track:
    """Decaying noise bursts (10 ms) on every beat; `amplitudes` cycle (accents)."""
    rng = np.random.default_rng(0)
    audio = np.zeros(int(seconds * rate), dtype=np.float32)
    length = int(0.01 * rate)
    decay = np.exp(-np.arange(length) / (0.002 * rate))
    times = []
    k = 0
    while (start := offset + k * 60.0 / bpm) < seconds - 0.1:
        i = int(start * rate)
        burst = rng.standard_normal(length) * decay * amplitudes[k % len(amplitudes)]
        audio[i : i + length] += burst.astype(np.float32)
        times.append(start)
        k += 1
    return audio, np.array(times)
