"""Language models (transformers causal LMs) with continuous batching.

One stored model folder: a transformers checkpoint (config + safetensors + tokenizer), or a
folder with one `.gguf` file, which transformers reads and dequantizes (`gguf_file=`).

Reads top to bottom: the request/event types the API consumes -> load -> prompts (chat
template, plain text) -> submit/cancel -> the engine thread (continuous batching) -> sampling ->
incremental detokenisation -> the tiny random model for tests.

Continuous batching (iteration-level), on one engine thread:
- a new request is prefilled alone (its prompt in one forward, its own KV cache), then joins
  the running batch at the next decode step;
- each decode step runs every running sequence in ONE forward: the per-sequence caches are
  held together as one left-padded batch cache (a 2-D attention mask hides the padding, and
  explicit position ids keep each sequence's own positions), so N streams cost one weight read
  per step instead of N;
- a sequence that finishes or is cancelled leaves at once: its row is dropped from the batch
  cache and the padding columns no remaining row needs are trimmed.
transformers' own continuous batching (`ContinuousBatchingManager`) was not used: it has one
sampling seed and one greedy/sampling switch per manager, not per request, so "same seed, same
tokens" cannot hold for a request that shares batches, and its paged-attention kernels target
CUDA.

Context rule: `context_length` = min(the model's max positions, the configured context). A
prompt of `context_length` tokens or more is refused (InvalidPrompt); `max_new_tokens` is
clamped so that prompt + generated <= `context_length` (finish "length" there).

Memory: the cache holds every layer's keys and values for every token of every running
sequence (sliding-window layers too: one cache layout for every model), so the worst case is
max_running x context tokens.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runners.base import Device, InvalidItem, Quantization

if TYPE_CHECKING:
    import torch

log = logging.getLogger("botmodels.runners.llm")

# A base model (no chat template of its own) gets this one: a plain transcript, the form base
# models continue best. The turn ends where the model starts the next "User:" line: that text is
# in `stop_texts`, for the caller to add to a chat request's stop strings.
BASE_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] or '' }}\n"
    "{% else %}Tool result: {{ message['content'] }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
BASE_STOP_TEXTS = ("\nUser:",)

ROLES = ("system", "user", "assistant", "tool")
# Prompt tokens decoded with the first generated ones, so that a word's leading space (which
# SentencePiece tokenizers drop at the start of a decode) comes out right.
_DETOKENIZE_CONTEXT = 5


# --- the interface the API consumes ------------------------------------------------------------
@dataclass(frozen=True)
class LlmRequest:
    prompt_ids: list[int]
    max_new_tokens: int  # the caller clamps it to context_length - len(prompt_ids) (>= 1)
    temperature: float  # 0.0 = greedy
    top_p: float  # 1.0 = off
    seed: int | None  # same seed + same prompt + temperature > 0 = same tokens


@dataclass(frozen=True)
class LlmEvent:
    text: str  # decoded text delta: whole UTF-8 characters only
    tokens: int  # generated tokens this event covers
    finish_reason: str | None  # None while running; last event: stop, length, cancelled, error
    error: str | None = None


class LlmBusy(Exception):
    """submit() when running + waiting would exceed the configured capacity."""


class InvalidPrompt(InvalidItem):
    """Bad messages, roles or tools, a chat template that refused them, or a prompt that does
    not fit the context."""

    code = "invalid_prompt"


class LlmHandle(Protocol):
    def cancel(self) -> None: ...


# --- one request inside the engine -------------------------------------------------------------
@dataclass(eq=False)
class _Sequence:
    request: LlmRequest
    on_event: Callable[[LlmEvent], None]
    max_new_tokens: int
    cancelled: threading.Event = field(default_factory=threading.Event)
    generator: Any = None  # torch.Generator, sampling requests only
    generated: list[int] = field(default_factory=list)
    # incremental detokenisation: ids = the prompt's last few + generated
    detok_ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0
    unreported: int = 0  # generated tokens not yet covered by an event
    pad: int = 0  # left-padding columns of this row in the batch cache
    length: int = 0  # real tokens in the cache (= the next token's position)
    finished: bool = False

    def cancel(self) -> None:
        self.cancelled.set()


class LlmRunner:
    kind = "llm"

    def __init__(
        self,
        model_dir: Path,
        *,
        quantization: Quantization,
        device: Device,
        context: int = 4096,
        max_running: int = 8,
        max_waiting: int = 32,
        cpu_dtype: str = "float32",
    ) -> None:
        self.model_dir = model_dir
        self.quantization = quantization
        self.device = device
        self.context = context
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.cpu_dtype = cpu_dtype  # "float32" or "bfloat16" (scripts/bench_llm.py compares)
        self.dtype = "float32"
        self.compute = "float32"
        self.context_length = context
        self.chat_format = "generic"
        self.template_label = "chat"
        self.stop_texts: tuple[str, ...] = ()  # end-of-turn text of the base template
        self.eos_ids: frozenset[int] = frozenset()
        self._model: Any = None
        self._tokenizer: Any = None
        self._vocab_size = 0
        self._cond = threading.Condition()
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._cache: Any = None  # the running batch's DynamicCache (left-padded)
        self._thread: threading.Thread | None = None
        self._closed = False
        # final events wait here until the running list no longer holds their sequence, so
        # that stats() read in a final event's callback already counts the slot as free
        self._finals: list[tuple[_Sequence, LlmEvent]] = []
        self._stats = dict.fromkeys(
            ("steps", "step_sequences", "generated_tokens", "prompt_tokens", "cancelled"), 0
        )

    # 1. Load --------------------------------------------------------------------------------
    def load(self) -> None:
        import torch
        import transformers

        started = time.perf_counter()
        ggufs = sorted(self.model_dir.glob("*.gguf"))
        if len(ggufs) > 1:
            raise ValueError(
                f"{self.model_dir}: {len(ggufs)} .gguf files; the llm runner takes one"
            )
        converted = (self.model_dir / "config.json").is_file()  # export_transformers ran
        gguf: dict[str, Any] = {"gguf_file": ggufs[0].name} if ggufs and not converted else {}
        tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_dir, **gguf)
        options: dict[str, Any] = {}
        if self.quantization == "4bit":
            options["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.float16 if self.device == "cuda" else torch.float32,
            )
            self.dtype, self.compute = "nf4", "float16" if self.device == "cuda" else "float32"
        elif self.quantization == "int8" and self.device != "cpu":
            options["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True)
            self.dtype, self.compute = "int8", "float16"
        if self.device in ("cuda", "mps"):
            options["dtype"] = torch.float16
            if self.quantization == "none":
                self.dtype = self.compute = "float16"
        else:
            # fp32 on CPU by default: bf16 halves the weights' memory traffic but is fast only
            # on CPUs with bf16 matmul kernels, and rounds the logits coarser; fp16 has no fast
            # CPU kernels. The server picks bfloat16 where the CPU has bf16 instructions
            # (BOTMODELS_LLM_CPU_DTYPE); scripts/bench_llm.py --dtype compares.
            if self.quantization == "int8":
                self.cpu_dtype = "float32"  # torch's dynamic int8 quantizes float32 Linears
            options["dtype"] = getattr(torch, self.cpu_dtype)
            if self.quantization == "none":
                self.dtype = self.compute = self.cpu_dtype
        if "quantization_config" in options:
            options["device_map"] = self.device
        model: Any = transformers.AutoModelForCausalLM.from_pretrained(
            self.model_dir, **gguf, **options
        )
        if "quantization_config" not in options:
            model = model.to(self.device)
        if self.device == "cpu" and self.quantization == "int8":
            # torch dynamic qint8: int8 weights, activations quantized per call (CPU only).
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
            self.dtype, self.compute = "qint8-dynamic", "float32"
        model.eval()

        config = model.config
        max_positions = int(getattr(config, "max_position_embeddings", 0) or self.context)
        self.context_length = min(max_positions, self.context)
        self._vocab_size = int(config.vocab_size)
        eos: set[int] = set()
        for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list):
                eos.update(int(i) for i in source)
        self.eos_ids = frozenset(eos)
        template = tokenizer.chat_template
        if not template:
            tokenizer.chat_template = BASE_TEMPLATE
            self.template_label = "base"
            self.stop_texts = BASE_STOP_TEXTS
            self.chat_format = "generic"
        else:
            self.chat_format = _chat_format(str(template))
        self._tokenizer = tokenizer
        self._model = model
        self._thread = threading.Thread(target=self._engine, name="llm-engine", daemon=True)
        self._thread.start()
        log.info(
            "llm %s (%s, %s template, %s markup) loaded on %s (%s) in %.1f s; context %d",
            self.model_dir.name,
            type(model).__name__,
            self.template_label,
            self.chat_format,
            self.device,
            self.dtype,
            time.perf_counter() - started,
            self.context_length,
        )

    # 2. Prompts -----------------------------------------------------------------------------
    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """The chat template over `messages` (and `tools`), with the generation prompt: the
        prompt's token ids. Raises InvalidPrompt for bad input or a prompt past the context."""
        import jinja2

        tokenizer = self._loaded_tokenizer()
        clean = _check_messages(messages)
        if tools is not None:
            _check_tools(tools)
        kwargs = dict(template_kwargs or {})
        try:
            text = tokenizer.apply_chat_template(
                clean,
                tools=tools or None,
                add_generation_prompt=True,
                tokenize=False,
                **kwargs,
            )
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as exc:
            # A template's own raise_exception (e.g. "roles must alternate") lands here.
            raise InvalidPrompt(
                f"the chat template refused the messages: {exc}", param="messages"
            ) from exc
        ids: list[int] = tokenizer(text, add_special_tokens=False).input_ids
        self._check_fits(ids, "messages")
        return ids

    def encode(self, text: str) -> list[int]:
        """A plain prompt (/v1/completions), with the BOS token where the model wants one."""
        if not isinstance(text, str):
            raise InvalidPrompt("prompt must be a string", param="prompt")
        ids: list[int] = self._loaded_tokenizer()(text, add_special_tokens=True).input_ids
        if not ids:
            raise InvalidPrompt("prompt is empty", param="prompt")
        self._check_fits(ids, "prompt")
        return ids

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text, special tokens dropped (as the events' text)."""
        return str(self._loaded_tokenizer().decode(ids, skip_special_tokens=True))

    def _check_fits(self, ids: list[int], param: str) -> None:
        if len(ids) >= self.context_length:
            raise InvalidPrompt(
                f"the prompt is {len(ids)} tokens; this model's context is "
                f"{self.context_length} tokens (prompt + completion), so at most "
                f"{self.context_length - 1} prompt tokens",
                param=param,
                code="context_length_exceeded",
            )

    def _loaded_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("LlmRunner used before load()")
        return self._tokenizer

    # 3. Submit, cancel, stats, close -----------------------------------------------------------
    def submit(self, request: LlmRequest, on_event: Callable[[LlmEvent], None]) -> LlmHandle:
        """Queue a request; its events come on the engine thread. Never blocks."""
        import torch

        if self._model is None:
            raise RuntimeError("LlmRunner.submit() called before load()")
        ids = request.prompt_ids
        if not ids:
            raise InvalidPrompt("the prompt has no tokens", param="prompt")
        if any(not isinstance(i, int) or not 0 <= i < self._vocab_size for i in ids):
            raise InvalidPrompt(
                f"prompt token ids must be integers in [0, {self._vocab_size})", param="prompt"
            )
        self._check_fits(ids, "prompt")
        if request.max_new_tokens < 1:
            raise InvalidPrompt("max_new_tokens must be at least 1", param="max_tokens")
        if request.temperature < 0 or not 0 < request.top_p <= 1:
            raise InvalidPrompt(
                "temperature must be >= 0 and top_p in (0, 1]",
                param="temperature" if request.temperature < 0 else "top_p",
            )
        sequence = _Sequence(
            request=request,
            on_event=on_event,
            max_new_tokens=min(request.max_new_tokens, self.context_length - len(ids)),
        )
        if request.temperature > 0:
            seed = request.seed if request.seed is not None else random.getrandbits(63)
            sequence.generator = torch.Generator(device=self.device).manual_seed(seed)
        context = ids[-_DETOKENIZE_CONTEXT:]
        sequence.detok_ids = list(context)
        sequence.prefix_offset = 0
        sequence.read_offset = len(context)
        with self._cond:
            if self._closed:
                raise RuntimeError("the llm runner is closed")
            if len(self._running) + len(self._waiting) >= self.max_running + self.max_waiting:
                raise LlmBusy(
                    f"{len(self._running)} sequences running and {len(self._waiting)} waiting: "
                    "at capacity"
                )
            self._waiting.append(sequence)
            self._cond.notify()
        return _Handle(sequence, self._cond)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "running": len(self._running),
                "waiting": len(self._waiting),
                **self._stats,
            }

    def close(self) -> None:
        """Stop the engine thread; every pending request gets a final "error" event."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._cond:
            pending = [*self._running, *self._waiting]
            self._running.clear()
            self._waiting.clear()
            self._cache = None
        for sequence in pending:
            self._finish(sequence, "error", error="the language model was shut down")
        self._flush()

    # 4. The engine thread ------------------------------------------------------------------
    def _engine(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closed and not self._waiting and not self._running:
                        self._cond.wait()
                    if self._closed:
                        return
                    admitted: list[_Sequence] = []
                    while self._waiting and len(self._running) + len(admitted) < self.max_running:
                        admitted.append(self._waiting.popleft())
                    running = list(self._running)
                try:
                    self._step(running, admitted)
                except (RuntimeError, ValueError, IndexError) as exc:
                    # A failed forward (out of memory, a kernel error) fails the sequences in
                    # it, not the engine: the next request starts from an empty batch.
                    log.exception("llm step failed")
                    with self._cond:
                        failed = [*self._running, *admitted]
                        self._running.clear()
                        self._cache = None
                    for sequence in failed:
                        self._finish(sequence, "error", error=f"generation failed: {exc}")
                self._flush()

    def _step(self, running: list[_Sequence], admitted: list[_Sequence]) -> None:
        """One engine iteration: drop cancelled sequences, prefill the admitted ones and join
        them to the batch, then one decode step over the whole batch."""
        keep = [s for s in running if not s.cancelled.is_set()]
        for sequence in running:
            if sequence.cancelled.is_set():
                self._finish(sequence, "cancelled")
        self._leave(running, keep)
        with self._cond:
            self._running = keep
        self._flush()
        for sequence in admitted:
            if sequence.cancelled.is_set():
                self._finish(sequence, "cancelled")
                continue
            cache, token = self._prefill(sequence)
            if self._emit(sequence, token):
                self._join(sequence, cache)
            self._flush()
        with self._cond:
            # a request cancelled while waiting leaves with its final event now
            for sequence in [s for s in self._waiting if s.cancelled.is_set()]:
                self._waiting.remove(sequence)
                self._finish(sequence, "cancelled")
        self._flush()
        if self._running:
            self._decode()
            self._flush()

    def _prefill(self, sequence: _Sequence) -> tuple[Any, int]:
        import torch
        from transformers import DynamicCache

        ids = sequence.request.prompt_ids
        cache = DynamicCache()  # full-length layers for every model: one layout to pad and join
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self._model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
        sequence.length = len(ids)
        self._stats["prompt_tokens"] += len(ids)
        token = self._sample(out.logits[:, -1, :], [sequence])[0]
        return cache, token

    def _join(self, sequence: _Sequence, cache: Any) -> None:
        """Add a prefilled sequence's cache to the batch cache as a new row, left-padding the
        shorter side so that every row ends at the same column."""
        import torch

        if self._cache is None or not self._running:
            self._cache = cache
            sequence.pad = 0
            with self._cond:
                self._running = [sequence]
            return
        batch_len = self._cache.get_seq_length()
        new_len = cache.get_seq_length()
        total = max(batch_len, new_len)
        for batch_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            for name in ("keys", "values"):
                old = getattr(batch_layer, name)
                new = getattr(new_layer, name)
                old = _left_pad(old, total - batch_len)
                new = _left_pad(new, total - new_len)
                setattr(batch_layer, name, torch.cat([old, new], dim=0))
        for other in self._running:
            other.pad += total - batch_len
        sequence.pad = total - new_len
        with self._cond:
            self._running = [*self._running, sequence]

    def _leave(self, before: list[_Sequence], after: list[_Sequence]) -> None:
        """Drop the rows of the sequences that left, and the padding columns every remaining
        row has (so a long sequence that left does not keep the batch wide)."""
        import torch

        if len(after) == len(before) or self._cache is None:
            return
        if not after:
            self._cache = None
            return
        rows = torch.tensor(
            [i for i, s in enumerate(before) if s in after], dtype=torch.long, device=self.device
        )
        trim = min(s.pad for s in after)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, rows)[:, :, trim:, :]
            layer.values = layer.values.index_select(0, rows)[:, :, trim:, :]
        for sequence in after:
            sequence.pad -= trim

    def _decode(self) -> None:
        import torch

        running = self._running
        width = self._cache.get_seq_length()
        mask = torch.ones((len(running), width + 1), dtype=torch.long, device=self.device)
        for row, sequence in enumerate(running):
            mask[row, : sequence.pad] = 0
        input_ids = torch.tensor(
            [[s.generated[-1]] for s in running], dtype=torch.long, device=self.device
        )
        positions = torch.tensor(
            [[s.length] for s in running], dtype=torch.long, device=self.device
        )
        out = self._model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=self._cache,  # grown in place by one column
            use_cache=True,
            logits_to_keep=1,
        )
        self._stats["steps"] += 1
        self._stats["step_sequences"] += len(running)
        tokens = self._sample(out.logits[:, -1, :], running)
        keep = []
        for sequence, token in zip(running, tokens, strict=True):
            sequence.length += 1
            if self._emit(sequence, token):
                keep.append(sequence)
        self._leave(running, keep)
        with self._cond:
            self._running = keep

    # 5. Sampling ------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, sequences: list[_Sequence]) -> list[int]:
        """One token per row: argmax for temperature 0, else temperature + top-p (nucleus)
        sampling with the sequence's own generator (its seed)."""
        import torch

        logits = logits.float()
        tokens: list[int] = logits.argmax(dim=-1).tolist()
        for row, sequence in enumerate(sequences):
            request = sequence.request
            if request.temperature <= 0:
                continue
            probs = torch.softmax(logits[row] / request.temperature, dim=-1)
            if request.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                cumulative = torch.cumsum(sorted_probs, dim=-1)
                # keep the smallest prefix whose mass reaches top_p (always the top token)
                sorted_probs[(cumulative - sorted_probs) >= request.top_p] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            tokens[row] = int(torch.multinomial(probs, 1, generator=sequence.generator).item())
        return tokens

    # 6. Events --------------------------------------------------------------------------------
    def _emit(self, sequence: _Sequence, token: int) -> bool:
        """Record a generated token and send its text; False when the sequence is done (its
        final event sent)."""
        sequence.generated.append(token)
        sequence.unreported += 1
        self._stats["generated_tokens"] += 1
        if token in self.eos_ids:
            self._finish(sequence, "stop")
            return False
        sequence.detok_ids.append(token)
        last = len(sequence.generated) >= sequence.max_new_tokens
        text = self._text_delta(sequence, flush=last)
        if last:
            self._finish(sequence, "length", text=text)
            return False
        if text:
            self._send(
                sequence, LlmEvent(text=text, tokens=sequence.unreported, finish_reason=None)
            )
            sequence.unreported = 0
        return not sequence.finished

    def _text_delta(self, sequence: _Sequence, *, flush: bool = False) -> str:
        """The new whole characters since the last delta (incremental detokenisation: decode a
        window before and after, emit the difference once it ends in no partial character).
        `flush`: the sequence ends here, so a partial character left is sent as U+FFFD."""
        ids = sequence.detok_ids
        before = self.decode(ids[sequence.prefix_offset : sequence.read_offset])
        after = self.decode(ids[sequence.prefix_offset :])
        if len(after) > len(before) and (flush or not after.endswith("\ufffd")):
            sequence.prefix_offset = sequence.read_offset
            sequence.read_offset = len(ids)
            return after[len(before) :]
        return ""

    def _finish(
        self, sequence: _Sequence, reason: str, *, text: str = "", error: str | None = None
    ) -> None:
        if sequence.finished:
            return
        sequence.finished = True
        if reason == "cancelled":
            self._stats["cancelled"] += 1
        self._finals.append((sequence, LlmEvent(text, sequence.unreported, reason, error)))
        sequence.unreported = 0

    def _flush(self) -> None:
        """Send the final events queued since the last flush."""
        finals, self._finals = self._finals, []
        for sequence, event in finals:
            self._send(sequence, event)

    def _send(self, sequence: _Sequence, event: LlmEvent) -> None:
        try:
            sequence.on_event(event)
        except Exception:  # the caller's callback must not stop the engine
            log.exception("llm on_event callback failed; the request is cancelled")
            sequence.cancel()


