"""The BentoML workarounds in botmodels/patches.py, each against the real BentoML class."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from botmodels import patches


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
        HttpToolsProtocol.connection_made(protocol, _Transport())  # type: ignore[arg-type]
        seen.append(protocol.transport)

    asyncio.run(scenario())
    assert isinstance(seen[0], patches._CoalescingTransport)


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
