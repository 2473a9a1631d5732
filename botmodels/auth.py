"""Authentication, in one ASGI middleware.

Accepted credentials, any one of them, for any configured key (several keys at once = rotation):
  * `X-API-Key: <key>` (botserver's main client),
  * `Authorization: Bearer <key>` (OpenAI clients, botserver's embedding client),
  * an HMAC-SHA256 signature in botserver's signer shape:
        X-BotModels-Timestamp: <unix seconds>
        X-BotModels-Signature: v1=<hex HMAC-SHA256(key, "{timestamp}.{payload}")>
    where payload = METHOD + "\\n" + path (with "?query" if any) + "\\n" + raw body.
    The timestamp must be within `signature_tolerance_s` (300 s) of the server's clock, and a
    signature is accepted once: a replay within `replay_cache_s` (600 s), and in any case while
    its timestamp is still within the tolerance, is rejected. Used signatures are kept in SQLite
    (`ReplayCache`), so a worker restart forgets none and two workers cannot both accept one;
    with BOTMODELS_DATABASE_URL, in PostgreSQL, so two replicas cannot either.

Trusted networks (`TrustedNetworks`): a request with no credentials at all is let through when
its client address is inside `BOTMODELS_TRUSTED_NETWORKS` (botserver next door sends several
calls with no key). A presented credential is always checked, so a wrong key is a 401 from
anywhere. The client address is the TCP peer; `X-Forwarded-For` is believed only when the peer
is inside `BOTMODELS_TRUSTED_PROXIES`, and then the client is its right-most entry that is not
itself a trusted proxy (entries to its left were written by the client and prove nothing). A
request with an `Origin` header (a browser's) is never let in without credentials.

Every comparison is constant-time (`hmac.compare_digest`) and no key is ever logged.
Open without credentials: the routes botmodels/routes.py marks open (liveness/readiness/health,
metrics, the API docs, and generated files under /outputs/: botserver hands their URLs to bot
scripts, which fetch them with no key).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from botmodels.asgi import replay_body
from botmodels.database import Database, SqliteDatabase
from botmodels.errors import DatabaseUnavailable, send_error
from botmodels.routes import is_open_path

log = logging.getLogger("botmodels.auth")

TIMESTAMP_HEADER = b"x-botmodels-timestamp"
SIGNATURE_HEADER = b"x-botmodels-signature"
# Where the TCP peer is kept when a server rewrites `scope["client"]` from proxy headers
# (uvicorn does so for loopback peers: botmodels/patches.py, workaround 17).
PEER_SCOPE_KEY = "botmodels.peer"
# A unix time in seconds has 10 digits until the year 2286: a much longer one is malformed, and
# the clock check, in floats, would overflow on a few hundred digits.
MAX_TIMESTAMP_DIGITS = 15


def sign(key: bytes, timestamp: int, method: str, path: str, body: bytes) -> str:
    """The signature a client sends; botserver's Rust signer computes the same bytes."""
    payload = f"{timestamp}.{method.upper()}\n{path}\n".encode() + body
    return "v1=" + hmac.new(key, payload, hashlib.sha256).hexdigest()


_REPLAY_SCHEMA = """
CREATE TABLE IF NOT EXISTS used_signatures (
    signature  TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS used_signatures_expiry ON used_signatures (expires_at);
"""
# One statement, so it is atomic across every process on the file: a new signature is inserted;
# a known one is taken over only if its entry has expired. One row changed = accepted.
_CLAIM = (
    "INSERT INTO used_signatures (signature, expires_at) VALUES (?, ?) "
    "ON CONFLICT (signature) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE used_signatures.expires_at < ?"
)


class ReplayCacheUnavailable(Exception):
    """The replay store could not be read or written (disk full, locked too long)."""


