"""The one error shape, and the typed exceptions that map to it.

Every non-2xx answer from botmodels has this body (OpenAI's shape, so OpenAI clients show the
message, and botserver, which prints the body as text, shows it too):

    {"error": {"message": "...", "type": "invalid_request_error", "code": "...", "param": null}}

Exceptions carry their status; nothing matches on message text.

This module is the one place that turns an error into an answer: `error_parts` maps an exception
to (status, body, headers), and every way of answering goes through it: `error_response` (a
Starlette response: routes, the mounted app's exception handler, `botmodels.api`'s decorators),
`send_exception` and `send_error` (raw ASGI, for middleware), and `reshaped_error` (a foreign
error body, BentoML's or Starlette's, rewritten into the shape by the error-shape middleware).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Send

from runners.base import InvalidItem

# type per status: OpenAI's names where it has one.
_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": error_type(status),
            "code": code or HTTPStatus(status).phrase.lower().replace(" ", "_"),
            "param": param,
        }
    }


def error_bytes(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> bytes:
    return json.dumps(error_body(status, message, code=code, param=param)).encode()


async def _send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error made on the spot (middleware: 401, 413, 415, 429, 503...) as a raw ASGI answer."""
    await _send_json(
        send, status, error_bytes(status, message, code=code, param=param), headers or []
    )


async def send_exception(send: Send, exc: BotModelsError) -> None:
    """`exc` as a raw ASGI response (for middleware, which has no Response objects)."""
    status, body, headers = error_parts(exc)
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await _send_json(send, status, json.dumps(body).encode(), raw_headers)


def error_parts(exc: BotModelsError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """What `exc` answers: its status, its body in the one shape, its headers (Retry-After)."""
    return exc.status, exc.body(), exc.headers


def error_response(exc: BotModelsError) -> JSONResponse:
    """`exc` as a Starlette response (a route, or a BentoML API that returns a Response)."""
    status, body, headers = error_parts(exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def handle_exception(_: Request, exc: Exception) -> Response:
    """The mounted Starlette app's handler for a BotModelsError its routes raise."""
    assert isinstance(exc, BotModelsError)
    return error_response(exc)


GENERIC_500 = "internal error; the server log has the details"


def _message_from(status: int, raw: bytes) -> tuple[str, str | None]:
    """Best human message (and offending parameter) from a foreign error body."""
    if status >= 500 and status != 503:
        return GENERIC_500, None
    try:
        payload: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        text = raw.decode("utf-8", "replace").strip()
        return (text or "request failed")[:500], None
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        payload = payload[0]  # BentoML's InvalidArgument answers a one-element list
    if not isinstance(payload, dict):
        return str(payload)[:500], None
    details = payload.get("detail")
    if isinstance(details, list) and details:  # BentoML's pydantic validation errors
        parts: list[str] = []
        param: str | None = None
        for item in details[:5]:
            if not isinstance(item, dict):
                continue
            loc = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body",))
            param = param or loc or None
            parts.append(f"{loc}: {item.get('msg', 'invalid')}" if loc else str(item.get("msg")))
        return "invalid request: " + "; ".join(parts), param
    error = payload.get("error", payload.get("detail"))
    return (str(error) if error is not None else "request failed")[:500], None


def reshaped_error(status: int, raw: bytes) -> bytes:
    """An error answer's body in the one shape: `raw` itself when it already is, else the best
    message found in it (a 5xx but 503 says only that the log has the details)."""
    try:
        if is_error_shape(json.loads(raw)):
            return raw
    except (ValueError, UnicodeDecodeError):
        pass
    message, param = _message_from(status, raw)
    return error_bytes(
        status, message, code=error_type(status) if status >= 500 else None, param=param
    )


def is_error_shape(payload: object) -> bool:
    if not isinstance(payload, dict) or set(payload) != {"error"}:
        return False
    inner = payload["error"]
    return isinstance(inner, dict) and isinstance(inner.get("message"), str) and "type" in inner


class BotModelsError(Exception):
    """Base of every error botmodels answers on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, code=self.code, param=self.param)


class InvalidInput(BotModelsError):
    status = 400
    code = "invalid_input"


def from_runner_error(exc: InvalidItem) -> InvalidInput:
    """A runner's client error (one of its input items is wrong) as the platform's 400, with the
    runner's message, code and parameter. Runners raise their own `InvalidItem` subclasses and
    import nothing from botmodels/; this is the one place those become an answer."""
    return InvalidInput(exc.message, param=exc.param, code=exc.code)


@contextlib.contextmanager
def runner_errors() -> Iterator[None]:
    """Around a call into runner code: its `InvalidItem` leaves as `InvalidInput` (a 400)."""
    try:
        yield
    except InvalidItem as exc:
        raise from_runner_error(exc) from exc


class NotFoundError(BotModelsError):
    status = 404
    code = "not_found"


class PayloadTooLarge(BotModelsError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(BotModelsError):
    status = 415
    code = "unsupported_media_type"


class Overloaded(BotModelsError):
    status = 429
    code = "overloaded"


class RunnerUnavailable(BotModelsError):
    """The runner is disabled, still loading, failed to load, or its remote is unreachable."""

    status = 503
    code = "runner_unavailable"


class MemoryBudgetExceeded(RunnerUnavailable):
    """A model does not fit in BOTMODELS_MEMORY_BUDGET (or the GPU's) beside the runners that
    are serving requests; the message names the budget and the footprints."""

    code = "memory_budget_exceeded"


class ShuttingDown(BotModelsError):
    """This instance is draining after SIGTERM: the work was refused or stopped; retry it."""

    status = 503
    code = "shutting_down"


class UpstreamError(BotModelsError):
    """A remote runner answered with an error we pass on."""

    status = 502
    code = "upstream_error"


class ContextLengthExceeded(InvalidInput):
    """A language-model prompt that leaves no room in the model's context (OpenAI's code)."""

    code = "context_length_exceeded"


class GenerationFailed(BotModelsError):
    """The language model's engine failed while generating (its error is the message)."""

    status = 500
    code = "generation_failed"


class DatabaseUnavailable(BotModelsError):
    """The shared database (BOTMODELS_DATABASE_URL) cannot be reached right now: retry shortly.
    The message never holds the URL's password (botmodels/database.py)."""

    status = 503
    code = "database_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 2, param: str | None = None) -> None:
        super().__init__(message, param=param, headers={"Retry-After": str(retry_after_s)})
