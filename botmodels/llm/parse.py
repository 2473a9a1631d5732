"""A language model's raw text -> OpenAI's fields: `content`, `reasoning_content`, `tool_calls`.

Pure and incremental: `OutputParser.feed(text)` takes the text deltas as they come (any chunk
boundary, a marker split anywhere) and returns what can be said for sure so far;
`finish()` flushes the rest. Nothing is emitted twice and nothing is lost: text that might be
the start of a marker is held back until the next delta decides it.

What is recognised (whatever the model's `chat_format`, since a fine-tune may use another
family's markup; tool markup only when the request passed tools):
* reasoning: `<think>…</think>` and `<thinking>…</thinking>`; `thinking_open=True` starts
  inside one (the chat template already wrote `<think>` at the end of the prompt);
* tool calls, chatml/Qwen/Hermes: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`;
* tool calls, Gemma/generic: a fenced block, ```` ```tool_code ```` with a Python call
  (`get_weather(city="Paris")`, optionally inside `print(…)`) or ```` ```json ```` /
  ```` ```tool_call ```` with the JSON above; a fenced block that is not a call stays content;
* tool calls, Llama 3 (`chat_format="llama3"` only): a message that *is* JSON,
  `{"name": …, "parameters": {…}}` (optionally after `<|python_tag|>`, several joined by `;`);
  it is held until the end of the message, since only then is it known to be a call.

`StopScanner` cuts the text at the first `stop` string, holding back a possible partial match.
"""

from __future__ import annotations

import ast
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

