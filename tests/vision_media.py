"""Media made in the tests: rendered text, generated symbols, small videos, broken files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def png_bytes(image: Any, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def text_image(lines: list[str], size: int = 32) -> Any:
    font = ImageFont.truetype(str(FONT), size)
    width = 40 + max(int(font.getlength(line)) for line in lines)
    image = Image.new("RGB", (width, 2 * size * len(lines) + 40), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((20, 20 + 2 * size * i), line, font=font, fill="black")
    return image


def symbol_image(fmt: str, text: str, scale: int = 3, margin: int = 30) -> Any:
    """A symbol drawn by zxing-cpp's writer, pasted on a larger white page."""
    import zxingcpp

    barcode = zxingcpp.create_barcode(text, getattr(zxingcpp.BarcodeFormat, fmt))
    symbol = Image.fromarray(np.asarray(barcode.to_image(scale=scale))).convert("RGB")
    page = Image.new("RGB", (symbol.width + 2 * margin, symbol.height + 2 * margin), "white")
    page.paste(symbol, (margin, margin))
    return page


def video_bytes(
    container: str, codec: str, frames: int = 12, size: tuple[int, int] = (64, 48)
) -> bytes:
    """A short clip whose frames fade from red to blue."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream: Any = out.add_stream(codec, rate=8)
        stream.width, stream.height = size
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(frames):
            shade = int(255 * i / max(1, frames - 1))
            array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
            array[..., 0] = 255 - shade
            array[..., 2] = shade
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring width x height pixels, and one tiny IDAT: a few hundred
    bytes that would decompress to gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    compressor = zlib.compressobj()
    data = compressor.compress(b"\0" * 100_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def png_bad_pixels(width: int = 40, height: int = 30) -> bytes:
    """A PNG whose every chunk and checksum is valid but whose pixel data is not a zlib stream:
    only decoding the pixels finds it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"\x78\x9cnot deflate data")
        + chunk(b"IEND", b"")
    )


def clip_with_audio(frames: list[Any], fps: int, *, audio: bool = True) -> bytes:
    """An H.264 MP4 of `frames` (RGB uint8 arrays, even sides) at `fps`, with a 440 Hz AAC tone
    as long as the video when `audio`."""
    import av

    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        video: Any = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound: Any = out.add_stream("aac", rate=44_100) if audio else None
        for array in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                out.mux(packet)
        if sound is not None:
            count = 44_100 * len(frames) // fps
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(count) / 44_100)).astype(np.float32)
            for start in range(0, count, 1024):
                chunk = av.AudioFrame.from_ndarray(
                    tone[None, start : start + 1024].copy(), format="fltp", layout="mono"
                )
                chunk.sample_rate, chunk.pts = 44_100, start
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
    return buffer.getvalue()
