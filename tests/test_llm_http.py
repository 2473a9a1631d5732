"""The language model's OpenAI routes in-process (botmodels/llm/front.py), on the scripted runner
of tests/llm_fake.py (what the model says is the test's choice) and on the tiny runner: shapes,
clamping, stop strings, tools, reasoning, bad input, capacity, and, on a real uvicorn server,
one write per event and a client leaving mid-stream."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from botmodels.config import Settings
from botmodels.errors import BotModelsError, handle_exception
from botmodels.http import ErrorShapeMiddleware
from botmodels.llm import routes as llm_routes
from botmodels.llm.front import LlmFrontend
from botmodels.pool import RunnerSlot
from runners.llm import InvalidPrompt
from tests.asgi_server import uvicorn_server
from tests.helpers import assert_error
from tests.llm_fake import FakeLlm
from tests.sse import botserver_read, events, raw_stream

USER = [{"role": "user", "content": "Hi"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "the weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL_SCRIPT = [
    "<tool",
    "_call>",
    '{"name": "get_weather", ',
    '"arguments": {"city": ',
    '"Paris"}}',
    "</tool_call>",
]


def make_app(fake: Any, settings: Settings | None = None) -> tuple[Any, LlmFrontend]:
    slots = {
        "embeddings": RunnerSlot("embeddings", "embeddings-all-minilm-l6-v2:abc", "none"),
        "llm": RunnerSlot("llm", "llm-fake:v1", "none"),
    }
    pool: Any = SimpleNamespace(slots=slots, slot=slots.get)
    front = LlmFrontend(
        settings or Settings(llm_aliases=["gpt-4o", "local"]),
        lambda: contextlib.nullcontext(fake),
        pool=pool,
    )
    app = Starlette(
        routes=llm_routes.routes(lambda: front),
        exception_handlers={BotModelsError: handle_exception},
    )
    return ErrorShapeMiddleware(app), front


@pytest.fixture
def fake() -> FakeLlm:
    return FakeLlm()


@pytest.fixture
def client(fake: FakeLlm) -> Iterator[TestClient]:
    app, _ = make_app(fake)
    with TestClient(app) as test_client:
        yield test_client


def chat(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/chat/completions", json={"messages": USER, **body})


def stream(client: TestClient, path: str = "/v1/chat/completions", **body: Any) -> list[Any]:
    body.setdefault("messages", USER) if path.endswith("chat/completions") else None
    response = client.post(path, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    got = events(response.text)
    assert got[-1] == "[DONE]"
    assert "[DONE]" not in got[:-1]
    return got[:-1]


# --- chat: shapes --------------------------------------------------------------------------------
def test_chat_answer_has_openai_shape(client: TestClient, fake: FakeLlm) -> None:
    response = chat(client, model="anything-at-all")
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "llm-fake"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, world!"},
            "finish_reason": "stop",
        }
    ]
    prompt = len(fake.render_chat(USER))
    assert body["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 4,
        "total_tokens": prompt + 4,
    }


def test_chat_stream_has_openai_chunks(client: TestClient) -> None:
    chunks = stream(client, stream_options={"include_usage": True})
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello, world!"
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == "stop"
    assert set(finals[:-1]) == {None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_no_usage_chunk_unless_asked(client: TestClient) -> None:
    assert all("usage" not in c for c in stream(client))


def test_max_tokens_is_clamped_to_the_context(client: TestClient, fake: FakeLlm) -> None:
    assert chat(client, max_tokens=16384).status_code == 200  # botserver's value: never a 400
    prompt = len(fake.render_chat(USER))
    assert fake.requests[-1].max_new_tokens == fake.context_length - prompt
    body = chat(client, max_completion_tokens=2, max_tokens=50).json()
    assert fake.requests[-1].max_new_tokens == 2
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "Hello,"


def test_sampling_parameters_reach_the_runner(client: TestClient, fake: FakeLlm) -> None:
    chat(client, temperature=0.0, top_p=0.5, seed=7)
    request = fake.requests[-1]
    assert (request.temperature, request.top_p, request.seed) == (0.0, 0.5, 7)


@pytest.mark.parametrize("stop", [",", [",", "zz"], ["o, w"]])
def test_stop_ends_the_text_and_the_generation(
    client: TestClient, fake: FakeLlm, stop: Any
) -> None:
    fake.script = ["Hello", ",", " world"] + ["!"] * 200
    fake.step_s = 0.01
    body = chat(client, stop=stop).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] in ("Hello", "Hell")
    deadline = time.monotonic() + 5
    while fake.stats()["cancelled"] < 1:
        assert time.monotonic() < deadline, "the generation was not cancelled"
        time.sleep(0.01)
    assert fake.stats()["generated_tokens"] < 50


def test_model_names_all_serve_the_model(client: TestClient) -> None:
    for name in ("default", "gpt-4o", "local", "some-model.gguf"):
        assert chat(client, model=name).json()["model"] == "llm-fake"


# --- tools, reasoning, template arguments --------------------------------------------------------
def test_tools_reach_the_template_and_calls_come_back(client: TestClient, fake: FakeLlm) -> None:
    fake.script = CALL_SCRIPT
    body = chat(client, tools=TOOLS).json()
    assert fake.rendered[-1]["tools"][0]["function"]["name"] == "get_weather"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_tool_calls_stream_as_deltas(client: TestClient, fake: FakeLlm) -> None:
    fake.script = ["Let me check. ", *CALL_SCRIPT]
    chunks = stream(client, tools=TOOLS)
    calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert len(calls) == 1
    assert calls[0]["index"] == 0
    assert calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Let me check. "
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_none_offers_no_tools(client: TestClient, fake: FakeLlm) -> None:
    fake.script = CALL_SCRIPT
    body = chat(client, tools=TOOLS, tool_choice="none").json()
    assert fake.rendered[-1]["tools"] is None
    assert "<tool_call>" in body["choices"][0]["message"]["content"]


def test_history_tool_calls_reach_the_template_as_objects(
    client: TestClient, fake: FakeLlm
) -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rio"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "31 C"},
        {"role": "developer", "content": "be brief"},
    ]
    assert (
        client.post("/v1/chat/completions", json={"messages": messages, "tools": TOOLS}).status_code
        == 200
    )
    rendered = fake.rendered[-1]["messages"]
    assert rendered[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Rio"}
    assert rendered[2] == {"role": "tool", "content": "31 C", "tool_call_id": "c1"}
    assert rendered[3]["role"] == "system"


def test_reasoning_is_apart_from_content(client: TestClient, fake: FakeLlm) -> None:
    fake.script = ["<th", "ink>", "2+2 is", " 4", "</think>", "\n\n", "It is 4."]
    body = chat(client).json()
    message = body["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("2+2 is 4", "It is 4.")
    chunks = stream(client)
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert (reasoning, content) == ("2+2 is 4", "It is 4.")


def test_reasoning_opened_by_the_template(client: TestClient, fake: FakeLlm) -> None:
    fake.thinking = True
    fake.script = ["hmm", "</think>", "Yes."]
    message = chat(client).json()["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("hmm", "Yes.")


def test_chat_template_kwargs_reach_the_template(client: TestClient, fake: FakeLlm) -> None:
    chat(client, chat_template_kwargs={"enable_thinking": False})
    assert fake.rendered[-1]["template_kwargs"] == {"enable_thinking": False}


# --- text completions ----------------------------------------------------------------------------
def test_completions_shape_and_stream(client: TestClient, fake: FakeLlm) -> None:
    response = client.post("/v1/completions", json={"model": "default", "prompt": "Say"})
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["choices"] == [
        {"index": 0, "text": "Hello, world!", "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"]["prompt_tokens"] == 3
    assert fake.requests[-1].max_new_tokens == 16  # OpenAI's default
    echoed = client.post(
        "/v1/completions", json={"prompt": ["Say"], "echo": True, "max_tokens": 1}
    ).json()
    assert echoed["choices"][0]["text"] == "SayHello"
    assert echoed["choices"][0]["finish_reason"] == "length"
    chunks = stream(client, "/v1/completions", prompt="Say", stream_options={"include_usage": True})
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "Hello, world!"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 7


# --- /v1/models ----------------------------------------------------------------------------------
def test_models_lists_every_runner_and_the_aliases(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids == ["embeddings-all-minilm-l6-v2", "llm-fake", "default", "gpt-4o", "local"]
    for card in body["data"]:
        assert set(card) == {"id", "object", "created", "owned_by", "botmodels_runner"}
        assert card["object"] == "model"
        assert isinstance(card["created"], int)


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content.str"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            None,
        ),
        ({"messages": USER, "temperature": "hot"}, "temperature"),
        ({"messages": USER, "temperature": 3}, "temperature"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "n": 2}, "n"),
        ({"messages": USER, "stop": ["a"] * 17}, None),
        ({"messages": USER, "tools": [{"type": "function"}]}, "tools.0.function"),
        (
            {"messages": USER, "tools": [{"type": "retrieval", "function": {"name": "x"}}]},
            "tools.0.type",
        ),
        (
            {"messages": USER, "tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            None,
        ),
        ({"messages": USER, "tools": {"a": 1}}, "tools"),
        ({"messages": USER, "chat_template_kwargs": []}, "chat_template_kwargs"),
    ],
)
def test_bad_chat_input_is_a_400(
    client: TestClient, body: dict[str, Any], param: str | None
) -> None:
    error = assert_error(client.post("/v1/chat/completions", json=body), 400)
    if param is not None:
        assert error["param"] is not None
        assert error["param"].startswith(param), error


def test_bad_json_and_non_objects_are_a_400(client: TestClient) -> None:
    bad = client.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_error(bad, 400)
    assert_error(client.post("/v1/chat/completions", json=[1]), 400)
    assert_error(client.post("/v1/completions", json={"prompt": 5}), 400)
    assert_error(client.post("/v1/completions", json={"prompt": ["a", "b"]}), 400)


def test_history_call_with_bad_arguments_is_a_400(client: TestClient) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    messages = [*USER, {"role": "assistant", "tool_calls": [call]}]
    error = assert_error(client.post("/v1/chat/completions", json={"messages": messages}), 400)
    assert error["param"] == "messages.1.tool_calls.0.function.arguments"


def test_prompt_longer_than_the_context_names_the_limit(client: TestClient, fake: FakeLlm) -> None:
    fake.context_length = 10
    error = assert_error(chat(client), 400)
    assert error["code"] == "context_length_exceeded"
    assert "10 tokens" in error["message"]
    assert "BOTMODELS_LLM_CONTEXT" in error["message"]


class RefusingLlm(FakeLlm):
    def render_chat(self, *args: Any, **kwargs: Any) -> list[int]:
        raise InvalidPrompt("roles must alternate user/assistant")


def test_the_templates_refusal_is_a_400() -> None:
    app, _ = make_app(RefusingLlm())
    with TestClient(app) as other:
        error = assert_error(chat(other), 400)
    assert "alternate" in error["message"]


def test_over_capacity_is_a_429_with_retry_after(client: TestClient, fake: FakeLlm) -> None:
    fake.capacity = 0
    response = chat(client)
    assert_error(response, 429)
    assert int(response.headers["retry-after"]) >= 1


def test_an_engine_error_is_a_500_or_an_error_event(client: TestClient, fake: FakeLlm) -> None:
    fake.fail_at = 2
    error = assert_error(chat(client), 500)
    assert error["code"] == "generation_failed"
    chunks = stream(client)
    assert chunks[-1]["error"]["code"] == "generation_failed"


# --- on a real server: one write per event; a client leaving frees its slot ----------------------
def test_each_event_arrives_in_one_read(fake: FakeLlm) -> None:
    fake.script = ["Olá", ", ", "mundo", " ", "🌍", "!", *CALL_SCRIPT, " fim"] * 3
    fake.step_s = 0.01
    app, _ = make_app(fake)
    body = {
        "model": "default",
        "messages": USER,
        "stream": True,
        "tools": TOOLS,
        "max_tokens": 16384,
    }
    with uvicorn_server(app) as url:
        status, reads = raw_stream(url, "/v1/chat/completions", body)
    assert status == 200
    assert len(reads) > 10  # the events came in many reads, each whole
    content, arguments, lost = botserver_read(reads)
    assert lost == 0
    assert content == "Olá, mundo 🌍! fim" * 3
    assert [json.loads(a) for a in arguments] == [{"city": "Paris"}] * 3
    assert reads[-1].endswith(b"data: [DONE]\n\n")


def test_client_leaving_mid_stream_cancels_the_generation(fake: FakeLlm) -> None:
    fake.script = ["tok "] * 2000
    fake.step_s = 0.01
    app, _ = make_app(fake)
    with uvicorn_server(app) as url:
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json={"messages": USER, "stream": True}
        ) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            assert fake.stats()["running"] == 1
        deadline = time.monotonic() + 10
        while fake.stats()["running"] != 0:
            assert time.monotonic() < deadline, "the slot was not freed"
            time.sleep(0.02)
    assert fake.stats()["cancelled"] == 1
    assert fake.stats()["generated_tokens"] < 2000


# --- BOTMODELS_LLM_URL: any OpenAI-compatible server, proxied ------------------------------------
def fake_openai_server(seen: list[dict[str, Any]]) -> Starlette:
    """vLLM's routes, scripted: its stream writes two events at once, then one event in three
    pieces (what a proxy in between may do), so the proxy must re-frame them."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def chunk(text: str, finish: str | None = None) -> str:
        payload = {
            "id": "chatcmpl-up",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "Qwen/Qwen3-8B",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload)}\n\n"

    async def models(_: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": "Qwen/Qwen3-8B", "object": "model"}]}
        )

    async def health(_: Request) -> Response:
        return JSONResponse({})

    async def chat(request: Request) -> Response:
        body = await request.json()
        seen.append({"body": body, "authorization": request.headers.get("authorization")})
        if body["messages"][0]["content"] == "busy":
            return JSONResponse({"error": {"message": "queue full"}}, 429, {"Retry-After": "7"})
        if body["messages"][0]["content"] == "bad":
            return JSONResponse({"object": "error", "message": "bad", "code": 400}, 400)
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Olá"},
                            "finish_reason": "stop",
                        }
                    ],
                }
            )

        async def writes() -> Any:
            import asyncio

            yield chunk("Ol") + chunk("á")
            await asyncio.sleep(0.05)
            whole = chunk(", mundo")
            for piece in (whole[:7], whole[7:20], whole[20:]):
                yield piece
                await asyncio.sleep(0.05)
            yield chunk("", "stop") + "data: [DONE]\n\n"

        return StreamingResponse(writes(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/health", health),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


def test_remote_engine_is_proxied_event_by_event() -> None:
    import asyncio

    from botmodels.llm.proxy import OpenAIRemote

    seen: list[dict[str, Any]] = []
    with uvicorn_server(fake_openai_server(seen)) as upstream:
        remote = OpenAIRemote(upstream, b"remote-key-0123456789", 30)
        app, front = make_app(FakeLlm())
        front.remote = remote
        with uvicorn_server(app) as url:
            body = {"model": "default", "messages": USER, "stream": True, "max_tokens": 16384}
            status, reads = raw_stream(url, "/v1/chat/completions", body)
            assert status == 200
            content, _, lost = botserver_read(reads)
            assert (content, lost) == ("Olá, mundo", 0)
            assert reads[-1].endswith(b"data: [DONE]\n\n")
            whole = httpx.post(f"{url}/v1/chat/completions", json={"messages": USER}, timeout=30)
            assert whole.json()["choices"][0]["message"]["content"] == "Olá"
            busy = httpx.post(
                f"{url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "busy"}]},
                timeout=30,
            )
            assert_error(busy, 429)
            assert busy.headers["retry-after"] == "7"
            bad = httpx.post(
                f"{url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "bad"}]},
                timeout=30,
            )
            assert_error(bad, 400)
            ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
            assert ids == [
                "embeddings-all-minilm-l6-v2",
                "Qwen/Qwen3-8B",
                "default",
                "gpt-4o",
                "local",
            ]
            # botmodels checks the body before the remote sees it
            assert_error(httpx.post(f"{url}/v1/chat/completions", json={"messages": []}), 400)
        # its readiness: botmodels' /readyz, or /health as vLLM and llama-server answer it
        assert asyncio.run(OpenAIRemote(upstream, b"k" * 20, 5).ready())
    assert [s["body"]["model"] for s in seen] == ["Qwen/Qwen3-8B"] * 4  # the remote's own name
    assert {s["authorization"] for s in seen} == {"Bearer remote-key-0123456789"}
    assert seen[0]["body"]["max_tokens"] == 16384  # the rest goes on unchanged


def test_engine_metrics_follow_the_runner(client: TestClient, fake: FakeLlm) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        name: value(name)
        for name in (
            "botmodels_llm_generated_tokens_total",
            "botmodels_llm_steps_total",
            "botmodels_llm_step_sequences_total",
        )
    }
    ttft_before = value("botmodels_llm_ttft_seconds_count", engine="local")
    stop_before = value("botmodels_llm_requests_total", finish_reason="stop")
    assert chat(client).status_code == 200
    time.sleep(0.3)  # the engine's last step is recorded once it has freed the slot
    assert chat(client).status_code == 200
    assert (
        value("botmodels_llm_generated_tokens_total")
        - before["botmodels_llm_generated_tokens_total"]
        == fake.stats()["generated_tokens"]
    )
    assert value("botmodels_llm_steps_total") > before["botmodels_llm_steps_total"]
    assert (
        value("botmodels_llm_step_sequences_total") > before["botmodels_llm_step_sequences_total"]
    )
    assert value("botmodels_llm_ttft_seconds_count", engine="local") == ttft_before + 2
    assert value("botmodels_llm_requests_total", finish_reason="stop") == stop_before + 2


def test_a_base_templates_turn_end_is_a_stop(client: TestClient, fake: FakeLlm) -> None:
    """A base model's supplied template ends a turn with text (the runner's `stop_texts`)."""
    fake.stop_texts = ("\nUser:",)  # type: ignore[attr-defined]
    fake.script = ["Fine", ".", "\nUs", "er:", " and more"]
    assert chat(client).json()["choices"][0]["message"]["content"] == "Fine."
    stream_text = "".join(c["choices"][0]["delta"].get("content", "") for c in stream(client))
    assert stream_text == "Fine."
    # a plain completion has no turns: the text goes on
    text = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 9}).json()
    assert text["choices"][0]["text"] == "Fine.\nUser: and more"


