"""The SmolVLM path of runners/vision.py on a tiny random SmolVLM built in code (its real config
class, a byte-level BPE tokenizer with SmolVLM's image tokens, the repos' processor files): the
chat prompt, the caption's opening words, questions, left-padded batches of mixed image sizes,
and the confidence, checked against a plain greedy loop over the model's own forward pass."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from runners.vision import (
    CAPTION_INSTRUCTION,
    SMOLVLM,
    VQA_INSTRUCTION,
    VisionJob,
    VisionRunner,
    build_tiny_smolvlm,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-smolvlm")
    build_tiny_smolvlm(path)
    return path


def _runner(folder: Path, **options: Any) -> VisionRunner:
    runner = VisionRunner(
        folder,
        quantization=options.pop("quantization", "none"),
        device="cpu",
        max_new_tokens=options.pop("max_new_tokens", 8),
        **options,
    )
    runner.load()
    return runner


@pytest.fixture(scope="module")
def runner(folder: Path) -> VisionRunner:
    return _runner(folder)


def _images() -> list[Image.Image]:
    """Mixed sizes and shapes: tiny, wide, tall and larger than a tile."""
    sizes = [(12, 9), (90, 30), (30, 70), (80, 80)]
    return [Image.new("RGB", s, (50 * i, 120, 200 - 40 * i)) for i, s in enumerate(sizes)]


def test_one_smolvlm_both_captions_and_answers(runner: VisionRunner) -> None:
    assert runner.architecture == SMOLVLM
    assert runner.can_caption
    assert runner.can_answer
    assert runner.dtype == "float32"


def test_the_chat_prompt_is_the_repos_template(runner: VisionRunner) -> None:
    chat = runner._chat
    assert chat is not None
    assert chat.prompt(CAPTION_INSTRUCTION, "") == (
        f"<|im_start|>User:<image>{CAPTION_INSTRUCTION}<end_of_utterance>\nAssistant:"
    )
    # the caption's opening words continue the assistant's turn
    assert chat.prompt(CAPTION_INSTRUCTION, "a photo of").endswith("Assistant: a photo of")
    # user text never becomes a control token
    spoofed = chat.prompt("what <image> is it<end_of_utterance>", "")
    assert spoofed.count("<image>") == 1
    assert spoofed.count("<end_of_utterance>") == 1


def test_images_become_image_tokens_as_the_processor_counts_them(runner: VisionRunner) -> None:
    chat = runner._chat
    assert chat is not None
    assert not chat.split_images
    inputs = chat.encode(_images()[:2], [CAPTION_INSTRUCTION] * 2, ["", ""])
    image_id = chat.tokenizer.convert_tokens_to_ids("<image>")
    per_row = (inputs["input_ids"] == image_id).sum(dim=1).tolist()
    assert per_row == [chat.image_seq_len] * 2
    assert inputs["pixel_values"].shape == (2, 1, 3, 32, 32)  # one tile-sized view
    # left padding: every prompt ends where generation starts
    assert bool(inputs["attention_mask"][:, -1].all())


def _greedy(runner: VisionRunner, image: Image.Image, instruction: str, prefix: str) -> Any:
    """Greedy decoding by hand (argmax of each forward pass, no cache): the ids, the text and
    the geometric mean of the chosen tokens' probabilities up to and including end of turn."""
    chat = runner._chat
    assert chat is not None
    inputs = chat.encode([image], [instruction], [prefix])
    ids = inputs["input_ids"]
    chosen: list[int] = []
    logprobs: list[float] = []
    with torch.inference_mode():
        for _ in range(runner.max_new_tokens):
            logits = runner._model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values=inputs["pixel_values"],
                pixel_attention_mask=inputs["pixel_attention_mask"],
            ).logits[0, -1]
            token = int(logits.argmax())
            chosen.append(token)
            logprobs.append(float(torch.log_softmax(logits.float(), dim=-1)[token]))
            if token in chat.eos_ids:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    text = chat.tokenizer.decode(chosen, skip_special_tokens=True)
    return (prefix + text).strip(), math.exp(sum(logprobs) / len(logprobs))


@pytest.mark.parametrize("prefix", ["", "a photo of"])
def test_caption_is_the_new_tokens_and_their_confidence(runner: VisionRunner, prefix: str) -> None:
    image = _images()[1]
    (answer,) = runner.caption([VisionJob(image, prompt=prefix or None)])
    text, confidence = _greedy(runner, image, CAPTION_INSTRUCTION, prefix)
    assert answer.text == text
    assert answer.confidence == pytest.approx(confidence, abs=1e-3)
    assert 0 < answer.confidence <= 1
    assert CAPTION_INSTRUCTION not in answer.text
    assert "Assistant" not in answer.text
    if prefix:
        assert answer.text.startswith(prefix)


def test_answer_is_the_new_tokens_only(runner: VisionRunner) -> None:
    image = _images()[0]
    question = "how many dogs are on the table"
    (answer,) = runner.answer([VisionJob(image, question=question)])
    text, confidence = _greedy(runner, image, f"{question}\n{VQA_INSTRUCTION}", "")
    assert answer.text == text
    assert answer.confidence == pytest.approx(confidence, abs=1e-3)
    assert question not in answer.text


@pytest.mark.parametrize("split_images", [False, True])
def test_a_batch_of_mixed_sizes_equals_one_by_one(folder: Path, split_images: bool) -> None:
    runner = _runner(folder, split_images=split_images)
    images = _images()
    jobs = [
        VisionJob(images[0]),
        VisionJob(images[1], prompt="a photo of"),
        VisionJob(images[2]),
        VisionJob(images[3], prompt="a red"),
    ]
    batch = runner.caption(jobs)
    single = [runner.caption([job])[0] for job in jobs]
    assert [a.text for a in batch] == [a.text for a in single]
    for a, b in zip(batch, single, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-3)
    assert batch[1].text.startswith("a photo of")
    assert batch[3].text.startswith("a red")
    questions = [VisionJob(image, question=f"what is {i}") for i, image in enumerate(images)]
    assert [a.text for a in runner.answer(questions)] == [
        runner.answer([job])[0].text for job in questions
    ]
    assert runner.caption([]) == []
    assert runner.answer([]) == []


def test_tiles_add_image_tokens_for_large_images(folder: Path) -> None:
    runner = _runner(folder, split_images=True)
    chat = runner._chat
    assert chat is not None
    large = Image.new("RGB", (300, 200), (9, 9, 9))
    images = [_images()[0], _images()[3], large]
    inputs = chat.encode(images, [CAPTION_INSTRUCTION] * 3, [""] * 3)
    image_id = chat.tokenizer.convert_tokens_to_ids("<image>")
    per_row = (inputs["input_ids"] == image_id).sum(dim=1).tolist()
    # resized to two tiles a side, whatever the size: 2 x 2 tiles plus the whole view
    assert per_row == [5 * chat.image_seq_len] * 3
    assert inputs["pixel_values"].shape[1:] == (5, 3, 32, 32)


@pytest.mark.parametrize(
    ("options", "dtype"),
    [({"quantization": "int8"}, "int8"), ({"cpu_dtype": "bfloat16"}, "bfloat16")],
)
def test_cpu_int8_and_bfloat16_answer(folder: Path, options: dict[str, Any], dtype: str) -> None:
    runner = _runner(folder, **options)
    assert runner.dtype == dtype
    answers = runner.caption([VisionJob(image) for image in _images()[:2]])
    assert len(answers) == 2
    assert all(0 < a.confidence <= 1 for a in answers)
