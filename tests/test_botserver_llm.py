"""botserver's language-model calls, replayed exactly against the OpenAI routes on a real uvicorn
server, behind the real auth middleware, with the scripted runner of tests/llm_fake.py (what the
model says is the test's choice; the served model is in tests/test_llm_serve.py).

Sources (generalbots/generalbots at f59afde5, 2026-05-19):
- `botserver/crates/botllm/src/lib.rs:273-309`: `OpenAIClient::new`: `llm-url` plus
  `/v1/chat/completions` (unless the URL already ends with it), 180 s timeout;
- `lib.rs:360-433`, `generate`: `{model, messages, stream: false}`, `Authorization: Bearer
  <llm-key>`, reads `choices[0].message.content`;
- `lib.rs:435-615`, `generate_stream` (body 485-520, reading 540-610): `{model, messages,
  stream: true, max_tokens (max_completion_tokens for gpt-5): 16384, temperature: 1.0,
  top_p: 1.0}`, plus `chat_template_kwargs` for kimi/glm and `tools` when it has any; reads
  each received chunk's `data:` lines with no buffer across chunks (as tests/sse.py does);
- `botserver/crates/botbasic_ai/src/keywords/ai_tools.rs:179-205` (TRANSLATE), `:229-252`
  (SENTIMENT), `:335-358` (CLASSIFY): `{LLM_URL}/v1/chat/completions` with `{model: "default",
  messages: [{role: user, content}], temperature: 0.1}`, **no key**, reads
  `choices[0].message.content`. Keyless calls are admitted only from BOTMODELS_TRUSTED_NETWORKS,
  like botserver's other keyless calls (botmodels/auth.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from botmodels.auth import Authenticator, AuthMiddleware, TrustedNetworks
from botmodels.config import Settings
from botmodels.errors import BotModelsError, handle_exception
from botmodels.http import ErrorShapeMiddleware
from botmodels.llm import routes as llm_routes
from botmodels.llm.front import LlmFrontend
from tests.asgi_server import uvicorn_server
from tests.conftest import KEY
from tests.helpers import assert_error
from tests.llm_fake import FakeLlm
from tests.sse import botserver_read, raw_stream

CHAT = "/v1/chat/completions"
# OpenAIClient::build_messages: the bot's system prompt, its context data as a second system
# message, then the history (roles user/assistant; episodic and compact memories as system).
MESSAGES = [
    {"role": "system", "content": "You are a helpful bot for Pragmatismo."},
    {"role": "system", "content": "Context: office hours are 9-18."},
    {"role": "user", "content": "Olá! Quando abre?"},
    {"role": "assistant", "content": "Às 9h."},
    {"role": "system", "content": "[episodic] the user asked about hours before"},
    {"role": "user", "content": "E fecha?"},
]
# botserver's tool definitions (its BASIC tools, in OpenAI's function shape).
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "send_email",
            "description": "Send an email",
            "parameters": {
                "type": "object",
                "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
                "required": ["to", "body"],
            },
        },
    }
]


def stream_body(model: str, **extra: Any) -> dict[str, Any]:
    """generate_stream's request body, key for key."""
    token_key = "max_completion_tokens" if "gpt-5" in model else "max_tokens"
    return {
        "model": model,
        "messages": MESSAGES,
        "stream": True,
        token_key: 16384,
        "temperature": 1.0,
        "top_p": 1.0,
        **extra,
    }


def served(fake: FakeLlm, trusted: list[str]) -> Any:
    front = LlmFrontend(Settings(), lambda: contextlib.nullcontext(fake))
    app = Starlette(
        routes=llm_routes.routes(lambda: front),
        exception_handlers={BotModelsError: handle_exception},
    )
    networks = [ipaddress.ip_network(n) for n in trusted]
    auth = AuthMiddleware(app, Authenticator([KEY.encode()]), 1 << 20, TrustedNetworks(networks))
    return uvicorn_server(ErrorShapeMiddleware(auth))


@pytest.fixture
def fake() -> FakeLlm:
    return FakeLlm(script=["Fecha", " às", " 18h", "."], context_length=4096)


@pytest.fixture
def llm_url(fake: FakeLlm) -> Iterator[str]:
    """botserver next door: the README's setup (trusted loopback, and its key)."""
    with served(fake, ["127.0.0.1/32", "::1/128"]) as url:
        yield url


BEARER = {"Authorization": f"Bearer {KEY}"}
NO_TIMEOUT = None  # as ai_tools.rs's reqwest::Client::new()


