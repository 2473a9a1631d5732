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
    StepControl,
    generate_groups,
    load_runner_pipeline,
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
        if self._pipe is None:
            raise RuntimeError("ImageRunner.generate() called before load()")
        with self._lock:
            return generate_groups(
                self._pipe,
                self.device,
                specs,
                controls,
                call_kwargs=lambda spec: {
                    "width": spec.width,
                    "height": spec.height,
                    "num_inference_steps": spec.steps,
                    "guidance_scale": spec.guidance_scale,
                },
                split=lambda output: output.images,
            )


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
