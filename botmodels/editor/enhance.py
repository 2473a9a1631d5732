"""`POST /api/video/enhance`'s filters and its decode -> filter -> encode pipeline.

The filters are classic signal processing on RGB uint8 frames (numpy and PIL), no model:
  * denoise: a motion-adaptive temporal median over three frames (a pixel takes the median of
    itself and its two neighbours in time only where they agree, so moving edges do not ghost),
    then a light binomial blur (a 3x3 Gaussian, sigma ~0.7) for the noise that is left;
  * stabilise: the global translation between consecutive frames by phase correlation (numpy
    FFT, on a small grey copy), accumulated into the camera's path, which is smoothed; each frame
    is shifted by (smoothed - measured) and the uncovered border repeats the edge pixels;
  * colour correct: gray-world white balance (each channel's mean brought to the grey mean)
    and a contrast stretch between the 0.5th and 99.5th percentiles, both measured once over the
    whole video so the picture does not flicker, applied as a per-channel lookup table;
  * upscale: Lanczos resampling by an integer factor (no super-resolution model ships today).

The pipeline streams: a first pass measures (motion, colour statistics) keeping one small frame,
a second decodes, filters and encodes holding three frames, so memory does not grow with the
video's length. The frame count and rate are kept; AAC and MP3 audio is copied as it is, other
audio is dropped (MP4 holds those two everywhere). Everything here blocks: callers run it in a
worker thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from botmodels.editor.videoio import (
    Cancelled,
    Watch,
    add_audio,
    copied_audio,
    mux_audio,
)
from botmodels.errors import BotModelsError, InvalidInput, PayloadTooLarge
from botmodels.media import open_video

Frame = npt.NDArray[np.uint8]  # (height, width, 3) RGB
Floats = npt.NDArray[np.float64]

PARAM = "video_url"  # errors about the video name the field the caller sent
MAX_UPSCALE = 4
# Past this difference (of 255) the three frames do not show the same thing: motion, not noise.
MOTION_THRESHOLD = 24
# Motion is measured on a grey copy whose longer side is at most this: enough for a global shift.
MOTION_SIDE = 256
# The camera path is smoothed over about this many seconds (Gaussian sigma).
SMOOTH_SECONDS = 0.5
# Colour statistics are taken from at most this many frames, spread over the video.
COLOR_SAMPLES = 64
COLOR_SAMPLE_SIDE = 320  # each sampled frame is thinned to about this many pixels a side
COLOR_PERCENTILES = (0.5, 99.5)
MAX_GAIN = 2.0  # gray-world never more than doubles or halves a channel
MIN_RANGE = 32  # a stretch of a nearly flat picture would only amplify its noise


class EnhanceTimeout(BotModelsError):
    """The work went past the request's deadline: stopped, nothing kept."""

    status = 504
    code = "timeout"


@dataclass(frozen=True)
class EnhanceOptions:
    upscale: int = 1
    denoise: bool = True
    stabilize: bool = True
    color_correct: bool = True


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    frames: int  # video packets: one per frame
    fps: Fraction
    audio_codec: str | None


@dataclass(frozen=True)
class Enhanced:
    frame_count: int
    fps: float
    width: int
    height: int
    enhancements: list[str]


# --- the filters (pure: arrays in, arrays out) ----------------------------------------------


def denoise_frame(previous: Frame, current: Frame, following: Frame) -> Frame:
    """The motion-adaptive temporal median, then a light spatial Gaussian."""
    low = np.minimum(previous, following)
    high = np.maximum(previous, following)
    median = np.clip(current, low, high)  # the median of three values
    moving = np.abs(median.astype(np.int16) - current.astype(np.int16)) > MOTION_THRESHOLD
    merged = np.where(moving, current, median)
    return binomial_blur(merged)


def binomial_blur(frame: Frame) -> Frame:
    """[1, 2, 1] / 4 down and across, the edge repeated: the smallest Gaussian."""
    wide = np.pad(frame, ((1, 1), (1, 1), (0, 0)), mode="edge").astype(np.uint16)
    rows = wide[:-2] + 2 * wide[1:-1] + wide[2:]
    both = rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]
    blurred: Frame = ((both + 8) >> 4).astype(np.uint8)
    return blurred


