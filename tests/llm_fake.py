"""A scripted language-model runner that follows runners/llm.py's interface exactly: the API's
tests drive the routes with it (what the model says is chosen by the test, token by token).

Each request's text deltas come from `script` (one token each) on a thread of its own, one per
`step_s`; `max_new_tokens` ends it with "length", the script's end with "stop", `cancel()` with
"cancelled" at the next step, `fail_at` with "error". Exactly one final event per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runners.llm import InvalidPrompt, LlmBusy, LlmEvent, LlmRequest

ROLES = {"system", "user", "assistant", "tool"}


class FakeHandle:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class FakeLlm:
    script: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    context_length: int = 256
    chat_format: str = "chatml"
    template_label: str = "chat"
    capacity: int = 8
    step_s: float = 0.005
    fail_at: int | None = None
    thinking: bool = False  # the template opens <think> (opens_thinking)
    dtype: str = "float32"
    device: str = "cpu"
    quantization: str = "none"
    compute: str = "fake"
    kind: str = "llm"
    rendered: list[dict[str, Any]] = field(default_factory=list)
    requests: list[LlmRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "running",
                "waiting",
                "steps",
                "step_sequences",
                "generated_tokens",
                "prompt_tokens",
                "cancelled",
            ),
            0,
        )
    )

    def load(self) -> None:
        pass

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> list[int]:
        for message in messages:
            if message["role"] not in ROLES:
                raise InvalidPrompt(f"role {message['role']!r} is not in this template")
        self.rendered.append(
            {"messages": messages, "tools": tools, "template_kwargs": dict(template_kwargs or {})}
        )
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 1000 for c in text]

    def opens_thinking(self, prompt_ids: list[int]) -> bool:
        return self.thinking

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def submit(self, request: LlmRequest, on_event: Callable[[LlmEvent], None]) -> FakeHandle:
        with self._lock:
            if self._counts["running"] + self._counts["waiting"] >= self.capacity:
                raise LlmBusy("full")
            if len(request.prompt_ids) >= self.context_length:
                raise InvalidPrompt("prompt longer than the context")
            self._counts["running"] += 1
            self._counts["prompt_tokens"] += len(request.prompt_ids)
        self.requests.append(request)
        handle = FakeHandle()
        threading.Thread(
            target=self._generate, args=(request, on_event, handle), daemon=True
        ).start()
        return handle

    def _generate(
        self, request: LlmRequest, on_event: Callable[[LlmEvent], None], handle: FakeHandle
    ) -> None:
        final = "stop"
        error = None
        for count, text in enumerate(self.script):
            time.sleep(self.step_s)
            if handle.cancelled.is_set():
                final = "cancelled"
                break
            if self.fail_at is not None and count == self.fail_at:
                final, error = "error", "the engine broke"
                break
            if count >= request.max_new_tokens:
                final = "length"
                break
            with self._lock:
                self._counts["steps"] += 1
                self._counts["step_sequences"] += self._counts["running"]
                self._counts["generated_tokens"] += 1
            on_event(LlmEvent(text, 1, None))
        with self._lock:
            self._counts["running"] -= 1
            if final == "cancelled":
                self._counts["cancelled"] += 1
        on_event(LlmEvent("", 0, final, error))
