"""Wan 2.1 (`WanPipeline`, the gpu profile's video model) through the video runner and the
generation front, on a tiny random WanPipeline built in code (runners.video.build_tiny_wan):
frame counts fitted to 4k+1 and reported, the 16-pixel grid and 832x480 default, the card's
flow shift, per-request seeds within a shared call, cancellation at the next step, the negative
prompt, and the MP4 at the requested fps with the fitted number of frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from botmodels.errors import InvalidInput
from botmodels.outputs import OutputStore
from tests.helpers import Recorder


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """The tiny pipeline is too small to split across threads on this shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runners.video import build_tiny_wan

    folder = tmp_path_factory.mktemp("tiny-wan")
    build_tiny_wan(folder)
    return folder


@pytest.fixture(scope="module")
def wan(wan_dir: Path) -> Any:
    from runners.video import VideoRunner

    runner = VideoRunner(wan_dir, quantization="none", device="cpu")
    runner.load()
    return runner


def _spec(**changes: Any) -> Any:
    from runners.video import VideoSpec

    base: dict[str, Any] = {
        "prompt": "a paper boat on a river",
        "width": 48,
        "height": 32,
        "num_frames": 5,
        "steps": 2,
        "guidance_scale": 5.0,
        "seed": 1,
    }
    return VideoSpec(**{**base, **changes})


def test_what_the_runner_reads_of_a_wan_pipeline(wan: Any) -> None:
    assert wan.pipeline_class == "WanPipeline"
    assert wan.size_multiple == 16  # VAE 8 x transformer patch 2
    assert (wan.native_width, wan.native_height) == (832, 480)
    assert wan.frame_stride == 4
    assert [wan.fit_frames(n) for n in (1, 2, 5, 6, 16, 24, 81)] == [1, 5, 5, 9, 17, 25, 81]
    assert wan.fit_frames(64, 64) == 61  # 65 would pass BOTMODELS_VIDEO_MAX_FRAMES
    assert wan.fit_frames(1, 1) == 1


def test_the_cards_flow_shift_replaces_the_repos(wan_dir: Path, tmp_path: Path) -> None:
    """A scheduler file with another shift is loaded at the card's 3.0 for 480p."""
    import shutil

    from runners.video import WAN_FLOW_SHIFT, VideoRunner

    folder = tmp_path / "wan"
    shutil.copytree(wan_dir, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["flow_shift"] = 7.0
    config_path.write_text(json.dumps(config), encoding="utf-8")
    runner = VideoRunner(folder, quantization="none", device="cpu")
    runner.load()
    scheduler = runner._pipe.scheduler
    assert type(scheduler).__name__ == "UniPCMultistepScheduler"
    assert scheduler.config.flow_shift == WAN_FLOW_SHIFT == 3.0
    assert scheduler.config.use_flow_sigmas


def test_frames_are_fitted_and_seeds_repeat(wan: Any) -> None:
    (video,) = wan.generate([_spec(num_frames=6)])  # asked 6: Wan makes 4k+1
    assert video is not None
    assert video.shape == (9, 32, 48, 3)
    assert video.dtype == np.uint8
    (again,) = wan.generate([_spec(num_frames=9)])
    np.testing.assert_array_equal(video, again)
    (other,) = wan.generate([_spec(num_frames=9, seed=2)])
    assert not np.array_equal(video, other)


def test_same_shape_requests_share_one_call_each_with_its_seed(wan: Any) -> None:
    calls: list[int] = []
    pipe = wan._pipe
    original = type(pipe).__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(kwargs["prompt"]))
        return original(self, *args, **kwargs)

    specs = [_spec(seed=1), _spec(seed=2, width=64), _spec(seed=3)]
    type(pipe).__call__ = spy
    try:
        videos = wan.generate(specs)
    finally:
        type(pipe).__call__ = original
    assert calls == [2, 1]
    assert [v.shape for v in videos] == [(5, 32, 48, 3), (5, 32, 64, 3), (5, 32, 48, 3)]
    # batch mates do not change a seeded request's noise (kernels may differ by batch size)
    (alone,) = wan.generate([_spec(seed=3)])
    assert np.abs(alone.astype(int) - videos[2].astype(int)).max() <= 2


