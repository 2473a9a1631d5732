"""Image captioning and visual question answering with SmolVLM2 or BLIP / BLIP-2 (transformers).

One class serves both tasks; the stored model's architecture says which it can do:
  * `SmolVLMForConditionalGeneration` (HuggingFaceTB/SmolVLM2-500M-Video-Instruct,
    SmolVLM2-2.2B-Instruct): both, as a chat: the image and an instruction (a one-sentence
    caption, or the question and "a short answer"); a caption's prompt is the start of the
    reply. Only the new tokens are decoded. On CUDA it loads 4-bit or 8-bit with bitsandbytes.
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
SMOLVLM = "SmolVLMForConditionalGeneration"
# The chat turns: what the model was tuned to follow, worded for botserver's short fields.
CAPTION_INSTRUCTION = "Describe this image in one short sentence."
VQA_INSTRUCTION = "Answer with a single word or a short phrase."


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
        cpu_dtype: str = "float32",
        split_images: bool | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.quantization = quantization
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.cpu_dtype = cpu_dtype  # SmolVLM's weights on the CPU: "float32" or "bfloat16"
        # SmolVLM's tiling of large images (see _Chat); None: on CUDA only
        self.split_images = device == "cuda" if split_images is None else split_images
        self.dtype = "float32"
        self.architecture = ""
        self._lock = threading.Lock()  # one generate at a time: torch already uses all cores
        self._load_lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None
        self._chat: _Chat | None = None  # SmolVLM: its tokenizer, image processor, template

    @property
    def can_caption(self) -> bool:
        return self.architecture in (
            "BlipForConditionalGeneration",
            "Blip2ForConditionalGeneration",
            SMOLVLM,
        )

    @property
    def can_answer(self) -> bool:
        return self.architecture in (
            "BlipForQuestionAnswering",
            "Blip2ForConditionalGeneration",
            SMOLVLM,
        )

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
                f"runner takes {SMOLVLM}, BlipForConditionalGeneration, "
                f"BlipForQuestionAnswering or Blip2ForConditionalGeneration"
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
                    # SmolVLM: the image encoder and its projection stay fp16 (a small share of
                    # the weights, and what every answer reads), as does the output layer.
                    llm_int8_skip_modules=(
                        ["vision_model", "connector", "lm_head"]
                        if self.architecture == SMOLVLM
                        else None
                    ),
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
        if self.device == "cpu" and self.architecture == SMOLVLM:
            # The 2.2B repo is stored in bfloat16: name the dtype rather than inherit it. Torch's
            # dynamic int8 quantizes float32 Linear layers only.
            dtype = self.cpu_dtype if self.quantization == "none" else "float32"
            kwargs["dtype"] = getattr(torch, dtype)
            self.dtype = dtype
        if self.architecture == SMOLVLM:
            self._chat = _Chat.load(self.model_dir, split_images=self.split_images)
        else:
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
    def _greedy(self, inputs: Any) -> tuple[Any, Any]:
        """Greedy generation with its scores: the output, and each generated step's
        log-probabilities stacked (batch, steps, vocabulary); None if nothing was generated."""
        import torch

        with torch.inference_mode():
            out = self._model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                num_beams=1,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
        logprobs = (
            torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
            if out.scores
            else None
        )
        return out, logprobs

    def _generate(self, images: list[Any], texts: list[str] | None) -> list[VisionAnswer]:
        inputs = self._processor(
            images=images, text=texts, return_tensors="pt", padding=texts is not None
        )
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs and self.dtype == "float16":
            inputs["pixel_values"] = inputs["pixel_values"].half()
        out, logprobs = self._greedy(inputs)
        sequences = out.sequences
        # The scores cover only the generated tokens: they are the last len(scores) positions.
        steps = len(out.scores)
        generated = sequences[:, -steps:] if steps else sequences[:, :0]
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

    def _chat_generate(
        self, images: list[Any], instructions: list[str], prefixes: list[str]
    ) -> list[VisionAnswer]:
        """SmolVLM: one chat per image, left-padded into one batch; each answer is its reply's
        new tokens (after the prefix, which is part of the prompt) up to the end of the turn."""
        assert self._chat is not None
        inputs = self._chat.encode(images, instructions, prefixes)
        pixels = inputs["pixel_values"]
        if pixels.is_floating_point():
            inputs["pixel_values"] = pixels.to(self._model.dtype)
        inputs = inputs.to(self.device)
        prompt_length = inputs["input_ids"].shape[1]
        out, logprobs = self._greedy(inputs)
        generated = out.sequences[:, prompt_length:]
        answers: list[VisionAnswer] = []
        for row, prefix in enumerate(prefixes):
            tokens = generated[row].tolist()
            # the reply ends at the first end-of-turn token, which counts; padding after does not
            length = next(
                (i + 1 for i, t in enumerate(tokens) if t in self._chat.eos_ids), len(tokens)
            )
            text = self._chat.tokenizer.decode(tokens[:length], skip_special_tokens=True)
            confidence = 0.0
            if logprobs is not None and length:
                chosen = logprobs[row, :length].gather(-1, generated[row, :length, None])
                confidence = math.exp(float(chosen.mean()))
            answers.append(
                VisionAnswer(text=(prefix + text).strip(), confidence=round(confidence, 4))
            )
        return answers

    def caption(self, jobs: list[VisionJob]) -> list[VisionAnswer]:
        """Captions, in order. Jobs that share a prompt run as one batch (BLIP's text prefix
        must not be padded)."""
        if self._model is None:
            raise RuntimeError("VisionRunner.caption() called before load()")
        if not self.can_caption:
            raise RuntimeError(f"{self.architecture} cannot caption")
        if self._chat is not None:
            if not jobs:
                return []
            with self._lock:  # a prompt is the reply's opening words: one left-padded batch
                return self._chat_generate(
                    [job.image for job in jobs],
                    [CAPTION_INSTRUCTION] * len(jobs),
                    [(job.prompt or "").strip() for job in jobs],
                )
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
        if self._chat is not None:
            with self._lock:
                return self._chat_generate(
                    [job.image for job in jobs],
                    [f"{(job.question or '').strip()}\n{VQA_INSTRUCTION}" for job in jobs],
                    [""] * len(jobs),
                )
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


@dataclass(frozen=True)
class _Chat:
    """SmolVLM's processor for images, from the repo's own files: its tokenizer, image processor,
    chat template and `image_seq_len`. transformers' SmolVLMProcessor needs `num2words` and a
    torchvision video processor even for still images; this is its image path only.

    `split_images`: SmolVLM tiles an image (`max_image_size` squares plus the whole, each
    `image_seq_len` tokens through the vision encoder). On the CPU each image is read once, at
    `max_image_size`: a one-sentence caption or a short answer rarely needs the detail, and
    tiling multiplies the encoder's and the prompt's cost. On CUDA at most 2 x 2 tiles: the
    front caps images at about two tiles a side, and the repos' `size` (4 x 4 tiles of an
    upscaled copy) would keep 17 views' tokens per image of a batch in the KV cache."""

    tokenizer: Any
    image_processor: Any
    template: str
    image_seq_len: int
    split_images: bool
    eos_ids: frozenset[int]
    reserved: tuple[str, ...]  # the tokenizer's added tokens, which user text may not spell

    @classmethod
    def load(cls, folder: Path, *, split_images: bool) -> _Chat:
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        tokenizer.padding_side = "left"  # decoder-only: a batch's prompts end together
        image_processor = transformers.AutoImageProcessor.from_pretrained(folder)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        processor_file = folder / "processor_config.json"
        settings = (
            json.loads(processor_file.read_text(encoding="utf-8"))
            if processor_file.exists()
            else {}
        )
        vision = config.get("vision_config", {})
        patches = (int(vision.get("image_size", 512)) // int(vision.get("patch_size", 16))) ** 2
        seq_len = int(
            settings.get("image_seq_len", patches // int(config.get("scale_factor", 4)) ** 2)
        )
        template_file = folder / "chat_template.json"
        template = (
            json.loads(template_file.read_text(encoding="utf-8"))["chat_template"]
            if template_file.exists()
            else tokenizer.chat_template
        )
        if not template:
            raise ValueError(f"{folder} has no chat template (chat_template.json)")
        eos: set[int] = set()
        generation_file = folder / "generation_config.json"
        if generation_file.exists():
            found = json.loads(generation_file.read_text(encoding="utf-8")).get("eos_token_id")
            eos.update([found] if isinstance(found, int) else (found or []))
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        return cls(
            tokenizer=tokenizer,
            image_processor=image_processor,
            template=template,
            image_seq_len=seq_len,
            split_images=split_images,
            eos_ids=frozenset(eos),
            reserved=tuple(sorted(tokenizer.get_added_vocab(), key=len, reverse=True)),
        )

    def _clean(self, text: str) -> str:
        """User text as text: a question that spells `<image>` or `<end_of_utterance>` must not
        become that token (an image count the processor refuses, or a turn cut short)."""
        for token in self.reserved:
            text = text.replace(token, " ")
        return text

    def prompt(self, instruction: str, prefix: str) -> str:
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": self._clean(instruction)}],
            }
        ]
        text: str = self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, add_generation_prompt=True, tokenize=False
        )
        return f"{text} {self._clean(prefix)}" if prefix else text

    def encode(self, images: list[Any], instructions: list[str], prefixes: list[str]) -> Any:
        from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

        tile = int(self.image_processor.max_image_size["longest_edge"])
        vision = self.image_processor(
            [[image] for image in images],
            do_image_splitting=self.split_images,
            size={"longest_edge": 2 * tile},
            return_row_col_info=True,
            return_tensors="pt",
        )
        rows, cols = vision.pop("rows"), vision.pop("cols")
        tok = self.tokenizer
        image_token = getattr(tok, "image_token", None) or "<image>"
        texts = [
            self.prompt(instruction, prefix).replace(
                image_token,
                get_image_prompt_string(
                    rows[i][0],
                    cols[i][0],
                    self.image_seq_len,
                    getattr(tok, "fake_image_token", None) or "<fake_token_around_image>",
                    image_token,
                    getattr(tok, "global_image_token", None) or "<global-img>",
                ),
                1,
            )
            for i, (instruction, prefix) in enumerate(zip(instructions, prefixes, strict=True))
        ]
        text = tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        text.update(vision)
        return text


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