THINK_TAGS: tuple[tuple[str, str], ...] = (("<think>", "</think>"), ("<thinking>", "</thinking>"))
# (opening marker, closing marker, how the body is read)
BodyKind = Literal["json", "fenced"]
TOOL_BLOCKS: tuple[tuple[str, str, BodyKind], ...] = (
    ("<tool_call>", "</tool_call>", "json"),
    ("```tool_code", "```", "fenced"),
    ("```tool_call", "```", "fenced"),
    ("```json", "```", "fenced"),
)
PYTHON_TAG = "<|python_tag|>"


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolCall:
    index: int
    id: str
    name: str
    arguments: str  # a JSON object, as text (OpenAI's `function.arguments`)

    def openai(self) -> dict[str, Any]:
        """The call in a message's `tool_calls` (and, with `index`, in a stream's delta)."""
        return {
            "index": self.index,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class Parsed:
    """What one `feed` or `finish` could say for sure."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)


def _held_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the start of a marker (held back)."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:size]):
                best = size
                break
    return best


def _as_arguments(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            return None
    if not isinstance(value, dict):
        return None
    return json.dumps(value, ensure_ascii=False)


def _call_from_object(obj: Any) -> tuple[str, str] | None:
    """(name, arguments JSON) from `{"name", "arguments"|"parameters"}` (or OpenAI's
    `{"function": {...}}`), else None."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    raw = obj.get("arguments", obj.get("parameters", {}))
    arguments = _as_arguments(raw)
    return (name, arguments) if arguments is not None else None


def calls_from_json(text: str) -> list[tuple[str, str]] | None:
    """Tool calls written as JSON: one object, a list of them, or objects joined by `;`."""
    text = text.strip()
    if text.startswith(PYTHON_TAG):
        text = text[len(PYTHON_TAG) :].strip()
    if not text:
        return None
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parts = [p for p in text.split(";") if p.strip()]
        if len(parts) < 2:
            return None
        try:
            parsed = [json.loads(p) for p in parts]
        except ValueError:
            return None
    objects = parsed if isinstance(parsed, list) else [parsed]
    calls = [_call_from_object(obj) for obj in objects]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def calls_from_python(text: str) -> list[tuple[str, str]] | None:
    """Gemma's tool_code: one Python call per line, keyword arguments with literal values,
    optionally inside `print(...)`. Never evaluated: read from the syntax tree."""
    try:
        tree = ast.parse(text.strip(), mode="exec")
    except (SyntaxError, ValueError):
        return None
    calls: list[tuple[str, str]] = []
    for statement in tree.body:
        if not isinstance(statement, ast.Expr) or not isinstance(statement.value, ast.Call):
            return None
        call = statement.value
        if _dotted(call.func) == "print" and len(call.args) == 1:
            inner = call.args[0]
            if isinstance(inner, ast.Call):
                call = inner
        name = _dotted(call.func)
        if name is None or call.args:
            return None
        arguments: dict[str, Any] = {}
        for keyword in call.keywords:
            if keyword.arg is None:
                return None
            try:
                arguments[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                return None
        try:
            calls.append((name, json.dumps(arguments, ensure_ascii=False)))
        except (TypeError, ValueError):  # a set or bytes literal is no JSON
            return None
    return calls or None


def _calls_from_body(body: str, kind: BodyKind) -> list[tuple[str, str]] | None:
    if kind == "json":
        return calls_from_json(body)
    return calls_from_json(body) or calls_from_python(body)


class OutputParser:
    """One generation's text, delta by delta (see the module's docstring)."""

    def __init__(
        self, chat_format: str = "generic", *, tools: bool = False, thinking_open: bool = False
    ) -> None:
        self.tools = tools
        self.json_message = tools and chat_format == "llama3"
        self._blocks = TOOL_BLOCKS if tools else ()
        self._opens = tuple(o for o, _ in THINK_TAGS) + tuple(o for o, _, _ in self._blocks)
        self._buf = ""
        # "text", "think", "tool" (inside a tool block), "message" (a Llama JSON message)
        self._mode = "think" if thinking_open else "text"
        self._close = THINK_TAGS[0][1] if thinking_open else ""
        self._block: tuple[str, str, BodyKind] | None = None
        self._started = False  # any non-blank content emitted (a Llama JSON message is first)
        self._strip_next = False  # the blank line after `</think>` is not content
        self._calls: list[ToolCall] = []

    @property
    def tool_calls(self) -> list[ToolCall]:
        return list(self._calls)

    def feed(self, text: str) -> Parsed:
        self._buf += text
        out = Parsed()
        self._run(out, final=False)
        return out

    def finish(self) -> Parsed:
        out = Parsed()
        self._run(out, final=True)
        if self._mode == "think":
            out.reasoning += self._buf
        elif self._mode == "tool":  # cut off inside a block: a call if it reads as one
            assert self._block is not None
            opening, _, kind = self._block
            self._tool_or_text(out, opening, self._buf, "", kind)
        elif self._mode == "message":
            self._message(out, self._buf)
        else:
            self._text(out, self._buf)
        self._buf = ""
        return out

    # -- the state machine ----------------------------------------------------------------
    def _run(self, out: Parsed, *, final: bool) -> None:
        while self._buf:
            if self._mode == "text":
                if not self._step_text(out, final=final):
                    return
            elif self._mode == "think":
                if not self._step_think(out, final=final):
                    return
            elif self._mode == "tool":
                if not self._step_tool(out):
                    return
            else:  # "message": held whole until finish()
                return

    def _step_text(self, out: Parsed, *, final: bool) -> bool:
        if self._strip_next:
            self._buf = self._buf.lstrip("\r\n")
            if not self._buf:
                return False
            self._strip_next = False
        if self.json_message and not self._started:
            stripped = self._buf.lstrip()
            if not stripped:
                return False  # blank so far: not known yet
            if stripped.startswith("{") or stripped.startswith(PYTHON_TAG):
                self._mode = "message"
                return False
            if PYTHON_TAG.startswith(stripped) and not final:
                return False
        found = [(self._buf.find(m), m) for m in self._opens]
        hits = [(i, m) for i, m in found if i >= 0]
        if hits:
            index, marker = min(hits, key=lambda h: (h[0], -len(h[1])))
            self._text(out, self._buf[:index])
            self._buf = self._buf[index + len(marker) :]
            think = dict(THINK_TAGS).get(marker)
            if think is not None:
                self._mode, self._close = "think", think
            else:
                self._mode = "tool"
                self._block = next(b for b in self._blocks if b[0] == marker)
            return True
        held = 0 if final else _held_suffix(self._buf, self._opens)
        self._text(out, self._buf[: len(self._buf) - held])
        self._buf = self._buf[len(self._buf) - held :]
        return False

    def _step_think(self, out: Parsed, *, final: bool) -> bool:
        index = self._buf.find(self._close)
        if index >= 0:
            out.reasoning += self._buf[:index]
            self._buf = self._buf[index + len(self._close) :]
            self._mode = "text"
            self._strip_next = True
            return True
        held = 0 if final else _held_suffix(self._buf, (self._close,))
        out.reasoning += self._buf[: len(self._buf) - held]
        self._buf = self._buf[len(self._buf) - held :]
        return False

    def _step_tool(self, out: Parsed) -> bool:
        assert self._block is not None
        opening, closing, kind = self._block
        index = self._buf.find(closing)
        if index < 0:
            return False  # a call is emitted whole, once it is closed
        body, self._buf = self._buf[:index], self._buf[index + len(closing) :]
        self._mode, self._block = "text", None
        self._tool_or_text(out, opening, body, closing, kind)
        return True

    # -- emitting ---------------------------------------------------------------------------
    def _text(self, out: Parsed, text: str) -> None:
        if text:
            out.content += text
            self._started = self._started or bool(text.strip())

    def _add_calls(self, out: Parsed, calls: list[tuple[str, str]]) -> None:
        for name, arguments in calls:
            call = ToolCall(len(self._calls), new_call_id(), name, arguments)
            self._calls.append(call)
            out.tool_calls.append(call)

    def _tool_or_text(
        self, out: Parsed, opening: str, body: str, closing: str, kind: BodyKind
    ) -> None:
        calls = _calls_from_body(body, kind)
        if calls is None:
            self._text(out, opening + body + closing)  # not a call after all: said as written
        else:
            self._add_calls(out, calls)
            self._strip_next = True

    def _message(self, out: Parsed, text: str) -> None:
        calls = calls_from_json(text)
        if calls is None:
            self._text(out, text)
        else:
            self._add_calls(out, calls)


class StopScanner:
    """Cuts generated text at the first of the `stop` strings (which is not returned)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._buf = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that is certainly before any stop string; sets `stopped` at one."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self._buf += text
        hits = [i for i in (self._buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._buf = self._buf[: min(hits)], ""
            return out
        held = _held_suffix(self._buf, self.stops)
        out, self._buf = self._buf[: len(self._buf) - held], self._buf[len(self._buf) - held :]
        return out

    def finish(self) -> str:
        out, self._buf = ("" if self.stopped else self._buf), ""
        return out
