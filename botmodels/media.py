"""Uploads (vision and speech): read the body, sniff what it really is, decode it safely.

botserver names every upload `image.png` / `image/png` whatever it holds, so the declared name
and content type are ignored: the bytes decide. Decoding is bounded before it starts:
  * the body size by LimitsMiddleware (`max_upload_bytes`, 413),
  * an image's pixel count from its header, read lazily by PIL, before any pixel is decoded
    (an "image bomb" declares e.g. 100000 x 100000 pixels in a few hundred bytes),
  * a video's frame size from its stream header, and the number of packets scanned.
Everything here is blocking: callers run it in a worker thread, except `open_image`, which reads
only a header and is also a schema check (vision_schemas.py).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect, Request

from botmodels.errors import InvalidInput, UnsupportedMediaType

# Formats PIL may open for us. Narrower than everything PIL knows: no PDF/EPS (Ghostscript),
# no exotic formats with a history of decoder bugs.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")
# Containers we call video (FFmpeg's demuxer names); FFmpeg also "opens" a PNG or JPEG as a
# one-frame video, which is not one.
VIDEO_CONTAINERS = frozenset(
    {
        "mov",
        "mp4",
        "m4a",
        "3gp",
        "3g2",
        "mj2",
        "matroska",
        "webm",
        "avi",
        "mpeg",
        "mpegts",
        "flv",
        "ogg",
        "asf",
    }
)


def _looks_like_image(data: bytes) -> bool:
    """The signature of a format in IMAGE_FORMATS: what is left of it is truncated, not foreign."""
    return data.startswith(
        (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\0", b"MM\0*")
    ) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _looks_like_video(data: bytes) -> bool:
    """A container signature: ISO-BMFF `ftyp` (mp4/mov), EBML (mkv/webm), RIFF AVI, Ogg."""
    return (
        data[4:8] == b"ftyp"
        or data[:4] == b"\x1a\x45\xdf\xa3"
        or (data[:4] == b"RIFF" and data[8:12] == b"AVI ")
        or data[:4] == b"OggS"
    )


# Which raw (non-multipart) bodies a route takes as the upload itself:
#   "image": application/octet-stream, image/*, video/* or no type (botserver's HEAR AS
#            QRCODE/VIDEO and OCR keyword send application/octet-stream);
#   "audio": any body but JSON or a urlencoded form (those are a 400 that says how to send it).
RawBody = Literal["image", "audio"]


@dataclass
class Upload:
    data: bytes
    form: dict[str, str]  # the other (text) form fields, the last value of each; {} if raw
    lists: dict[str, list[str]]  # every value of each text field, `name[]` read as `name`


async def read_upload(
    request: Request, *, raw: RawBody, what: str = "the upload", max_fields: int = 32
) -> Upload:
    """The uploaded bytes: multipart field `file`, or the raw body where `raw` allows it.
    `what` names the upload in errors ("the audio")."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return await _read_form(request, what, max_fields)
    if raw == "audio":
        if media in ("application/json", "application/x-www-form-urlencoded"):
            raise InvalidInput(
                f"send the audio as multipart field `file` or as the raw body "
                f"(Content-Type audio/* or application/octet-stream), not {media}",
                param="file",
            )
        return Upload(await _read_body(request), {}, {})
    if raw == "image" and (
        media in ("application/octet-stream", "") or media.startswith(("image/", "video/"))
    ):
        return Upload(await _read_body(request), {}, {})
    raise UnsupportedMediaType(
        "this route takes multipart/form-data with field `file`, or the raw file as "
        f"application/octet-stream (got Content-Type {media or 'none'!r})",
        param="file",
    )


async def _read_body(request: Request) -> bytes:
    try:
        return await request.body()
    except ClientDisconnect:
        # The client went away, or LimitsMiddleware cut an oversized body (it answers 413).
        raise InvalidInput("the request body ended early", param="file") from None


async def _read_form(request: Request, what: str, max_fields: int) -> Upload:
    try:
        form: FormData = await request.form(max_files=1, max_fields=max_fields)
    except ClientDisconnect:
        raise InvalidInput("the request body ended early", param="file") from None
    except Exception as exc:
        raise InvalidInput(
            f"malformed multipart body: {type(exc).__name__}: {exc}", param="file"
        ) from exc
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput(
                f"multipart field `file` is missing (send {what} as field `file`)", param="file"
            )
        data = await upload.read()
        fields: dict[str, str] = {}
        lists: dict[str, list[str]] = {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields[key] = value
                lists.setdefault(key.removesuffix("[]"), []).append(value)
    finally:
        await form.close()
    return Upload(data, fields, lists)


def _check_not_empty(data: bytes, name: str = "file") -> None:
    if not data:
        raise InvalidInput(f"`{name}` is empty (0 bytes)", param=name)


def open_image(data: bytes, *, max_pixels: int, name: str = "file") -> Any:
    """A lazily opened `PIL.Image.Image`: the header is read and checked (a format we open, at
    most `max_pixels` pixels), no pixel is decoded. 415 if it is not an image, 400 if its
    header is corrupt or it declares too many pixels. `name` is the field the errors name."""
    from PIL import Image, UnidentifiedImageError

    _check_not_empty(data, name)
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
    except UnidentifiedImageError:
        if _looks_like_image(data):
            raise InvalidInput(
                f"`{name}` is a truncated or corrupt image (its header is unreadable; "
                f"{len(data)} bytes)",
                param=name,
            ) from None
        raise UnsupportedMediaType(
            f"`{name}` is not an image in a supported format ({', '.join(IMAGE_FORMATS)}); "
            f"its first bytes are {data[:8]!r}",
            param=name,
        ) from None
    except Image.DecompressionBombError as exc:  # PIL's own limit, 2x MAX_IMAGE_PIXELS
        raise InvalidInput(f"`{name}` declares too many pixels: {exc}", param=name) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"`{name}` is a corrupt image: {exc}", param=name) from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise InvalidInput(
            f"`{name}` is a {image.format} of {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} pixels",
            param=name,
        )
    return image


