"""`POST /api/video/remove-background`: the video named by `video_url`, every frame's foreground
(person) mask from the segment runner, the background replaced by a colour or an image.

botserver (botvideo/src/engine/chat_ai.rs, remove_background) posts `{video_url, replacement}`
with no key and no timeout, and reads `processed_url` and `duration_ms` (an integer). MP4 has
no alpha channel, so "removed" means replaced: by default with pure green, a chroma key any
editor can take out again.

The video streams through in chunks of one mask batch: decode (a worker thread), masks (the
runner's batchable API, through the dispatcher), composite and encode (a worker thread). Memory
holds one chunk, whatever the video's length. Every frame is kept, at the input's frame rate; an
odd width or height loses its last pixel column or row (H.264 in yuv420p needs even sizes). AAC
and MP3 audio is copied as it is (botmodels/editor/videoio.py, as enhance does).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from botmodels.config import Settings, get_settings
from botmodels.dispatch import BatchInfer, run_on_runner
from botmodels.editor.videoio import (
    Cancelled,
    Watch,
    add_audio,
    copied_audio,
    copy_audio,
)
from botmodels.errors import InvalidInput, PayloadTooLarge
from botmodels.fetch import Fetcher
from botmodels.media import decode_image, encode_png, open_video, read_json_model
from botmodels.outputs import OutputStore
from botmodels.peers import batch_items
from botmodels.pool import RunnerPool
from botmodels.remote import RemoteRunner
from botmodels.vision.schemas import ImageB64
from runners.segment import SegmentRunner

SEGMENT_API, SEGMENT_ROUTE = "segment_masks", "/runners/segment/masks"
DEFAULT_REPLACEMENT = "#00ff00"
MAX_URL_CHARS = 4096

Pixels = npt.NDArray[np.uint8]  # (height, width, 3) RGB
Mask = npt.NDArray[np.float32]  # (height, width) in [0, 1]


# --- bodies and answers ----------------------------------------------------------------------
class RemoveBackgroundRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    video_url: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="an http(s) URL allowed by BOTMODELS_FETCH_ALLOW, or an absolute path under "
        "BOTMODELS_FETCH_ROOTS",
    )
    replacement: str | None = Field(
        None,
        max_length=MAX_URL_CHARS,
        description="the new background: a colour (`#RRGGBB`, `#RGB`, a CSS name such as "
        "`white`) or an image URL/path (fetched like `video_url`, scaled to cover the frame); "
        f"omitted or null: `{DEFAULT_REPLACEMENT}` (a chroma key; MP4 has no transparency)",
    )


class RemoveBackgroundResponse(BaseModel):
    processed_url: str = Field(description="absolute URL of the H.264 MP4 under /outputs/videos/")
    file_path: str = Field(description="the same file's path on this server")
    duration_ms: int = Field(description="the processed video's length, milliseconds")
    frame_count: int
    fps: float
    width: int
    height: int
    replacement: str = Field(description="the colour used (`#rrggbb`), or `image`")


class MaskJobIn(BaseModel):
    """One frame for the segment runner over HTTP (a peer's `/runners/segment/masks`)."""

    # Checked when the request is parsed, as the vision runners' items are: a bad frame is its
    # own item's 400 (`items.N.image_png_b64`), never the failure of a batch it would join.
    image_png_b64: ImageB64


class MaskOut(BaseModel):
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    mask: bytes = Field(description="height x width bytes, row-major: foreground 0-255")
    width: int
    height: int


# --- the batch side (service.py's batchable API) -----------------------------------------------
def _frame(item: MaskJobIn | Any) -> Any:
    if not isinstance(item, MaskJobIn):  # in-process: a PIL image, passed through untouched
        return item
    try:
        data = base64.b64decode(item.image_png_b64, validate=True)
    except ValueError:
        raise InvalidInput("`image_png_b64` is not base64", param="image_png_b64") from None
    return decode_image(data, max_pixels=get_settings().rembg_max_pixels, name="image_png_b64")


def mask_items(runner: SegmentRunner, items: Sequence[MaskJobIn | Any]) -> list[MaskOut]:
    masks = runner.masks([_frame(item) for item in items])
    return [
        MaskOut.model_construct(
            mask=to_bytes(mask).tobytes(), width=mask.shape[1], height=mask.shape[0]
        )
        for mask in masks
    ]


def to_bytes(mask: Mask) -> Pixels:
    quantized: Pixels = np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8)
    return quantized