# SmolVLM2's chat template for images (its repos' chat_template.json).
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_SMOLVLM_IMAGE_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}


def _smolvlm_tokenizer() -> Any:
    """SmolLM2's tokenizer in miniature: byte-level BPE, `<|endoftext|>`, `<|im_start|>`,
    `<|im_end|>` at ids 0-2, then SmolVLM's added image tokens (`<global-img>`, the 36
    `<row_r_col_c>`, `<fake_token_around_image>`, `<image>`) and `<end_of_utterance>`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [f"User: {_WORDS}", "Assistant: a photo of a cat on a red table.", "User:Answer"] * 4
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    image = [
        "<global-img>",
        *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
        "<fake_token_around_image>",
        "<image>",
        "<end_of_utterance>",
    ]
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in image])
    return GPT2Tokenizer(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",  # noqa: S106 (tokens, not secrets)
        eos_token="<end_of_utterance>",  # noqa: S106
        unk_token="<|endoftext|>",  # noqa: S106
        pad_token="<|im_end|>",  # noqa: S106
        extra_special_tokens=_SMOLVLM_IMAGE_TOKENS,
        model_max_length=512,
    )


def build_tiny_smolvlm(
    folder: Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    scale_factor: int = 2,
    max_shard_size: str | None = None,
) -> None:
    """A tiny random SmolVLM (SmolVLMForConditionalGeneration over a Llama decoder) with its
    repos' processor files: `tokenizer.json` (+ `vocab.json`, `merges.txt`), `chat_template.json`,
    `preprocessor_config.json` (tiles of `image_size`, images up to twice that),
    `processor_config.json` (`image_seq_len`) and `generation_config.json`."""
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
    )
    from transformers.models.smolvlm.image_processing_pil_smolvlm import (
        SmolVLMImageProcessorPil,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _smolvlm_tokenizer()
    tokenizer.save_pretrained(folder)
    for stray in ("chat_template.jinja",):  # the repos hold the template as JSON
        (folder / stray).unlink(missing_ok=True)
    (folder / "chat_template.json").write_text(
        json.dumps({"chat_template": SMOLVLM_TEMPLATE}, indent=2), encoding="utf-8"
    )
    SmolVLMImageProcessorPil(
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        max_image_size={"longest_edge": image_size},
        size={"longest_edge": 2 * image_size},
    ).save_pretrained(folder)
    seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    (folder / "processor_config.json").write_text(
        json.dumps({"image_seq_len": seq_len, "processor_class": "SmolVLMProcessor"}, indent=2),
        encoding="utf-8",
    )
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in _SMOLVLM_IMAGE_TOKENS.values()}
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    config = SmolVLMConfig(
        text_config=text.to_dict(),
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        scale_factor=scale_factor,
        image_token_id=ids["<image>"],
    )
    config.architectures = ["SmolVLMForConditionalGeneration"]
    torch.manual_seed(0)
    model = SmolVLMForConditionalGeneration(config)
    with torch.no_grad():
        # Peaked logits: a random model's near-uniform ones make greedy choices near-ties, which
        # float rounding on another CPU or batch shape could flip.
        model.lm_head.weight.mul_(50.0)
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=[2, ids["<end_of_utterance>"]], pad_token_id=2
    )
    if max_shard_size:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
    else:
        model.save_pretrained(folder)