def test_negative_prompt_reaches_the_unconditional_pass(wan: Any) -> None:
    (plain,) = wan.generate([_spec()])
    (negative,) = wan.generate([_spec(negative_prompt="blurry, low quality")])
    assert not np.array_equal(plain, negative)
    (no_guidance,) = wan.generate([_spec(guidance_scale=1.0)])
    (no_guidance_neg,) = wan.generate([_spec(guidance_scale=1.0, negative_prompt="blurry")])
    np.testing.assert_array_equal(no_guidance, no_guidance_neg)  # guidance off: unread


def test_progress_and_cancel_at_the_next_step(wan: Any) -> None:
    done = Recorder()
    wan.generate([_spec(steps=3)], [done])
    assert done.steps == [(1, 3), (2, 3), (3, 3)]

    stop = Recorder(cancel_after=1)
    (result,) = wan.generate([_spec(steps=20)], [stop])
    assert result is None
    assert stop.steps == [(1, 20)]

    queued = Recorder(cancel_after=0)
    assert wan.generate([_spec()], [queued]) == [None]
    assert queued.steps == []


class _Pool:
    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def local(self, kind: str) -> Any:
        return self.runner

    def check(self, kind: str) -> None:
        return None

    def acquire(self, kind: str) -> Any:
        return contextlib.nullcontext(self.runner)

    def slot(self, kind: str) -> None:
        return None


def test_the_answer_reports_the_fitted_frames_and_the_mp4_has_them(
    wan: Any, tmp_path: Path
) -> None:
    """botserver's VIDEO sends 24 frames: Wan makes 25, and says so; the MP4 holds 25 frames
    at the asked fps, at the asked size."""
    av = pytest.importorskip("av")
    from botmodels.config import get_settings
    from botmodels.generation.front import GenerationFrontend

    outputs = OutputStore(tmp_path, 3600, 2**30)
    pool: Any = _Pool(wan)
    front = GenerationFrontend(get_settings(), pool, outputs)
    fields = {"prompt": "a paper boat", "num_frames": 24, "fps": 12, "steps": 2, "seed": 5}
    answer = asyncio.run(front.api_generate("video", {**fields, "width": 96, "height": 64}))
    assert answer.status == "completed"
    assert (answer.num_frames, answer.fps, answer.width, answer.height) == (25, 12, 96, 64)
    path = outputs.resolve(answer.file_path or "")
    assert path is not None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 12
        assert (stream.codec_context.width, stream.codec_context.height) == (96, 64)
        assert len(list(container.decode(video=0))) == 25


def test_the_check_defaults_to_832x480_and_refuses_an_8_pixel_grid(wan: Any) -> None:
    from botmodels.config import get_settings
    from botmodels.generation.front import GenerationFrontend

    pool: Any = _Pool(wan)
    front = GenerationFrontend(get_settings(), pool, OutputStore(Path("/nonexistent"), 1, 1))
    task = front.check_video(prompt="x")  # BOTMODELS_VIDEO_DEFAULT_FRAMES 16
    assert (task.width, task.height, task.num_frames) == (832, 480, 17)
    assert front.check_video(prompt="x", num_frames=64).num_frames == 61
    with pytest.raises(InvalidInput) as raised:
        front.check_video(prompt="x", width=840)
    assert raised.value.param == "width"
    assert "divisible by 16" in raised.value.message


def test_botservers_video_body_runs_in_the_gpu_entrys_ranges(wan: Any) -> None:
    """botserver's VIDEO (24 frames, 50 steps, no guidance, no size) on the gpu profile's Wan:
    25 frames at 832x480, the card's 50 steps, the default guidance 9.0 fitted to 6."""
    from types import SimpleNamespace

    from botmodels.config import get_settings
    from botmodels.generation.front import GenerationFrontend
    from botmodels.store import load_manifest, spec_for

    entry = spec_for(load_manifest(get_settings().manifest), "video", "gpu")
    assert entry.repo == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"

    class Ranged(_Pool):
        def slot(self, kind: str) -> Any:
            return SimpleNamespace(guidance_range=entry.guidance, steps_range=entry.steps)

    pool: Any = Ranged(wan)
    front = GenerationFrontend(get_settings(), pool, OutputStore(Path("/nonexistent"), 1, 1))
    task = front.check_video(prompt="a paper boat", num_frames=24, fps=8, steps=50)
    assert (task.num_frames, task.width, task.height) == (25, 832, 480)
    assert (task.steps, task.guidance_scale) == (50, 6.0)
    low = front.check_video(prompt="x", steps=4, guidance_scale=1.0)
    assert (low.steps, low.guidance_scale) == (20, 5.0)