def test_streaming_chat_as_botserver_sends_and_reads_it(llm_url: str, fake: FakeLlm) -> None:
    """lib.rs:485-610: 16384 max_tokens is clamped (never a 400), every event is read whole."""
    status, reads = raw_stream(llm_url, CHAT, stream_body("local"), BEARER)
    assert status == 200
    content, arguments, lost = botserver_read(reads)
    assert (content, arguments, lost) == ("Fecha às 18h.", [], 0)
    prompt = len(fake.render_chat(MESSAGES))
    assert fake.requests[-1].max_new_tokens == fake.context_length - prompt
    assert (fake.requests[-1].temperature, fake.requests[-1].top_p) == (1.0, 1.0)


def test_streaming_chat_with_tools_forwards_the_arguments(llm_url: str, fake: FakeLlm) -> None:
    """lib.rs:514-519 sends `tools`; lib.rs:600-608 forwards each tool-call delta's arguments."""
    fake.script = [
        "<tool_call>",
        '{"name": "send_email", "arguments": ',
        '{"to": "ana@example.com", "body": "Oi"}}',
        "</tool_call>",
    ]
    status, reads = raw_stream(llm_url, CHAT, stream_body("local", tools=TOOLS), BEARER)
    assert status == 200
    content, arguments, lost = botserver_read(reads)
    assert (content, lost) == ("", 0)
    assert [json.loads(a) for a in arguments] == [{"to": "ana@example.com", "body": "Oi"}]
    assert fake.rendered[-1]["tools"] == TOOLS


def test_thinking_models_get_their_template_kwargs(llm_url: str, fake: FakeLlm) -> None:
    """lib.rs:504-511: glm gets `{enable_thinking, clear_thinking}`; botserver shows the
    reasoning (`reasoning_content`) when a delta has no content."""
    fake.script = ["<think>", "checking hours", "</think>", "18h."]
    kwargs = {"enable_thinking": True, "clear_thinking": False}
    body = stream_body("glm-4.6", chat_template_kwargs=kwargs)
    status, reads = raw_stream(llm_url, CHAT, body, BEARER)
    assert status == 200
    content, _, lost = botserver_read(reads)
    assert (content, lost) == ("checking hours18h.", 0)
    assert fake.rendered[-1]["template_kwargs"] == kwargs


def test_gpt5_names_max_completion_tokens(llm_url: str, fake: FakeLlm) -> None:
    status, reads = raw_stream(llm_url, CHAT, stream_body("gpt-5-mini"), BEARER)
    assert status == 200
    assert botserver_read(reads)[0] == "Fecha às 18h."


def test_non_streaming_generate(llm_url: str) -> None:
    """lib.rs:405-428: `{model, messages, stream: false}`, reads choices[0].message.content."""
    body = {"model": "local", "messages": MESSAGES, "stream": False}
    response = httpx.post(f"{llm_url}{CHAT}", json=body, headers=BEARER, timeout=180)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Fecha às 18h."


@pytest.mark.parametrize(
    "prompt",
    [
        "Translate to Portuguese. Return ONLY the translation:\n\nGood morning",
        'Analyze sentiment. Return JSON only:\n{"sentiment":"positive/negative/neutral",'
        '"score":-100 to 100,"urgent":true/false}\n\nText: great service',
        'Classify into one of: sales, support\nReturn JSON: {"category":"chosen_category",'
        '"confidence":0.0-1.0}\n\nText: my order is late',
    ],
)
def test_keyless_ai_tools_from_a_trusted_network(llm_url: str, fake: FakeLlm, prompt: str) -> None:
    """ai_tools.rs TRANSLATE / SENTIMENT / CLASSIFY: model "default", temperature 0.1, no key
    (reqwest::Client::new(), no timeout); admitted from BOTMODELS_TRUSTED_NETWORKS."""
    fake.script = ['{"sentiment": "positive", "score": 80, "urgent": false}']
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0.1,
    }
    response = httpx.post(f"{llm_url}{CHAT}", json=body, timeout=NO_TIMEOUT)
    assert response.status_code == 200
    content = response.json()["choices"][0]["message"]["content"]
    assert json.loads(content.strip())["sentiment"] == "positive"
    assert fake.requests[-1].temperature == pytest.approx(0.1)
    assert fake.rendered[-1]["messages"] == [{"role": "user", "content": prompt}]


def test_keyless_ai_tools_elsewhere_are_refused(fake: FakeLlm) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "x"}], "temperature": 0.1}
    with served(fake, []) as url:
        error = assert_error(httpx.post(f"{url}{CHAT}", json=body, timeout=NO_TIMEOUT), 401)
        assert "BOTMODELS_TRUSTED_NETWORKS" in error["message"]
        wrong = {"Authorization": "Bearer not-the-key-0123456789"}
        assert_error(httpx.post(f"{url}{CHAT}", json=body, headers=wrong, timeout=NO_TIMEOUT), 401)
    assert fake.requests == []
