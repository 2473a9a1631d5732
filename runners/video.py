"""Text-to-video: any diffusers text-to-video pipeline in the store (ModelScope / zeroscope
`TextToVideoSDPipeline`, Wan, LTX, CogVideoX…), written as an H.264 MP4 at the requested fps.

Reads top to bottom: load from a store folder -> check inputs -> generate a batch (same-shape
requests share one pipeline call, each with its own seeded generator) -> encode the MP4 with
PyAV (its wheels bundle FFmpeg with libx264).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
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
    tiny_clip_parts,
    tiny_scheduler,
    tiny_vae,
)

log = logging.getLogger("botmodels.runners.video")

MODEL_ID = "ali-vilab/text-to-video-ms-1.7b"
SAMPLE_INPUT = {"prompt": "a paper boat on a river", "num_frames": 16, "fps": 8, "steps": 25}

Frames = npt.NDArray[np.uint8]  # (frames, height, width, 3) RGB


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
            "video", self.model_dir, self.quantization, self.device, default_sample=32
        )
        self._pipe, self.dtype = loaded.pipe, loaded.dtype
        self.scale, self.native_size = loaded.scale, loaded.native_size
        self.pipeline_class, self.weight_bytes = loaded.pipeline_class, loaded.weight_bytes

    # 2. Check inputs ------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """H.264 in yuv420p needs even sizes; every diffusers video pipeline wants 8."""
        return max(8, self.scale)

    # 3. Generate a batch --------------------------------------------------------------------
    def generate(
        self, specs: Sequence[VideoSpec], controls: Sequence[StepControl | None] | None = None
    ) -> list[Frames | None]:
        """One uint8 RGB frame array per spec, or None where that request was cancelled."""
        if self._pipe is None:
            raise RuntimeError("VideoRunner.generate() called before load()")
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