def motion_image(frame: Frame) -> Floats:
    """A small grey copy, windowed (Hann) so the frame's edges do not dominate the spectrum."""
    from PIL import Image

    height, width = frame.shape[:2]
    scale = min(1.0, MOTION_SIDE / max(height, width))
    grey = Image.fromarray(frame).convert("L")
    if scale < 1.0:
        size = (max(8, round(width * scale)), max(8, round(height * scale)))
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    image = np.asarray(grey, dtype=np.float64)
    image -= image.mean()
    window: Floats = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    result: Floats = image * window
    return result


def phase_shift(reference: Floats, moved: Floats) -> tuple[float, float]:
    """(dy, dx) such that `moved` is `reference` translated by it, to a fraction of a pixel
    (a parabola through the correlation peak and its neighbours)."""
    cross = np.fft.fft2(moved) * np.conj(np.fft.fft2(reference))
    cross /= np.maximum(np.abs(cross), 1e-12)
    surface = np.fft.ifft2(cross).real
    peak = np.unravel_index(int(np.argmax(surface)), surface.shape)
    shift: list[float] = []
    for axis, size in enumerate(surface.shape):
        index = int(peak[axis])
        before = list(peak)
        after = list(peak)
        before[axis] = (index - 1) % size
        after[axis] = (index + 1) % size
        left, centre, right = surface[tuple(before)], surface[tuple(peak)], surface[tuple(after)]
        denominator = left - 2 * centre + right
        offset = 0.0 if denominator == 0 else float(0.5 * (left - right) / denominator)
        value = index + max(-0.5, min(0.5, offset))
        shift.append(value - size if value > size / 2 else value)
    return shift[0], shift[1]


