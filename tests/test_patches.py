"""The BentoML workarounds in botmodels/patches.py, each against the real BentoML class."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from botmodels import patches
from tests.asgi_server import read_response, until_closed


def test_local_call_wrapper_is_built_once_per_method_and_instance() -> None:
    built: list[tuple[Any, Any]] = []

    def build(method: Any, instance: Any) -> Any:
        built.append((method, instance))
        return lambda: (method, instance)

    cached = patches._cached_local_call(build)
    method, first, second = object(), object(), object()
    assert cached(method, first) is cached(method, first)
    assert cached(method, second)() == (method, second)
    assert built == [(method, first), (method, second)]


def test_apply_installs_the_workarounds() -> None:
    from _bentoml_impl.server.app import ServiceAppFactory

    patches.apply()
    assert ServiceAppFactory._add_response_headers is patches._add_response_headers
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.routing import Router

    wrapped = "_skip_excluded_paths.<locals>.call_unless_excluded"
    assert OpenTelemetryMiddleware.__call__.__qualname__ == wrapped
    assert Router.app.__qualname__ == "_static_route_lookup.<locals>.app"


class _Sink:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def __call__(self, message: Any) -> None:
        self.messages.append(message)


async def _no_body() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}


def _timed(app: Any, timeout: float) -> Any:
    return type("Timeout", (), {"app": staticmethod(app), "timeout": timeout})()


def test_timeout_answers_504_in_the_error_shape_and_cancels_the_app() -> None:
    import json

    from botmodels.errors import is_error_shape

    cancelled: list[bool] = []

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sink = _Sink()
    asyncio.run(patches._timeout_call(_timed(slow, 0.05), {"type": "http"}, _no_body, sink))
    assert cancelled == [True]
    assert sink.messages[0]["status"] == 504
    body = json.loads(sink.messages[1]["body"])
    assert is_error_shape(body)
    assert "0.05 s" in body["error"]["message"]


def test_timeout_limits_the_start_of_the_response_not_its_end() -> None:
    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.15)  # longer than the timeout, after the response started
        await send({"type": "http.response.body", "body": b"done"})

    sink = _Sink()
    asyncio.run(patches._timeout_call(_timed(streaming, 0.05), {"type": "http"}, _no_body, sink))
    assert [m.get("status", m.get("body")) for m in sink.messages] == [200, b"done"]


def test_timeout_lets_the_apps_own_timeout_error_through() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise TimeoutError("upstream call timed out")

    sink = _Sink()
    with pytest.raises(TimeoutError, match="upstream call timed out"):
        asyncio.run(patches._timeout_call(_timed(failing, 5), {"type": "http"}, _no_body, sink))
    assert sink.messages == []


def test_io_models_give_model_fields_without_a_warning_per_request() -> None:
    import warnings

    from _bentoml_sdk.io_models import IODescriptor
    from pydantic import create_model

    patches.apply()
    model: Any = create_model("Input", __base__=IODescriptor, text=(str, ...))
    instance = model(text="hi")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert instance.model_fields is model.__pydantic_fields__
        assert list(model.model_fields) == ["text"]


def test_metric_children_are_memoised_and_still_count() -> None:
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    counter = Counter("requests", "test", ["endpoint", "code"], registry=registry)
    patches._memoise_labels(counter)
    assert counter.labels(endpoint="/a", code=200) is counter.labels(endpoint="/a", code=200)
    counter.labels(endpoint="/a", code=200).inc()
    counter.labels(endpoint="/a", code=500).inc(2)
    for number in range(patches.MAX_LABEL_SETS + 5):  # past the bound: still counted
        counter.labels(endpoint=f"/scan/{number}", code=404).inc()
    sample = registry.get_sample_value
    assert sample("requests_total", {"endpoint": "/a", "code": "200"}) == 1
    assert sample("requests_total", {"endpoint": "/a", "code": "500"}) == 2
    assert sample("requests_total", {"endpoint": "/scan/1028", "code": "404"}) == 1


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str | None:
        return None if name in ("socket", "peername", "sockname", "sslcontext") else f"info:{name}"


def test_small_writes_of_one_loop_iteration_go_out_as_one() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        real = _Transport()
        transport = patches._CoalescingTransport(real)
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"{}")
        before = list(real.writes)  # nothing yet: flushed when the loop next runs callbacks
        await asyncio.sleep(0)
        return before, real.writes

    before, after = asyncio.run(scenario())
    assert before == []
    assert after == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]


def test_big_writes_go_at_once_in_order_and_close_flushes_first() -> None:
    async def scenario() -> _Transport:
        real = _Transport()
        transport = patches._CoalescingTransport(real)
        big = b"x" * patches.COALESCE_MAX_BYTES
        transport.write(big)  # alone and big: at once (flow control sees it)
        assert real.writes == [big]
        transport.write(b"head")
        transport.write(big)  # pending + big: flushed together, in order
        assert real.writes == [big, b"head" + big]
        transport.write(b"tail")
        transport.close()  # pending data goes before the close
        assert real.writes[-1] == b"tail"
        assert real.closed
        transport.write(b"late")
        await asyncio.sleep(0)  # flush on a closing transport drops, as the transport would
        assert transport.get_extra_info("cipher") == "info:cipher"  # everything else passes
        return real

    real = asyncio.run(scenario())
    assert b"late" not in real.writes


def test_apply_wraps_uvicorns_transport() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    patches.apply()
    seen: list[Any] = []

    async def scenario() -> None:
        protocol = HttpToolsProtocol.__new__(HttpToolsProtocol)
        protocol.connections = set()  # what connection_made touches before the transport
        protocol.logger = type("L", (), {"level": 100})()
        protocol.loop = asyncio.get_running_loop()
        HttpToolsProtocol.connection_made(protocol, _Transport())  # type: ignore[arg-type]
        seen.append(protocol.transport)
        timer = protocol._botmodels_head_timer  # type: ignore[attr-defined]
        seen.append(timer)  # workaround 11's, armed on the same connection
        timer.cancel()

    asyncio.run(scenario())
    assert isinstance(seen[0], patches._CoalescingTransport)
    assert isinstance(seen[1], asyncio.TimerHandle)


def _otel(patched: bool) -> tuple[Any, Any, list[str]]:
    """A real OpenTelemetry ASGI middleware (upstream or patched) recording spans in memory."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.util.http import ExcludeList

    upstream = getattr(OpenTelemetryMiddleware.__call__, "__wrapped__", None)
    upstream = upstream or OpenTelemetryMiddleware.__call__
    call = patches._skip_excluded_paths(upstream) if patched else upstream
    middleware_class = type("Middleware", (OpenTelemetryMiddleware,), {"__call__": call})
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    excluded = ExcludeList(["/api/ping", "/v1/embeddings", "/a+b"])
    middleware = middleware_class(app, excluded_urls=excluded, tracer_provider=provider)
    return middleware, exporter, reached


