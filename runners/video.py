"""Text-to-video: any diffusers text-to-video pipeline in the store (ModelScope / zeroscope
`TextToVideoSDPipeline`, Wan, LTX, CogVideoX…), written as an H.264 MP4 at the requested fps.

Reads top to bottom: load from a store folder -> check inputs -> generate a batch (same-shape
requests share one pipeline call, each with its own seeded generator) -> encode the MP4 with
PyAV (its wheels bundle FFmpeg with libx264).

Wan 2.1 (`WanPipeline`, the gpu profile) differs from ModelScope in what a call may ask: its
causal video VAE packs 4 frames per latent frame after the first, so a video has 4k+1 frames
(`fit_frames`: the front reports the fitted count); width and height are multiples of 16 (VAE
8 x transformer patch 2); its native size is 832x480 (the card's 480p); the flow-matching
scheduler's shift is the card's 3.0 for 480p; the card decodes with the VAE in float32.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runners.base import Device, Quantization
from runners.diffusion import (
    StepControl,
    generate_groups,
    load_runner_pipeline,
    pipeline_class,
    tiny_clip_parts,
    tiny_scheduler,
    tiny_t5_encoder,
    tiny_vae,
)

log = logging.getLogger("botmodels.runners.video")

MODEL_ID = "ali-vilab/text-to-video-ms-1.7b"
SAMPLE_INPUT = {"prompt": "a paper boat on a river", "num_frames": 16, "fps": 8, "steps": 25}

Frames = npt.NDArray[np.uint8]  # (frames, height, width, 3) RGB

# Sizes the denoiser was trained at, by pipeline class, where its config does not say (a
# transformer has no `sample_size`): Wan 2.1 1.3B is a 480p model, 832x480 on its card.
NATIVE_SIZES = {"WanPipeline": (832, 480)}
# What a GPU computes in, where float16 is not it: Wan is trained and published in bfloat16
# (its card loads it so), and under nf4 UMT5's `wo` layers stay unquantized, in float32 when
# the model is float16 (transformers' fp16 overflow guard) but in bfloat16 here: 2 GB less.
HALF_DTYPES = {"WanPipeline": "bfloat16"}
# The card's flow shift for 480p (5.0 is for 720p, past BOTMODELS_VIDEO_MAX_SIZE's default).
WAN_FLOW_SHIFT = 3.0


@dataclass(frozen=True)
class VideoSpec:
    prompt: str
    width: int
    height: int
    num_frames: int
    steps: int
    guidance_scale: float
    seed: int
    negative_prompt: str | None = None

    def shape(self) -> tuple[int, int, int, int, float]:
        return (self.width, self.height, self.num_frames, self.steps, self.guidance_scale)


class VideoRunner:
    kind = "video"

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
            "video",
            self.model_dir,
            self.quantization,
            self.device,
            default_sample=32,
            half_dtype=HALF_DTYPES.get(pipeline_class(self.model_dir), "float16"),
        )
        self._pipe, self.dtype = loaded.pipe, loaded.dtype
        self.scale, self.native_size = loaded.scale, loaded.native_size
        self.pipeline_class, self.weight_bytes = loaded.pipeline_class, loaded.weight_bytes
        pipe = self._pipe
        # A pipeline with a causal video VAE (Wan) names its temporal factor: frames =
        # temporal * k + 1; its spatial factor times the transformer's patch is the grid.
        self.frame_stride = int(getattr(pipe, "vae_scale_factor_temporal", 1))
        self.scale = int(getattr(pipe, "vae_scale_factor_spatial", self.scale))
        self.patch = _spatial_patch(getattr(pipe, "transformer", None))
        width, height = NATIVE_SIZES.get(self.pipeline_class, (self.native_size,) * 2)
        self.native_width, self.native_height = width, height
        if self.pipeline_class == "WanPipeline":
            self._prepare_wan()

    def _prepare_wan(self) -> None:
        """The card's settings for Wan 2.1 at 480p: flow shift 3.0 (the repo's scheduler file
        may say otherwise), and on a GPU the VAE in float32 (reloaded from its folder: casting
        the half-precision copy back would keep its rounding), as the card decodes."""
        import torch

        pipe = self._pipe
        config = pipe.scheduler.config
        if "flow_shift" in config and config.flow_shift != WAN_FLOW_SHIFT:
            log.info("video: Wan flow shift %s -> %s (480p)", config.flow_shift, WAN_FLOW_SHIFT)
            pipe.scheduler = type(pipe.scheduler).from_config(config, flow_shift=WAN_FLOW_SHIFT)
        if pipe.vae.dtype != torch.float32:
            vae_class: Any = type(pipe.vae)
            vae = vae_class.from_pretrained(self.model_dir / "vae", torch_dtype=torch.float32)
            pipe.vae = vae.to(self.device)

    # 2. Check inputs ------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """H.264 in yuv420p needs even sizes; every diffusers video pipeline wants 8; a
        transformer's patches make it 16 (Wan: VAE 8 x patch 2)."""
        return max(8, self.scale * self.patch)

    def fit_frames(self, count: int, most: int | None = None) -> int:
        """The frame count a video of about `count` frames has with this model: as asked, or
        for a video VAE the next `stride * k + 1` (Wan: 17 for 16), the one below where that
        would pass `most` (BOTMODELS_VIDEO_MAX_FRAMES). The front reports this count."""
        stride = self.frame_stride
        if stride <= 1:
            return count
        fitted = -(-(max(count, 1) - 1) // stride) * stride + 1
        if most is not None and fitted > most:
            fitted = max(1, fitted - stride)
        return fitted

    # 3. Generate a batch --------------------------------------------------------------------
    def generate(
        self, specs: Sequence[VideoSpec], controls: Sequence[StepControl | None] | None = None
    ) -> list[Frames | None]:
        """One uint8 RGB frame array per spec, or None where that request was cancelled."""
        if self._pipe is None:
            raise RuntimeError("VideoRunner.generate() called before load()")
        # The front fits (and reports) the count; a task that comes fitted for another model is
        # fitted here rather than left to the pipeline, which would round down and warn.
        specs = [replace(s, num_frames=self.fit_frames(s.num_frames)) for s in specs]
        with self._lock:
            return generate_groups(
                self._pipe,
                self.device,
                specs,
                controls,
                call_kwargs=lambda spec: {
                    "width": spec.width,
                    "height": spec.height,
                    "num_frames": spec.num_frames,
                    "num_inference_steps": spec.steps,
                    "guidance_scale": spec.guidance_scale,
                    "output_type": "np",
                },
                # (batch, frames, H, W, 3) in [0, 1]; each video converted as it is taken
                split=lambda output: map(to_uint8, np.asarray(output.frames)),
            )


def _spatial_patch(transformer: Any) -> int:
    """The transformer's patch size across height and width (1 for a UNet)."""
    patch = getattr(getattr(transformer, "config", None), "patch_size", None)
    if isinstance(patch, list | tuple):
        return int(patch[-1])
    return int(patch) if isinstance(patch, int) else 1


def to_uint8(frames: npt.NDArray[Any]) -> Frames:
    return np.ascontiguousarray((np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8))


# 4. Encode --------------------------------------------------------------------------------------
def write_mp4(frames: Frames, fps: int, path: Path) -> None:
    """H.264 (libx264, yuv420p, `+faststart` so browsers play it while it downloads)."""
    import av

    count, height, width, _ = frames.shape
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as box:
        stream: Any = box.add_stream("libx264", rate=Fraction(fps))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(frames[index], format="rgb24")
            for packet in stream.encode(frame):
                box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)


