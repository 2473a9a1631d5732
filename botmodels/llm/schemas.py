"""OpenAI's chat and text completion bodies, as botmodels reads them, and its answers' shapes.

Requests are checked here (pydantic) and a wrong one is a 400 in the one error shape that names
the field (`parse_request`). Unknown fields are accepted and ignored, as OpenAI-compatible
servers do (`frequency_penalty`, `logprobs`, `user`, `response_format`...): clients send them by
default. The answers are built as plain dicts by the front (one per token while streaming);
the response models below document them (botmodels/openapi.py) and the tests hold answers to
them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from botmodels.errors import InvalidInput

_LAX = ConfigDict(extra="ignore")
TOOL_NAME = r"^[A-Za-z0-9_.\-]{1,64}$"
MAX_STOPS = 16


class TextPart(BaseModel):
    model_config = _LAX

    type: Literal["text"] = Field(description="only text parts: this model reads text")
    text: str


class FunctionCall(BaseModel):
    model_config = _LAX

    name: str
    arguments: str | dict[str, Any] = Field(
        "{}", description="a JSON object as text (OpenAI), or the object itself"
    )


class MessageToolCall(BaseModel):
    model_config = _LAX

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = _LAX

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs `content`")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class FunctionDefinition(BaseModel):
    model_config = _LAX

    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON Schema object")


class Tool(BaseModel):
    model_config = _LAX

    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoiceFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = _LAX

    type: Literal["function"]
    function: NamedToolChoiceFunction


class StreamOptions(BaseModel):
    model_config = _LAX

    include_usage: bool = False


Stop = str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None


class _Sampling(BaseModel):
    """What chat and text completions share."""

    model_config = _LAX

    model: str = Field(
        "default",
        description="any name: every name is the served model (`default`, an alias from "
        "BOTMODELS_LLM_ALIASES, or another); the answer names the served model",
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(
        None, ge=1, description="clamped to the context left after the prompt"
    )
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, description="with temperature > 0: the same tokens again")
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stop: Stop = Field(None, description="a string or up to 16; the text ends before the first")

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(
        None, ge=1, description="OpenAI's newer name for max_tokens (wins when both are sent)"
    )
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None,
        description="none: tools are not offered; auto, required or a named tool: offered "
        "(the model decides; nothing forces a call)",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="passed to the chat template (e.g. enable_thinking)"
    )

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def offered_tools(self) -> list[dict[str, Any]] | None:
        if not self.tools or self.tool_choice == "none":
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(
        description="the text to continue (a list of one string is accepted)"
    )
    max_tokens: int | None = Field(
        16, ge=1, description="OpenAI's default 16; clamped to the context left"
    )
    echo: bool = Field(False, description="the prompt is repeated before the completion")

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> int | None:
        return self.max_tokens


R = TypeVar("R", bound=BaseModel)


def parse_request(model: type[R], body: Any) -> R:
    """`body` as `model`, or a 400 naming the first wrong field."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        loc = ".".join(str(p) for p in first["loc"])
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:3]]
        raise InvalidInput("invalid request: " + "; ".join(parts), param=loc or None) from exc


# --- the answers (documentation; the front builds them as dicts) -----------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ToolCallOut(BaseModel):
    index: int = Field(description="the call's position (streamed deltas carry it)")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="null when the answer is only tool calls")
    reasoning_content: str | None = Field(
        None, description="a reasoning model's thinking (`<think>…</think>`), when there is any"
    )
    tool_calls: list[ToolCallOut] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="the served model")
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: FinishReason | None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a stream; the last one is `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice] = Field(description="empty in the usage chunk")
    usage: Usage | None = Field(None, description="the last chunk, with include_usage")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(description="`botmodels`; the runner kind is in `botmodels_runner`")
    botmodels_runner: str = Field(description="the runner that serves it")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
