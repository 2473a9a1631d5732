"""`/api/video/enhance`'s filters on synthetic frames, and its pipeline end to end on synthetic
clips (botmodels/editor/enhance.py): no service, no model."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from botmodels.editor import enhance as e
from botmodels.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from botmodels.outputs import OutputStore
from tests.vision_media import clip_with_audio, png_bytes

LATER = 1e12  # a deadline that never comes


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random grey landscape: structure at every scale, as a real background."""
    from PIL import Image

    coarse = rng.integers(40, 216, (height // 8, width // 8), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    grey = np.asarray(image, dtype=np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _shaky_scene(count: int = 30) -> tuple[list[np.ndarray], np.ndarray]:
    """A red square drifting right at 1 px per frame over a textured world, seen by a camera
    shaking by up to 5 px: (frames, the square's true drift per frame)."""
    rng = np.random.default_rng(7)
    world = _texture(rng, 160, 224)
    margin, height, width = 16, 96, 128
    jitter = rng.integers(-5, 6, (count, 2))
    frames = []
    for index in range(count):
        scene = world.copy()
        top, left = 70, 80 + index
        scene[top : top + 12, left : left + 12] = (255, 0, 0)
        dy, dx = jitter[index]
        y, x = margin + dy, margin + dx
        frames.append(scene[y : y + height, x : x + width].copy())
    return frames, jitter


def _square_centres(frames: list[np.ndarray]) -> np.ndarray:
    centres = []
    for frame in frames:
        red = (frame[..., 0] > 200) & (frame[..., 1] < 60) & (frame[..., 2] < 60)
        ys, xs = np.nonzero(red)
        centres.append((ys.mean(), xs.mean()))
    return np.asarray(centres)


def _wobble(centres: np.ndarray) -> float:
    """How far the centres stray from the best straight, uniform path (pixels, RMS)."""
    steps = np.arange(len(centres))
    residuals = []
    for axis in range(2):
        fit = np.polyval(np.polyfit(steps, centres[:, axis], 1), steps)
        residuals.append(centres[:, axis] - fit)
    return float(np.sqrt(np.mean(np.square(residuals))))


def test_phase_correlation_finds_a_known_shift() -> None:
    rng = np.random.default_rng(0)
    world = _texture(rng, 120, 160)
    a = world[10:90, 10:130]
    b = world[13:93, 5:125]  # the camera moved 3 down, 5 left: the picture moves up and right
    dy, dx = e.phase_shift(e.motion_image(a), e.motion_image(b))
    assert dy == pytest.approx(-3, abs=0.5)
    assert dx == pytest.approx(5, abs=0.5)


def test_stabilising_a_shaky_moving_square_removes_the_shake() -> None:
    frames, _ = _shaky_scene()
    small = [e.motion_image(f) for f in frames]
    steps = np.array([(0.0, 0.0)] + [e.phase_shift(a, b) for a, b in itertools.pairwise(small)])
    moves = e.corrections(steps, fps=12.0)
    steady = [e.shift_frame(f, dy, dx) for f, (dy, dx) in zip(frames, moves, strict=True)]
    before, after = _wobble(_square_centres(frames)), _wobble(_square_centres(steady))
    assert before > 2.0
    assert after < before / 3
    assert all(f.shape == frames[0].shape for f in steady)


def test_shift_repeats_the_edge() -> None:
    frame = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    moved = e.shift_frame(frame, 1, -2)
    assert (moved[1:, :3] == frame[:3, 2:]).all()
    assert (moved[0] == moved[1]).all()  # the uncovered top row repeats the edge
    assert (moved[:, 3] == moved[:, 2]).all()


def test_gray_world_removes_a_colour_cast_and_stretches_contrast() -> None:
    rng = np.random.default_rng(1)
    grey = _texture(rng, 64, 96).astype(np.float64) * 0.6 + 40  # dull: 64..170
    cast = np.clip(grey * (1.25, 1.0, 0.7), 0, 255).astype(np.uint8)
    means = cast.reshape(-1, 3).mean(axis=0)
    assert means[0] / means[2] > 1.6

    fixed = e.apply_tables(cast, e.color_tables([cast]))
    means = fixed.reshape(-1, 3).mean(axis=0)
    assert means.max() / means.min() < 1.05
    assert np.percentile(fixed, 99.5) - np.percentile(fixed, 0.5) > 230


def test_a_flat_picture_is_balanced_but_not_stretched() -> None:
    flat = np.full((16, 16, 3), (120, 100, 80), dtype=np.uint8)
    fixed = e.apply_tables(flat, e.color_tables([flat]))
    assert np.ptp(fixed.reshape(-1, 3).mean(axis=0)) <= 2
    assert 80 <= fixed.mean() <= 120


def test_denoise_lowers_the_noise_and_keeps_a_moving_edge() -> None:
    rng = np.random.default_rng(2)
    ramp = np.linspace(60, 190, 96)
    clean = np.repeat(np.tile(ramp, (64, 1))[..., None], 3, axis=2)
    noisy = [
        np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255).astype(np.uint8) for _ in range(3)
    ]
    out = e.denoise_frame(*noisy)
    assert np.var(out - clean) < 0.3 * np.var(noisy[1] - clean)

    # A white bar that moves 20 px a frame is not smeared into the frames either side.
    frames = []
    for left in (10, 30, 50):
        frame = np.zeros((32, 96, 3), dtype=np.uint8)
        frame[:, left : left + 8] = 255
        frames.append(frame)
    middle = e.denoise_frame(*frames)
    assert middle[16, 33, 0] > 200
    assert middle[16, 12, 0] < 60
    assert middle[16, 52, 0] < 60


def test_upscale_multiplies_the_size_and_even_pads_odd_sides() -> None:
    frame = np.zeros((15, 21, 3), dtype=np.uint8)
    assert e.upscale_frame(frame, 2).shape == (30, 42, 3)
    assert e.upscale_frame(frame, 1) is frame
    assert e.even(frame).shape == (16, 22, 3)


def _run(data: bytes, options: e.EnhanceOptions, tmp_path: Path, **limits: int) -> e.Enhanced:
    info = e.probe(
        data,
        max_frames=limits.get("max_frames", 1000),
        max_pixels=limits.get("max_pixels", 10**7),
        upscale=options.upscale,
    )
    return e.enhance(data, options, tmp_path / "out.mp4", info=info, deadline=LATER)


def test_end_to_end_keeps_frames_fps_and_audio(tmp_path: Path) -> None:
    frames, _ = _shaky_scene(24)
    data = clip_with_audio(frames, fps=12)
    done = _run(data, e.EnhanceOptions(upscale=2), tmp_path)
    assert done.enhancements == ["denoise", "stabilize", "color_correct", "upscale_lanczos_2x"]
    assert (done.frame_count, done.fps, done.width, done.height) == (24, 12.0, 256, 192)
    with av.open(str(tmp_path / "out.mp4")) as box:
        video = box.streams.video[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 256, 192)
        assert video.average_rate == 12
        assert sum(1 for _ in box.decode(video)) == 24
        assert [s.codec_context.name for s in box.streams.audio] == ["aac"]


def test_end_to_end_with_nothing_asked_only_reencodes(tmp_path: Path) -> None:
    frames, _ = _shaky_scene(5)
    options = e.EnhanceOptions(upscale=1, denoise=False, stabilize=False, color_correct=False)
    done = _run(clip_with_audio(frames, fps=8, audio=False), options, tmp_path)
    assert (done.enhancements, done.frame_count, done.fps) == ([], 5, 8.0)


def test_bad_videos_and_limits(tmp_path: Path) -> None:
    options = e.EnhanceOptions()
    with pytest.raises(UnsupportedMediaType):
        _run(png_bytes(Image.new("RGB", (8, 8))), options, tmp_path)
    with pytest.raises(UnsupportedMediaType):
        _run(b"plain text, not a video", options, tmp_path)
    with pytest.raises(InvalidInput):
        _run(b"", options, tmp_path)
    frames, _ = _shaky_scene(6)
    data = clip_with_audio(frames, fps=8, audio=False)
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        _run(data[: len(data) // 3], options, tmp_path)
    with pytest.raises(PayloadTooLarge, match="BOTMODELS_EDITOR_MAX_FRAMES"):
        _run(data, options, tmp_path, max_frames=5)
    with pytest.raises(PayloadTooLarge) as raised:
        _run(data, e.EnhanceOptions(upscale=4), tmp_path, max_pixels=128 * 96 * 4)
    assert raised.value.param == "upscale_factor"


def test_past_the_deadline_nothing_is_kept(tmp_path: Path) -> None:
    frames, _ = _shaky_scene(6)
    data = clip_with_audio(frames, fps=8, audio=False)
    info = e.probe(data, max_frames=100, max_pixels=10**7, upscale=1)
    store = OutputStore(tmp_path / "outputs", max_age_s=3600, max_total_bytes=10**9)
    with pytest.raises(e.EnhanceTimeout):
        store.save(
            "videos",
            lambda path: e.enhance(
                data, e.EnhanceOptions(), path, info=info, deadline=time.monotonic() - 1
            ),
            "mp4",
        )
    assert list((tmp_path / "outputs" / "videos").iterdir()) == []