def _http_scope(method: str, path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "http_version": "1.1",
        "server": ("127.0.0.1", 8089),
        "client": ("127.0.0.1", 50000),
        "headers": [(b"host", b"127.0.0.1:8089")],
    }


def test_excluded_paths_skip_opentelemetry_and_everything_else_is_traced_as_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import opentelemetry.instrumentation.asgi as otel_asgi

    url_builds: list[str] = []
    build = otel_asgi.get_host_port_url_tuple

    def counting(scope: Any) -> Any:
        url_builds.append(scope["path"])
        return build(scope)

    monkeypatch.setattr(otel_asgi, "get_host_port_url_tuple", counting)
    # /api/ping/x is excluded by upstream's regex search but is not an entry; /a+b is an entry
    # that does not match itself as a regex, so upstream traces it.
    paths = ["/api/ping", "/v1/embeddings", "/api/ping/x", "/a+b", "/other"]
    spans = {}
    for patched in (False, True):
        middleware, exporter, reached = _otel(patched)
        url_builds.clear()
        for path in paths:
            asyncio.run(middleware(_http_scope("POST", path), _no_body, _Sink()))
        assert reached == paths
        spans[patched] = sorted({span.name for span in exporter.get_finished_spans()})
        # Traced requests build the URL again for the span's attributes.
        if patched:
            assert set(url_builds) == {"/api/ping/x", "/a+b", "/other"}
        else:
            assert set(url_builds) == set(paths)
    server_spans = [name for name in spans[True] if not name.endswith((" send", " receive"))]
    assert spans[True] == spans[False]
    assert server_spans == ["POST /a+b", "POST /other"]


