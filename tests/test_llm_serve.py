"""The language model served by a real `bentoml serve` (tiny random Llama-shaped model, CPU):
the official `openai` client streaming and not, a raw-socket reader that reads each event the way
botserver does, `/v1/models`, `/health`, the metrics, and a client that leaves mid-stream.
Tokens are random (the tiny model); shapes, counts and framing are what is checked."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import KEY, Server
from tests.sse import botserver_read, raw_stream

pytestmark = pytest.mark.serve

USER = [{"role": "user", "content": "Olá! Tell me about General Bots."}]


@pytest.fixture(scope="module")
def served(offline_store: None) -> Iterator[Server]:
    server = Server(
        {
            "BOTMODELS_PROFILE": "tiny",
            "BOTMODELS_RUNNERS": "embeddings,llm",
            "BOTMODELS_LLM_CONTEXT": "256",
            "BOTMODELS_LLM_ALIASES": "gpt-4o-mini,local",
            "BOTMODELS_TRUSTED_NETWORKS": "127.0.0.1/32,::1/128",
        }
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return sum(float(v) for v in values)


def test_the_openai_client_chats_streams_and_completes(served: Server) -> None:
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

    client = OpenAI(base_url=f"{served.url}/v1", api_key=KEY, max_retries=0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": USER[0]["content"]}]
    whole = client.chat.completions.create(
        model="default",
        messages=messages,
        max_tokens=12,
        temperature=0,
        seed=3,
    )
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage is not None
    assert 1 <= whole.usage.completion_tokens <= 12
    assert whole.model.startswith("llm-")

    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    assert chunks[-1].usage is not None
    assert 1 <= chunks[-1].usage.completion_tokens <= 12

    text = client.completions.create(model="local", prompt="Once upon a time", max_tokens=5)
    assert text.object == "text_completion"
    assert text.usage is not None
    assert text.usage.completion_tokens <= 5

    ids = [m.id for m in client.models.list()]
    assert "default" in ids
    assert "gpt-4o-mini" in ids
    assert any(i.startswith("embeddings-") for i in ids)
    assert any(i.startswith("llm-") for i in ids)


def test_each_event_is_read_whole_as_botserver_reads(served: Server) -> None:
    body = {
        "model": "local",
        "messages": USER,
        "stream": True,
        "max_tokens": 16384,  # botserver's: clamped to the 256-token context
        "temperature": 1.0,
        "top_p": 1.0,
    }
    status, reads = raw_stream(served.url, "/v1/chat/completions", body, {"X-API-Key": KEY})
    assert status == 200
    _, _, lost = botserver_read(reads)
    assert lost == 0
    assert reads[-1].endswith(b"data: [DONE]\n\n")


def test_keyless_ai_tools_call_and_the_probes(served: Server) -> None:
    body = {"model": "default", "messages": USER, "temperature": 0.1, "max_tokens": 4}
    response = httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert isinstance(response.json()["choices"][0]["message"]["content"], str)
    assert httpx.get(f"{served.url}/health", timeout=10).status_code == 200
    health = httpx.get(f"{served.url}/api/health", timeout=10).json()
    assert health["runners"]["llm"]["healthy"] is True


def test_concurrent_streams_share_decode_steps(served: Server) -> None:
    steps = metric(served, "botmodels_llm_steps_total")
    sequences = metric(served, "botmodels_llm_step_sequences_total")
    barrier = threading.Barrier(8)

    def one() -> None:
        barrier.wait()
        body = {"prompt": "The weather today", "max_tokens": 48, "temperature": 1.0}
        httpx.post(
            f"{served.url}/v1/completions", json=body, headers={"X-API-Key": KEY}, timeout=120
        )

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.5)
    steps = metric(served, "botmodels_llm_steps_total") - steps
    sequences = metric(served, "botmodels_llm_step_sequences_total") - sequences
    assert steps > 0
    assert sequences / steps > 1  # several sequences per decode step: continuous batching


def test_a_client_leaving_mid_stream_frees_its_slot(served: Server) -> None:
    body = {"prompt": "Count:", "max_tokens": 200, "stream": True}
    with httpx.stream(
        "POST", f"{served.url}/v1/completions", json=body, headers={"X-API-Key": KEY}, timeout=60
    ) as response:
        assert next(response.iter_lines()).startswith("data: ")
    deadline = time.monotonic() + 15
    while metric(served, "botmodels_llm_running") + metric(served, "botmodels_llm_waiting") > 0:
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def gemma(offline_store: None) -> Iterator[Server]:
    """The offline profile's real model (Gemma 3 270M from packages, a base model)."""
    # a short context bounds botserver's 16384 max_tokens below (clamped to it)
    server = Server(
        {"BOTMODELS_PROFILE": "offline", "BOTMODELS_RUNNERS": "llm", "BOTMODELS_LLM_CONTEXT": "512"}
    )
    try:
        server.wait_ready(timeout=600)
        yield server
    finally:
        server.stop()


def test_offline_gemma_answers_the_openai_client_and_botserver(gemma: Server) -> None:
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

    client = OpenAI(base_url=f"{gemma.url}/v1", api_key=KEY, max_retries=0)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the capital of France?"}
    ]
    whole = client.chat.completions.create(
        model="default", messages=messages, max_tokens=16, temperature=0
    )
    assert whole.choices[0].message.content
    assert whole.usage is not None
    assert 1 <= whole.usage.completion_tokens <= 16
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="default", messages=messages, max_tokens=16, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces).strip()
    body = {"model": "local", "messages": messages, "stream": True, "max_tokens": 16384}
    status, reads = raw_stream(gemma.url, "/v1/chat/completions", body, {"X-API-Key": KEY})
    content, _, lost = botserver_read(reads)
    assert status == 200
    assert lost == 0
    assert content.strip()