def corrections(steps: Floats, fps: float) -> Floats:
    """Per-frame (dy, dx) to apply, from the shift between each frame and the one before
    (`steps[0]` is 0): the measured path minus its smoothed self, negated."""
    path = np.cumsum(steps, axis=0)
    sigma = max(1.0, SMOOTH_SECONDS * fps)
    radius = math.ceil(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(path, ((radius, radius), (0, 0)), mode="edge")
    smooth = np.stack(
        [np.convolve(padded[:, axis], kernel, mode="valid") for axis in range(2)], axis=1
    )
    result: Floats = smooth - path
    return result


def shift_frame(frame: Frame, dy: float, dx: float) -> Frame:
    """The frame moved by whole pixels; the uncovered border repeats the edge."""
    height, width = frame.shape[:2]
    y, x = round(dy), round(dx)
    if y == 0 and x == 0:
        return frame
    y = max(-height + 1, min(height - 1, y))
    x = max(-width + 1, min(width - 1, x))
    rows = np.clip(np.arange(height) - y, 0, height - 1)
    cols = np.clip(np.arange(width) - x, 0, width - 1)
    shifted: Frame = frame[rows[:, None], cols[None, :]]
    return shifted


def color_tables(samples: list[Frame]) -> npt.NDArray[np.uint8]:
    """(3, 256) lookup tables: gray-world gains, then one contrast stretch for all channels."""
    pixels = np.concatenate([s.reshape(-1, 3) for s in samples]).astype(np.float64)
    means = pixels.mean(axis=0)
    grey = means.mean()
    gains = np.clip(grey / np.maximum(means, 1.0), 1 / MAX_GAIN, MAX_GAIN)
    balanced = np.clip(pixels * gains, 0, 255)
    low, high = np.percentile(balanced, COLOR_PERCENTILES)
    if high - low < MIN_RANGE:
        low, high = 0.0, 255.0
    levels = np.arange(256, dtype=np.float64)
    tables = [(levels * gain - low) * 255.0 / (high - low) for gain in gains]
    result: npt.NDArray[np.uint8] = np.clip(np.rint(np.stack(tables)), 0, 255).astype(np.uint8)
    return result


def apply_tables(frame: Frame, tables: npt.NDArray[np.uint8]) -> Frame:
    result: Frame = np.stack([tables[c][frame[..., c]] for c in range(3)], axis=-1)
    return result


def upscale_frame(frame: Frame, factor: int) -> Frame:
    from PIL import Image

    if factor == 1:
        return frame
    height, width = frame.shape[:2]
    image = Image.fromarray(frame).resize(
        (width * factor, height * factor), Image.Resampling.LANCZOS
    )
    return np.asarray(image, dtype=np.uint8)


def even(frame: Frame) -> Frame:
    """H.264 in yuv420p needs even sides: an odd side gets one more row or column of edge."""
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    padded: Frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    return padded


def _fit(frame: Frame, width: int, height: int) -> Frame:
    from PIL import Image

    resized = Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


# --- reading the video -----------------------------------------------------------------------


def _open(data: bytes) -> Any:
    return open_video(data, PARAM)


def probe(data: bytes, *, max_frames: int, max_pixels: int, upscale: int) -> VideoInfo:
    """The video's size, frame count (demuxed, not decoded) and rate, checked against the
    limits before any frame is decoded."""
    import av

    container = _open(data)
    try:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width < 1 or height < 1:
            raise InvalidInput(f"`{PARAM}` states no frame size", param=PARAM)
        out_pixels = width * upscale * height * upscale
        if out_pixels > max_pixels:
            raise PayloadTooLarge(
                f"`{PARAM}` has {width}x{height} frames; upscaled x{upscale} they would be "
                f"{width * upscale}x{height * upscale} = {out_pixels} pixels, over the limit of "
                f"{max_pixels} (BOTMODELS_EDITOR_MAX_PIXELS)",
                param="upscale_factor" if upscale > 1 and width * height <= max_pixels else PARAM,
            )
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = Fraction(rate).limit_denominator(1001) if rate else Fraction(25)
        audio_in = copied_audio(container)
        audio = audio_in.codec_context.name if audio_in is not None else None
        total = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    total += 1
                    if total > max_frames:
                        raise PayloadTooLarge(
                            f"`{PARAM}` has more than {max_frames} frames "
                            f"(BOTMODELS_EDITOR_MAX_FRAMES)",
                            param=PARAM,
                        )
        except av.FFmpegError as exc:
            if total == 0:
                raise InvalidInput(f"`{PARAM}` is a corrupt video: {exc}", param=PARAM) from None
    finally:
        container.close()
    if total == 0:
        raise InvalidInput(f"`{PARAM}` holds no video frames", param=PARAM)
    if not 0 < fps <= 1000:
        fps = Fraction(25)
    return VideoInfo(width, height, total, fps, audio)


def _frames(data: bytes, tick: Callable[[], None]) -> Iterator[Frame]:
    """Every decodable frame, RGB; a truncated tail ends the video where it breaks."""
    import av

    container = _open(data)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                tick()
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError:
            return
    finally:
        container.close()


def _ticker(deadline: float, watch: Watch | None, total: int) -> Callable[[], None]:
    """What runs before each decoded frame: the deadline, a job's cancellation, its progress
    (frames decoded of `total`, both passes counted)."""
    done = 0
    reported = -1  # the job record is written once per percent, not once per frame

    def tick() -> None:
        nonlocal done, reported
        if time.monotonic() > deadline:
            raise EnhanceTimeout(
                "the enhancement did not finish within BOTMODELS_REQUEST_TIMEOUT_S; send a "
                "shorter video or fewer enhancements, or submit it as a job "
                "(POST /api/video/enhance/jobs)",
                param=PARAM,
            )
        if watch is not None:
            if watch.cancelled():
                raise Cancelled
            percent = min(done, total) * 100 // max(1, total)
            if percent != reported:
                reported = percent
                watch.progress(min(done, total), total)
        done += 1

    return tick


def measure(
    data: bytes, info: VideoInfo, options: EnhanceOptions, tick: Callable[[], None]
) -> tuple[Floats | None, npt.NDArray[np.uint8] | None]:
    """The first pass: per-frame stabilising corrections and the colour tables, as asked."""
    if not (options.stabilize or options.color_correct):
        return None, None
    every = max(1, math.ceil(info.frames / COLOR_SAMPLES))
    steps: list[tuple[float, float]] = []
    samples: list[Frame] = []
    previous: Floats | None = None
    for index, frame in enumerate(_frames(data, tick)):
        if options.stabilize:
            small = motion_image(frame)
            if previous is not None and previous.shape == small.shape:
                steps.append(phase_shift(previous, small))
            else:  # the first frame, or the frame size changed: no shift measured
                steps.append((0.0, 0.0))
            previous = small
        if options.color_correct and index % every == 0:
            step = max(1, max(frame.shape[:2]) // COLOR_SAMPLE_SIDE)
            samples.append(frame[::step, ::step])
    if not steps and not samples:
        raise InvalidInput(
            f"`{PARAM}` is a truncated or corrupt video: no frame decoded", param=PARAM
        )
    scale = 1.0
    if steps and previous is not None:
        scale = info.height / previous.shape[0]  # motion was measured on the small copy
    moves = (
        corrections(np.asarray(steps, dtype=np.float64) * scale, float(info.fps)) if steps else None
    )
    tables = color_tables(samples) if samples else None
    return moves, tables


# --- the whole job -----------------------------------------------------------------------------


def labels(options: EnhanceOptions) -> list[str]:
    applied = []
    if options.denoise:
        applied.append("denoise")
    if options.stabilize:
        applied.append("stabilize")
    if options.color_correct:
        applied.append("color_correct")
    if options.upscale > 1:
        applied.append(f"upscale_lanczos_{options.upscale}x")
    return applied


def enhance(
    data: bytes,
    options: EnhanceOptions,
    path: Path,
    *,
    info: VideoInfo,
    deadline: float = math.inf,
    watch: Watch | None = None,
) -> Enhanced:
    """Decode `data`, filter each frame as `options` ask, write H.264 MP4 at `path` (at the
    source's frame rate, every decoded frame, the audio copied when MP4 holds it). A job passes
    `watch`: its progress, and cancellation (`Cancelled`) before any frame."""
    import av

    passes = 2 if options.stabilize or options.color_correct else 1
    tick = _ticker(deadline, watch, info.frames * passes)
    moves, tables = measure(data, info, options, tick)

    def filtered(index: int, previous: Frame, current: Frame, following: Frame) -> Frame:
        frame = denoise_frame(previous, current, following) if options.denoise else current
        if moves is not None and index < len(moves):
            frame = shift_frame(frame, float(moves[index][0]), float(moves[index][1]))
        if tables is not None:
            frame = apply_tables(frame, tables)
        return even(upscale_frame(frame, options.upscale))

    source = _open(data)
    count = 0
    try:
        video_in = source.streams.video[0]
        video_in.thread_type = "AUTO"
        audio_in = copied_audio(source)
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as box:
            # Both streams before the first packet: the header is written with the first mux.
            width = info.width * options.upscale + (info.width * options.upscale) % 2
            height = info.height * options.upscale + (info.height * options.upscale) % 2
            video_out: Any = box.add_stream("libx264", rate=info.fps)
            video_out.width, video_out.height = width, height
            video_out.pix_fmt = "yuv420p"
            video_out.options = {"crf": "20", "preset": "veryfast"}
            audio_out = add_audio(box, audio_in)

            def write(frame: Frame) -> None:
                nonlocal count
                if frame.shape[:2] != (height, width):  # a stream whose frame size changes
                    frame = _fit(frame, width, height)
                for packet in video_out.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    box.mux(packet)
                count += 1

            window: list[Frame] = []
            streams = [video_in] if audio_out is None else [video_in, audio_in]
            try:
                for packet in source.demux(*streams):
                    if packet.stream.type == "audio":
                        mux_audio(box, packet, audio_out)
                        continue
                    for decoded in packet.decode():
                        tick()
                        window.append(decoded.to_ndarray(format="rgb24"))
                        if len(window) == 2 and count == 0:  # the first frame: no previous
                            write(filtered(0, window[0], window[0], window[1]))
                        elif len(window) == 3:
                            write(filtered(count, *window))
                            window.pop(0)
            except av.FFmpegError:
                pass  # a truncated tail: the video ends where it breaks
            if window:
                last = window[-1]
                if count == 0:
                    write(filtered(0, last, last, last))
                else:
                    write(filtered(count, window[-2] if len(window) > 1 else last, last, last))
            if count == 0:
                raise InvalidInput(
                    f"`{PARAM}` is a truncated or corrupt video: no frame decoded", param=PARAM
                )
            for packet in video_out.encode(None):
                box.mux(packet)
    finally:
        source.close()
    return Enhanced(
        frame_count=count,
        fps=round(float(info.fps), 3),
        width=width,
        height=height,
        enhancements=labels(options),
    )