class _AnyMethod:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.responses import PlainTextResponse

        await PlainTextResponse(f"any {scope['method']}")(scope, receive, send)


def _routers() -> tuple[Any, Any]:
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route, Router

    def answer(text: str) -> Any:
        async def endpoint(request: Any) -> PlainTextResponse:
            return PlainTextResponse(f"{text} {request.method}")

        return endpoint

    def routes() -> list[Any]:
        return [
            Route("/items/{item}", answer("param"), methods=["GET"]),
            Route("/items/special", answer("special-get"), methods=["GET"]),
            Route("/items/special", answer("special-post"), methods=["POST"]),
            Route("/ping", answer("ping"), methods=["POST"]),
            Route("/any", _AnyMethod()),  # an ASGI app: Starlette sets no methods
            Mount("/sub", routes=[Route("/x", answer("sub-x"))]),
        ]

    upstream = getattr(Router.app, "__wrapped__", Router.app)
    lookup = patches._static_route_lookup(upstream, (Route, Mount))
    return (
        type("Plain", (Router,), {"app": upstream})(routes=routes()),
        type("Lookup", (Router,), {"app": lookup})(routes=routes()),
    )


def _route(router: Any, method: str, path: str) -> tuple[int, bytes]:
    sink = _Sink()
    asyncio.run(router(_http_scope(method, path), _no_body, sink))
    return sink.messages[0]["status"], b"".join(m.get("body", b"") for m in sink.messages[1:])


REQUESTS = [
    ("GET", "/items/special"),  # the parameter route comes first and wins, as in Starlette
    ("POST", "/items/special"),
    ("POST", "/ping"),
    ("GET", "/ping"),  # 405 from the partial match
    ("DELETE", "/any"),
    ("GET", "/sub/x"),
    ("GET", "/items/7"),
    ("GET", "/nothing"),  # 404
]


def test_route_lookup_answers_exactly_as_starlettes_scan() -> None:
    plain, lookup = _routers()
    for _ in range(2):  # the second pass is served from the table
        for method, path in REQUESTS:
            assert _route(lookup, method, path) == _route(plain, method, path), (method, path)
    assert _route(lookup, "GET", "/ping")[0] == 405
    assert _route(lookup, "GET", "/items/special") == (200, b"param GET")
    table = lookup._botmodels_static[2]
    # Only full matches of routes without parameters are remembered.
    assert sorted(table) == [("DELETE", "/any"), ("POST", "/items/special"), ("POST", "/ping")]
    assert table[("POST", "/ping")] is lookup.routes[3]


def test_route_lookup_follows_route_changes_and_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from starlette.responses import PlainTextResponse
    from starlette.routing import Host, Route

    plain, lookup = _routers()
    assert _route(lookup, "POST", "/ping") == (200, b"ping POST")

    async def late(request: Any) -> PlainTextResponse:
        return PlainTextResponse("late")

    lookup.routes.insert(0, Route("/ping", late, methods=["POST"]))  # a new first match
    assert _route(lookup, "POST", "/ping") == (200, b"late")

    monkeypatch.setattr(patches, "MAX_ROUTE_KEYS", 3)
    for method in ("GET", "PUT", "PATCH", "OPTIONS", "DELETE"):
        assert _route(lookup, method, "/any") == (200, f"any {method}".encode())
    assert len(lookup._botmodels_static[2]) == 3

    # A Host route matches on a header: no table at all, Starlette's scan as before.
    lookup.routes.append(Host("example.org", app=plain))
    for method, path in REQUESTS:
        assert _route(lookup, method, path)[0] == _route(plain, method, path)[0]
    assert lookup._botmodels_static[2] is None


# --- workaround 11: request-head timeout, on a real uvicorn server in this process -------------
HEAD_TIMEOUT_S = 1.0
SLACK_S = 5.0  # a shared, busy machine: only the order of magnitude is asserted


