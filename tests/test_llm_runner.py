"""The llm runner (runners/llm.py) on the tiny random Llama: prompts, sampling, continuous
batching, cancellation, capacity, finish reasons, shutdown; and a few greedy tokens of the real
offline Gemma 3 270M.

Outputs are compared as text (the tiny tokenizer is byte-level, so equal text is equal tokens),
never as floats: a batched forward may round differently from a lone one on some CPUs, and the
tiny model's output layer is scaled so that its greedy choices are far from ties.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runners.llm import InvalidPrompt, LlmBusy, LlmEvent, LlmHandle, LlmRequest, LlmRunner

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


class Stream:
    """Collects one request's events; `wait()` returns them once the final one came."""

    def __init__(self) -> None:
        self.events: list[LlmEvent] = []
        self.done = threading.Event()
        self.first = threading.Event()

    def __call__(self, event: LlmEvent) -> None:
        self.events.append(event)
        self.first.set()
        if event.finish_reason is not None:
            self.done.set()

    def wait(self) -> list[LlmEvent]:
        assert self.done.wait(120), "no final event"
        return self.events

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.wait())

    @property
    def finish(self) -> str | None:
        return self.wait()[-1].finish_reason


def greedy(prompt: list[int], max_new_tokens: int = 16) -> LlmRequest:
    return LlmRequest(prompt, max_new_tokens, temperature=0.0, top_p=1.0, seed=None)


def run(runner: LlmRunner, request: LlmRequest) -> Stream:
    stream = Stream()
    runner.submit(request, stream)
    stream.wait()
    return stream


@pytest.fixture(scope="module")
def llm(tiny_runner: Callable[..., Any]) -> Any:
    runner = tiny_runner("llm")
    yield runner
    runner.close()


def prompts(llm: LlmRunner) -> list[list[int]]:
    texts = ["Hello there", "The cat sat on the mat and looked around", "é", "A, B, C"]
    return [llm.render_chat([{"role": "user", "content": t}]) for t in texts]


# --- prompts ---------------------------------------------------------------------------------
def test_render_chat_passes_tools_and_tool_calls_to_the_template(llm: LlmRunner) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in"},
                {"type": "text", "text": "Lisbon?"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24 C"},
    ]
    ids = llm.render_chat(messages, tools=TOOLS)
    text = llm.decode(ids)  # special tokens (<|im_start|>, <|im_end|>) dropped
    assert text.startswith("system\nBe brief.\n\n# Tools")
    assert json.dumps(TOOLS[0]) in text
    assert "user\nWeather in\nLisbon?\n" in text
    # the JSON-string arguments reach the template as an object
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}\n</tool_call>'
        in text
    )
    assert "<tool_response>\nsunny, 24 C\n</tool_response>" in text
    assert text.endswith("assistant\n")
    assert llm.chat_format == "chatml"
    assert llm.template_label == "chat"
    assert llm.render_chat(messages[:2]) != llm.render_chat(messages[:2], tools=TOOLS)


@pytest.mark.parametrize(
    ("messages", "tools", "param"),
    [
        ([], None, "messages"),
        (
            [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}],
            None,
            "messages[1].role",
        ),
        ([{"role": "user", "content": 42}], None, "messages[0].content"),
        ([{"role": "user"}], None, "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            None,
            "messages[0].content[0]",
        ),
        ([{"role": "user", "content": "hi"}], [{"type": "function"}], "tools[0]"),
        ([{"role": "user", "content": "hi"}], {"name": "f"}, "tools"),
    ],
)
def test_bad_messages_and_tools_are_invalid_prompts(
    llm: LlmRunner, messages: Any, tools: Any, param: str
) -> None:
    with pytest.raises(InvalidPrompt) as caught:
        llm.render_chat(messages, tools=tools)
    assert caught.value.param == param
    assert caught.value.message