def _from_out(out: MaskOut | dict[str, Any]) -> Mask:
    if isinstance(out, dict):  # from a peer: the JSON of a MaskOut
        out = MaskOut.model_validate(out)
    raw = np.frombuffer(out.mask, dtype=np.uint8).reshape(out.height, out.width)
    return raw.astype(np.float32) / 255.0


# --- compositing -----------------------------------------------------------------------------
def composite(frame: Pixels, mask: Mask, background: Pixels) -> Pixels:
    """frame where the mask is 1, background where it is 0, the mix in between, rounded:
    `frame * m + background * (1 - m)`. `background` is (3,) (a colour) or the frame's shape."""
    m = mask[..., None]
    mixed = frame.astype(np.float32) * m + background.astype(np.float32) * (1.0 - m)
    out: Pixels = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def parse_colour(text: str) -> tuple[int, int, int] | None:
    """(r, g, b) for `#RGB`, `#RRGGBB`, `rgb(...)` or a CSS name; None if it is none of them."""
    from PIL import ImageColor

    try:
        colour = ImageColor.getrgb(text.strip())
    except ValueError:
        return None
    return int(colour[0]), int(colour[1]), int(colour[2])


def _is_source(text: str) -> bool:
    lowered = text.strip().lower()
    return lowered.startswith(("http://", "https://", "file:", "/"))


# --- the video -------------------------------------------------------------------------------
@dataclass
class _Input:
    container: Any
    stream: Any
    frames: Iterator[Any]
    fps: Fraction
    width: int
    height: int


def _open(data: bytes, settings: Settings) -> tuple[Any, Any]:
    container = open_video(data, "video_url")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > settings.rembg_max_pixels:
        container.close()
        raise InvalidInput(
            f"`video_url` has {width}x{height} frames; the limit is {settings.rembg_max_pixels} "
            "pixels (BOTMODELS_REMBG_MAX_PIXELS)",
            param="video_url",
        )
    return container, stream


def probe(data: bytes, settings: Settings) -> int:
    """The number of video frames (demuxed packets, nothing decoded), within the limit."""
    import av

    container, stream = _open(data, settings)
    total = 0
    try:
        for packet in container.demux(stream):
            if packet.size:
                total += 1
                if total > settings.rembg_max_frames:
                    raise PayloadTooLarge(
                        f"`video_url` has more than {settings.rembg_max_frames} frames "
                        "(BOTMODELS_REMBG_MAX_FRAMES)",
                        param="video_url",
                    )
    except av.FFmpegError as exc:
        if total == 0:
            raise InvalidInput(
                f"`video_url` is a corrupt video: {exc}", param="video_url"
            ) from None
    finally:
        container.close()
    if total == 0:
        raise InvalidInput("`video_url` holds no video frames", param="video_url")
    return total


def _open_input(data: bytes, settings: Settings) -> _Input:
    container, stream = _open(data, settings)
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    return _Input(
        container,
        stream,
        container.decode(stream),
        Fraction(rate),
        stream.codec_context.width // 2 * 2,
        stream.codec_context.height // 2 * 2,
    )


def _read_chunk(source: _Input, count: int) -> list[Pixels]:
    import av

    chunk: list[Pixels] = []
    try:
        for frame in source.frames:
            pixels = frame.to_ndarray(format="rgb24")[: source.height, : source.width]
            chunk.append(np.ascontiguousarray(pixels))
            if len(chunk) == count:
                break
    except av.FFmpegError:
        pass  # a truncated tail: what decoded is the video
    return chunk


