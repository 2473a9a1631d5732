"""Text-to-image: any diffusers text-to-image pipeline in the store (Stable Diffusion 1.x/2.x,
SDXL, SDXL-turbo, SD-turbo…), loaded with `DiffusionPipeline.from_pretrained`.

Reads top to bottom: load from a store folder -> check inputs -> generate a batch (same-shape
requests share one pipeline call, each with its own seeded generator) -> (the frontend writes
the PNGs). Seeded runs are reproducible: each image's starting noise comes from its own
`torch.Generator` seeded with its seed, so neither batch mates nor earlier calls change it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.base import Device, Quantization
from runners.diffusion import (
    GenerationCancelled,
    GroupControl,
    StepControl,
    free_memory,
    group_by,
    load_runner_pipeline,
    step_kwargs,
    tiny_clip_parts,
    tiny_scheduler,
    tiny_vae,
)

log = logging.getLogger("botmodels.runners.image")

MODEL_ID = "stabilityai/sd-turbo"
SAMPLE_INPUT = {"prompt": "a lighthouse at dusk, oil painting", "steps": 2, "width": 512}


@dataclass(frozen=True)
class ImageSpec:
    prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    negative_prompt: str | None = None

    def shape(self) -> tuple[int, int, int, float]:
        return (self.width, self.height, self.steps, self.guidance_scale)


class ImageRunner:
    kind = "image"

    def __init__(self, model_dir: Path, *, quantization: Quantization, device: Device) -> None:
        self.model_dir = model_dir
        self.quantization = quantization
        self.device = device
        self.dtype = "float32"
        self._lock = threading.Lock()
        self._pipe: Any = None

    # 1. Load --------------------------------------------------------------------------------
    def load(self) -> None:
        loaded = load_runner_pipeline(
            "image", self.model_dir, self.quantization, self.device, default_sample=64
        )
        self._pipe, self.dtype = loaded.pipe, loaded.dtype
        self.scale, self.native_size = loaded.scale, loaded.native_size
        self.pipeline_class, self.weight_bytes = loaded.pipeline_class, loaded.weight_bytes

    # 2. Check inputs ------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """Sizes must be a multiple of this: the VAE's scale times the UNet's two-fold
        downsamplings, and never less than 8 (what every SD pipeline's check_inputs demands)."""
        return max(8, self.scale)

    # 3. Generate a batch --------------------------------------------------------------------
    def generate(
        self, specs: Sequence[ImageSpec], controls: Sequence[StepControl | None] | None = None
    ) -> list[Any | None]:
        """One PIL image per spec, or None where that request was cancelled."""
        import torch

        if self._pipe is None:
            raise RuntimeError("ImageRunner.generate() called before load()")
        controls = list(controls) if controls is not None else [None] * len(specs)
        results: list[Any | None] = [None] * len(specs)
        with self._lock:
            try:
                for shape, indices in group_by(specs, ImageSpec.shape).items():
                    live = [i for i in indices if not _cancelled(controls[i])]
                    if not live:
                        continue
                    width, height, steps, guidance = shape
                    group = GroupControl([controls[i] for i in live], steps)
                    negatives = [specs[i].negative_prompt or "" for i in live]
                    try:
                        with torch.inference_mode():
                            output = self._pipe(
                                prompt=[specs[i].prompt for i in live],
                                negative_prompt=negatives if any(negatives) else None,
                                width=width,
                                height=height,
                                num_inference_steps=steps,
                                guidance_scale=guidance,
                                generator=[
                                    torch.Generator(self.device).manual_seed(specs[i].seed)
                                    for i in live
                                ],
                                **step_kwargs(self._pipe, group),
                            )
                    except GenerationCancelled:
                        continue
                    for i, image in zip(live, output.images, strict=True):
                        if not _cancelled(controls[i]):
                            results[i] = image
                    del output
            finally:
                free_memory(self.device)
        return results


def _cancelled(control: StepControl | None) -> bool:
    return control is not None and control.cancelled()


def build_tiny(folder: Path) -> None:
    """A random-weight Stable Diffusion pipeline: 2-block UNet (8/16 channels), 2-block VAE, a
    2-layer CLIP text encoder over byte symbols, DDIM. Native size 64x64 (latents 32x32)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tokenizer, text_encoder = tiny_clip_parts(folder)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    pipe: Any = StableDiffusionPipeline(
        unet=unet,
        vae=tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
