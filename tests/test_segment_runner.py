"""The segment runner (runners/segment.py) on its tiny random SegFormer: one float32 mask per
frame, the frame's own size, in [0, 1]; a batch answers what each frame answers alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from runners.segment import InvalidFrame, SegmentRunner


def _frames() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noisy = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]
    return [*noisy, Image.new("RGB", (100, 30), (200, 10, 10)), Image.new("L", (20, 20), 128)]


def test_masks_have_each_frames_size_and_are_probabilities(
    tiny_runner: Callable[..., Any],
) -> None:
    runner = tiny_runner("segment")
    frames = _frames()
    masks = runner.masks(frames)
    assert len(masks) == len(frames)
    for frame, mask in zip(frames, masks, strict=True):
        assert mask.dtype == np.float32
        assert mask.shape == (frame.height, frame.width)
        assert float(mask.min()) >= 0.0
        assert float(mask.max()) <= 1.0
    # the tiny model is calibrated to reach both ends (a compositing test needs 0 and 1)
    every = np.concatenate([m.ravel() for m in masks])
    assert (every < 0.05).any()
    assert (every > 0.95).any()


def test_a_batch_answers_what_each_frame_answers_alone(tiny_runner: Callable[..., Any]) -> None:
    runner = tiny_runner("segment")
    frames = _frames()
    together = runner.masks(frames)
    alone = [runner.masks([frame])[0] for frame in frames]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)  # kernels may differ by batch size


def test_empty_batch_and_empty_frame(tiny_runner: Callable[..., Any]) -> None:
    runner = tiny_runner("segment")
    assert runner.masks([]) == []
    with pytest.raises(InvalidFrame):
        runner.masks([Image.new("RGB", (0, 0))])


def test_cpu_int8_is_dynamic_quantization_close_to_float(tiny_runner: Callable[..., Any]) -> None:
    frames = _frames()[:2]
    exact = tiny_runner("segment").masks(frames)
    quantized = tiny_runner("segment", quantization="int8")
    assert quantized.dtype == "qint8-dynamic"
    for a, b in zip(exact, quantized.masks(frames), strict=True):
        assert float(np.abs(a - b).mean()) < 0.05


def test_refusals_name_what_is_offered(tiny_runner: Callable[..., Any], tmp_path: Path) -> None:
    folder = tiny_runner("segment", load=False).model_dir
    with pytest.raises(ValueError, match="4bit on cpu is not offered"):
        SegmentRunner(folder, quantization="4bit", device="cpu").load()
    with pytest.raises(ValueError, match="no class named sky"):
        SegmentRunner(folder, quantization="none", device="cpu", labels=("sky",)).load()
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    with pytest.raises(ValueError, match="SegformerForSemanticSegmentation"):
        SegmentRunner(tmp_path, quantization="none", device="cpu").load()
