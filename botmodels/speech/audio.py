"""Audio in and out, with PyAV (FFmpeg's decoders and encoders, bundled in the `av` wheels).

Decoding accepts anything FFmpeg reads (wav, mp3, ogg/opus, flac, m4a/aac, webm…), any sample
rate and channel count, and resamples to what the model needs (mono float32). Encoding writes
the OpenAI `/v1/audio/speech` formats. Errors are typed (400/413) and name what was wrong.
"""

from __future__ import annotations

import io
import wave
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from botmodels.errors import InvalidInput, PayloadTooLarge

AudioFormat = Literal["wav", "mp3", "flac", "opus", "pcm", "aac"]
CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/ogg",  # Ogg-encapsulated Opus, as OpenAI returns it
    "aac": "audio/aac",
    "pcm": "audio/pcm",
}
# OpenAI's `pcm` is raw 16-bit little-endian mono at 24 kHz; opus only takes these rates.
PCM_RATE = 24_000
_OPUS_RATES = (48_000, 24_000, 16_000, 12_000, 8_000)


def decode(
    data: bytes, *, rate: int = 16_000, max_seconds: float, param: str = "file"
) -> npt.NDArray[np.float32]:
    """Decode any audio container to mono float32 at `rate`.

    Not audio, truncated or zero-length input is a 400 naming `param`; audio longer than
    `max_seconds` is a 413 (checked while decoding, so a huge file is not decoded to the end).
    """
    import av

    if not data:
        raise InvalidInput(f"`{param}` is empty (0 bytes); send an audio file", param=param)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    pieces: list[npt.NDArray[np.float32]] = []
    total = 0
    limit = int(max_seconds * rate)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise InvalidInput(
                    f"`{param}` has no audio stream (container {container.format.name})",
                    param=param,
                )
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    pieces.append(chunk)
                    total += chunk.size
                if total > limit:
                    raise PayloadTooLarge(
                        f"`{param}` is longer than the limit of {max_seconds:g} s of audio",
                        param=param,
                    )
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
    except (av.FFmpegError, EOFError, ValueError, IndexError) as exc:
        # FFmpeg says "Invalid data found when processing input" for non-audio and for
        # truncated headers; the message is safe to show (it names no path).
        raise InvalidInput(
            f"`{param}` could not be decoded as audio: {type(exc).__name__}: {exc}", param=param
        ) from exc
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if audio.size == 0:
        raise InvalidInput(f"`{param}` decoded to no audio samples (truncated?)", param=param)
    if not np.isfinite(audio).all():  # a float WAV can carry NaN; Whisper answers garbage
        raise InvalidInput(
            f"`{param}` has samples that are not finite numbers (NaN or infinity)", param=param
        )
    if audio.size > limit:
        raise PayloadTooLarge(
            f"`{param}` is {audio.size / rate:.1f} s long; the limit is {max_seconds:g} s",
            param=param,
        )
    return audio


def _int16(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    samples: npt.NDArray[np.int16] = np.clip(audio * 32767.0, -32768, 32767).astype("<i2")
    return samples


def resample(audio: npt.NDArray[np.float32], src: int, dst: int) -> npt.NDArray[np.float32]:
    """Resample mono float32 with FFmpeg's resampler (band-limited, not linear interpolation)."""
    if src == dst or audio.size == 0:
        return audio
    import av

    frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = src
    resampler = av.AudioResampler(format="flt", layout="mono", rate=dst)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32, copy=False) if out else audio[:0]


def wav_bytes(audio: npt.NDArray[np.float32], rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(_int16(audio).tobytes())
    return buffer.getvalue()


def encode(audio: npt.NDArray[np.float32], rate: int, fmt: AudioFormat) -> bytes:
    """Mono float32 at `rate` -> bytes in `fmt` (see CONTENT_TYPES)."""
    if fmt == "wav":
        return wav_bytes(audio, rate)
    if fmt == "pcm":
        return _int16(resample(audio, rate, PCM_RATE)).tobytes()
    import av

    container_name, codec, out_rate, sample_fmt = {
        "mp3": ("mp3", "libmp3lame", rate, "s16p"),
        "flac": ("flac", "flac", rate, "s16"),
        "opus": ("ogg", "libopus", 48_000 if rate not in _OPUS_RATES else rate, "s16"),
        "aac": ("adts", "aac", rate, "fltp"),
    }[fmt]
    samples = resample(audio, rate, out_rate)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_name) as container:
        stream: Any = container.add_stream(codec, rate=out_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            _int16(samples).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = out_rate
        resampler = av.AudioResampler(format=sample_fmt, layout="mono", rate=out_rate)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
