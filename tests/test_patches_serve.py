"""Against real `bentoml serve` processes with no runner loaded (cheap to start): the
request-head timeout, slash redirects, /outputs headers, JSON without a Content-Type, and the
signature replay cache across a restart."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from botmodels.auth import sign
from tests.asgi_server import read_response, until_closed
from tests.conftest import KEY, Server, auth

pytestmark = pytest.mark.serve

HEAD_TIMEOUT_S = 2.0
SLACK_S = 8.0  # a shared, busy machine: only the order of magnitude is asserted


def _bare_server(home: Path, bentoml_home: Path, **env: str) -> Server:
    """No runner: nothing to load. Its own BENTOML_HOME, so it never empties another server's
    Prometheus directory (docs/design.md, Topology)."""
    bentoml_home.mkdir(parents=True, exist_ok=True)
    return Server(
        {
            "BOTMODELS_RUNNERS": "",
            "BOTMODELS_HOME": str(home),
            "BENTOML_HOME": str(bentoml_home),
            **env,
        }
    )


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("bare")
    server = _bare_server(
        root / "home", root / "bentoml", BOTMODELS_HEADER_TIMEOUT_S=str(HEAD_TIMEOUT_S)
    )
    try:
        server.wait_ready()
        yield server, root / "home"
    finally:
        server.stop()


def _connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=HEAD_TIMEOUT_S + SLACK_S)


def test_half_a_request_head_is_answered_408_and_closed(bare: tuple[Server, Path]) -> None:
    server, _ = bare
    with _connect(server) as sock:
        sock.sendall(b"POST /api/ping HTTP/1.1\r\nHost: a\r\nX-API-Key: ")
        data, waited = until_closed(sock)
    assert waited < HEAD_TIMEOUT_S + SLACK_S
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), data[:200]
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_a_slow_but_complete_client_is_not_cut(bare: tuple[Server, Path]) -> None:
    server, _ = bare
    body = b"{}"
    head = (
        b"POST /api/ping HTTP/1.1\r\nHost: a\r\nX-API-Key: " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    )
    with _connect(server) as sock:
        for start in range(0, len(head), 20):  # the head in pieces, within the timeout
            sock.sendall(head[start : start + 20])
            time.sleep(0.05)
        time.sleep(HEAD_TIMEOUT_S * 1.5)  # the body later than the head timeout
        sock.sendall(body)
        first = read_response(sock)
        assert first.startswith(b"HTTP/1.1 200 "), first[:300]
        # Idle on the kept-alive connection for longer than the head timeout (under uvicorn's
        # 5 s keep-alive): the next request is served.
        time.sleep(HEAD_TIMEOUT_S * 1.5)
        sock.sendall(head + body)
        second = read_response(sock)
    assert second.startswith(b"HTTP/1.1 200 "), second[:300]


def test_many_half_open_connections_do_not_stop_normal_requests(
    bare: tuple[Server, Path],
) -> None:
    server, _ = bare
    stuck = [_connect(server) for _ in range(300)]
    try:
        for sock in stuck:
            sock.sendall(b"POST /api/ping HTTP/1.1\r\nHost: a\r\n")
        started = time.monotonic()
        answer = httpx.post(server.url + "/api/ping", json={}, headers=auth(), timeout=30)
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < SLACK_S
        closed = [until_closed(sock)[0].startswith(b"HTTP/1.1 408 ") for sock in stuck]
        assert all(closed), f"{closed.count(False)} of {len(stuck)} not answered 408"
    finally:
        for sock in stuck:
            sock.close()


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/outputs/images/x/", {}),
        ("GET", "/outputs/images/" + "0" * 32 + ".png/", {}),
        ("POST", "/api/ping/", auth()),
        ("GET", "/api/jobs/job_x/", auth()),
        ("GET", "/api/health/", auth()),  # not an open path: the key gets it to the router
    ],
)
def test_no_redirect_to_the_requests_host(
    bare: tuple[Server, Path], method: str, path: str, headers: dict[str, str]
) -> None:
    server, _ = bare
    response = httpx.request(
        method, server.url + path, headers={**headers, "Host": "evil.example"}, timeout=30
    )
    assert response.status_code == 404, (path, response.status_code, response.headers)
    assert "location" not in response.headers
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"}


def test_outputs_are_sent_with_their_type_and_nosniff(bare: tuple[Server, Path]) -> None:
    server, home = bare
    name = secrets.token_hex(16)
    folder = home / "outputs" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / f"{name}.html").write_bytes(b"<script>alert(1)</script>")
    response = httpx.get(f"{server.url}/outputs/images/{name}.png", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    head = httpx.head(f"{server.url}/outputs/images/{name}.png", timeout=30)
    assert head.headers["x-content-type-options"] == "nosniff"
    unknown = httpx.get(f"{server.url}/outputs/images/{name}.html", timeout=30)
    assert unknown.status_code == 404  # only known extensions are served
    assert "script" not in unknown.text


def test_json_route_reads_a_body_without_content_type_as_json(bare: tuple[Server, Path]) -> None:
    server, _ = bare
    url = server.url + "/api/ping"
    bare_json = httpx.post(url, content=b"{}", headers=auth(), timeout=30)
    assert "content-type" not in bare_json.request.headers
    assert bare_json.status_code == 200, bare_json.text
    not_json = httpx.post(url, content=b"prompt=hello", headers=auth(), timeout=30)
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    form = httpx.post(url, data={"prompt": "hello"}, headers=auth(), timeout=30)
    assert form.status_code == 415
    assert "application/json" in form.json()["error"]["message"]


def test_a_used_signature_is_refused_after_the_server_restarts(tmp_path: Path) -> None:
    body = b"{}"
    ts = int(time.time())
    headers = {
        "X-BotModels-Timestamp": str(ts),
        "X-BotModels-Signature": sign(KEY.encode(), ts, "POST", "/api/ping", body),
        "Content-Type": "application/json",
    }
    home, bentoml_home = tmp_path / "home", tmp_path / "bentoml"

    first = _bare_server(home, bentoml_home)
    try:
        first.wait_ready()
        accepted = httpx.post(first.url + "/api/ping", content=body, headers=headers, timeout=30)
        assert accepted.status_code == 200, accepted.text
    finally:
        first.stop()

    second = _bare_server(home, bentoml_home)  # same home: same replay cache file
    try:
        second.wait_ready()
        url = second.url + "/api/ping"
        replay = httpx.post(url, content=body, headers=headers, timeout=30)
        assert replay.status_code == 401, replay.text
        assert "replay" in replay.json()["error"]["message"]
        ts = int(time.time())
        fresh = {
            **headers,
            "X-BotModels-Timestamp": str(ts),
            "X-BotModels-Signature": sign(KEY.encode(), ts, "POST", "/api/ping", body),
        }
        assert httpx.post(url, content=body, headers=fresh, timeout=30).status_code == 200
    finally:
        second.stop()
