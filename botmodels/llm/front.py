"""The language model's OpenAI routes: chat and text completions (stream and not), `/v1/models`.

A request is checked (schemas.py), its prompt rendered and tokenised on a worker thread (the
chat template and the tokenizer are blocking work), its generation length clamped to the
context, and it is submitted to the runner's continuous-batching engine (runners/llm.py), whose
events arrive on the engine's thread and are handed to the event loop. Or, with
BOTMODELS_LLM_URL, the request goes to an OpenAI-compatible server (proxy.py).

Rules:
* every `model` name is the served model (OpenAI clients and botserver send whatever their
  configuration says: `default`, `local`, a GGUF file name); BOTMODELS_LLM_ALIASES are the names
  `/v1/models` lists besides the served one; the answer names the served model (as
  /v1/embeddings does, and as OpenAI names the snapshot that answered);
* `max_tokens` / `max_completion_tokens` are clamped to the context left after the prompt
  (`finish_reason: "length"` when that ends the answer); a prompt that leaves no room is a 400
  naming the limit;
* `stop` strings end the text before the first of them (the generation is cancelled);
* the model's markup is parsed (parse.py): `<think>` into `reasoning_content`, tool-call markup
  into `tool_calls` (`finish_reason: "tool_calls"`);
* each SSE event leaves in one write (one body message; botserver reads an event split across
  two reads as lost); the client going away cancels the generation, freeing its slot;
* over capacity (running + waiting sequences) is a 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from botmodels.errors import (
    ContextLengthExceeded,
    GenerationFailed,
    InvalidInput,
    Overloaded,
    runner_errors,
)
from botmodels.llm.parse import THINK_TAGS, OutputParser, Parsed, StopScanner, ToolCall
from botmodels.llm.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    parse_request,
)

if TYPE_CHECKING:
    from botmodels.config import Settings
    from botmodels.llm.proxy import OpenAIRemote
    from botmodels.pool import RunnerPool
    from runners.llm import LlmEvent, LlmHandle

log = logging.getLogger("botmodels.llm")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"
OWNER = "botmodels"

# --- metrics (/metrics): the engine's counters, mirrored as they move -------------------------
RUNNING = Gauge(
    "botmodels_llm_running", "Sequences the LLM engine is generating", multiprocess_mode="livesum"
)
WAITING = Gauge(
    "botmodels_llm_waiting",
    "Sequences waiting for a slot in the LLM engine",
    multiprocess_mode="livesum",
)
STEPS = Counter(
    "botmodels_llm_steps", "Decode steps the LLM engine ran (each advances every running one)"
)
STEP_SEQUENCES = Counter(
    "botmodels_llm_step_sequences",
    "Sequences advanced, summed over decode steps: mean batch = this / botmodels_llm_steps",
)
GENERATED = Counter("botmodels_llm_generated_tokens", "Tokens the LLM generated")
PROMPT_TOKENS = Counter("botmodels_llm_prompt_tokens", "Prompt tokens the LLM read")
TTFT = Histogram(
    "botmodels_llm_ttft_seconds",
    "From a completion request's arrival to its first generated text",
    ["engine"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REQUESTS = Counter(
    "botmodels_llm_requests", "Completions answered, by how they ended", ["finish_reason"]
)
_COUNTERS = {
    "steps": STEPS,
    "step_sequences": STEP_SEQUENCES,
    "generated_tokens": GENERATED,
    "prompt_tokens": PROMPT_TOKENS,
}


class EngineMetrics:
    """Copies `runner.stats()` into the metrics: gauges set, counters moved by the increase."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._synced = 0.0

    def sync(self, runner: Any, *, every_s: float = 0.0) -> None:
        now = time.monotonic()
        if now - self._synced < every_s:
            return
        self._synced = now
        try:
            stats: dict[str, int] = runner.stats()
        except Exception:  # metrics never fail a request
            log.debug("llm stats unavailable", exc_info=True)
            return
        RUNNING.set(stats.get("running", 0))
        WAITING.set(stats.get("waiting", 0))
        for name, counter in _COUNTERS.items():
            value = stats.get(name, 0)
            increase = value - self._last.get(name, 0)
            if increase > 0:
                counter.inc(increase)
            self._last[name] = value


