"""Foreground (person) segmentation with SegFormer (transformers, no remote code).

One stored `SegformerForSemanticSegmentation` (e.g. nvidia/segformer-b0-finetuned-ade-512-512,
ADE20k's 150 classes) and its image processor. The foreground is the union of the classes named
in `labels` (default: `person`), looked up in the model's own `config.id2label` at load.

Reads top to bottom: load -> masks for a batch of frames: the processor resizes each frame to
the model's input size, the model answers class logits at a quarter of that size, the softmax
probability of the foreground classes is resized back to each frame's own size.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runners.base import Device, InvalidItem, Quantization

log = logging.getLogger("botmodels.runners.segment")

CPU_MODEL_ID = "nvidia/segformer-b0-finetuned-ade-512-512"
GPU_MODEL_ID = "nvidia/segformer-b2-finetuned-ade-512-512"
ARCHITECTURE = "SegformerForSemanticSegmentation"

Mask = npt.NDArray[np.float32]  # (height, width), foreground probability in [0, 1]


class InvalidFrame(InvalidItem):
    """A frame the model cannot read (empty)."""

    code = "invalid_frame"


class SegmentRunner:
    kind = "segment"

    def __init__(
        self,
        model_dir: Path,
        *,
        quantization: Quantization,
        device: Device,
        labels: Sequence[str] = ("person",),
    ) -> None:
        self.model_dir = model_dir
        self.quantization = quantization
        self.device = device
        self.labels = tuple(label.lower() for label in labels)
        self.dtype = "float32"
        self.foreground: list[int] = []  # the class indices summed into the mask
        self._lock = threading.Lock()  # one forward at a time: torch already uses every core
        self._model: Any = None
        self._processor: Any = None

    # 1. Load --------------------------------------------------------------------------------
    def load(self) -> None:
        import torch
        import transformers

        started = time.perf_counter()
        config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        architecture = (config.get("architectures") or [""])[0]
        if architecture != ARCHITECTURE:
            raise ValueError(
                f"{self.model_dir} holds a {architecture or 'unknown'} model; the segment "
                f"runner takes {ARCHITECTURE}"
            )
        # int8 is torch's dynamic qint8 on the Linear layers (CPU only); bitsandbytes has no
        # kernels for SegFormer's convolutions and 4-bit has none anywhere: refused, not faked.
        if self.quantization == "4bit" or (self.quantization == "int8" and self.device != "cpu"):
            raise ValueError(
                f"segment: quantization {self.quantization} on {self.device} is not offered; "
                "use none (fp16 on cuda/mps) or int8 on cpu (BOTMODELS_SEGMENT_QUANTIZATION)"
            )
        id2label = {int(k): str(v).lower() for k, v in (config.get("id2label") or {}).items()}
        self.foreground = sorted(i for i, name in id2label.items() if name in self.labels)
        if not self.foreground:
            raise ValueError(
                f"{self.model_dir}: no class named {', '.join(self.labels)} among the model's "
                f"{len(id2label)} labels ({', '.join(list(id2label.values())[:12])}…)"
            )
        self._processor = transformers.AutoImageProcessor.from_pretrained(self.model_dir)
        model: Any = transformers.SegformerForSemanticSegmentation.from_pretrained(self.model_dir)
        if self.device == "cpu" and self.quantization == "int8":
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
            self.dtype = "qint8-dynamic"
        elif self.device in ("cuda", "mps"):
            model = model.to(self.device, dtype=torch.float16)
            self.dtype = "float16"
        model.eval()
        self._model = model
        log.info(
            "segment model %s (foreground %s) loaded on %s (%s) in %.1f s",
            self.model_dir.name,
            ", ".join(id2label[i] for i in self.foreground),
            self.device,
            self.dtype,
            time.perf_counter() - started,
        )

    # 2. Masks for a batch -------------------------------------------------------------------
    def masks(self, frames: list[Any]) -> list[Mask]:
        """One float32 mask per frame (a `PIL.Image.Image`), the frame's own height x width:
        the probability that each pixel shows the foreground."""
        if self._model is None:
            raise RuntimeError("SegmentRunner.masks() called before load()")
        if not frames:
            return []
        for i, frame in enumerate(frames):
            if frame.width < 1 or frame.height < 1:
                raise InvalidFrame(f"frame {i} is empty ({frame.width}x{frame.height})")
        import torch

        rgb = [frame if frame.mode == "RGB" else frame.convert("RGB") for frame in frames]
        inputs = self._processor(images=rgb, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device)
        if self.dtype == "float16":
            pixels = pixels.half()
        with self._lock, torch.inference_mode():
            logits = self._model(pixel_values=pixels).logits.float()
            probabilities = logits.softmax(dim=1)[:, self.foreground].sum(dim=1, keepdim=True)
            out: list[Mask] = []
            for i, frame in enumerate(rgb):
                resized = torch.nn.functional.interpolate(
                    probabilities[i : i + 1],
                    size=(frame.height, frame.width),
                    mode="bilinear",
                    align_corners=False,
                )
                mask = resized[0, 0].clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)
                out.append(mask)
        return out


# --- tiny random model (synthetic) for tests ---------------------------------------------------
def build_tiny(folder: Path) -> None:
    """A random-weight two-stage SegFormer (8/16 channels) over 64x64 inputs, labels
    `background` and `person`. Its classifier is scaled up so that the masks reach 0 and 1
    (random weights alone give logits near 0, masks near 0.5): a compositing test needs both."""
    import torch
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    torch.manual_seed(0)
    config: Any = SegformerConfig(  # type: ignore[call-arg]  # num_labels: PretrainedConfig
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=2,
        id2label={0: "background", 1: "person"},
        label2id={"background": 0, "person": 1},
        architectures=[ARCHITECTURE],
    )
    model = SegformerForSemanticSegmentation(config).eval()
    processor = SegformerImageProcessor(size={"height": 64, "width": 64})
    # Calibrate on one random picture: the person-minus-background logit gets mean 0 and a
    # spread of 6, so a softmax reaches both ends.
    picture = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    classifier = model.decode_head.classifier
    with torch.no_grad():
        logits = model(pixel_values=(picture - 0.5) / 0.25).logits
        margin = logits[:, 1] - logits[:, 0]
        scale = 6.0 / float(margin.std())
        classifier.weight.mul_(scale)
        classifier.bias.mul_(scale)
        classifier.bias[1] -= float(margin.mean()) * scale
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