async def _echo_length(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body; answers its length. `?wait=<s>` answers that much later."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    query = scope["query_string"].decode()
    if query.startswith("wait="):
        await asyncio.sleep(float(query[5:]))
    body = f"length {size}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def uvicorn_port() -> Iterator[int]:
    """uvicorn with its httptools protocol as patched (a subclass with a short timeout)."""
    import socket
    import threading

    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    patches.apply()
    protocol = type(
        "ShortHeadTimeout", (HttpToolsProtocol,), {"_botmodels_head_timeout_s": HEAD_TIMEOUT_S}
    )
    config = uvicorn.Config(
        _echo_length, http=protocol, lifespan="off", log_level="warning", timeout_keep_alive=5
    )
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield int(sock.getsockname()[1])
    server.should_exit = True
    thread.join(10)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=HEAD_TIMEOUT_S + SLACK_S)


def test_half_a_request_head_gets_408_and_the_connection_closes(uvicorn_port: int) -> None:
    with _connect(uvicorn_port) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Half: ")
        data, waited = until_closed(sock)
    assert waited < HEAD_TIMEOUT_S + SLACK_S
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in head
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout"
    assert error["type"] == "timeout_error"


def test_a_connection_that_sends_nothing_is_closed_silently(uvicorn_port: int) -> None:
    with _connect(uvicorn_port) as sock:
        data, waited = until_closed(sock)
    assert data == b""
    assert waited < HEAD_TIMEOUT_S + SLACK_S


def test_slow_bodies_slow_answers_and_idle_keep_alive_are_not_cut(uvicorn_port: int) -> None:
    with _connect(uvicorn_port) as sock:
        # The head in pieces (complete well within the timeout), then a body that takes longer
        # than the timeout to arrive: the timeout is on the head only.
        for piece in (b"POST /x HTTP/1.1\r\n", b"Host: a\r\n", b"Content-Length: 6\r\n\r\n"):
            sock.sendall(piece)
            time.sleep(0.05)
        for piece in (b"ab", b"cd", b"ef"):
            time.sleep(HEAD_TIMEOUT_S * 0.6)
            sock.sendall(piece)
        first = read_response(sock)
        assert first.startswith(b"HTTP/1.1 200 ")
        assert first.endswith(b"length 6")
        # Idle on the kept-alive connection longer than the head timeout (under uvicorn's own
        # 5 s keep-alive), then a request whose answer takes longer than the head timeout.
        time.sleep(HEAD_TIMEOUT_S * 1.5)
        sock.sendall(b"GET /x?wait=%.1f HTTP/1.1\r\nHost: a\r\n\r\n" % (HEAD_TIMEOUT_S * 1.5))
        second = read_response(sock)
    assert second.startswith(b"HTTP/1.1 200 ")
    assert second.endswith(b"length 0")