def build_tiny(folder: Path) -> None:
    """A random-weight ModelScope-style `TextToVideoSDPipeline`: a 2-block UNet3D (8/16
    channels), the tiny SD VAE and CLIP text encoder, DDIM. Native size 64x64."""
    import torch
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    tokenizer, text_encoder = tiny_clip_parts(folder)
    torch.manual_seed(0)
    unet = UNet3DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    pipe: Any = TextToVideoSDPipeline(
        unet=unet,
        vae=tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=tiny_scheduler(),
    )
    pipe.save_pretrained(folder)


def tiny_t5_tokenizer(max_length: int = 512) -> Any:
    """A T5 unigram tokenizer (the kind UMT5's is: <pad> 0, </s> 1, <unk> 2, metaspace pieces)
    over single characters, so every prompt tokenizes, and 8 `<extra_id_*>` specials."""
    from transformers import T5Tokenizer

    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-áàâãçéêíóôõúü"
    pieces = [("▁", -2.0), *((f"▁{c}", -3.0) for c in letters), *((c, -4.0) for c in letters)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(8))]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=8)
    tokenizer.model_max_length = max_length
    return tokenizer


def build_tiny_wan(folder: Path) -> None:
    """A random-weight Wan 2.1 `WanPipeline` with the real repo's component classes: a 2-layer
    `WanTransformer3DModel` (patch 1x2x2, 2 heads of 12), a 2-layer UMT5 encoder (d_model 32)
    with a T5 unigram tokenizer, a 4-level `AutoencoderKLWan` (base_dim 3: 8x spatial, 4x
    temporal, as the real VAE) and UniPC with flow sigmas at the card's 480p shift."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    text_encoder = tiny_t5_encoder(
        UMT5Config,
        UMT5EncoderModel,
        len(tokenizer),
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=WAN_FLOW_SHIFT,
    )
    pipe: Any = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
    )
    pipe.save_pretrained(folder)
