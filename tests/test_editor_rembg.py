"""`POST /api/video/remove-background` (botmodels/editor/rembg.py): the compositing maths on
synthetic masks, exactly; the route end to end on the tiny segmentation model, with the video
served by a local HTTP server the fetcher is allowed to read."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from botmodels.editor.rembg import composite, parse_colour
from runners.video import write_mp4
from tests.conftest import auth
from tests.helpers import assert_error
from tests.vision_media import clip_with_audio

ROUTE = "/api/video/remove-background"


# --- the maths -------------------------------------------------------------------------------
def test_composite_is_frame_times_mask_plus_background_times_the_rest() -> None:
    frame = np.array([[[200, 100, 0], [10, 20, 30], [255, 255, 255]]], dtype=np.uint8)
    mask = np.array([[1.0, 0.0, 0.25]], dtype=np.float32)
    green = np.array([0, 255, 0], dtype=np.uint8)
    out = composite(frame, mask, green)
    assert out.dtype == np.uint8
    assert out[0, 0].tolist() == [200, 100, 0]  # foreground kept
    assert out[0, 1].tolist() == [0, 255, 0]  # background replaced
    # 255 * 0.25 + c * 0.75, rounded
    assert out[0, 2].tolist() == [64, 255, 64]


def test_composite_over_an_image_mixes_pixel_by_pixel() -> None:
    frame = np.full((2, 2, 3), 100, dtype=np.uint8)
    background = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
    mask = np.array([[0.0, 1.0], [0.5, 0.0]], dtype=np.float32)
    out = composite(frame, mask, background)
    expected = np.rint(
        frame.astype(np.float32) * mask[..., None]
        + background.astype(np.float32) * (1 - mask[..., None])
    )
    assert (out == expected.astype(np.uint8)).all()
    assert (out[0, 0] == background[0, 0]).all()
    assert (out[0, 1] == 100).all()


@pytest.mark.parametrize(
    ("text", "rgb"),
    [("#00FF00", (0, 255, 0)), ("#f00", (255, 0, 0)), ("white", (255, 255, 255))],
)
def test_colours(text: str, rgb: tuple[int, int, int]) -> None:
    assert parse_colour(text) == rgb


def test_not_a_colour() -> None:
    assert parse_colour("transparent-ish") is None
    assert parse_colour("#12345") is None


# --- the route -------------------------------------------------------------------------------
def blocks_video(frames: int, width: int, height: int) -> np.ndarray:
    """Frames of random 8x8 colour blocks (H.264 keeps them well; the tiny model's masks
    reach 0 and 1 on them)."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (frames, height // 8, width // 8, 3), dtype=np.uint8)
    return np.ascontiguousarray(small.repeat(8, axis=1).repeat(8, axis=2))


def decode(data: bytes) -> tuple[list[np.ndarray], float]:
    import av

    box: Any
    with av.open(io.BytesIO(data)) as box:
        stream = box.streams.video[0]
        rate = float(stream.average_rate or 0)
        return [f.to_ndarray(format="rgb24") for f in box.decode(stream)], rate


def outputs_count() -> int:
    import service

    assert service._instance is not None
    folder = service._instance.outputs.root / "videos"
    return len(list(folder.glob("*.mp4"))) if folder.is_dir() else 0