class _Writer:
    """H.264 (libx264, yuv420p, `+faststart`) at the input's frame rate, one frame per frame;
    the input's audio, when MP4 holds it, copied after the last frame (`close`)."""

    def __init__(self, path: Path, source: _Input, data: bytes) -> None:
        import av

        self.data = data
        self.box: Any = av.open(
            str(path), mode="w", format="mp4", options={"movflags": "+faststart"}
        )
        self.stream: Any = self.box.add_stream("libx264", rate=source.fps)
        self.stream.width, self.stream.height = source.width, source.height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "20", "preset": "veryfast"}
        self.audio: Any = add_audio(self.box, copied_audio(source.container))
        self.frames = 0

    def write(self, frames: list[Pixels]) -> None:
        import av

        for pixels in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                self.box.mux(packet)
            self.frames += 1

    def close(self, *, complete: bool) -> None:
        """Flush and close; the audio only for a video written to its end (a failed or
        cancelled one is deleted)."""
        try:
            for packet in self.stream.encode(None):
                self.box.mux(packet)
            if complete and self.frames:
                copy_audio(self.data, self.box, self.audio)
        finally:
            self.box.close()


def _small(pixels: Pixels, side: int) -> Any:
    from PIL import Image

    image = Image.fromarray(pixels)
    if max(image.size) > side:
        image.thumbnail((side, side))
    return image


def _shrink(frames: list[Pixels], side: int) -> list[Any]:
    return [_small(frame, side) for frame in frames]


def _full_size(mask: Mask, width: int, height: int) -> Mask:
    if mask.shape == (height, width):
        return mask
    from PIL import Image

    scaled = Image.fromarray(mask, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(scaled, dtype=np.float32), 0.0, 1.0)


def _cover(image: Any, width: int, height: int) -> Pixels:
    """The image scaled to cover width x height and centre-cropped."""
    from PIL import Image, ImageOps

    fitted = ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    return np.asarray(fitted.convert("RGB"), dtype=np.uint8)


@dataclass
class RemovalWork:
    """A checked request: the video's bytes, its frame count, the background, the URL base."""

    data: bytes
    label: str
    background: Pixels | Any
    frames: int
    base: str
    url: str


