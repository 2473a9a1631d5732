"""ASGI middleware that gives every route the same limits and the same error shape.

* `ErrorShapeMiddleware` (outermost): any non-2xx answer that is not already in the one error
  shape (BentoML's validation errors, its list-shaped errors, Starlette's plain-text 404/405,
  500s) is rewritten into it. Status codes and headers (Retry-After…) are kept. An exception
  that escapes the app is logged and answered as a JSON 500 here, so the server never sees it:
  uvicorn closes a keep-alive connection after an exception (without `Connection: close`),
  which breaks a pooled client's next request.
* `LimitsMiddleware`: requests in flight per worker (429 + Retry-After past the limit) and body
  size (413 from Content-Length before reading, or while reading a chunked body).
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from botmodels.errors import reshaped_error, send_error
from botmodels.routes import HEALTH_PATHS, is_open_path

log = logging.getLogger("botmodels.http")


def _content_type(scope: Scope) -> bytes:
    """The media type, lower-case, without parameters; b"" when absent."""
    for key, value in scope.get("headers", []):
        if key == b"content-type":
            return bytes(value).split(b";")[0].strip().lower()
    return b""


class ErrorShapeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A probe's 503 body is the health report itself, which probes and people read as is.
        health = scope["path"] in HEALTH_PATHS
        start: Message | None = None
        chunks: list[bytes] = []
        started = False  # a response start went to the server
        finished = False  # ... and its last body message

        async def forward(message: Message) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        async def shaped_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                status = message["status"]
                if status < 400 or (health and status == 503):
                    await forward(message)
                    return
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await forward(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await send_reshaped(start, b"".join(chunks))

        async def send_reshaped(start_message: Message, raw: bytes) -> None:
            status = int(start_message["status"])
            body = reshaped_error(status, raw)
            headers = [
                (k, v)
                for k, v in start_message.get("headers", [])
                if k.lower() not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await forward({"type": "http.response.start", "status": status, "headers": headers})
            await forward({"type": "http.response.body", "body": body})

        try:
            await self.app(scope, receive, shaped_send)
        except Exception:
            if started and not finished:
                # Part of a body is out: only closing the connection tells the client.
                raise
            # An app that answered and then raised (Starlette's ServerErrorMiddleware sends its
            # 500 and re-raises for the server to log) has answered: log, and keep the
            # connection. One that raised before answering gets the JSON 500.
            log.exception("unhandled error on %s %s", scope.get("method"), scope["path"])
            if not started:
                await send_reshaped(
                    {"type": "http.response.start", "status": 500, "headers": []}, b""
                )


class LimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrency: int,
        max_json_bytes: int,
        max_upload_bytes: int,
        json_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.json_paths = json_paths
        self.max_concurrency = max_concurrency
        self.max_json_bytes = max_json_bytes
        self.max_upload_bytes = max_upload_bytes
        self.in_flight = 0

    def _limit_for(self, scope: Scope) -> int:
        media = _content_type(scope)
        if media in (b"multipart/form-data", b"application/octet-stream") or media.split(b"/")[
            0
        ] in (b"image", b"audio", b"video"):
            return self.max_upload_bytes
        return self.max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_concurrency:
            await send_error(
                send,
                429,
                f"server busy: {self.max_concurrency} requests already in flight; retry shortly",
                code="overloaded",
                headers=[(b"retry-after", b"1")],
            )
            return
        if scope["path"] in self.json_paths and scope["method"] == "POST":
            media = _content_type(scope)
            if media and media != b"application/json" and not media.endswith(b"+json"):
                await send_error(
                    send,
                    415,
                    f"this route takes a JSON body: send Content-Type: application/json "
                    f"(got {media.decode('latin-1')})",
                    code="unsupported_media_type",
                )
                return
        limit = self._limit_for(scope)
        declared: int | None = None
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(send, 400, "Content-Length is not a number")
                    return
        if declared is not None and declared > limit:
            await send_error(
                send,
                413,
                f"request body is {declared} bytes; the limit for this content type is {limit}",
                code="payload_too_large",
            )
            return

        if declared is not None:
            # The server reads exactly Content-Length bytes, so a declared body under the limit
            # cannot exceed it: no need to count (the common case, and the cheap path).
            self.in_flight += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1
            return

        received = 0
        too_large = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    # Ends the body early; the app sees a disconnect and stops reading.
                    return {"type": "http.disconnect"}
            return message

        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                if too_large:
                    return
                response_started = True
            elif too_large and not response_started:
                return
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            # The app may raise on the disconnect we fed it (Starlette's ClientDisconnect); that
            # is our doing, and the 413 below is the answer. Anything else is a real error.
            if not too_large:
                raise
        finally:
            self.in_flight -= 1
        if too_large and not response_started:
            await send_error(
                send,
                413,
                f"request body exceeds the limit of {limit} bytes for this content type",
                code="payload_too_large",
            )


def limits_from_settings(app: ASGIApp) -> LimitsMiddleware:
    """The limits middleware as the settings and the route table configure it (built at
    start-up, never at import)."""
    from botmodels.config import get_settings
    from botmodels.routes import JSON_PATHS

    settings = get_settings()
    return LimitsMiddleware(
        app,
        max_concurrency=settings.max_concurrency,
        max_json_bytes=settings.max_json_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        json_paths=JSON_PATHS,
    )
