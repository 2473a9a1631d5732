"""Helpers for the speech tests: word error rate, and audio in containers the server must read."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import numpy.typing as npt


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
