"""Authenticator and middleware, without a model: exact answers."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
from collections.abc import MutableMapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from botmodels.auth import Authenticator, AuthMiddleware, ReplayCache, sign
from botmodels.config import Settings
from botmodels.http import ErrorShapeMiddleware, LimitsMiddleware
from botmodels.keys import KeyConfigError, load_api_keys

KEY_A = b"a" * 20
KEY_B = b"b" * 20


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"body": (await request.body()).decode()})


def make_client(auth: Authenticator, **limits: Any) -> TestClient:
    app: Any = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/livez", echo)])
    app = LimitsMiddleware(
        app,
        max_concurrency=limits.get("max_concurrency", 10),
        max_json_bytes=limits.get("max_json_bytes", 1000),
        max_upload_bytes=2000,
        json_paths=frozenset({"/echo"}),
    )
    app = AuthMiddleware(app, auth, max_body_bytes=2000)
    return TestClient(ErrorShapeMiddleware(app))


def signed_headers(key: bytes, ts: int, body: bytes, path: str = "/echo") -> dict[str, str]:
    return {
        "X-BotModels-Timestamp": str(ts),
        "X-BotModels-Signature": sign(key, ts, "POST", path, body),
        "content-type": "application/json",
    }


def test_check_key_accepts_every_configured_key_only() -> None:
    auth = Authenticator([KEY_A, KEY_B])
    assert auth.check_key(KEY_A)
    assert auth.check_key(KEY_B)
    assert not auth.check_key(b"a" * 19)
    assert not auth.check_key(b"")


def test_sign_matches_the_documented_formula() -> None:
    import hashlib
    import hmac

    expected = hmac.new(KEY_A, b'1700000000.POST\n/echo\n{"x":1}', hashlib.sha256).hexdigest()
    assert sign(KEY_A, 1_700_000_000, "post", "/echo", b'{"x":1}') == "v1=" + expected


def test_signature_valid_once_then_replay_rejected() -> None:
    clock = Clock(1_700_000_000)
    client = make_client(Authenticator([KEY_A, KEY_B], clock=clock))
    body = b'{"hello": "world"}'
    headers = signed_headers(KEY_B, int(clock.now), body)
    first = client.post("/echo", content=body, headers=headers)
    assert first.status_code == 200
    assert first.json() == {"body": body.decode()}  # the app still got the whole body
    replay = client.post("/echo", content=body, headers=headers)
    assert replay.status_code == 401
    assert "replay" in replay.json()["error"]["message"]


@pytest.mark.parametrize(("skew", "ok"), [(-299, True), (299, True), (-301, False), (301, False)])
def test_signature_timestamp_tolerance(skew: int, ok: bool) -> None:
    clock = Clock(1_700_000_000)
    client = make_client(Authenticator([KEY_A], clock=clock))
    body = b"{}"
    response = client.post(
        "/echo", content=body, headers=signed_headers(KEY_A, int(clock.now) + skew, body)
    )
    assert response.status_code == (200 if ok else 401)


def test_signature_over_other_body_or_path_or_key_fails() -> None:
    clock = Clock(1_700_000_000)
    client = make_client(Authenticator([KEY_A], clock=clock))
    ts = int(clock.now)
    tampered = signed_headers(KEY_A, ts, b'{"a":1}')
    assert client.post("/echo", content=b'{"a":2}', headers=tampered).status_code == 401
    other_path = signed_headers(KEY_A, ts, b"{}", path="/other")
    assert client.post("/echo", content=b"{}", headers=other_path).status_code == 401
    wrong_key = signed_headers(b"z" * 20, ts, b"{}")
    assert client.post("/echo", content=b"{}", headers=wrong_key).status_code == 401
    malformed = {**signed_headers(KEY_A, ts, b"{}"), "X-BotModels-Timestamp": "soon"}
    response = client.post("/echo", content=b"{}", headers=malformed)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "malformed signature headers"


@pytest.mark.parametrize(
    "timestamp",
    [
        "9" * 309,  # an int, but past float's range: the clock check overflowed (a 500)
        "1" * 4300,  # Python's longest int() string
        "1" * 4301,
        "1" * 16,
        "-1700000000",
        "1.7e9",
        "+1700000000",
        "1_700_000_000",
        "",
    ],
)
def test_malformed_timestamp_is_401_in_the_error_shape(timestamp: str) -> None:
    clock = Clock(1_700_000_000)
    client = make_client(Authenticator([KEY_A], clock=clock))
    headers = {**signed_headers(KEY_A, int(clock.now), b"{}"), "X-BotModels-Timestamp": timestamp}
    response = client.post("/echo", content=b"{}", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "malformed signature headers"


def test_replay_cache_forgets_after_expiry_and_prunes_expired_rows(tmp_path: Path) -> None:
    path = tmp_path / "replay.sqlite3"
    cache = ReplayCache(path)
    assert cache.add_if_new("s1", 0, expires_at=10)
    assert not cache.add_if_new("s1", 5, expires_at=15)
    assert not cache.add_if_new("s1", 10, expires_at=20)  # at its expiry: still remembered
    assert cache.add_if_new("s1", 11, expires_at=21)  # expired, so new again
    for i in range(10):
        assert cache.add_if_new(f"x{i}", 12, expires_at=30)
    assert _rows(path) == 11
    # The next claim a prune interval later deletes what has expired (the x rows), nothing else.
    assert cache.add_if_new("late", 31 + ReplayCache.PRUNE_INTERVAL_S, expires_at=10**6)
    assert _rows(path) == 1
    cache.close()


def _rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM used_signatures").fetchone()[0])


def test_used_signature_is_refused_after_a_restart(tmp_path: Path) -> None:
    """A worker restart rebuilds the authenticator over the same file: what it saw stays used."""
    clock = Clock(1_700_000_000)
    path = tmp_path / "replay.sqlite3"
    body = b'{"n": 1}'
    headers = signed_headers(KEY_A, int(clock.now), body)
    before = Authenticator([KEY_A], replay_path=path, clock=clock)
    assert make_client(before).post("/echo", content=body, headers=headers).status_code == 200
    before.replays.close()

    clock.now += 30
    after = Authenticator([KEY_A], replay_path=path, clock=clock)
    client = make_client(after)
    replay = client.post("/echo", content=body, headers=headers)
    assert replay.status_code == 401
    assert "replay" in replay.json()["error"]["message"]
    fresh = signed_headers(KEY_A, int(clock.now), body)
    assert client.post("/echo", content=body, headers=fresh).status_code == 200
    after.replays.close()


def test_signature_is_remembered_while_its_timestamp_is_valid_whatever_the_ttl() -> None:
    clock = Clock(1_700_000_000)
    client = make_client(Authenticator([KEY_A], tolerance_s=300, replay_ttl_s=1, clock=clock))
    headers = signed_headers(KEY_A, int(clock.now), b"{}")
    assert client.post("/echo", content=b"{}", headers=headers).status_code == 200
    clock.now += 299  # the TTL is long gone, the timestamp still passes
    assert client.post("/echo", content=b"{}", headers=headers).status_code == 401


def _claim_all(path: str, signatures: list[str], start: float) -> list[str]:
    """In a separate process, as a second worker would: the signatures this one was granted."""
    cache = ReplayCache(Path(path))
    while time.time() < start:  # both processes start claiming together
        time.sleep(0.001)
    granted = [s for s in signatures if cache.add_if_new(s, 1.0, expires_at=1000.0)]
    cache.close()
    return granted


def test_two_workers_never_both_accept_one_signature(tmp_path: Path) -> None:
    path = tmp_path / "replay.sqlite3"
    ReplayCache(path).close()  # schema in place before the race
    signatures = [f"v1={i:064x}" for i in range(400)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        start = time.time() + 3  # after both have imported and opened the file
        futures = [pool.submit(_claim_all, str(path), signatures, start) for _ in range(2)]
        granted = [f.result(timeout=60) for f in futures]
    assert sorted(granted[0] + granted[1]) == sorted(signatures)  # each granted exactly once
    assert _rows(path) == len(signatures)


def test_replay_store_failure_fails_closed_with_503(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(1_700_000_000)
    auth = Authenticator([KEY_A], clock=clock)

    def locked(*_: Any) -> bool:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(auth.replays, "add_if_new", locked)
    response = make_client(auth).post(
        "/echo", content=b"{}", headers=signed_headers(KEY_A, int(clock.now), b"{}")
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "replay_cache_unavailable"
    assert response.headers["retry-after"] == "1"


def test_open_paths_need_no_credentials() -> None:
    client = make_client(Authenticator([KEY_A]))
    assert client.get("/livez").status_code == 200
    response = client.post("/echo", content=b"{}")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_limits_413_by_declared_length_and_415_by_type() -> None:
    client = make_client(Authenticator([KEY_A]))
    headers = {"X-API-Key": KEY_A.decode(), "content-type": "application/json"}
    too_big = client.post("/echo", content=b"x" * 1001, headers=headers)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"
    assert client.post("/echo", content=b"x" * 1000, headers=headers).status_code == 200
    wrong = client.post("/echo", content=b"{}", headers={**headers, "content-type": "text/csv"})
    assert wrong.status_code == 415


def test_json_route_takes_a_body_without_content_type_as_json() -> None:
    """No Content-Type on a JSON route is read as JSON; a declared other type (curl -d without
    -H sends form-urlencoded) is a 415 that says what to send."""
    client = make_client(Authenticator([KEY_A]))
    key = {"X-API-Key": KEY_A.decode()}
    bare = client.post("/echo", content=b'{"a": 1}', headers=key)
    assert "content-type" not in bare.request.headers
    assert bare.status_code == 200
    assert bare.json() == {"body": '{"a": 1}'}
    form = client.post("/echo", data={"a": "1"}, headers=key)
    assert form.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form.status_code == 415
    assert "Content-Type: application/json" in form.json()["error"]["message"]
    suffixed = client.post(
        "/echo", content=b"{}", headers={**key, "content-type": "application/merge-patch+json"}
    )
    assert suffixed.status_code == 200


def test_limits_413_on_chunked_body_without_length() -> None:
    client = make_client(Authenticator([KEY_A]))

    def chunks() -> Any:
        for _ in range(5):
            yield b"x" * 400

    response = client.post(
        "/echo",
        content=chunks(),
        headers={"X-API-Key": KEY_A.decode(), "content-type": "application/json"},
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    "headers",
    [[], [(b"content-length", b"0")]],
    ids=["counted body", "declared length (the path that does not count the body)"],
)
def test_limits_429_with_retry_after_when_saturated(headers: list[tuple[bytes, bytes]]) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await release.wait()
        await JSONResponse({})(scope, receive, send)

    limits = LimitsMiddleware(slow, max_concurrency=1, max_json_bytes=100, max_upload_bytes=100)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    async def scenario() -> None:
        scope = {"type": "http", "path": "/x", "method": "POST", "headers": headers}
        first = asyncio.create_task(limits(scope, receive, send))
        await started.wait()
        await limits(scope, receive, send)  # second: rejected at once
        release.set()
        await first

    asyncio.run(scenario())
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert statuses == [429, 200]
    assert limits.in_flight == 0
    assert dict(sent[0]["headers"])[b"retry-after"] == b"1"


def test_keys_from_env_file_and_generated(tmp_path: Any) -> None:
    env = Settings(api_keys="k" * 16 + " , " + "m" * 16, home=tmp_path)
    assert load_api_keys(env) == [b"k" * 16, b"m" * 16]
    with pytest.raises(KeyConfigError, match="shorter than 16"):
        load_api_keys(Settings(api_keys="short", home=tmp_path))
    with pytest.raises(KeyConfigError, match="no key"):
        load_api_keys(Settings(api_keys=" , ", home=tmp_path))
    with pytest.raises(KeyConfigError, match="does not exist"):
        load_api_keys(Settings(api_keys=None, api_keys_file=tmp_path / "missing", home=tmp_path))

    generated = Settings(api_keys=None, home=tmp_path / "home")
    first = load_api_keys(generated)
    key_file = tmp_path / "home" / "api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(first) == 1
    assert len(first[0]) >= 32
    assert load_api_keys(generated) == first  # a second worker reads the same key


def test_timing_of_key_check_does_not_depend_on_match_position() -> None:
    # Not a timed assertion: proves every key is compared (no early exit) by counting calls.
    import hmac

    calls: list[bytes] = []
    original = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(b)
        return original(a, b)

    auth = Authenticator([KEY_A, KEY_B])
    hmac.compare_digest = counting
    try:
        auth.check_key(KEY_A)
    finally:
        hmac.compare_digest = original
    assert calls == [KEY_A, KEY_B]
    assert time.time() > 0
