"""The one error shape, and the typed exceptions that map to it.

Every non-2xx answer from botmodels has this body (OpenAI's shape, so OpenAI clients show the
message, and botserver, which prints the body as text, shows it too):

    {"error": {"message": "...", "type": "invalid_request_error", "code": "...", "param": null}}

Exceptions carry their status; nothing matches on message text.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

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


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = error_bytes(status, message, code=code, param=param)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_exception(send: Send, exc: BotModelsError) -> None:
    """`exc` as a raw ASGI response (for middleware, which has no Response objects)."""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    await send_error(send, exc.status, exc.message, code=exc.code, param=exc.param, headers=headers)


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


class ShuttingDown(BotModelsError):
    """This instance is draining after SIGTERM: the work was refused or stopped; retry it."""

    status = 503
    code = "shutting_down"


class UpstreamError(BotModelsError):
    """A remote runner answered with an error we pass on."""

    status = 502
    code = "upstream_error"
