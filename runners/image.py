"""Text-to-image: any diffusers text-to-image pipeline in the store (Stable Diffusion 1.x/2.x,
SDXL, SDXL-turbo, SD-turbo, FLUX.1-schnell…), loaded with `DiffusionPipeline.from_pretrained`.

Reads top to bottom: load from a store folder -> check inputs -> generate a batch (same-shape
requests share one pipeline call, each with its own seeded generator) -> (the frontend writes
the PNGs). Seeded runs are reproducible: each image's starting noise comes from its own
`torch.Generator` seeded with its seed, so neither batch mates nor earlier calls change it.

FLUX pipelines (`FluxPipeline`: a rectified-flow transformer over 2x2-packed latents, CLIP-L
and T5 text encoders, FlowMatchEuler) differ in their call: no classifier-free guidance, so a
negative prompt is refused (400) rather than dropped in silence (diffusers would honour one only
through "true CFG", two transformer passes per step, which the timestep-distilled schnell was not
made for); `guidance_scale` reaches the pipeline, which only a guidance-distilled transformer
(`guidance_embeds`, FLUX.1-dev) reads; T5 reads at most 256 tokens (schnell's limit); sizes are
multiples of 16 (the VAE's 8 times the 2x2 packing); the native size is the pipeline's 1024.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.base import Device, InvalidItem, Quantization
from runners.diffusion import (
    StepControl,
    generate_groups,
    load_runner_pipeline,
    tiny_clip_parts,
    tiny_scheduler,
    tiny_t5_encoder,
    tiny_vae,
)

log = logging.getLogger("botmodels.runners.image")

MODEL_ID = "stabilityai/sd-turbo"

# Pipelines whose call has no classifier-free guidance, hence no use for a negative prompt.
NO_NEGATIVE_PROMPT = ("FluxPipeline",)
# T5 tokens FLUX.1-schnell reads (its model card; FLUX.1-dev reads 512).
FLUX_MAX_SEQUENCE_LENGTH = 256
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


class NegativePromptUnsupported(InvalidItem):
    code = "unsupported_parameter"
    param = "negative_prompt"


class ImageRunner:
    kind = "image"

    def __init__(self, model_dir: Path, *, quantization: Quantization, device: Device) -> None:
        self.model_dir = model_dir
        self.quantization = quantization
        self.device = device
        self.dtype = "float32"
        self._lock = threading.Lock()
        self._pipe: Any = None
        self.pipeline_class = ""  # the loaded pipeline's class name (load)

    # 1. Load --------------------------------------------------------------------------------
    def load(self) -> None:
        loaded = load_runner_pipeline(
            "image", self.model_dir, self.quantization, self.device, default_sample=64
        )
        self._pipe, self.dtype = loaded.pipe, loaded.dtype
        self.scale, self.native_size = loaded.scale, loaded.native_size
        self.pipeline_class, self.weight_bytes = loaded.pipeline_class, loaded.weight_bytes
        if self.flux:
            # The transformer has no sample_size: the pipeline's default (128 latent cells).
            self.native_size = int(self._pipe.default_sample_size) * self.scale
            # A batch's VAE decode one image at a time: at 1024x1024 the decode, not the
            # transformer, is the peak, and this keeps it at one image's (models.toml, image.gpu).
            self._pipe.vae.enable_slicing()

    @property
    def flux(self) -> bool:
        return self.pipeline_class == "FluxPipeline"

    # 2. Check inputs ------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """Sizes must be a multiple of this: the VAE's scale times the UNet's two-fold
        downsamplings, and never less than 8 (what every SD pipeline's check_inputs demands);
        FLUX packs 2x2 latent cells into one token, and its pipeline resizes anything that is not
        a multiple of 16 (twice its VAE's 8)."""
        if self.flux:
            return max(16, 2 * self.scale)
        return max(8, self.scale)

    @property
    def takes_negative_prompt(self) -> bool:
        return self.pipeline_class not in NO_NEGATIVE_PROMPT

    def check_negative_prompt(self, negative_prompt: str | None) -> None:
        """A negative prompt the served model cannot use is a client error, not a silent no-op."""
        if negative_prompt and not self.takes_negative_prompt:
            raise NegativePromptUnsupported(
                f"the served image model ({self.pipeline_class}) has no classifier-free "
                "guidance and cannot use a negative prompt; describe what you want in `prompt`"
            )

    # 3. Generate a batch --------------------------------------------------------------------
    def generate(
        self, specs: Sequence[ImageSpec], controls: Sequence[StepControl | None] | None = None
    ) -> list[Any | None]:
        """One PIL image per spec, or None where that request was cancelled."""
        if self._pipe is None:
            raise RuntimeError("ImageRunner.generate() called before load()")
        for spec in specs:
            self.check_negative_prompt(spec.negative_prompt)
        with self._lock:
            return generate_groups(
                self._pipe,
                self.device,
                specs,
                controls,
                call_kwargs=self._call_kwargs,
                split=lambda output: output.images,
            )

    def _call_kwargs(self, spec: ImageSpec) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "width": spec.width,
            "height": spec.height,
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.guidance_scale,
        }
        if self.flux:
            kwargs["max_sequence_length"] = FLUX_MAX_SEQUENCE_LENGTH
        return kwargs


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


def tiny_t5_parts(hidden: int = 32) -> tuple[Any, Any]:
    """A T5 unigram tokenizer over a few pieces (built in code, as `tokenizer.json` holds it) and
    a 2-layer T5 encoder with FLUX's gated-GELU feed-forward."""
    import string

    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = [("▁", -2.0)] + [(c, -3.0) for c in string.ascii_letters + string.digits + ".,!?"]
    pieces += [(f"▁{w}", -1.0) for w in ("a", "the", "red", "boat", "at", "dusk", "lighthouse")]
    tokenizer = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces])
    tokenizer.model_max_length = 512
    encoder = tiny_t5_encoder(
        T5Config, T5EncoderModel, len(tokenizer), hidden, is_encoder_decoder=False
    )
    return tokenizer, encoder


def build_tiny_flux(folder: Path) -> None:
    """A random-weight FluxPipeline of FLUX.1-schnell's layout: a 1+1-block FluxTransformer2DModel
    (no guidance embedding, as schnell), a 2-block VAE without quant convs and with FLUX's
    latent shift and scale, CLIP and T5 text encoders, schnell's FlowMatchEuler scheduler (no
    dynamic shifting). Native size 256x256 (128 latent cells times the VAE's 2)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    tokenizer, text_encoder = tiny_clip_parts(folder)
    tokenizer_2, text_encoder_2 = tiny_t5_parts()
    torch.manual_seed(0)
    latent_channels = 4
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # 2x2 latent cells packed into one token
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_encoder_2.config.d_model,
        pooled_projection_dim=text_encoder.config.hidden_size,
        guidance_embeds=False,
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=False,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe: Any = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(folder)
