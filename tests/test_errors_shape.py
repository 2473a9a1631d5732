"""ErrorShapeMiddleware under a real uvicorn (a TestClient has no connections): an exception that
escapes the app is a JSON 500 on a keep-alive connection that the next request still uses."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from botmodels.errors import GENERIC_500
from botmodels.http import ErrorShapeMiddleware
from tests.asgi_server import connection, uvicorn_server
from tests.helpers import assert_error


async def ok(_: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def bug(_: Request) -> JSONResponse:
    raise ZeroDivisionError("a bug in a route")


async def half_streamed(_: Request) -> StreamingResponse:
    async def chunks() -> Any:
        yield b"first part"
        raise ZeroDivisionError("a bug half-way through a body")

    return StreamingResponse(chunks(), media_type="text/plain")


async def health(_: Request) -> PlainTextResponse:
    return PlainTextResponse("starting", status_code=503)


class RaisesBeforeAnswering:
    """Middleware with a bug: raises before the app answers (Starlette's ServerErrorMiddleware
    is not around it, so nothing has been sent)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/middleware-bug":
            raise OverflowError("a bug in a middleware")
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    routes = [
        Route("/ok", ok),
        Route("/bug", bug),
        Route("/half", half_streamed),
        Route("/livez", health),
        Route("/middleware-bug", ok),
    ]
    app = ErrorShapeMiddleware(RaisesBeforeAnswering(Starlette(routes=routes)))
    with uvicorn_server(app) as served:
        yield served


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/bug", 500),  # Starlette answered text/plain, then re-raised
        ("GET", "/middleware-bug", 500),  # nothing answered yet
        ("POST", "/livez", 405),  # a probe with the wrong method: reshaped too
        ("GET", "/nowhere", 404),
    ],
)
def test_error_is_json_and_the_connection_stays_usable(
    url: str, method: str, path: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        first = connection(client.get("/ok"))
        with caplog.at_level(logging.ERROR, logger="botmodels.http"):
            failed = client.request(method, path)
        error = assert_error(failed, status)
        after = client.get("/ok")
        assert after.status_code == 200
        assert first == connection(failed) == connection(after)
    assert "connection" not in failed.headers
    if status == 500:
        assert error == {
            "message": GENERIC_500,
            "type": "server_error",
            "code": "server_error",
            "param": None,
        }
        (record,) = [r for r in caplog.records if r.name == "botmodels.http"]
        assert record.getMessage() == f"unhandled error on GET {path}"
        assert record.exc_info is not None  # the traceback is in the log, never in the body


def test_health_503_body_is_left_as_is(url: str) -> None:
    response = httpx.get(url + "/livez")
    assert (response.status_code, response.text) == (503, "starting")


def test_a_body_cut_short_still_closes_the_connection(url: str) -> None:
    """Once part of a 200 body is out, closing is the only way to tell the client."""
    with httpx.Client(base_url=url, timeout=10) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get("/half")
