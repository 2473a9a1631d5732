"""Image captioning and visual question answering with BLIP / BLIP-2 (transformers).

One class serves both tasks; the stored model's architecture says which it can do:
  * `BlipForConditionalGeneration` (e.g. Salesforce/blip-image-captioning-base): captions; an
    optional prompt is the caption's opening words ("a photograph of"), as BLIP was trained.
  * `BlipForQuestionAnswering` (e.g. Salesforce/blip-vqa-base): answers a question.
  * `Blip2ForConditionalGeneration` (e.g. Salesforce/blip2-opt-2.7b): both, by prompt
    ("Question: … Answer:"); on CUDA it loads 4-bit or 8-bit with bitsandbytes.

Reads top to bottom: load -> (the frontend checks inputs) -> generate a batch -> text plus the
model's own confidence: the geometric mean of the chosen tokens' probabilities.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.base import Device, Quantization

log = logging.getLogger("botmodels.runners.vision")

CAPTION_MODEL_ID = "Salesforce/blip-image-captioning-base"
VQA_MODEL_ID = "Salesforce/blip-vqa-base"
GPU_MODEL_ID = "Salesforce/blip2-opt-2.7b"


@dataclass(frozen=True)
class VisionJob:
    """One image (RGB `PIL.Image.Image`) and its optional prompt or question."""

    image: Any
    prompt: str | None = None
    question: str | None = None


@dataclass(frozen=True)
class VisionAnswer:
    text: str
    confidence: float  # 0..1


class VisionRunner:
    kind = "vision"

    def __init__(
        self,
        model_dir: Path,
        *,
        quantization: Quantization,
        device: Device,
        max_new_tokens: int = 30,
    ) -> None:
        self.model_dir = model_dir
        self.quantization = quantization
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.dtype = "float32"
        self.architecture = ""
        self._lock = threading.Lock()  # one generate at a time: torch already uses all cores
        self._load_lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None

    @property
    def can_caption(self) -> bool:
        return self.architecture in (
            "BlipForConditionalGeneration",
            "Blip2ForConditionalGeneration",
        )

    @property
    def can_answer(self) -> bool:
        return self.architecture in ("BlipForQuestionAnswering", "Blip2ForConditionalGeneration")

    # 1. Load --------------------------------------------------------------------------------
    def load(self) -> None:
        with self._load_lock:  # the caption and vqa runners may share one stored model
            if self._model is None:
                self._load()

    def _load(self) -> None:
        import torch
        import transformers

        started = time.perf_counter()
        config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        self.architecture = (config.get("architectures") or [""])[0]
        if not (self.can_caption or self.can_answer):
            raise ValueError(
                f"{self.model_dir} holds a {self.architecture or 'unknown'} model; the vision "
                f"runner takes BlipForConditionalGeneration, BlipForQuestionAnswering or "
                f"Blip2ForConditionalGeneration"
            )
        model_class = getattr(transformers, self.architecture)

        kwargs: dict[str, Any] = {}
        if self.quantization in ("int8", "4bit") and self.device == "cuda":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_8bit=True)
                if self.quantization == "int8"
                else BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=torch.float16,
                )
            )
            kwargs["device_map"] = {"": self.device}
            kwargs["dtype"] = torch.float16
            self.dtype = "float16"
        elif self.device in ("cuda", "mps"):
            kwargs["dtype"] = torch.float16
            self.dtype = "float16"
        elif self.quantization != "none":
            # bitsandbytes on CPU is slower than fp32 for generation (offline-models.md); int8
            # here is torch dynamic qint8 on the Linear layers, 4bit is not offered on CPU.
            log.warning("vision: %s on CPU uses torch dynamic int8", self.quantization)
        self._processor = transformers.AutoProcessor.from_pretrained(self.model_dir)
        model = model_class.from_pretrained(self.model_dir, **kwargs)
        if self.device == "cpu" and self.quantization != "none":
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
            self.dtype = "int8"
        elif "device_map" not in kwargs:
            model = model.to(self.device)
        model.eval()
        if self.architecture.startswith("Blip2"):
            # decoder-only language model: prompts of different lengths pad on the left
            self._processor.tokenizer.padding_side = "left"
        self._model = model
        log.info(
            "vision model %s (%s) loaded on %s (%s) in %.1f s",
            self.model_dir.name,
            self.architecture,
            self.device,
            self.dtype,
            time.perf_counter() - started,
        )

    # 2. Generate a batch --------------------------------------------------------------------
    def _generate(self, images: list[Any], texts: list[str] | None) -> list[VisionAnswer]:
        import torch

        inputs = self._processor(
            images=images, text=texts, return_tensors="pt", padding=texts is not None
        )
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs and self.dtype == "float16":
            inputs["pixel_values"] = inputs["pixel_values"].half()
        with torch.inference_mode():
            out = self._model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                num_beams=1,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
        sequences = out.sequences
        # The scores cover only the generated tokens: they are the last len(scores) positions.
        steps = len(out.scores)
        generated = sequences[:, -steps:] if steps else sequences[:, :0]
        logprobs = (
            torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
            if steps
            else None
        )
        pad = self._processor.tokenizer.pad_token_id
        answers: list[VisionAnswer] = []
        for row in range(sequences.shape[0]):
            text = self._processor.tokenizer.decode(sequences[row], skip_special_tokens=True)
            confidence = 0.0
            if logprobs is not None:
                chosen = logprobs[row].gather(-1, generated[row].unsqueeze(-1)).squeeze(-1)
                keep = generated[row] != pad
                if bool(keep.any()):
                    confidence = math.exp(float(chosen[keep].mean()))
            answers.append(VisionAnswer(text=text.strip(), confidence=round(confidence, 4)))
        return answers

    def caption(self, jobs: list[VisionJob]) -> list[VisionAnswer]:
        """Captions, in order. Jobs that share a prompt run as one batch (BLIP's text prefix
        must not be padded)."""
        if self._model is None:
            raise RuntimeError("VisionRunner.caption() called before load()")
        if not self.can_caption:
            raise RuntimeError(f"{self.architecture} cannot caption")
        results: list[VisionAnswer | None] = [None] * len(jobs)
        groups: dict[str | None, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.prompt or None, []).append(i)
        with self._lock:
            for prompt, indices in groups.items():
                images = [jobs[i].image for i in indices]
                texts = None if prompt is None else [prompt] * len(indices)
                for i, answer in zip(indices, self._generate(images, texts), strict=True):
                    results[i] = answer
        return [r for r in results if r is not None]

    def answer(self, jobs: list[VisionJob]) -> list[VisionAnswer]:
        """Answers to each job's question, in order, in one batch."""
        if self._model is None:
            raise RuntimeError("VisionRunner.answer() called before load()")
        if not self.can_answer:
            raise RuntimeError(f"{self.architecture} cannot answer questions")
        if not jobs:  # the processor cannot take an empty batch
            return []
        if self.architecture.startswith("Blip2"):
            texts = [f"Question: {job.question} Answer:" for job in jobs]
        else:
            texts = [job.question or "" for job in jobs]
        with self._lock:
            answers = self._generate([job.image for job in jobs], texts)
        if self.architecture.startswith("Blip2"):  # the prompt is echoed before the answer
            answers = [
                VisionAnswer(a.text.split("Answer:", 1)[-1].strip(), a.confidence) for a in answers
            ]
        return answers


