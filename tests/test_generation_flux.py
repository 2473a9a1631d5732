"""The image runner on a FLUX pipeline (image.gpu: FLUX.1-schnell): a tiny random FluxPipeline
built in code (runners.image.build_tiny_flux), through the runner's real code path: its call
(T5 at 256 tokens, no guidance, sizes in 16s, the pipeline's native size), seeded generators
per request, same-shape batching, the step callback and cancellation, and the negative prompt
that such a model refuses (in the runner, and in the front's check before anything queues)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from botmodels.errors import InvalidInput
from tests.helpers import Recorder


@pytest.fixture(scope="module")
def flux_runner(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from runners.image import ImageRunner, build_tiny_flux

    folder = tmp_path_factory.mktemp("tiny-flux")
    build_tiny_flux(folder)
    runner = ImageRunner(folder, quantization="none", device="cpu")
    runner.load()
    return runner


def _spec(**changes: Any) -> Any:
    from runners.image import ImageSpec

    base: dict[str, Any] = {
        "prompt": "a red boat at dusk",
        "width": 32,
        "height": 32,
        "steps": 2,
        "guidance_scale": 0.0,
        "seed": 1,
    }
    return ImageSpec(**{**base, **changes})


def _pixels(image: Any) -> Any:
    return np.asarray(image, dtype=int)


def test_loads_as_flux_with_its_sizes(flux_runner: Any) -> None:
    assert flux_runner.pipeline_class == "FluxPipeline"
    assert type(flux_runner._pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert flux_runner.size_multiple == 16  # 2x2 packing of the VAE's cells, at least 16
    # no sample_size on the transformer: the pipeline's 128 latent cells x the tiny VAE's 2
    assert flux_runner.native_size == 256
    assert flux_runner._pipe.vae.use_slicing  # a batch decodes one image at a time
    assert not flux_runner.takes_negative_prompt


def test_same_shape_requests_share_one_call_with_t5_at_256_tokens(flux_runner: Any) -> None:
    pipe = flux_runner._pipe
    calls: list[int] = []
    lengths: list[int] = []
    call, encode = type(pipe).__call__, type(pipe).encode_prompt

    def spy_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(kwargs["prompt"]))
        return call(self, *args, **kwargs)

    def spy_encode(self: Any, *args: Any, **kwargs: Any) -> Any:
        lengths.append(kwargs["max_sequence_length"])
        return encode(self, *args, **kwargs)

    specs = [_spec(seed=1), _spec(seed=2, width=48), _spec(seed=3, prompt="a lighthouse")]
    type(pipe).__call__, type(pipe).encode_prompt = spy_call, spy_encode
    try:
        images = flux_runner.generate(specs)
    finally:
        type(pipe).__call__, type(pipe).encode_prompt = call, encode
    assert calls == [2, 1]  # 32x32 x2 in one call, then 48x32
    assert lengths == [256, 256]
    assert [im.size for im in images] == [(32, 32), (48, 32), (32, 32)]
    assert all(_pixels(im).std() > 0 for im in images)  # decoded pictures, not a blank


def test_a_seed_gives_the_same_picture_alone_or_in_a_batch(flux_runner: Any) -> None:
    (first,) = flux_runner.generate([_spec(seed=7)])
    (again,) = flux_runner.generate([_spec(seed=7)])
    np.testing.assert_allclose(_pixels(again), _pixels(first), atol=1)
    # its own generator: a batch mate does not change its starting noise (kernels may differ
    # by batch size, so not bit-equal)
    batched = flux_runner.generate([_spec(seed=8), _spec(seed=7)])
    np.testing.assert_allclose(_pixels(batched[1]), _pixels(first), atol=2)
    (other,) = flux_runner.generate([_spec(seed=9)])
    assert np.abs(_pixels(other) - _pixels(first)).mean() > 1


def test_progress_and_cancel_at_the_next_step(flux_runner: Any) -> None:
    done = Recorder()
    flux_runner.generate([_spec(steps=3)], [done])
    assert done.steps == [(1, 3), (2, 3), (3, 3)]

    stop, keep = Recorder(cancel_after=1), Recorder()
    (result,) = flux_runner.generate([_spec(steps=20)], [stop])
    assert result is None
    assert stop.steps == [(1, 20)]  # stopped right after the step during which it was cancelled

    stop = Recorder(cancel_after=1)
    results = flux_runner.generate([_spec(seed=1), _spec(seed=2)], [stop, keep])
    assert results[0] is None
    assert results[1] is not None
    assert len(keep.steps) == 2


def test_a_negative_prompt_is_refused_not_dropped(flux_runner: Any) -> None:
    from runners.image import NegativePromptUnsupported

    with pytest.raises(NegativePromptUnsupported) as raised:
        flux_runner.generate([_spec(), _spec(negative_prompt="blurry")])
    assert raised.value.param == "negative_prompt"
    assert raised.value.code == "unsupported_parameter"
    assert "FluxPipeline" in raised.value.message
    flux_runner.generate([_spec(negative_prompt="")])  # empty: nothing asked, nothing refused


class _OnePool:
    """The one runner GenerationFrontend asks for, with schnell's ranges on its slot."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def local(self, kind: str) -> Any:
        return self.runner

    def acquire(self, kind: str) -> Any:
        return contextlib.nullcontext(self.runner)

    def slot(self, kind: str) -> Any:
        return SimpleNamespace(guidance_range=(0.0, 0.0), steps_range=(1, 4))


def test_the_front_answers_a_negative_prompt_with_a_400_before_queueing(
    flux_runner: Any, tmp_path: Path
) -> None:
    from botmodels.config import get_settings
    from botmodels.generation.front import GenerationFrontend
    from botmodels.outputs import OutputStore

    pool: Any = _OnePool(flux_runner)
    front = GenerationFrontend(get_settings(), pool, OutputStore(tmp_path, 3600, 2**30))
    with pytest.raises(InvalidInput) as raised:
        front.check_image(prompt="a boat", negative_prompt="blurry")
    assert (raised.value.status, raised.value.param) == (400, "negative_prompt")
    assert raised.value.code == "unsupported_parameter"
    # botserver's IMAGE body (guidance 7.5, no negative prompt) runs as schnell is made to
    task = front.check_image(prompt="a boat", steps=8, guidance_scale=7.5, width=512, height=512)
    assert (task.steps, task.guidance_scale, task.width) == (4, 0.0, 512)
    default = front.check_image(prompt="a boat")
    assert (default.width, default.height) == (256, 256)  # the pipeline's native size
    with pytest.raises(InvalidInput) as size:
        front.check_image(prompt="a boat", width=520)  # a multiple of 8, not of 16
    assert size.value.param == "width"