def test_every_frame_and_the_fps_are_kept_and_the_colour_fills_the_background(
    fetching: Any, file_server: tuple[Path, str], tiny_runner: Callable[..., Any]
) -> None:
    from PIL import Image

    root, base = file_server
    frames = blocks_video(10, 64, 48)
    write_mp4(frames, 12, root / "clip.mp4")
    response = fetching.post(
        ROUTE,
        json={"video_url": f"{base}/clip.mp4", "replacement": "#0000ff"},
        headers=auth(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["frame_count"], body["fps"], body["width"], body["height"]) == (10, 12, 64, 48)
    assert body["duration_ms"] == round(10 * 1000 / 12)
    assert body["replacement"] == "#0000ff"
    assert body["processed_url"].endswith(body["file_path"])
    assert body["file_path"].startswith("/outputs/videos/")
    served_file = fetching.get(body["file_path"])
    assert served_file.status_code == 200
    out, rate = decode(served_file.content)
    assert len(out) == 10
    assert rate == 12

    # Where the model says "background" (the same tiny model, on the same decoded frames),
    # the output is blue; where it says "person", it is the input.
    source, _ = decode((root / "clip.mp4").read_bytes())
    masks = tiny_runner("segment").masks([Image.fromarray(f) for f in source])
    blue = np.array([0, 0, 255], dtype=np.float32)
    back_pixels: list[np.ndarray] = []
    fore_pixels: list[np.ndarray] = []
    for frame, mask, result in zip(source, masks, out, strict=True):
        back, fore = _interior(mask < 0.05), _interior(mask > 0.95)
        back_pixels.append(np.abs(result[back].astype(np.float32) - blue))
        fore_pixels.append(np.abs(result[fore].astype(np.float32) - frame[fore]))
    back_diff, fore_diff = np.concatenate(back_pixels), np.concatenate(fore_pixels)
    assert len(back_diff) > 20
    assert len(fore_diff) > 20
    assert back_diff.mean() < 16
    assert fore_diff.mean() < 16


def audio_seconds(data: bytes) -> list[tuple[str, float]]:
    """(codec, seconds) of each audio stream, from its packets' timestamps."""
    import av

    box: Any
    with av.open(io.BytesIO(data)) as box:
        streams = list(box.streams.audio)
        ends = {s.index: 0.0 for s in streams}
        for packet in box.demux(*streams):
            if packet.pts is not None and packet.duration and packet.time_base:
                end = float((packet.pts + packet.duration) * packet.time_base)
                ends[packet.stream.index] = max(ends[packet.stream.index], end)
        return [(s.codec_context.name, ends[s.index]) for s in streams]


def test_the_aac_audio_is_kept(fetching: Any, file_server: tuple[Path, str]) -> None:
    root, base = file_server
    frames = list(blocks_video(24, 32, 32))
    source = clip_with_audio(frames, fps=12)
    (root / "talk.mp4").write_bytes(source)
    response = fetching.post(ROUTE, json={"video_url": f"{base}/talk.mp4"}, headers=auth())
    assert response.status_code == 200, response.text
    out = fetching.get(response.json()["file_path"]).content
    assert len(decode(out)[0]) == 24
    ((codec, seconds),) = audio_seconds(out)
    ((_, expected),) = audio_seconds(source)
    assert codec == "aac"
    assert expected > 1.5
    assert abs(seconds - expected) < 0.1


def _interior(region: np.ndarray) -> np.ndarray:
    """The region less a 2-pixel border (H.264 blurs edges of colour)."""
    inner = region.copy()
    for axis in (0, 1):
        for shift in (-2, 2):
            inner &= np.roll(region, shift, axis=axis)
    return inner


def test_bad_requests_are_4xx_and_write_nothing(
    fetching: Any, file_server: tuple[Path, str]
) -> None:
    root, base = file_server
    (root / "not-video.mp4").write_bytes(b"hello, this is text" * 50)
    write_mp4(blocks_video(2, 16, 16), 8, root / "two.mp4")
    before = outputs_count()
    cases = [
        ({}, 400),
        ({"video_url": ""}, 400),
        ({"video_url": f"{base}/two.mp4", "replacement": "transparent"}, 400),
        ({"video_url": f"{base}/two.mp4", "replacement": "not-a-colour"}, 400),
        ({"video_url": f"{base}/missing.mp4"}, 400),
        ({"video_url": "http://169.254.169.254/latest"}, 400),
        ({"video_url": f"{base}/not-video.mp4"}, 415),
        ({"video_url": f"{base}/two.mp4", "replacement": f"{base}/not-video.mp4"}, 415),
    ]
    for body, status in cases:
        response = fetching.post(ROUTE, json=body, headers=auth())
        assert_error(response, status)
    assert outputs_count() == before


def test_an_image_replacement_covers_the_frame(
    fetching: Any, file_server: tuple[Path, str]
) -> None:
    from PIL import Image

    root, base = file_server
    write_mp4(blocks_video(3, 32, 32), 8, root / "three.mp4")
    Image.new("RGB", (50, 20), (255, 0, 0)).save(root / "red.png")
    response = fetching.post(
        ROUTE,
        json={"video_url": f"{base}/three.mp4", "replacement": f"{base}/red.png"},
        headers=auth(),
    )
    assert response.status_code == 200, response.text
    assert response.json()["replacement"] == "image"
    assert response.json()["frame_count"] == 3
