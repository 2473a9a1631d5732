"""What the image and video runners share: loading a diffusers pipeline from a store folder with
the profile's dtype and quantization, per-step progress and cancellation, the generation loop
(same-shape requests share one pipeline call), and a byte-level CLIP tokenizer for the tiny test
pipelines.

Quantization (`quantization` of the runner):
  * CUDA: "none" = fp16 (bf16 where a runner asks: `half_dtype`, Wan); "int8" / "4bit" =
    bitsandbytes LLM.int8() / nf4 (fp16 or that bf16 compute) on the
    large sub-models (UNet or transformer, text encoders) through diffusers'
    `PipelineQuantizationConfig`; the VAE stays fp16 (small, and quantizing it shows in pixels).
    SDXL-turbo's UNet (2.6 B params) is 5.1 GB in fp16 and ~1.5 GB in nf4, so a 12 GB card fits.
  * CPU: "int8" = torch dynamic qint8 on the Linear layers of those sub-models (convolutions
    stay fp32). "4bit" is refused: diffusers' bitsandbytes quantizer demands a GPU.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from runners.base import Device, Quantization

log = logging.getLogger("botmodels.runners.diffusion")

# Sub-models worth quantizing when a pipeline has them (the VAE and scheduler are not).
QUANTIZABLE = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")


class StepControl(Protocol):
    """Per-request hooks the runner calls from its worker thread."""

    def cancelled(self) -> bool: ...

    def progress(self, step: int, total: int) -> None: ...


class GenerationCancelled(Exception):
    """Raised from the step callback: every request in the running group was cancelled."""


def pipeline_class(model_dir: Path) -> str:
    """The pipeline class `model_index.json` names, before anything loads."""
    index = json.loads((model_dir / "model_index.json").read_text(encoding="utf-8"))
    return str(index.get("_class_name", ""))


def quantizable_components(model_dir: Path) -> list[str]:
    index = json.loads((model_dir / "model_index.json").read_text(encoding="utf-8"))
    return [name for name in QUANTIZABLE if isinstance(index.get(name), list) and index[name][0]]


def load_pipeline(
    model_dir: Path, quantization: Quantization, device: Device, half_dtype: str = "float16"
) -> tuple[Any, str]:
    """The pipeline on `device`, and the dtype name its weights compute in. `half_dtype` is
    what a GPU computes in: float16, or bfloat16 for a model trained and published in it."""
    import torch
    from diffusers import DiffusionPipeline

    half = device in ("cuda", "mps")
    dtype = getattr(torch, half_dtype) if half else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    bnb = quantization == "4bit" or (quantization == "int8" and device == "cuda")
    if quantization == "4bit" and device != "cuda":
        # diffusers' bitsandbytes quantizer refuses to run without a GPU ("No GPU found").
        raise RuntimeError(
            f"quantization 4bit needs a CUDA GPU for diffusers pipelines; this runner is on "
            f"{device}: use int8 (torch dynamic qint8) or none"
        )
    if bnb:
        from diffusers.quantizers.pipe_quant_config import PipelineQuantizationConfig

        quant_kwargs: dict[str, Any] = (
            {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_compute_dtype": dtype,
            }
            if quantization == "4bit"
            else {"load_in_8bit": True}
        )
        kwargs["quantization_config"] = PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit" if quantization == "4bit" else "bitsandbytes_8bit",
            quant_kwargs=quant_kwargs,
            components_to_quantize=quantizable_components(model_dir),
        )
    if any(model_dir.glob("*/*.fp16.safetensors")) and not any(
        p for p in model_dir.glob("*/*.safetensors") if ".fp16." not in p.name
    ):
        kwargs["variant"] = "fp16"  # imported with only the fp16 files (models.toml patterns)
    pipe = DiffusionPipeline.from_pretrained(model_dir, **kwargs)
    if quantization == "int8" and device != "cuda":
        for name in quantizable_components(model_dir):
            module = getattr(pipe, name)
            quantized = torch.ao.quantization.quantize_dynamic(
                module, {torch.nn.Linear}, dtype=torch.qint8
            )
            setattr(pipe, name, quantized)
    if not bnb:
        # bitsandbytes places its quantized modules itself; moving them again is an error.
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, half_dtype if half else "float32"


@dataclass(frozen=True)
class LoadedPipeline:
    pipe: Any
    dtype: str
    scale: int  # pixels per latent cell: 8 for real VAEs, 2 for the tiny one
    native_size: int  # the size the denoiser was trained at, in pixels
    pipeline_class: str
    weight_bytes: int


def load_runner_pipeline(
    kind: str,
    model_dir: Path,
    quantization: Quantization,
    device: Device,
    default_sample: int,
    half_dtype: str = "float16",
) -> LoadedPipeline:
    """`load_pipeline` plus what the image and video runners read from it, logged."""
    started = time.perf_counter()
    pipe, dtype = load_pipeline(model_dir, quantization, device, half_dtype)
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(denoiser.config, "sample_size", default_sample) if denoiser else default_sample
    sample = sample[0] if isinstance(sample, list | tuple) else sample
    loaded = LoadedPipeline(
        pipe=pipe,
        dtype=dtype,
        scale=scale,
        native_size=int(sample) * scale,
        pipeline_class=type(pipe).__name__,
        weight_bytes=state_dict_bytes(pipe),
    )
    log.info(
        "%s pipeline %s loaded on %s (%s, quantization %s, %d MB) in %.1f s",
        kind,
        loaded.pipeline_class,
        device,
        dtype,
        quantization,
        loaded.weight_bytes // 2**20,
        time.perf_counter() - started,
    )
    return loaded


def state_dict_bytes(pipe: Any) -> int:
    """Bytes of every tensor the pipeline's modules hold (quantized tensors at their packed size;
    `get_memory_footprint()` miscounts those)."""
    import torch

    def size(value: object) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, tuple | list):  # dynamic qint8 Linear: (packed weight, bias)
            return sum(size(v) for v in value)
        return 0

    total = 0
    for name in ("unet", "transformer", "vae", *QUANTIZABLE[2:]):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            total += sum(size(v) for v in module.state_dict().values())
    return total


def free_memory(device: Device) -> None:
    """Between batches, on a GPU: collect cycles still holding activations and hand the cached
    blocks back, so other runners on the card can use them. On CPU, reference counting already
    frees every tensor of the call (tests/test_generation_front.py checks RSS over 50 calls), and
    a full collection costs up to ~1 s in a process that has not frozen its heap."""
    if device == "cuda":
        import torch

        gc.collect()
        torch.cuda.empty_cache()


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def group_by(items: Sequence[T], key: Callable[[T], K]) -> dict[K, list[int]]:
    """Indices of same-key items, in arrival order: each group is one pipeline call."""
    groups: dict[K, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(key(item), []).append(index)
    return groups


class GroupControl:
    """The step hook for one pipeline call serving several requests: reports progress to each,
    and stops the call (at the next step) only once all of them are cancelled."""

    def __init__(self, controls: Sequence[StepControl | None], total: int) -> None:
        self.controls = [c for c in controls if c is not None]
        self.everyone_has_control = len(self.controls) == len(controls)
        self.total = total

    def all_cancelled(self) -> bool:
        return self.everyone_has_control and all(c.cancelled() for c in self.controls)

    def step_done(self, step: int) -> None:
        for control in self.controls:
            control.progress(step, self.total)
        if self.all_cancelled():
            raise GenerationCancelled

    # diffusers' `callback_on_step_end(pipe, step, timestep, callback_kwargs)` form
    def on_step_end(
        self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        self.step_done(step + 1)
        return kwargs

    # the legacy `callback(step, timestep, latents)` form (TextToVideoSDPipeline)
    def on_step(self, step: int, timestep: Any, latents: Any) -> None:
        self.step_done(step + 1)


def step_kwargs(pipe: Any, control: GroupControl) -> dict[str, Any]:
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    if "callback_on_step_end" in params:
        return {"callback_on_step_end": control.on_step_end}
    if "callback" in params:
        return {"callback": control.on_step, "callback_steps": 1}
    return {}


class DiffusionSpec(Protocol):
    """What the generation loop reads of an image or video request."""

    @property
    def prompt(self) -> str: ...

    @property
    def negative_prompt(self) -> str | None: ...

    @property
    def steps(self) -> int: ...

    @property
    def seed(self) -> int: ...

    def shape(self) -> Hashable: ...


S = TypeVar("S", bound=DiffusionSpec)
R = TypeVar("R")


def generate_groups(
    pipe: Any,
    device: Device,
    specs: Sequence[S],
    controls: Sequence[StepControl | None] | None,
    call_kwargs: Callable[[S], dict[str, Any]],
    split: Callable[[Any], Iterable[R]],
) -> list[R | None]:
    """The image and video runners' loop: one result per spec, or None where that request was
    cancelled. Same-shape specs share one pipeline call (`call_kwargs` of the group's first spec
    says the shape to the pipeline, `split` turns its output into one result per prompt), each
    with its own seeded generator, so that neither batch mates nor earlier calls change a
    seeded request's starting noise. A call stops at its next step once every request in it is
    cancelled; a request cancelled while queued never runs."""
    import torch

    controls = list(controls) if controls is not None else [None] * len(specs)
    results: list[R | None] = [None] * len(specs)
    try:
        for indices in group_by(specs, lambda spec: spec.shape()).values():
            live = [i for i in indices if not _cancelled(controls[i])]
            if not live:
                continue
            first = specs[live[0]]
            group = GroupControl([controls[i] for i in live], first.steps)
            negatives = [specs[i].negative_prompt or "" for i in live]
            try:
                with torch.inference_mode():
                    output = pipe(
                        prompt=[specs[i].prompt for i in live],
                        negative_prompt=negatives if any(negatives) else None,
                        generator=[
                            torch.Generator(device).manual_seed(specs[i].seed) for i in live
                        ],
                        **call_kwargs(first),
                        **step_kwargs(pipe, group),
                    )
            except GenerationCancelled:
                continue
            for i, result in zip(live, split(output), strict=True):
                if not _cancelled(controls[i]):
                    results[i] = result
            del output
    finally:
        free_memory(device)
    return results


def _cancelled(control: StepControl | None) -> bool:
    return control is not None and control.cancelled()


# --- tiny pipelines -----------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (CLIP's byte-level BPE alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def tiny_clip_parts(folder: Path, hidden: int = 32) -> tuple[Any, Any]:
    """A CLIP tokenizer over the 256 byte symbols (no merges) and a 2-layer CLIP text encoder."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.model_max_length = 77
    torch.manual_seed(0)
    encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    return tokenizer, encoder


def tiny_t5_encoder(
    config_class: Any, model_class: Any, vocab_size: int, hidden: int = 32, **extra: Any
) -> Any:
    """A seeded 2-layer T5-family encoder (`T5EncoderModel`, `UMT5EncoderModel`) with the
    gated-GELU feed-forward of FLUX's and Wan's text encoders; `extra`: the config's own keys."""
    import torch

    torch.manual_seed(0)
    return model_class(
        config_class(
            vocab_size=vocab_size,
            d_model=hidden,
            d_kv=8,
            d_ff=2 * hidden,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            **extra,
        )
    )


def tiny_vae(channels: tuple[int, int] = (8, 16), groups: int = 4) -> Any:
    """Two blocks: 8x downscale would need three; the tiny pipelines work at scale factor 2."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        latent_channels=4,
        norm_num_groups=groups,
        sample_size=64,
    )


def tiny_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