class ReplayCache:
    """Signatures already accepted, each until its expiry, in SQLite (WAL), or in the PostgreSQL
    database replicas share (`BOTMODELS_DATABASE_URL`: a signature used on one replica is
    refused on every other; the same claim statement, atomic there too).

    A file shared by the workers and kept across restarts: the unique key on the signature makes
    two workers' claims on one signature exclusive, and a restarted worker still knows what was
    used. Each claim is one indexed upsert; expired rows are deleted at most once a minute, by
    their expiry index, never by a scan per request.

    SQLite calls can block (another process's write lock, up to the busy timeout; a WAL
    checkpoint's fsync, tens of ms), so `claim` runs them on one dedicated thread, never on the
    event loop. `path=None` keeps the table in memory (one process, forgotten at exit: tests).
    """

    PRUNE_INTERVAL_S = 60.0

    def __init__(self, path: Path | Database | None, *, busy_timeout_s: float = 5.0) -> None:
        try:
            self._db = (
                path
                if isinstance(path, Database)
                else SqliteDatabase(path, busy_timeout_s=busy_timeout_s)
            )
            if isinstance(self._db, SqliteDatabase):  # PostgreSQL's is migrated as it opens
                self._db.executescript(_REPLAY_SCHEMA)
        except sqlite3.Error as exc:
            raise ReplayCacheUnavailable(f"cannot open the replay cache at {path}: {exc}") from exc
        self._next_prune = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="botmodels-replay")

    def add_if_new(self, signature: str, now: float, expires_at: float) -> bool:
        """True (and remembered until `expires_at`) if `signature` is not already remembered.
        Blocking: called on the cache's own thread by `claim`."""
        if now >= self._next_prune:
            self._db.execute("DELETE FROM used_signatures WHERE expires_at < ?", (now,))
            self._next_prune = now + self.PRUNE_INTERVAL_S
        return self._db.execute(_CLAIM, (signature, expires_at, now)).rowcount == 1

    async def claim(self, signature: str, now: float, expires_at: float) -> bool:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, self.add_if_new, signature, now, expires_at
            )
        except sqlite3.Error as exc:
            raise ReplayCacheUnavailable(str(exc)) from exc
        except DatabaseUnavailable as exc:
            raise ReplayCacheUnavailable(exc.message) from exc

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if not self._db.shared:
            self._db.close()  # a shared database is the process's, closed with it