# --- tiny random models (synthetic) for tests ------------------------------------------------
_WORDS = (
    "a an the of on in with and is are photo picture image of cat dog man woman red blue green "
    "sitting standing table street car tree sky yes no two one what color how many"
)


def _tiny(folder: Path, architecture: str) -> None:
    import torch
    import transformers
    from transformers import BertTokenizer, BlipConfig, BlipImageProcessor, BlipProcessor

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *_WORDS.split()]
    # transformers 5: `vocab` (a dict), not `vocab_file`, which is silently ignored
    # "[DEC]" is BLIP's decoder start token, not a secret
    tokenizer = BertTokenizer(
        vocab={word: i for i, word in enumerate(vocab)},
        do_lower_case=True,
        bos_token="[DEC]",  # noqa: S106
    )
    tokenizer.model_max_length = 64
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "bos_token_id": vocab.index("[DEC]"),
        "pad_token_id": 0,
        "sep_token_id": vocab.index("[SEP]"),
        "encoder_hidden_size": 32,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    torch.manual_seed(0)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    model = getattr(transformers, architecture)(config)
    gen = model.generation_config
    gen.bos_token_id = text["bos_token_id"]
    gen.decoder_start_token_id = text["bos_token_id"]
    gen.eos_token_id = text["sep_token_id"]
    gen.pad_token_id = 0
    model.config.architectures = [architecture]
    model.save_pretrained(folder)


def build_tiny(folder: Path) -> None:
    """A tiny random BLIP captioner (32-pixel images, 32-wide layers)."""
    _tiny(folder, "BlipForConditionalGeneration")


def build_tiny_vqa(folder: Path) -> None:
    """A tiny random BLIP question answerer."""
    _tiny(folder, "BlipForQuestionAnswering")