class _Handle:
    def __init__(self, sequence: _Sequence, cond: threading.Condition) -> None:
        self._sequence = sequence
        self._cond = cond

    def cancel(self) -> None:
        self._sequence.cancel()
        with self._cond:
            self._cond.notify()


def _left_pad(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """[batch, heads, length, dim] with `columns` zero columns before `length`."""
    import torch

    if columns == 0:
        return tensor
    shape = (tensor.shape[0], tensor.shape[1], columns, tensor.shape[3])
    return torch.cat([tensor.new_zeros(shape), tensor], dim=2)


# --- message and tool checks ---------------------------------------------------------------------
def _check_messages(messages: object) -> list[dict[str, Any]]:
    """OpenAI chat messages -> what chat templates take: content as one string (text parts
    joined with a newline), tool-call arguments as objects where they are JSON."""
    if not isinstance(messages, list) or not messages:
        raise InvalidPrompt("messages must be a non-empty list", param="messages")
    clean: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidPrompt(f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidPrompt(
                f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})",
                param=f"{where}.role",
            )
        content = message.get("content")
        tool_calls = message.get("tool_calls")
        if isinstance(content, list):
            content = _join_text_parts(content, f"{where}.content")
        elif content is None:
            if role != "assistant" or not tool_calls:
                raise InvalidPrompt(f"{where}.content is required", param=f"{where}.content")
            content = ""
        elif not isinstance(content, str):
            raise InvalidPrompt(
                f"{where}.content must be a string or a list of text parts",
                param=f"{where}.content",
            )
        item: dict[str, Any] = {**message, "content": content}
        if tool_calls is not None:
            item["tool_calls"] = _check_tool_calls(tool_calls, f"{where}.tool_calls")
        clean.append(item)
    return clean