def test_a_prompt_past_the_context_is_refused_naming_the_limit(llm: LlmRunner) -> None:
    assert llm.context_length == 2048  # the tiny model's max positions, under the 4096 setting
    with pytest.raises(InvalidPrompt) as caught:
        llm.render_chat([{"role": "user", "content": "x" * 2100}])
    assert caught.value.code == "context_length_exceeded"
    assert "2048" in caught.value.message
    with pytest.raises(InvalidPrompt):
        llm.submit(greedy([65] * 2048), Stream())


def test_encode_is_plain_text(llm: LlmRunner) -> None:
    ids = llm.encode("Hi é")
    assert llm.decode(ids) == "Hi é"
    assert len(ids) == 5  # byte-level, no BOS: é is two bytes


# --- generation ------------------------------------------------------------------------------
def test_greedy_matches_transformers_generate_and_is_deterministic(llm: LlmRunner) -> None:
    import torch
    import transformers

    prompt = prompts(llm)[1]
    first, second = run(llm, greedy(prompt)), run(llm, greedy(prompt))
    assert first.text == second.text
    assert first.finish == "length"
    assert sum(e.tokens for e in first.events) == 16
    reference = transformers.AutoModelForCausalLM.from_pretrained(llm.model_dir)
    with torch.inference_mode():
        out = reference.generate(
            torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None
        )
    assert first.text == llm.decode(out[0, len(prompt) :].tolist())


def test_same_seed_same_tokens_other_seed_other_tokens(llm: LlmRunner) -> None:
    prompt = prompts(llm)[0]

    def sample(seed: int) -> str:
        return run(llm, LlmRequest(prompt, 24, temperature=1.0, top_p=0.95, seed=seed)).text

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_max_new_tokens_ends_with_length(llm: LlmRunner) -> None:
    stream = run(llm, greedy(prompts(llm)[0], 5))
    assert stream.finish == "length"
    assert sum(e.tokens for e in stream.events) == 5
    assert all(e.finish_reason is None for e in stream.events[:-1])


def test_an_eos_token_ends_with_stop(llm: LlmRunner, tmp_path: Path) -> None:
    """A copy of the tiny model whose generation config names its first greedy token as a
    second EOS (as Llama 3 lists several): the request stops there, with "stop"."""
    import torch
    import transformers

    prompt = prompts(llm)[0]
    model = transformers.AutoModelForCausalLM.from_pretrained(llm.model_dir)
    with torch.inference_mode():
        first = int(model(torch.tensor([prompt])).logits[0, -1].argmax())
    folder = tmp_path / "model"
    shutil.copytree(llm.model_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], first]
    (folder / "generation_config.json").write_text(json.dumps(config))
    runner = LlmRunner(folder, quantization="none", device="cpu")
    runner.load()
    try:
        stream = run(runner, greedy(prompt))
        assert stream.finish == "stop"
        assert [(e.text, e.tokens) for e in stream.events] == [("", 1)]
    finally:
        runner.close()


def test_concurrent_streams_share_decode_steps_and_match_their_solo_output(
    llm: LlmRunner,
) -> None:
    solo = [run(llm, greedy(p, 24)).text for p in prompts(llm)]
    before = llm.stats()
    streams = [Stream() for _ in prompts(llm)]
    for prompt, stream in zip(prompts(llm), streams, strict=True):
        llm.submit(greedy(prompt, 24), stream)
    assert [s.text for s in streams] == solo
    after = llm.stats()
    steps = after["steps"] - before["steps"]
    sequences = after["step_sequences"] - before["step_sequences"]
    assert sequences / steps > 1.5, (steps, sequences)
    assert after["generated_tokens"] - before["generated_tokens"] == 4 * 24
    assert after["running"] == after["waiting"] == 0