def sse(payload: dict[str, Any]) -> bytes:
    """One SSE event, whole: it goes out as one body message (one write)."""
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def _template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI's messages as chat templates read them: text content, `developer` as `system`,
    tool-call arguments as objects (templates serialise them themselves)."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        entry: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": message.text(),
        }
        if message.name:
            entry["name"] = message.name
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            calls = []
            for j, call in enumerate(message.tool_calls):
                arguments: Any = call.function.arguments
                if isinstance(arguments, str):
                    try:
                        arguments = json.loads(arguments) if arguments.strip() else {}
                    except ValueError:
                        arguments = None
                if not isinstance(arguments, dict):
                    param = f"messages.{i}.tool_calls.{j}.function.arguments"
                    raise InvalidInput(f"`{param}` must be a JSON object", param=param)
                calls.append(
                    {
                        "id": call.id or f"call_{i}_{j}",
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": arguments},
                    }
                )
            entry["tool_calls"] = calls
        out.append(entry)
    return out


@dataclass
class Outcome:
    """One generation's result so far."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str | None = None

    def finish(self, raw: str, stopped: bool) -> str:
        """OpenAI's finish_reason from the engine's (`stop`, `length`, `cancelled`)."""
        if raw == "length" and not stopped:
            return "length"
        return "tool_calls" if self.tool_calls else "stop"


class Generation:
    """One submitted request: the engine's events as an async iterator; cancelled when left."""

    def __init__(
        self, front: LlmFrontend, runner: Any, prompt_ids: list[int], body: Any, limit: int | None
    ) -> None:
        from runners.llm import LlmBusy, LlmRequest

        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[LlmEvent] = asyncio.Queue()
        self.runner = runner
        self.front = front
        self.prompt_tokens = len(prompt_ids)
        self.started = time.perf_counter()
        self.done = False
        context = int(runner.context_length)
        room = context - len(prompt_ids)
        if room < 1:
            raise ContextLengthExceeded(
                f"the prompt is {len(prompt_ids)} tokens; this model's context is {context} "
                "tokens (BOTMODELS_LLM_CONTEXT), which must hold the prompt and at least one "
                "generated token",
                param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
            )
        request = LlmRequest(
            prompt_ids=prompt_ids,
            max_new_tokens=min(limit, room) if limit is not None else room,
            temperature=float(body.temperature),
            top_p=float(body.top_p),
            seed=body.seed,
        )
        try:
            with runner_errors():
                self.handle: LlmHandle = runner.submit(request, self._on_event)
        except LlmBusy as exc:
            stats = front.safe_stats(runner)
            raise Overloaded(
                f"the language model is at capacity ({stats.get('running', '?')} running, "
                f"{stats.get('waiting', '?')} waiting: BOTMODELS_LLM_MAX_RUNNING, "
                "BOTMODELS_LLM_MAX_WAITING); retry shortly",
                headers={"Retry-After": "1"},
            ) from exc
        front.metrics.sync(runner)

    def _on_event(self, event: LlmEvent) -> None:
        # The engine's thread: hand over, never block; never raise into the engine (a loop
        # closed at shutdown has no one left to read the event).
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def events(self) -> AsyncIterator[LlmEvent]:
        first = True
        try:
            while True:
                event = await self.queue.get()
                if first and (event.text or event.finish_reason is not None):
                    TTFT.labels("local").observe(time.perf_counter() - self.started)
                    first = False
                self.front.metrics.sync(self.runner, every_s=0.25)
                yield event
                if event.finish_reason is not None:
                    self.done = True
                    return
        finally:
            self.close()

    def close(self) -> None:
        """Left early (stop string, client gone, error): free the slot at the next step."""
        if not self.done:
            self.done = True
            self.handle.cancel()
        self.front.metrics.sync(self.runner)
        # The engine frees the slot at its next step: record the state once it has.
        self.loop.call_later(0.2, self.front.metrics.sync, self.runner)


