"""Authentication, in one ASGI middleware.

Accepted credentials, any one of them, for any configured key (several keys at once = rotation):
  * `X-API-Key: <key>` (botserver's main client),
  * `Authorization: Bearer <key>` (OpenAI clients, botserver's embedding client),
  * an HMAC-SHA256 signature in botserver's signer shape:
        X-BotModels-Timestamp: <unix seconds>
        X-BotModels-Signature: v1=<hex HMAC-SHA256(key, "{timestamp}.{payload}")>
    where payload = METHOD + "\\n" + path (with "?query" if any) + "\\n" + raw body.
    The timestamp must be within `signature_tolerance_s` (300 s) of the server's clock, and a
    signature is accepted once: a replay within `replay_cache_s` (600 s) is rejected.

Every comparison is constant-time (`hmac.compare_digest`) and no key is ever logged.
Open without credentials: liveness/readiness/health, metrics, the API docs, and generated files
(/outputs/…: botserver hands their URLs to bot scripts, which fetch them with no key).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from botmodels.errors import send_error

TIMESTAMP_HEADER = b"x-botmodels-timestamp"
SIGNATURE_HEADER = b"x-botmodels-signature"

OPEN_PATHS = frozenset(
    {
        "/livez",
        "/healthz",
        "/readyz",
        "/health",
        "/api/health",
        "/metrics",
        "/",
        "/docs.json",
        "/schema.json",
    }
)
# /outputs/: generated files botserver fetches later with no key; 128-bit names (outputs.py).
OPEN_PREFIXES = ("/static_content/", "/assets/", "/outputs/")


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def sign(key: bytes, timestamp: int, method: str, path: str, body: bytes) -> str:
    """The signature a client sends; botserver's Rust signer computes the same bytes."""
    payload = f"{timestamp}.{method.upper()}\n{path}\n".encode() + body
    return "v1=" + hmac.new(key, payload, hashlib.sha256).hexdigest()


class ReplayCache:
    """Signatures seen in the last `ttl` seconds. Bounded: oldest entries go first."""

    def __init__(self, ttl: float, max_entries: int = 200_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add_if_new(self, signature: str, now: float) -> bool:
        while self._seen:
            oldest, expiry = next(iter(self._seen.items()))
            if expiry > now and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        if signature in self._seen:
            return False
        self._seen[signature] = now + self.ttl
        return True


class Authenticator:
    def __init__(
        self,
        keys: Iterable[bytes],
        *,
        tolerance_s: float = 300,
        replay_ttl_s: float = 600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = tuple(keys)
        if not self._keys:
            raise ValueError("at least one API key is required")
        self.tolerance_s = tolerance_s
        self.clock = clock
        self.replays = ReplayCache(replay_ttl_s)

    def check_key(self, presented: bytes) -> bool:
        matched = False
        for key in self._keys:  # no early exit: the time taken does not say which key matched
            matched |= hmac.compare_digest(presented, key)
        return matched

    def check_signature(
        self, timestamp: bytes, signature: bytes, method: str, path: str, body: bytes
    ) -> str | None:
        """None when valid, else the reason (safe to show: it names no secret)."""
        try:
            ts = int(timestamp)
            text = signature.decode("ascii")
        except (ValueError, UnicodeDecodeError):
            return "malformed signature headers"
        now = self.clock()
        if abs(now - ts) > self.tolerance_s:
            return f"signature timestamp outside the {int(self.tolerance_s)} s tolerance"
        valid = False
        for key in self._keys:
            valid |= hmac.compare_digest(text.encode(), sign(key, ts, method, path, body).encode())
        if not valid:
            return "invalid signature"
        if not self.replays.add_if_new(text, now):
            return "signature already used (replay)"
        return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


async def _unauthorized(send: Send, message: str) -> None:
    await send_error(
        send,
        401,
        message,
        code="invalid_api_key",
        headers=[(b"www-authenticate", b'Bearer realm="botmodels"')],
    )


class AuthMiddleware:
    """Rejects unauthenticated requests to protected paths with 401 before any parsing."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, max_body_bytes: int) -> None:
        self.app = app
        self.auth = authenticator
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open_path(scope["path"]):
            await self.app(scope, receive, send)
            return

        key = _header(scope, b"x-api-key")
        if key is None:
            authorization = _header(scope, b"authorization")
            if authorization is not None and authorization[:7].lower() == b"bearer ":
                key = authorization[7:].strip()
        if key is not None:
            if self.auth.check_key(key):
                await self.app(scope, receive, send)
            else:
                await _unauthorized(send, "invalid API key")
            return

        signature = _header(scope, SIGNATURE_HEADER)
        timestamp = _header(scope, TIMESTAMP_HEADER)
        if signature is None or timestamp is None:
            await _unauthorized(
                send,
                "missing credentials: send X-API-Key, Authorization: Bearer, or an "
                "X-BotModels-Signature with X-BotModels-Timestamp",
            )
            return

        # The signature covers the body, so read it, bounded, and hand the same bytes on.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await send_error(
                    send,
                    413,
                    f"request body exceeds {self.max_body_bytes} bytes",
                    code="payload_too_large",
                )
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        path = scope["path"] + (
            "?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else ""
        )
        reason = self.auth.check_signature(timestamp, signature, scope["method"], path, body)
        if reason is not None:
            await _unauthorized(send, reason)
            return

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