def test_each_head_gets_the_whole_timeout_from_its_own_first_byte(uvicorn_port: int) -> None:
    """The connection's timer was armed at connect; it fires while a second head is pending and
    must measure that head from its own first byte, not from the connection's start."""
    with _connect(uvicorn_port) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(HEAD_TIMEOUT_S * 0.8)
        sock.sendall(b"GET /x HTTP/1.1\r\n")
        time.sleep(HEAD_TIMEOUT_S * 0.5)  # past the connection's first deadline
        sock.sendall(b"Host: a\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_a_late_second_head_on_a_kept_alive_connection_is_timed_out(uvicorn_port: int) -> None:
    with _connect(uvicorn_port) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /x HTTP/1.1\r\nHo")  # the next request's head never completes
        data, waited = until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert waited < HEAD_TIMEOUT_S + SLACK_S


def test_many_half_open_connections_do_not_stop_normal_requests(uvicorn_port: int) -> None:
    import httpx

    stuck = [_connect(uvicorn_port) for _ in range(300)]
    try:
        for sock in stuck:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        answer = httpx.post(f"http://127.0.0.1:{uvicorn_port}/x", content=b"abc", timeout=10)
        assert answer.status_code == 200
        assert answer.text == "length 3"
        closed = [until_closed(sock)[0].startswith(b"HTTP/1.1 408 ") for sock in stuck]
        assert all(closed)
    finally:
        for sock in stuck:
            sock.close()


def test_head_timeout_installs_once_and_a_later_call_only_sets_the_timeout() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    patches.apply()
    made = HttpToolsProtocol.connection_made
    before = HttpToolsProtocol._botmodels_head_timeout_s  # type: ignore[attr-defined]
    try:
        patches.install_head_timeout(HttpToolsProtocol, 3.5)
        assert HttpToolsProtocol.connection_made is made
        assert HttpToolsProtocol._botmodels_head_timeout_s == 3.5  # type: ignore[attr-defined]
    finally:
        patches.install_head_timeout(HttpToolsProtocol, before)


# --- workaround 12: no slash redirects -----------------------------------------------------------
def test_no_router_redirects_to_the_requests_host() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.testclient import TestClient

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    inner = Starlette(routes=[Route("/files/{name}", hello)])
    outer = Starlette(routes=[Route("/ping", hello), Mount("/sub", app=inner)])
    client = TestClient(outer, base_url="http://evil.example")
    assert client.get("/ping/", follow_redirects=False).status_code == 307  # Starlette's default
    patches.no_slash_redirects(outer)
    assert outer.router.redirect_slashes is False
    assert inner.router.redirect_slashes is False
    for path in ("/ping/", "/sub/files/x/"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 404, path
        assert "location" not in response.headers
    assert client.get("/sub/files/x").text == "hello"


@pytest.mark.parametrize("http", ["httptools", "h11"])
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT AN HTTP REQUEST\r\n\r\n",
        b"POST /api/ping HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ],
)
def test_uvicorns_own_400_is_in_the_error_shape(http: Any, request_bytes: bytes) -> None:
    """Against uvicorn's real protocols, served: the request never reaches the app."""
    import json

    from botmodels.errors import is_error_shape
    from tests.asgi_server import raw_exchange, uvicorn_server

    patches.apply()
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    with uvicorn_server(app, http) as url:
        answer, closed = raw_exchange(url, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert lines[0].startswith("HTTP/1.1 400")
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    assert closed
    payload = json.loads(body)
    assert is_error_shape(payload)
    assert payload["error"]["message"] == "Invalid HTTP request received."
    assert payload["error"]["code"] == "invalid_http_request"
    assert reached == []


def _log_from_bentomls_wrapper(exc: Exception, caplog: pytest.LogCaptureFixture) -> list[Any]:
    """What BentoML's api_endpoint_wrapper logs when its API raised `exc`."""
    import _bentoml_impl.server.app as bentoml_app
    from starlette.requests import Request

    patches.apply()
    request = Request(_http_scope("POST", "/runners/vqa/answer"))
    caplog.clear()
    try:
        raise exc
    except Exception:  # noqa: BLE001 - as in the wrapper: every exception is logged
        bentoml_app.log_exception(request)
    return list(caplog.records)


def test_client_errors_log_one_line_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    from bentoml.exceptions import InvalidArgument
    from pydantic import BaseModel, ValidationError

    class Item(BaseModel):
        n: int

    with pytest.raises(ValidationError) as invalid:
        Item.model_validate({"n": "secret-value"})
    for error, message in [
        (
            invalid.value,
            "invalid request: n: Input should be a valid integer, unable to parse string",
        ),
        (InvalidArgument("`language` 'xx' is not installed"), "`language` 'xx' is not installed"),
    ]:
        (record,) = _log_from_bentomls_wrapper(error, caplog)
        assert record.levelname == "WARNING"
        assert record.exc_info is None
        assert record.getMessage().startswith(f"POST /runners/vqa/answer: 400 {message}")
        assert "secret-value" not in record.getMessage()  # inputs are never logged


def test_server_errors_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    from bentoml.exceptions import ServiceUnavailable

    for exc in (RuntimeError("a bug"), ServiceUnavailable("process is overloaded")):
        (record,) = _log_from_bentomls_wrapper(exc, caplog)
        assert record.levelname == "ERROR"
        assert record.exc_info is not None
        assert record.exc_info[1] is exc