class LlmFrontend:
    def __init__(
        self,
        settings: Settings,
        lease: Callable[[], contextlib.AbstractAsyncContextManager[Any]],
        *,
        pool: RunnerPool | None = None,
        remote: OpenAIRemote | None = None,
    ) -> None:
        self.settings = settings
        # `async with lease() as runner`: the runner, loaded and held (never unloaded) until the
        # answer ends: a stream holds it until its last event (botmodels/pool.py, acquire).
        self._lease = lease
        self.pool = pool
        self.remote = remote
        self.metrics = EngineMetrics()
        self.created = int(time.time())
        # Chat templates and tokenizers block: a small pool of their own, off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="botmodels-llm")

    # -- names --------------------------------------------------------------------------------
    def served_name(self) -> str:
        slot = self.pool.slot("llm") if self.pool is not None else None
        return slot.tag.split(":")[0] if slot is not None else "llm"

    def aliases(self) -> list[str]:
        names = ["default", *self.settings.llm_aliases]
        return [n for n in dict.fromkeys(names) if n != self.served_name()]

    def model_cards(self, remote_name: str | None = None) -> list[dict[str, Any]]:
        """`/v1/models`: every enabled runner's model, and the LLM's aliases. A remote LLM is
        listed by the remote's own name (`remote_name`), when it says one."""
        cards: list[dict[str, Any]] = []
        slots = self.pool.slots if self.pool is not None else {}
        for kind, slot in slots.items():
            name = remote_name if kind == "llm" and remote_name else slot.tag.split(":")[0]
            cards.append(self._card(name, kind))
        if "llm" in slots:
            cards += [self._card(alias, "llm") for alias in self.aliases()]
        return cards

    def _card(self, name: str, kind: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": OWNER,
            "botmodels_runner": kind,
        }

    @staticmethod
    def safe_stats(runner: Any) -> dict[str, int]:
        try:
            stats: dict[str, int] = runner.stats()
        except Exception:  # only for a message
            log.debug("llm stats unavailable", exc_info=True)
            return {}
        return stats

    # -- the routes -----------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        payload = await _read_json(request)
        body = parse_request(ChatCompletionRequest, payload)
        if self.remote is not None:
            return await self.remote.forward("/v1/chat/completions", payload, body.stream)
        return await self._leased(lambda runner, lease: self._chat(runner, body, lease))

    async def _leased(
        self, answer: Callable[[Any, contextlib.AsyncExitStack], Awaitable[Response]]
    ) -> Response:
        """`answer(runner, lease)` with the runner held; a stream releases it when it ends."""
        lease = contextlib.AsyncExitStack()
        runner = await lease.enter_async_context(self._lease())
        try:
            response = await answer(runner, lease)
        except BaseException:
            await lease.aclose()
            raise
        if not isinstance(response, StreamingResponse):
            await lease.aclose()
        return response

    async def _chat(
        self, runner: Any, body: ChatCompletionRequest, lease: contextlib.AsyncExitStack
    ) -> Response:
        messages = _template_messages(body.messages)
        tools = body.offered_tools()
        loop = asyncio.get_running_loop()

        def render() -> tuple[list[int], bool]:
            with runner_errors():
                ids: list[int] = runner.render_chat(
                    messages, tools=tools, template_kwargs=body.chat_template_kwargs
                )
            return ids, _opens_thinking(runner, ids)

        prompt_ids, thinking_open = await loop.run_in_executor(self._executor, render)
        generation = Generation(self, runner, prompt_ids, body, body.token_limit())
        parser = OutputParser(
            str(getattr(runner, "chat_format", "generic")),
            tools=tools is not None,
            thinking_open=thinking_open,
        )
        ident = "chatcmpl-" + secrets.token_hex(12)
        if body.stream:
            return _stream(self._chat_events(generation, parser, body, ident), generation, lease)
        outcome = await _collect(generation, parser, _stops(runner, body.stops()))
        message: dict[str, Any] = {
            "role": "assistant",
            "content": outcome.text if (outcome.text or not outcome.tool_calls) else None,
        }
        if outcome.reasoning:
            message["reasoning_content"] = outcome.reasoning
        if outcome.tool_calls:
            message["tool_calls"] = [call.openai() for call in outcome.tool_calls]
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.served_name(),
                "choices": [
                    {"index": 0, "message": message, "finish_reason": outcome.finish_reason}
                ],
                "usage": _usage(generation.prompt_tokens, outcome.completion_tokens),
            }
        )

    async def completions(self, request: Request) -> Response:
        payload = await _read_json(request)
        body = parse_request(CompletionRequest, payload)
        if self.remote is not None:
            return await self.remote.forward("/v1/completions", payload, body.stream)
        return await self._leased(lambda runner, lease: self._complete(runner, body, lease))

    async def _complete(
        self, runner: Any, body: CompletionRequest, lease: contextlib.AsyncExitStack
    ) -> Response:
        prompt = body.text()

        def encode() -> list[int]:
            with runner_errors():
                ids: list[int] = runner.encode(prompt)
            return ids

        prompt_ids = await asyncio.get_running_loop().run_in_executor(self._executor, encode)
        generation = Generation(self, runner, prompt_ids, body, body.token_limit())
        ident = "cmpl-" + secrets.token_hex(12)
        if body.stream:
            return _stream(self._text_events(generation, body, ident, prompt), generation, lease)
        outcome = await _collect(generation, None, body.stops())
        return JSONResponse(
            {
                "id": ident,
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.served_name(),
                "choices": [
                    {
                        "index": 0,
                        "text": (prompt if body.echo else "") + outcome.text,
                        "logprobs": None,
                        "finish_reason": outcome.finish_reason,
                    }
                ],
                "usage": _usage(generation.prompt_tokens, outcome.completion_tokens),
            }
        )

    async def models(self) -> dict[str, Any]:
        remote_name = await self.remote.remote_model() if self.remote is not None else None
        return {"object": "list", "data": self.model_cards(remote_name)}

    # -- streams --------------------------------------------------------------------------------
    async def _chat_events(
        self,
        generation: Generation,
        parser: OutputParser,
        body: ChatCompletionRequest,
        ident: str,
    ) -> AsyncIterator[bytes]:
        created, model = int(time.time()), self.served_name()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return sse(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )

        def deltas(parsed: Parsed) -> list[bytes]:
            out = []
            if parsed.reasoning:
                out.append(chunk({"reasoning_content": parsed.reasoning}))
            if parsed.content:
                out.append(chunk({"content": parsed.content}))
            if parsed.tool_calls:
                out.append(chunk({"tool_calls": [c.openai() for c in parsed.tool_calls]}))
            return out

        yield chunk({"role": "assistant", "content": ""})
        outcome = Outcome()
        stops = _stops(generation.runner, body.stops())
        async for parsed, error in _run(generation, parser, stops, outcome):
            if error is not None:
                yield sse(GenerationFailed(error).body())
                yield DONE
                return
            for event in deltas(parsed):
                yield event
        yield chunk({}, outcome.finish_reason)
        if body.include_usage():
            yield sse(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": _usage(generation.prompt_tokens, outcome.completion_tokens),
                }
            )
        yield DONE

    async def _text_events(
        self, generation: Generation, body: CompletionRequest, ident: str, prompt: str
    ) -> AsyncIterator[bytes]:
        created, model = int(time.time()), self.served_name()

        def chunk(text: str, finish: str | None = None, **extra: Any) -> bytes:
            choices = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
            return sse(
                {
                    "id": ident,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": choices,
                    **extra,
                }
            )

        if body.echo:
            yield chunk(prompt)
        outcome = Outcome()
        async for parsed, error in _run(generation, None, body.stops(), outcome):
            if error is not None:
                yield sse(GenerationFailed(error).body())
                yield DONE
                return
            if parsed.content:
                yield chunk(parsed.content)
        yield chunk("", outcome.finish_reason)
        if body.include_usage():
            usage = _usage(generation.prompt_tokens, outcome.completion_tokens)
            yield sse(
                {
                    "id": ident,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        yield DONE


def _opens_thinking(runner: Any, prompt_ids: list[int]) -> bool:
    """Whether the chat template ended the prompt inside `<think>` (Qwen3, DeepSeek-R1 write
    it after the generation prompt): then the model's first text is reasoning. The runner says
    so (`opens_thinking`), else the prompt's last tokens are read back (`decode`)."""
    opens = getattr(runner, "opens_thinking", None)
    if callable(opens):
        return bool(opens(prompt_ids))
    decode = getattr(runner, "decode", None)
    if not callable(decode) or not prompt_ids:
        return False
    tail = str(decode(prompt_ids[-8:])).rstrip()
    return any(tail.endswith(opening) for opening, _ in THINK_TAGS)


def _stops(runner: Any, requested: list[str]) -> list[str]:
    """A chat's stop strings: the request's and the runner's end-of-turn texts (a base model's
    supplied chat template marks a turn's end with text, not a token). A plain completion has
    no turns: only its own."""
    return [*requested, *(str(t) for t in getattr(runner, "stop_texts", ()) if t)]


async def _read_json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # Recursion: nested too deep
        raise InvalidInput(f"body is not valid JSON: {exc}") from None


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _run(
    generation: Generation, parser: OutputParser | None, stops: list[str], outcome: Outcome
) -> AsyncIterator[tuple[Parsed, str | None]]:
    """The engine's events, cut at a stop string and parsed: (what to say, error or None).
    Sets `outcome.finish_reason` and the token count once the generation ends."""
    scanner = StopScanner(stops)

    def parse(text: str, final: bool) -> Parsed:
        if parser is None:
            return Parsed(content=text)
        parsed = parser.feed(text)
        if final:
            tail = parser.finish()
            parsed.content += tail.content
            parsed.reasoning += tail.reasoning
            parsed.tool_calls += tail.tool_calls
        return parsed

    def record(parsed: Parsed) -> Parsed:
        outcome.text += parsed.content
        outcome.reasoning += parsed.reasoning
        outcome.tool_calls += parsed.tool_calls
        return parsed

    async for event in generation.events():
        outcome.completion_tokens += event.tokens
        if event.finish_reason == "error":
            REQUESTS.labels("error").inc()
            yield Parsed(), event.error or "the generation failed"
            return
        text = scanner.feed(event.text)
        if scanner.stopped:  # ends here: the engine stops at its next step
            generation.close()
            parsed = record(parse(text, True))
            outcome.finish_reason = outcome.finish("stop", True)
            REQUESTS.labels(outcome.finish_reason).inc()
            if parsed:
                yield parsed, None
            return
        final = event.finish_reason is not None
        if final:
            text += scanner.finish()
        parsed = record(parse(text, final))
        if final:
            outcome.finish_reason = outcome.finish(str(event.finish_reason), False)
            REQUESTS.labels(outcome.finish_reason).inc()
        if parsed:
            yield parsed, None


async def _collect(
    generation: Generation, parser: OutputParser | None, stops: list[str]
) -> Outcome:
    outcome = Outcome()
    async for _, error in _run(generation, parser, stops, outcome):
        if error is not None:
            raise GenerationFailed(error)
    return outcome


def _stream(
    events: AsyncIterator[bytes], generation: Generation, lease: contextlib.AsyncExitStack
) -> Response:
    """A stream whose every event is one body message; the client leaving cancels it (Starlette
    stops the iterator, whose `finally` cancels the generation). The runner is held until then.
    """

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield event
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]
            generation.close()
            await lease.aclose()

    return StreamingResponse(guarded(), media_type="text/event-stream", headers=SSE_HEADERS)