class DecodingLlm(FakeLlm):
    """A runner with `decode` and no `opens_thinking`: the prompt's end is read back."""

    opens_thinking = None  # type: ignore[assignment]

    def decode(self, ids: list[int]) -> str:
        return "<|im_start|>assistant\n<think>\n" if self.thinking else "<|im_start|>assistant\n"


def test_thinking_opened_by_the_template_is_read_from_the_prompt() -> None:
    fake = DecodingLlm(script=["pondering", "</think>", "Done."], thinking=True)
    app, _ = make_app(fake)
    with TestClient(app) as other:
        message = chat(other).json()["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("pondering", "Done.")


# --- the tiny random model (runners/llm.py): the same routes on the real engine -----------------
@pytest.fixture(scope="module")
def tiny(tiny_runner: Any) -> Iterator[Any]:
    runner = tiny_runner("llm", context=512)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def tiny_client(tiny: Any) -> Iterator[TestClient]:
    app, _ = make_app(tiny)
    with TestClient(app) as test_client:
        yield test_client


def test_tiny_model_chats_and_streams(tiny_client: TestClient, tiny: Any) -> None:
    body = chat(tiny_client, max_tokens=16384, temperature=0).json()  # clamped to the context
    usage = body["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= tiny.context_length
    assert body["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    chunks = stream(tiny_client, max_tokens=6, stream_options={"include_usage": True})
    assert chunks[-1]["usage"]["completion_tokens"] <= 6
    tools = chat(tiny_client, tools=TOOLS, max_tokens=4)  # the tiny template renders tools
    assert tools.status_code == 200, tools.text
    text = tiny_client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3}).json()
    assert text["usage"]["completion_tokens"] <= 3


def test_tiny_model_refuses_a_prompt_past_its_context(tiny_client: TestClient) -> None:
    long = [{"role": "user", "content": "word " * 1000}]
    error = assert_error(tiny_client.post("/v1/chat/completions", json={"messages": long}), 400)
    assert error["code"] == "context_length_exceeded"
    assert "512" in error["message"]


def test_tiny_model_frees_the_slot_of_a_client_that_left(tiny: Any) -> None:
    app, _ = make_app(tiny)
    body = {"prompt": "Count:", "max_tokens": 100, "stream": True}
    with uvicorn_server(app) as url:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            assert next(response.iter_lines()).startswith("data: ")
        deadline = time.monotonic() + 10
        while tiny.stats()["running"] + tiny.stats()["waiting"] > 0:
            assert time.monotonic() < deadline, "the slot was not freed"
            time.sleep(0.02)


# --- in the service: behind its middleware (auth, error shape, limits) --------------------------
def test_the_service_serves_the_routes(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import service
    from tests.conftest import auth

    models = app.get("/v1/models", headers=auth())
    assert models.status_code == 200
    assert "embeddings-all-minilm-l6-v2" in [m["id"] for m in models.json()["data"]]
    assert_error(app.get("/v1/models"), 401)
    assert_error(app.post("/v1/chat/completions", json={"messages": USER}), 401)
    disabled = app.post("/v1/chat/completions", json={"messages": USER}, headers=auth())
    assert assert_error(disabled, 503)["code"] == "runner_disabled"
    assert_error(app.post("/v1/chat/completions", json={"messages": []}, headers=auth()), 400)

    fake = FakeLlm()
    monkeypatch.setattr(service._service().llm, "_lease", lambda: contextlib.nullcontext(fake))
    response = app.post(
        "/v1/chat/completions", json={"messages": USER, "stream": True}, headers=auth()
    )
    assert response.status_code == 200
    chunks = events(response.text)
    assert chunks[-1] == "[DONE]"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == (
        "Hello, world!"
    )
