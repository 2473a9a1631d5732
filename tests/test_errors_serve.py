"""Against a real `bentoml serve`: after each kind of error a pooled keep-alive client's next
request still goes on the same connection, and uvicorn's own 400 is in the error shape."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from botmodels.errors import is_error_shape
from tests.asgi_server import connection, raw_exchange
from tests.conftest import Server, auth
from tests.helpers import assert_error
from tests.vision_media import png_bad_pixels

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def served(offline_store: None) -> Iterator[Server]:
    server = Server({"BOTMODELS_RUNNERS": "vqa"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


BAD_ITEM = {"image_png_b64": base64.b64encode(png_bad_pixels()).decode(), "question": "what?"}
# (method, path, keyword arguments, status): each was a 500 (some plain text, one that closed the
# connection) or a plain-text 4xx before.
ERRORS: list[tuple[str, str, dict[str, Any], int]] = [
    ("POST", "/runners/vqa/answer", {"json": {"items": []}, "headers": auth()}, 400),
    (
        "POST",
        "/runners/vqa/answer",
        {"json": {"items": [{"image_png_b64": "é"}]}, "headers": auth()},
        400,
    ),
    ("POST", "/runners/vqa/answer", {"json": {"items": [BAD_ITEM]}, "headers": auth()}, 400),
    (
        "POST",
        "/api/ping",
        {"headers": {"X-BotModels-Timestamp": "9" * 400, "X-BotModels-Signature": "v1=00"}},
        401,
    ),
    ("POST", "/livez", {}, 405),
    ("POST", "/readyz", {}, 405),
    ("POST", "/metrics", {}, 405),
    ("GET", "/nowhere", {"headers": auth()}, 404),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), ERRORS)
def test_connection_stays_usable_after_an_error(
    served: Server, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        first = connection(client.get("/livez"))
        failed = client.request(method, path, **kwargs)
        assert_error(failed, status)
        after = client.get("/livez")
        assert after.status_code == 200
        assert first == connection(failed) == connection(after), served.output()
    assert "connection" not in failed.headers


def test_uvicorns_own_400_is_json(served: Server) -> None:
    request = b"POST /api/ping HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
    answer, closed = raw_exchange(served.url, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    assert closed  # uvicorn cannot resynchronise after a request it could not parse
    assert is_error_shape(json.loads(body))
