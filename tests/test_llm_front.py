"""The language model's output parsers (botmodels/llm/parse.py): pure, fed in every split.

Each case's text is fed whole, one character at a time, and cut at every single position and
at random sets of positions: the answer (content, reasoning, calls) must be the same each way,
and what a delta says is never taken back.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from botmodels.llm.parse import OutputParser, StopScanner, calls_from_python

Result = tuple[str, str, list[tuple[str, dict[str, Any]]]]


def splits(text: str) -> Iterator[list[str]]:
    yield [text]
    yield list(text)
    for cut in range(1, len(text)):
        yield [text[:cut], text[cut:]]
    rng = random.Random(len(text))
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(2, 6))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def run(parts: list[str], **options: Any) -> Result:
    parser = OutputParser(**options)
    content = reasoning = ""
    calls: list[tuple[str, dict[str, Any]]] = []
    for piece in [*(parser.feed(p) for p in parts), parser.finish()]:
        content += piece.content
        reasoning += piece.reasoning
        calls += [(c.name, json.loads(c.arguments)) for c in piece.tool_calls]
    indexes = [c.index for c in parser.tool_calls]
    assert indexes == list(range(len(indexes)))
    assert all(c.id.startswith("call_") for c in parser.tool_calls)
    return content, reasoning, calls


def check(text: str, expected: Result, **options: Any) -> None:
    for parts in splits(text):
        assert run(parts, **options) == expected, parts


def test_plain_text_passes_through_unchanged() -> None:
    text = "Hello <b>world</b> a < b and ``` fences ```"
    check(text, (text, "", []))
    check(text, (text, "", []), chat_format="chatml", tools=True)


def test_think_becomes_reasoning() -> None:
    check(
        "<think>Let me see.\nOK</think>\n\nThe answer is 4.",
        ("The answer is 4.", "Let me see.\nOK", []),
    )
    check("<thinking>hmm</thinking>Yes", ("Yes", "hmm", []))


def test_think_opened_by_the_template() -> None:
    check("weighing it</think>\n\nParis.", ("Paris.", "weighing it", []), thinking_open=True)
    check("cut off mid thought", ("", "cut off mid thought", []), thinking_open=True)


def test_chatml_tool_calls() -> None:
    text = (
        "Checking.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}</tool_call>'
    )
    expected: Result = (
        "Checking.\n",
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})],
    )
    check(text, expected, chat_format="chatml", tools=True)


def test_reasoning_then_a_tool_call() -> None:
    text = '<think>need weather</think>\n<tool_call>{"name":"w","arguments":{}}</tool_call>'
    check(text, ("", "need weather", [("w", {})]), chat_format="chatml", tools=True)


def test_tool_markup_without_tools_is_content() -> None:
    text = '<tool_call>{"name": "x", "arguments": {}}</tool_call>'
    check(text, (text, "", []), chat_format="chatml")


def test_a_block_that_is_no_call_stays_content() -> None:
    text = "<tool_call>not json</tool_call> after"
    check(text, (text, "", []), chat_format="chatml", tools=True)
    code = "Here:\n```json\n[1, 2, 3]\n```\n"
    check(code, (code, "", []), chat_format="gemma", tools=True)


def test_llama3_json_message() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "Lisboa"}}'
    check(text, ("", "", [("get_weather", {"city": "Lisboa"})]), chat_format="llama3", tools=True)
    tagged = '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}'
    check(tagged, ("", "", [("a", {}), ("b", {"x": 1})]), chat_format="llama3", tools=True)
    prose = "The weather is {fine}."
    check(prose, (prose, "", []), chat_format="llama3", tools=True)
    broken = '{"name": "a", "param'
    check(broken, (broken, "", []), chat_format="llama3", tools=True)


def test_gemma_tool_code_and_json_blocks() -> None:
    text = '```tool_code\nprint(get_weather(city="Paris", days=2))\n```'
    check(
        text,
        ("", "", [("get_weather", {"city": "Paris", "days": 2})]),
        chat_format="gemma",
        tools=True,
    )
    block = 'Sure.\n```json\n{"name": "lookup", "arguments": {"q": "bots"}}\n```'
    check(block, ("Sure.\n", "", [("lookup", {"q": "bots"})]), chat_format="generic", tools=True)


def test_python_calls_are_read_never_run() -> None:
    assert calls_from_python('f(a=1)\ng.h(b="x")') == [("f", '{"a": 1}'), ("g.h", '{"b": "x"}')]
    assert calls_from_python("__import__('os').system('x')") is None
    assert calls_from_python("f(1)") is None  # positional: no parameter name
    assert calls_from_python("f(a=g())") is None
    assert calls_from_python("x = 1") is None


def test_unclosed_call_at_the_end() -> None:
    text = '<tool_call>{"name": "w", "arguments": {"c": 1}}'
    check(text, ("", "", [("w", {"c": 1})]), chat_format="chatml", tools=True)
    cut = '<tool_call>{"name": "w", "argu'
    check(cut, (cut, "", []), chat_format="chatml", tools=True)


@pytest.mark.parametrize(
    ("text", "stops", "expected", "stopped"),
    [
        ("Hello world. Bye", ["."], "Hello world", True),
        ("abc\n\nUser: hi", ["\n\nUser:", "zzz"], "abc", True),
        ("no stop here", ["STOP"], "no stop here", False),
        ("ends with ST", ["STOP"], "ends with ST", False),
        ("x", [], "x", False),
    ],
)
def test_stop_strings_in_any_split(
    text: str, stops: list[str], expected: str, stopped: bool
) -> None:
    for parts in splits(text):
        scanner = StopScanner(stops)
        out = "".join(scanner.feed(p) for p in parts) + scanner.finish()
        assert (out, scanner.stopped) == (expected, stopped), parts