def _join_text_parts(parts: list[Any], where: str) -> str:
    texts: list[str] = []
    for j, part in enumerate(parts):
        if (
            not isinstance(part, dict)
            or part.get("type") != "text"
            or not isinstance(part.get("text"), str)
        ):
            raise InvalidPrompt(
                f"{where}[{j}] must be a text part ({{'type': 'text', 'text': '...'}}); "
                "this model reads text only",
                param=f"{where}[{j}]",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _check_tool_calls(tool_calls: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(tool_calls, list):
        raise InvalidPrompt(f"{where} must be a list", param=where)
    out: list[dict[str, Any]] = []
    for j, call in enumerate(tool_calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidPrompt(
                f"{where}[{j}] must be {{'type': 'function', 'function': {{'name', 'arguments'}}}}",
                param=f"{where}[{j}]",
            )
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):  # else printed as it is
                arguments = json.loads(arguments) if arguments.strip() else {}
        out.append({**call, "function": {**function, "arguments": arguments}})
    return out


def _check_tools(tools: object) -> None:
    if not isinstance(tools, list):
        raise InvalidPrompt("tools must be a list", param="tools")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise InvalidPrompt(
                f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., "
                "'parameters': {...}}}}}",
                param=f"tools[{i}]",
            )
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidPrompt(
                f"tools[{i}].function.parameters must be a JSON Schema object",
                param=f"tools[{i}].function.parameters",
            )


def _chat_format(template: str) -> str:
    """Which markup the model's turns (and tool calls) use, read from its chat template."""
    if "<|im_start|>" in template:
        return "chatml"  # Qwen, SmolLM, Hermes: <tool_call>{json}</tool_call>, <think>
    if "<|start_header_id|>" in template:
        return "llama3"  # Llama 3.x: a JSON object (or <|python_tag|>) as the whole turn
    if "<start_of_turn>" in template:
        return "gemma"
    return "generic"


# --- tiny random model (synthetic) for tests ---------------------------------------------------
# A ChatML template (the Qwen form) that renders tools and tool calls, so the API's tool paths
# run on the tiny model: tools as JSON lines inside <tools></tools> in the system turn, calls as
# <tool_call>{"name", "arguments"}</tool_call>, results as <tool_response> in a user turn.
TINY_CHAT_TEMPLATE = """\
{%- if tools -%}
<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools

You may call one or more functions. Function signatures:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

Call one as <tool_call>{"name": <name>, "arguments": <json-object>}</tool_call><|im_end|>
{% elif messages[0].role == 'system' -%}
<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif -%}
{%- for message in messages -%}
{%- if message.role == 'tool' -%}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role != 'system' -%}
<|im_start|>{{ message.role }}
{{ message.content }}
{%- for call in message.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""
LM_HEAD_SCALE = 8.0
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def export_transformers(model_dir: Path) -> None:
    """The import step's export for a GGUF model: the dequantized weights (safetensors, float32)
    and the tokenizer converted once, beside the .gguf. Why: transformers rebuilds both from the
    GGUF at every load (minutes on a small CPU); from the converted files a load takes seconds.
    The runner prefers them when present. A folder without a .gguf is left as it is."""
    import transformers

    ggufs = sorted(model_dir.glob("*.gguf"))
    if len(ggufs) != 1 or (model_dir / "config.json").is_file():
        return
    config = transformers.GgufConfig(gguf_file=ggufs[0].name, dequantize=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, gguf_file=ggufs[0].name)
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, gguf_file=ggufs[0].name, quantization_config=config
    )
    # Dequantized: plain float tensors, which transformers still refuses to save while the
    # model carries its GGUF quantizer. The saved model is an ordinary float checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.save_pretrained(model_dir)
    model.save_pretrained(model_dir)


def build_tiny(folder: Path) -> None:
    """A random-weight two-layer Llama (hidden 64, 4 heads, 2 KV heads: valid for every
    quantizer) with a byte-level tokenizer (the 256 bytes, no merges, plus ChatML's special
    tokens) and TINY_CHAT_TEMPLATE. Greedy decoding of random weights is stable: the output
    layer is scaled up so that the top logits are far apart."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_tokens = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(sorted(byte_tokens))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",  # noqa: S106
        pad_token="<|endoftext|>",  # noqa: S106
        additional_special_tokens=list(TINY_SPECIAL_TOKENS),
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.generation_config.eos_token_id = eos
    model.save_pretrained(folder)