def test_a_request_joins_a_running_batch_mid_stream(llm: LlmRunner) -> None:
    """A short prompt joins a long-running one (so its cache row is left-padded) and a long
    prompt joins a short-running one (so the batch's rows are): both streams as when alone."""
    short, long = prompts(llm)[2], prompts(llm)[1]
    for first, second in ((long, short), (short, long)):
        alone = [run(llm, greedy(p, 40)).text for p in (first, second)]
        a, b = Stream(), Stream()
        llm.submit(greedy(first, 40), a)
        assert a.first.wait(60)
        llm.submit(greedy(second, 40), b)
        assert [a.text, b.text] == alone


def test_cancel_frees_the_slot_with_a_final_cancelled_event(llm: LlmRunner) -> None:
    before = llm.stats()
    stream = Stream()
    handle: LlmHandle = llm.submit(greedy(prompts(llm)[0], 400), stream)
    assert stream.first.wait(60)
    handle.cancel()
    handle.cancel()  # idempotent
    assert stream.finish == "cancelled"
    assert [e.finish_reason for e in stream.events].count("cancelled") == 1
    assert sum(e.tokens for e in stream.events) < 400
    after = llm.stats()
    assert after["running"] == 0
    assert after["cancelled"] == before["cancelled"] + 1


def test_past_running_plus_waiting_submit_raises_busy(tiny_runner: Callable[..., Any]) -> None:
    runner: LlmRunner = tiny_runner("llm", max_running=1, max_waiting=1)
    prompt = prompts(runner)[0]
    try:
        streams = [Stream(), Stream()]
        handles = [runner.submit(greedy(prompt, 400), s) for s in streams]
        with pytest.raises(LlmBusy):
            runner.submit(greedy(prompt, 4), Stream())
        for handle in handles:
            handle.cancel()
        assert [s.finish for s in streams] == ["cancelled", "cancelled"]
        assert run(runner, greedy(prompt, 4)).finish == "length"  # room again
    finally:
        runner.close()


def test_close_gives_every_pending_request_a_final_error(tiny_runner: Callable[..., Any]) -> None:
    runner: LlmRunner = tiny_runner("llm", max_running=1)
    prompt = prompts(runner)[0]
    running, waiting = Stream(), Stream()
    runner.submit(greedy(prompt, 400), running)
    runner.submit(greedy(prompt, 400), waiting)
    assert running.first.wait(60)
    runner.close()
    for stream in (running, waiting):
        assert stream.finish == "error"
        assert stream.events[-1].error
    with pytest.raises(RuntimeError):
        runner.submit(greedy(prompt, 4), Stream())


def test_int8_runner_generates(tiny_runner: Callable[..., Any]) -> None:
    runner: LlmRunner = tiny_runner("llm", quantization="int8")
    try:
        assert runner.dtype == "qint8-dynamic"
        stream = run(runner, greedy(prompts(runner)[0], 8))
        assert stream.finish == "length"
        assert sum(e.tokens for e in stream.events) == 8
    finally:
        runner.close()


# --- the real offline model ----------------------------------------------------------------------
def test_offline_gemma_writes_a_few_greedy_tokens(offline_store: None) -> None:
    from botmodels.store import find_stored

    stored = find_stored("llm-gemma-3-270m-q4-k-m:latest")
    assert stored is not None
    runner = LlmRunner(Path(stored.path), quantization="none", device="cpu", max_running=2)
    runner.load()
    try:
        assert (runner.template_label, runner.chat_format) == ("base", "generic")
        assert runner.stop_texts == ("\nUser:",)
        prompt = runner.render_chat([{"role": "user", "content": "What is the capital of France?"}])
        assert runner.decode(prompt) == "User: What is the capital of France?\nAssistant:"
        streams = [Stream(), Stream()]
        for stream, ids in zip(
            streams, (prompt, runner.encode("The capital of France is")), strict=True
        ):
            runner.submit(greedy(ids, 6), stream)
        texts = [s.text for s in streams]
        assert all(s.finish == "length" for s in streams)
        assert "Paris" in texts[0] + texts[1], texts
    finally:
        runner.close()