class Authenticator:
    def __init__(
        self,
        keys: Iterable[bytes],
        *,
        tolerance_s: float = 300,
        replay_ttl_s: float = 600,
        replay_path: Path | Database | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = tuple(keys)
        if not self._keys:
            raise ValueError("at least one API key is required")
        self.tolerance_s = tolerance_s
        self.replay_ttl_s = replay_ttl_s
        self.clock = clock
        self.replays = ReplayCache(replay_path)

    def check_key(self, presented: bytes) -> bool:
        matched = False
        for key in self._keys:  # no early exit: the time taken does not say which key matched
            matched |= hmac.compare_digest(presented, key)
        return matched

    async def check_signature(
        self, timestamp: bytes, signature: bytes, method: str, path: str, body: bytes
    ) -> str | None:
        """None when valid, else the reason (safe to show: it names no secret).
        Raises ReplayCacheUnavailable when the replay store cannot answer."""
        if not (timestamp.isdigit() and len(timestamp) <= MAX_TIMESTAMP_DIGITS):
            return "malformed signature headers"
        ts = int(timestamp)
        try:
            text = signature.decode("ascii")
        except UnicodeDecodeError:
            return "malformed signature headers"
        now = self.clock()
        if abs(now - ts) > self.tolerance_s:
            return f"signature timestamp outside the {int(self.tolerance_s)} s tolerance"
        valid = False
        for key in self._keys:
            valid |= hmac.compare_digest(text.encode(), sign(key, ts, method, path, body).encode())
        if not valid:
            return "invalid signature"
        # Remembered at least while its timestamp still passes the check above, whatever the
        # configured TTL: until then a replay would otherwise be accepted.
        expires_at = max(now + self.replay_ttl_s, ts + self.tolerance_s)
        if not await self.replays.claim(text, now, expires_at):
            return "signature already used (replay)"
        return None


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> Address | None:
    """An IP address (IPv4-mapped IPv6 read as IPv4; `[v6]` and `v4:port` forms accepted),
    or None for anything else (a host name, garbage)."""
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedNetworks:
    """Which requests may omit credentials: those whose client address is in `networks`."""

    def __init__(self, networks: Sequence[Network], proxies: Sequence[Network] = ()) -> None:
        self.networks = tuple(networks)
        self.proxies = tuple(proxies)

    @staticmethod
    def _inside(address: Address | None, networks: Sequence[Network]) -> bool:
        return address is not None and any(address in network for network in networks)

    def client_address(self, scope: Scope) -> Address | None:
        """The TCP peer, or, when the peer is a trusted proxy, the right-most X-Forwarded-For
        entry that is not a trusted proxy (the left-most when every entry is one)."""
        peer = scope.get(PEER_SCOPE_KEY, scope.get("client"))
        address = parse_address(str(peer[0])) if peer else None
        if not self._inside(address, self.proxies):
            return address
        chain = [
            part
            for key, value in scope.get("headers", [])
            if key == b"x-forwarded-for"
            for part in bytes(value).decode("latin-1").split(",")
            if part.strip()
        ]
        for entry in reversed(chain):
            address = parse_address(entry)
            if not self._inside(address, self.proxies):
                return address  # None (unparsable) is trusted by nothing
        return address

    def trusts(self, scope: Scope) -> bool:
        """A browser's request (it carries `Origin`; botserver's never does) is never trusted:
        a web page open on a trusted host could otherwise post uploads here without a key."""
        if not self.networks or _header(scope, b"origin") is not None:
            return False
        return self._inside(self.client_address(scope), self.networks)


NO_TRUSTED_NETWORKS = TrustedNetworks(())


def log_trusted_networks(trusted: TrustedNetworks) -> None:
    """Once per worker, at start-up: a WARNING when requests may omit credentials, since it
    relaxes authentication (a served worker shows no INFO)."""
    if not trusted.networks:
        log.info("no trusted networks: every keyed route needs credentials")
        return
    log.warning(
        "requests without credentials are accepted from BOTMODELS_TRUSTED_NETWORKS=%s "
        "(X-Forwarded-For believed only from BOTMODELS_TRUSTED_PROXIES=%s)",
        ",".join(map(str, trusted.networks)),
        ",".join(map(str, trusted.proxies)) or "none",
    )


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

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        max_body_bytes: int,
        trusted: TrustedNetworks = NO_TRUSTED_NETWORKS,
    ) -> None:
        self.app = app
        self.auth = authenticator
        self.max_body_bytes = max_body_bytes
        self.trusted = trusted

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
        if signature is None and timestamp is None and self.trusted.trusts(scope):
            await self.app(scope, receive, send)  # no credential at all, from a trusted network
            return
        if signature is None or timestamp is None:
            client = self.trusted.client_address(scope)
            await _unauthorized(
                send,
                "missing credentials: send X-API-Key, Authorization: Bearer, or an "
                "X-BotModels-Signature with X-BotModels-Timestamp; requests without credentials "
                f"are allowed only from BOTMODELS_TRUSTED_NETWORKS, and never from a browser "
                f"(this one came from {client if client is not None else 'an unknown address'})",
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
        try:
            reason = await self.auth.check_signature(
                timestamp, signature, scope["method"], path, body
            )
        except ReplayCacheUnavailable as exc:
            # Fail closed: accepting without the check would let a replay through.
            log.error("signature replay cache unavailable: %s", exc)
            await send_error(
                send,
                503,
                "cannot check the signature for replays right now; retry shortly",
                code="replay_cache_unavailable",
                headers=[(b"retry-after", b"1")],
            )
            return
        if reason is not None:
            await _unauthorized(send, reason)
            return

        await self.app(scope, replay_body(body, receive), send)


def auth_from_settings(app: ASGIApp) -> AuthMiddleware:
    """The auth middleware as the settings configure it: keys, signatures, the replay cache and
    the trusted networks. Called when the server builds its middleware stack (start-up), never
    at import."""
    from botmodels.config import get_settings
    from botmodels.database import shared_database
    from botmodels.keys import load_api_keys

    settings = get_settings()
    authenticator = Authenticator(
        load_api_keys(settings),
        tolerance_s=settings.signature_tolerance_s,
        replay_ttl_s=settings.replay_cache_s,
        replay_path=shared_database(settings) or settings.replay_cache_path,
    )
    trusted = TrustedNetworks(settings.trusted_networks, settings.trusted_proxies)
    log_trusted_networks(trusted)
    return AuthMiddleware(
        app,
        authenticator,
        max_body_bytes=max(settings.max_upload_bytes, settings.max_json_bytes),
        trusted=trusted,
    )