def decode_image(data: bytes, *, max_pixels: int, name: str = "file") -> Any:
    """An RGB `PIL.Image.Image`, fully decoded: `open_image`'s checks, then 400 if the pixel
    data is truncated or corrupt."""
    from PIL import Image

    image = open_image(data, max_pixels=max_pixels, name=name)
    try:
        image.load()
        rgb = image.convert("RGB")
        rgb.info["source_format"] = image.format
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(
            f"`{name}` is a truncated or corrupt {image.format}: {exc}", param=name
        ) from None
    except Image.DecompressionBombError as exc:
        raise InvalidInput(f"`{name}` declares too many pixels: {exc}", param=name) from None
    return rgb


def encode_png(image: Any) -> bytes:
    """Fast, lossless PNG (level 1): what tesseract reads on its stdin."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass(frozen=True)
class VideoFrames:
    frames: list[Any]  # RGB PIL images
    container: str
    total_frames: int


def open_video(data: bytes, param: str = "file") -> Any:
    """An av input container of a video FFmpeg reads, with a video stream; the caller closes it.
    Not a video: 415; a video cut short or corrupt: 400; `param` is the field the errors name."""
    import av

    _check_not_empty(data, param)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as exc:
        if _looks_like_video(data):  # e.g. an mp4 cut before its index ("moov atom")
            raise InvalidInput(
                f"`{param}` is a truncated or corrupt video: {exc}", param=param
            ) from None
        raise UnsupportedMediaType(
            f"`{param}` is not a video in a container FFmpeg reads (mp4, webm, mov, mkv, avi…): "
            f"{exc}",
            param=param,
        ) from None
    if not set(container.format.name.split(",")) & VIDEO_CONTAINERS:
        container.close()
        raise UnsupportedMediaType(
            f"`{param}` is not a video (FFmpeg reads it as {container.format.name}); "
            f"send mp4, webm, mov, mkv or avi",
            param=param,
        )
    if not container.streams.video:
        container.close()
        raise UnsupportedMediaType(
            f"`{param}` ({container.format.name}) has no video stream", param=param
        )
    return container


def decode_video_frames(
    data: bytes, num_frames: int, *, max_pixels: int, max_packets: int, max_side: int = 768
) -> VideoFrames:
    """`num_frames` frames sampled evenly over the video (fewer if it has fewer).

    Two passes: the first only demuxes (counts the video packets: one per frame, no decoding),
    the second decodes up to the last wanted frame and keeps the wanted ones, so memory holds
    `num_frames` images at most. Works for containers that do not state their frame count
    (webm, mkv).
    """
    import av

    _check_not_empty(data)

    # 1. Count frames (demux only) and check the frame size
    container = open_video(data)
    try:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise InvalidInput(
                f"`file` has {width}x{height} frames; the limit is {max_pixels} pixels",
                param="file",
            )
        name = container.format.name
        total = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    total += 1
                    if total > max_packets:
                        raise InvalidInput(
                            f"`file` has more than {max_packets} video frames", param="file"
                        )
        except av.FFmpegError as exc:
            if total == 0:
                raise InvalidInput(f"`file` is a corrupt video: {exc}", param="file") from None
    finally:
        container.close()
    if total == 0:
        raise InvalidInput("`file` holds no video frames", param="file")

    # 2. Decode, keeping evenly spaced frames
    count = min(num_frames, total)
    wanted = sorted({round(i * (total - 1) / max(1, count - 1)) for i in range(count)})
    frames: list[Any] = []
    container = open_video(data)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                if index in wanted:
                    # shrink at once: num_frames full-size 4K frames would be ~1 GB
                    image = frame.to_image()
                    image.thumbnail((max_side, max_side))
                    frames.append(image)
                if index >= wanted[-1]:
                    break
        except av.FFmpegError:
            # A truncated tail: keep what decoded. Nothing decoded is an error below.
            pass
    finally:
        container.close()
    if not frames:
        raise InvalidInput("`file` is a truncated or corrupt video: no frame decoded", param="file")
    # A stream that decodes fewer frames than it has packets: fill from what we have.
    return VideoFrames(frames=frames, container=name, total_frames=total)


ModelT = TypeVar("ModelT", bound=BaseModel)


async def read_json_model(request: Request, model: type[ModelT]) -> ModelT:
    """A JSON body (routes.py marks the route `json`, so the middleware already refused any
    other Content-Type) validated as `model`: a 400 naming the first wrong field otherwise."""
    try:
        payload = json.loads(await _read_body(request))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # Recursion: nested too deep
        raise InvalidInput(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput("body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        where = f"`{field}`: " if field else ""
        raise InvalidInput(f"{where}{first['msg']}", param=field) from None