class RembgFrontend:
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
        self.remote = remotes.get("segment")
        self.batch_infer: BatchInfer | None = None

    # 1. The runner ----------------------------------------------------------------------------
    async def masks(self, images: list[Any]) -> list[Mask]:
        async def in_process(batch: list[Any]) -> list[Any]:
            return await asyncio.to_thread(mask_items, self.pool.local("segment"), batch)

        async def on_remote(batch: list[Any]) -> list[Any]:
            assert self.remote is not None
            payload = {
                "items": [
                    {"image_png_b64": base64.b64encode(encode_png(image)).decode()}
                    for image in batch
                ]
            }
            return list(await self.remote.post(SEGMENT_ROUTE, payload))

        done = await run_on_runner(
            SEGMENT_API,
            images,
            kind="segment",
            pool=self.pool,
            batch_infer=self.batch_infer,
            local=in_process,
            remote=on_remote if self.remote is not None else None,
            remote_batch=self.settings.segment_max_batch_size,
        )
        return [_from_out(out) for out in done]

    def check_runner_call(self, payload: dict[str, Any]) -> AbstractContextManager[Any]:
        """`/runners/segment/masks` from a peer: one batch per call, each frame within the
        upload limit (its pixels are checked as it is decoded)."""
        s = self.settings
        items = batch_items(
            payload, "items", s.segment_max_batch_size, "BOTMODELS_SEGMENT_MAX_BATCH_SIZE"
        )
        encoded_limit = s.max_upload_bytes * 4 // 3 + 4
        for i, item in enumerate(items):
            png = item.get("image_png_b64")
            if isinstance(png, str) and len(png) > encoded_limit:
                raise PayloadTooLarge(
                    f"`items[{i}].image_png_b64` is over the upload limit of "
                    f"{s.max_upload_bytes} bytes (BOTMODELS_MAX_UPLOAD_BYTES)",
                    param="image_png_b64",
                )
        return contextlib.nullcontext()

    # 2. The route -----------------------------------------------------------------------------
    async def _background(
        self, replacement: str | None, fetcher: Fetcher
    ) -> tuple[str, Pixels | Any]:
        """("#rrggbb", the colour) or ("image", a PIL image)."""
        text = (replacement or "").strip() or DEFAULT_REPLACEMENT
        if _is_source(text):
            data = await fetcher.fetch(text, param="replacement")
            image = await asyncio.to_thread(
                decode_image,
                data,
                max_pixels=self.settings.vision_max_image_pixels,
                name="replacement",
            )
            return "image", image
        colour = parse_colour(text)
        if colour is None:
            alpha = " (MP4 has no transparency: name a key colour)" if "transp" in text else ""
            raise InvalidInput(
                f"`replacement` must be a colour (#RRGGBB, #RGB or a CSS name) or an image URL, "
                f"got {text[:40]!r}{alpha}",
                param="replacement",
            )
        return "#{:02x}{:02x}{:02x}".format(*colour), np.array(colour, dtype=np.uint8)

    async def prepare(self, request: Request, fetcher: Fetcher) -> RemovalWork:
        """Everything a bad request fails on (the body, the replacement, the fetch, the limits),
        before any frame is decoded: a job's submission answers these as the route does."""
        body = await read_json_model(request, RemoveBackgroundRequest)
        if self.remote is None:
            self.pool.check("segment")  # a 503 now, before any fetch or decode
        label, background = await self._background(body.replacement, fetcher)
        data = await fetcher.fetch(body.video_url, param="video_url")
        frames = await asyncio.to_thread(probe, data, self.settings)  # before decoding
        base = str(self.settings.public_url or request.base_url).rstrip("/")
        return RemovalWork(data, label, background, frames, base, body.video_url)

    async def remove_background(
        self, request: Request, fetcher: Fetcher
    ) -> RemoveBackgroundResponse:
        return await self.run(await self.prepare(request, fetcher))

    async def run(self, work: RemovalWork, watch: Watch | None = None) -> RemoveBackgroundResponse:
        """The prepared work, to a file under /outputs/videos/; a job passes `watch`."""
        with tempfile.TemporaryDirectory(prefix="botmodels-rembg-") as tmp:
            out_path = Path(tmp) / "out.mp4"
            source = await asyncio.to_thread(_open_input, work.data, self.settings)
            try:
                frames = await self._process(source, work, out_path, watch)
            finally:
                source.container.close()

            def move(path: Path) -> None:
                shutil.move(out_path, path)

            saved = await asyncio.to_thread(self.outputs.save, "videos", move, "mp4")
        return RemoveBackgroundResponse(
            processed_url=work.base + saved.url_path,
            file_path=saved.url_path,
            duration_ms=round(frames * 1000 / source.fps),
            frame_count=frames,
            fps=round(float(source.fps), 3),
            width=source.width,
            height=source.height,
            replacement=work.label,
        )

    async def _process(
        self, source: _Input, work: RemovalWork, out_path: Path, watch: Watch | None
    ) -> int:
        """Every frame composited and written; the number written."""
        if source.width < 2 or source.height < 2:
            raise InvalidInput(
                f"`video_url` frames are {source.width}x{source.height}; at least 2x2",
                param="video_url",
            )
        background = work.background
        if not isinstance(background, np.ndarray):  # an image: scaled once to the frame
            background = await asyncio.to_thread(_cover, background, source.width, source.height)
        writer = await asyncio.to_thread(_Writer, out_path, source, work.data)
        side = self.settings.segment_model_side
        step = self.settings.segment_max_batch_size
        complete = False
        try:
            while chunk := await asyncio.to_thread(_read_chunk, source, step):
                small = await asyncio.to_thread(_shrink, chunk, side)
                masks = await self.masks(small)

                def finish(c: list[Pixels] = chunk, m: list[Mask] = masks) -> None:
                    for f, k in zip(c, m, strict=True):
                        if watch is not None and watch.cancelled():
                            raise Cancelled
                        size = _full_size(k, source.width, source.height)
                        writer.write([composite(f, size, background)])
                    if watch is not None:  # a job record's write: off the event loop
                        watch.progress(min(writer.frames, work.frames), work.frames)

                await asyncio.to_thread(finish)
            complete = True
        finally:
            await asyncio.to_thread(writer.close, complete=complete)
        if writer.frames == 0:
            raise InvalidInput(
                "`video_url` is a corrupt video: no frame decoded", param="video_url"
            )
        return writer.frames
