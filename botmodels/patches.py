"""Workarounds for BentoML 1.4.40 bugs. Each names what to check before dropping it.

1. Leaked timer per request. `TimeoutMiddleware.__call__` (bentoml/_internal/server/http/traffic.py)
   arms `loop.call_later(timeout, ...)` for every request and never cancels it, so each request's
   context (OpenTelemetry span included) lives for `traffic.timeout` seconds: under load the
   worker's memory grows with the request rate and full-GC pauses make the whole p99 tail
   (docs/benchmarks.md, Workarounds). The replacement below is the same code with the handle
   cancelled when the request ends, and its 504 in botmodels' error shape. Drop it when upstream's
   `__call__` cancels the handle (still missing on upstream main, 2026-11).

2. (Moved.) The `batch_infer` hook, by which an entry route submits to a batchable API's
   dispatcher, is how work reaches a runner, not a workaround: botmodels/dispatch.py holds it
   (`wire_service`), with what to check before dropping it. `apply()` still installs it.

3. `inspect.signature` on every call. `APIMethod.__get__` (_bentoml_sdk/method.py) rebuilds the
   local-call wrapper, and with it the function's signature, each time an API is looked up:
   twice per embeddings request, a visible share of the event loop's time in a profile. The
   wrapper only depends on (method, instance), so it is built once per pair. Drop it when
   `_local_call` caches (upstream main, 2026-11: it does not).

4. (Retired.) BentoML's `CorkDispatcher` is no longer used: botmodels/dispatch.py replaces it
   for every batchable API, and starts the next batch before answering the finished one.

5. Dependency injection per response. `ServiceAppFactory._add_response_headers`
   (_bentoml_impl/server/app.py) is wrapped in simple_di's `@inject`, which binds its signature and
   reads two configuration values on every response (a share of the event loop's time per request:
   docs/benchmarks.md, Workarounds). Both values are fixed once the server runs: they are read on
   the first response and the same headers are set. Drop it when upstream reads them once.

6. A deprecation warning per request. `ServiceAppFactory.api_endpoint` reads
   `input_data.model_fields` on the instance, which pydantic >= 2.11 answers with a
   `PydanticDeprecatedSince211` warning each time: the warnings machinery (frame walk, filter
   list) on every request (docs/benchmarks.md, Workarounds). BentoML's IO models get
   a `model_fields` that returns the same class-level dict without the warning. Drop it when
   upstream reads `type(input_data).model_fields`.

7. Label lookups per request. `RunnerTrafficMetricsMiddleware` calls `.labels(**five labels)` four
   times per request; each call stringifies and validates the labels and takes a lock to find
   the same child metric. The children are memoised per label set (bounded; past the bound the
   call goes to prometheus_client as before). Drop it when upstream caches its children.

8. Two writes per response (uvicorn, not BentoML). uvicorn's httptools protocol writes the response
   head when the app sends `http.response.start` and the body when it sends `http.response.body`;
   with uvloop each write is its own `send()` syscall and TCP segment, and the client wakes twice.
   Small writes made in one event-loop iteration now go out as one (flushed by `call_soon`, or at
   once past 64 KiB, or before close), which measurably cuts worker CPU per request
   (docs/benchmarks.md, Workarounds). Drop it when uvicorn writes head and body together.

9. URL parsing for routes excluded from tracing. BentoML's OpenTelemetry middleware decides
   whether a route is traced after building the request's full URL from its headers and running
   the `tracing.excluded_urls` regex over it, on every request of the hot routes this service
   excludes (docs/benchmarks.md, Workarounds). A path equal to one of the excluded
   entries (which that regex always matches) now goes straight to the app; every other request
   takes OpenTelemetry's own path. Drop it when the middleware checks exclusions without
   rebuilding the URL.

10. Route lookup (Starlette, not BentoML). Starlette's router tries each route's regex in order
   until one matches, so a route late in the list pays for every regex before it on every request
   (docs/benchmarks.md, Workarounds). A request whose (method, path) a plain route matched before
   goes to that route directly. Only routes without path parameters are remembered (so at most one
   entry per route and method), and only while every route is a `Route` or a `Mount`, whose matching
   depends on nothing but the method and path (a `Host` route, which reads headers, turns it off).
   Drop it when Starlette indexes static routes.

11. No request-head timeout (uvicorn, not BentoML). uvicorn's httptools protocol arms its only
   timer (keep-alive) after a response; a connection that connects and sends nothing, or half a
   request head, is held forever (docs/benchmarks.md, Workarounds). A
   head's clock now starts at `connection_made` (the first request) or at the first byte of a
   later request (`on_message_begin`) and stops at `on_headers_complete`; past
   `BOTMODELS_HEADER_TIMEOUT_S` the connection is closed, with a 408 in the error shape if part
   of a head had arrived. One timer per connection, not cancelled and re-armed per request: when
   it fires it checks the pending head's clock, so a busy kept-alive connection pays two
   attribute writes per request. Bodies, responses and idle keep-alive connections keep their
   own rules. Always on (not part of the benchmark switch). Drop it when uvicorn has a
   header-read timeout.

12. Host-reflecting slash redirects (Starlette). A router answers a path that matches a route
   only with (or without) a trailing slash with a 307 to an absolute URL built from the request's
   `Host` header: `GET /outputs/images/x/` with `Host: evil.example`, unauthenticated, redirected
   to `http://evil.example/outputs/images/x`. `redirect_slashes` is turned off on BentoML's app
   and every Starlette app mounted in it, so such a path is a 404 in the error shape. Always on.
   Drop it when BentoML lets a service turn slash redirects off.

13. Half the routes missing from the API docs. The factory's `Service.openapi_spec`
   (_bentoml_sdk/service/factory.py), which `/docs.json`, the Swagger UI and `bentoml build`'s
   `apis/openapi.yaml` all read, documents only `@bentoml.api` routes (never the routes of an
   app mounted with `@bentoml.asgi_app`), declares error bodies as `{"error": string}`, and
   gives an `Any` parameter no type. A service that registers a builder with
   `document_service` is answered with the builder's document instead (botmodels/openapi.py);
   any other service gets BentoML's. Always on: it changes what is documented, not how a
   request runs. Drop it when BentoML documents mounted apps and lets a service declare its
   error responses.

14. Protocol-level 400 in plain text (uvicorn, not BentoML). A request uvicorn's parser rejects
   (a malformed request line, a non-numeric Content-Length…) never reaches the app: the protocol
   answers `400 Invalid HTTP request received.` as text/plain itself and closes the connection.
   The replacement sends the same status and message, and the same `Connection: close` (the
   parser's state is lost, so the connection cannot be reused), in botmodels' JSON error shape;
   for both of uvicorn's HTTP protocols (httptools, and h11 where httptools is missing). Always
   on. Drop it when uvicorn lets the application choose that body (uvicorn 0.54: it does not).

15. A traceback per client error. `ServiceAppFactory.api_endpoint_wrapper`
   (_bentoml_impl/server/app.py) calls `log_exception` (an ERROR with the full traceback) for
   every `ValidationError` and `BentoMLException`, so every 400 from a malformed body was logged
   as if the server had failed. A client error now logs one WARNING line (method, route, status
   and message; never the input): WARNING as uvicorn logs the requests it rejects, and because
   a served worker does not show INFO. A 5xx keeps upstream's ERROR and traceback. Always on.
   Drop it when upstream logs client errors without a traceback.

16. One new connection per event-loop turn (libuv, under uvicorn's uvloop). Since libuv 1.45
   ("unix: don't accept() connections in a loop") the listening socket yields one connection
   per loop turn. Under a burst of new connections the queue drains one per turn, and every
   turn also runs the request work that became ready, so a health probe's connection waits
   behind the whole burst (docs/benchmarks.md, Probes under load, and Workarounds). The worker
   now serves the listening socket through `ACCEPTORS` duplicates of its descriptor (one uvloop
   server each, so up to that many accepts per turn); the kernel still keeps one queue. Its
   cost: a lone new connection wakes every descriptor, and all but one `accept()` find nothing.
   Drop it when uvloop accepts every pending connection per turn (or offers a setting).

17. X-Forwarded-For believed from loopback (uvicorn, not BentoML). uvicorn, as BentoML runs it,
   rewrites `scope["client"]` from `X-Forwarded-For` whenever the TCP peer is in
   `FORWARDED_ALLOW_IPS` (default 127.0.0.1 and ::1), so by the time the auth middleware runs
   the peer is lost, and a local process (or a local proxy passing the header through) could
   name any client. The peer is now kept in the scope (`botmodels.auth.PEER_SCOPE_KEY`) before
   uvicorn rewrites it; botmodels' own rule (`BOTMODELS_TRUSTED_PROXIES`) decides who is
   believed. uvicorn's rewrite itself is left as it was (the scheme, `request.client`). Always
   on. Drop it when uvicorn keeps the peer, or BentoML lets a service turn proxy headers off.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from botmodels.errors import error_bytes, send_error

log = logging.getLogger("botmodels.patches")

_applied = False


async def _timeout_call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    # As upstream, the limit is on starting the response, not on finishing it. Unlike
    # upstream, the app runs in this task under `asyncio.timeout` (no second task and future
    # per request), and the deadline is dropped once the response starts: the fix for the
    # timer that outlived its request.
    deadline = asyncio.timeout(self.timeout)
    started = False

    async def _send(message: Any) -> None:
        nonlocal started
        if not started:
            started = True
            if not deadline.expired():
                deadline.reschedule(None)
        await send(message)

    try:
        async with deadline:
            await self.app(scope, receive, _send)
    except TimeoutError:
        if not deadline.expired():
            raise  # the app's own TimeoutError, not the deadline
    if deadline.expired() and not started:
        await send_error(send, 504, f"request not processed within {self.timeout} s")


def _cached_local_call(build: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    # Keyed by id() and holding the pair: a service instance lives as long as its worker.
    built: dict[tuple[int, int], tuple[Any, Any, Any]] = {}

    def _local_call(self: Any, instance: Any) -> Any:
        key = (id(self), id(instance))
        found = built.get(key)
        if found is None or found[0] is not self or found[1] is not instance:
            found = built[key] = (self, instance, build(self, instance))
        return found[2]

    return _local_call


class _ClassFields:
    """`model_fields` for BentoML's IO models: pydantic's own answer (the class's
    `__pydantic_fields__`), from the class or an instance, without the instance warning."""

    def __get__(self, instance: Any, owner: type) -> Any:
        return getattr(owner, "__pydantic_fields__", {})


MAX_LABEL_SETS = 1024  # paths are labels: a scan of random URLs must not grow this forever


def _memoise_labels(metric: Any) -> None:
    children: dict[tuple[tuple[str, Any], ...], Any] = {}
    labels = metric.labels

    def cached(**kwargs: Any) -> Any:
        key = tuple(kwargs.items())
        child = children.get(key)
        if child is None:
            child = labels(**kwargs)
            if len(children) < MAX_LABEL_SETS:
                children[key] = child
        return child

    metric.labels = cached


def _wrap_metrics_setup(setup: Callable[..., None]) -> Callable[..., None]:
    def _setup(self: Any, *args: Any, **kwargs: Any) -> None:
        setup(self, *args, **kwargs)
        for name in (
            "metrics_request_duration",
            "metrics_request_total",
            "metrics_request_in_progress",
            "metrics_last_request_timestamp",
        ):
            _memoise_labels(getattr(self, name))

    return _setup


COALESCE_MAX_BYTES = 64 * 1024  # past this, write at once: big bodies keep flow control


class _CoalescingTransport:
    """The connection's transport, with small writes of one loop iteration sent as one."""

    __slots__ = ("_loop", "_pending", "_size", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._pending: list[bytes] | None = None
        self._size = 0
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if self._pending is None:
            if len(data) >= COALESCE_MAX_BYTES:
                self._transport.write(data)
                return
            self._pending, self._size = [data], len(data)
            self._loop.call_soon(self.flush)
            return
        self._pending.append(data)
        self._size += len(data)
        if self._size >= COALESCE_MAX_BYTES:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(b"".join(pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _coalescing_connection_made(made: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def connection_made(self: Any, transport: Any) -> None:
        made(self, _CoalescingTransport(transport))

    return connection_made


def _skip_excluded_paths(call: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    async def call_unless_excluded(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        skip = self.__dict__.get("_botmodels_skip")
        if skip is None:
            # An entry that matches itself as a regex matches any URL ending in it.
            entries = getattr(self.excluded_urls, "_excluded_urls", None) or ()
            skip = self._botmodels_skip = frozenset(
                e for e in entries if isinstance(e, str) and re.search(e, e)
            )
        if scope.get("path") in skip:
            await self.app(scope, receive, send)
            return
        await call(self, scope, receive, send)

    call_unless_excluded.__wrapped__ = call  # type: ignore[attr-defined]
    return call_unless_excluded


MAX_ROUTE_KEYS = 1024  # (method, path) pairs; static routes bound it, this bounds odd methods


def _static_route_lookup(
    route_app: Callable[..., Awaitable[None]], plain: tuple[type, ...]
) -> Callable[..., Awaitable[None]]:
    from starlette._utils import get_route_path
    from starlette.routing import Match, Route

    async def app(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await route_app(self, scope, receive, send)
            return
        routes = self.routes
        known = self.__dict__.get("_botmodels_static")
        if known is None or known[0] is not routes or known[1] != len(routes):
            usable = all(type(r) in plain for r in routes)
            known = self._botmodels_static = (routes, len(routes), {} if usable else None)
        table: dict[tuple[str, str], Any] | None = known[2]
        if table is None:
            await route_app(self, scope, receive, send)
            return
        key = (scope["method"], get_route_path(scope))
        route: Any = table.get(key)
        found, child_scope = Match.NONE, {}
        if route is not None:
            found, child_scope = route.matches(scope)
        else:
            # Starlette's scan: the first full match wins.
            for route in routes:
                found, child_scope = route.matches(scope)
                if found is Match.FULL:
                    if (
                        type(route) is Route
                        and not route.param_convertors
                        and len(table) < MAX_ROUTE_KEYS
                    ):
                        table[key] = route
                    break
        if found is not Match.FULL:
            # 405 from a partial match, slash redirects, 404: Starlette's own path.
            await route_app(self, scope, receive, send)
            return
        # What Starlette does with a full match.
        if "router" not in scope:
            scope["router"] = self
        scope["route"] = route
        scope.update(child_scope)
        await route.handle(scope, receive, send)

    app.__wrapped__ = route_app  # type: ignore[attr-defined]
    return app


def _head_timed_out(protocol: Any) -> None:
    transport = protocol.transport
    if transport is None or transport.is_closing():
        return
    cycle = protocol.cycle
    if cycle is not None and not cycle.response_complete:
        # A late pipelined head behind a response still being sent: let that response finish,
        # then uvicorn closes the connection instead of reading on.
        cycle.keep_alive = False
        return
    if protocol._botmodels_head_begun:
        timeout = protocol._botmodels_head_timeout_s
        body = error_bytes(
            408, f"request head not received within {timeout:g} s", code="request_timeout"
        )
        head = [b"HTTP/1.1 408 Request Timeout\r\n"]
        head += [
            name + b": " + value + b"\r\n" for name, value in protocol.server_state.default_headers
        ]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        transport.write(b"".join(head) + body)
    transport.close()


def _check_head_deadline(protocol: Any) -> None:
    """The connection's timer. It is not cancelled when a head completes (one timer per
    connection and timeout period, not per request): it checks what is pending when it fires."""
    protocol._botmodels_head_timer = None
    started = protocol._botmodels_head_started
    if started is None:
        return  # no head pending; the next request's first byte arms a new timer
    remaining = started + protocol._botmodels_head_timeout_s - protocol.loop.time()
    if remaining > 0:  # a later head than the one this timer was armed for
        _arm_head_timer(protocol, remaining)
        return
    _head_timed_out(protocol)


def _arm_head_timer(protocol: Any, delay: float) -> None:
    protocol._botmodels_head_timer = protocol.loop.call_later(delay, _check_head_deadline, protocol)


def install_head_timeout(protocol_class: Any, timeout_s: float) -> None:
    """Workaround 11 on uvicorn's httptools protocol. Idempotent; a later call only changes the
    timeout. Reads the timeout from the class, so a subclass can set its own (tests)."""
    protocol_class._botmodels_head_timeout_s = timeout_s
    if getattr(protocol_class, "_botmodels_head_timeout_installed", False):
        return
    protocol_class._botmodels_head_timeout_installed = True
    protocol_class._botmodels_head_timer = None
    protocol_class._botmodels_head_started = None  # loop time the pending head's clock started
    protocol_class._botmodels_head_begun = False  # a byte of that head has arrived
    made = protocol_class.connection_made
    begin = protocol_class.on_message_begin
    complete = protocol_class.on_headers_complete
    lost = protocol_class.connection_lost

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        self._botmodels_head_started = self.loop.time()
        _arm_head_timer(self, self._botmodels_head_timeout_s)

    def on_message_begin(self: Any) -> None:
        self._botmodels_head_begun = True
        if self._botmodels_head_started is None:  # a later request on a kept-alive connection
            self._botmodels_head_started = self.loop.time()
            if self._botmodels_head_timer is None:
                _arm_head_timer(self, self._botmodels_head_timeout_s)
        begin(self)

    def on_headers_complete(self: Any) -> None:
        self._botmodels_head_started = None
        self._botmodels_head_begun = False
        complete(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        timer = self._botmodels_head_timer
        if timer is not None:
            timer.cancel()
            self._botmodels_head_timer = None
        self._botmodels_head_started = None
        lost(self, exc)

    protocol_class.connection_made = connection_made
    protocol_class.on_message_begin = on_message_begin
    protocol_class.on_headers_complete = on_headers_complete
    protocol_class.connection_lost = connection_lost


def no_slash_redirects(app: Any) -> None:
    """Workaround 12: `redirect_slashes` off on `app`'s router and on every router mounted in it."""
    from starlette.routing import Mount, Router

    router = getattr(app, "router", app)
    if not isinstance(router, Router):
        return
    router.redirect_slashes = False
    for route in router.routes:
        if isinstance(route, Mount):
            no_slash_redirects(route.app)


def _without_slash_redirects(build: Callable[..., Any]) -> Callable[..., Any]:
    def build_app(self: Any) -> Any:
        app = build(self)
        no_slash_redirects(app)
        return app

    return build_app


def _json_400(message: str) -> bytes:
    return error_bytes(400, message, code="invalid_http_request")


def _httptools_send_400(self: Any, msg: str) -> None:
    """Workaround 14: uvicorn's HttpToolsProtocol.send_400_response, with the JSON body."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE

    body = _json_400(msg)
    content = [STATUS_LINE[400]]
    for name, value in self.server_state.default_headers:
        content.extend([name, b": ", value, b"\r\n"])
    content.extend(
        [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ]
    )
    self.transport.write(b"".join(content))
    self.transport.close()


def _h11_send_400(self: Any, msg: str) -> None:
    """Workaround 14: uvicorn's H11Protocol.send_400_response, with the JSON body."""
    import h11
    from uvicorn.protocols.http.h11_impl import STATUS_PHRASES

    body = _json_400(msg)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
    ]
    event = h11.Response(status_code=400, headers=headers, reason=STATUS_PHRASES[400])
    for output in (
        self.conn.send(event),
        self.conn.send(h11.Data(data=body)),
        self.conn.send(h11.EndOfMessage()),
    ):
        self.transport.write(output)
    self.transport.close()


api_log = logging.getLogger("botmodels.api")


def _client_errors_in_one_line(log_exception: Callable[..., None]) -> Callable[..., None]:
    """Workaround 15: BentoML's `log_exception(request)`, called inside its `except` blocks; a
    client error (a validation error, or a BentoML error below 500) becomes one WARNING line."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    def log_client_error_or_exception(request: Any, exc_info: Any = True) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ValidationError):
            first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            more = exc.error_count() - 1
            message = f"invalid request: {where}: {first['msg']}" + (
                f" (and {more} more)" if more else ""
            )
            status = 400
        elif isinstance(exc, BentoMLException) and exc.error_code < 500:
            message, status = str(exc), int(exc.error_code)
        else:
            log_exception(request, exc_info)
            return
        api_log.warning("%s %s: %d %s", request.method, request.url.path, status, message[:300])

    log_client_error_or_exception.__wrapped__ = log_exception  # type: ignore[attr-defined]
    return log_client_error_or_exception


_header_config: tuple[dict[str, str], bool, Any] | None = None


ACCEPTORS = 16  # accepts per loop turn; each is one more descriptor on the same socket


def _fan_out_accepts(
    startup: Callable[[Any, list[socket.socket] | None], Awaitable[None]],
) -> Callable[[Any, list[socket.socket] | None], Awaitable[None]]:
    async def startup_with_acceptors(self: Any, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        if sockets and type(loop).__module__.startswith("uvloop"):
            # uvicorn makes one server per socket and closes each server (with its descriptor)
            # at shutdown; the kernel's accept queue stays the one the arbiter listens on.
            sockets = [
                *sockets,
                *(
                    socket.socket(fileno=os.dup(sock.fileno()))
                    for sock in sockets
                    for _ in range(ACCEPTORS - 1)
                ),
            ]
        await startup(self, sockets)

    startup_with_acceptors.__wrapped__ = startup  # type: ignore[attr-defined]
    return startup_with_acceptors


def _add_response_headers(self: Any, resp: Any) -> None:
    global _header_config
    if _header_config is None:
        # Imported once, not per response (a function-level import costs on every request).
        from bentoml._internal.configuration.containers import BentoMLContainer
        from bentoml._internal.context import trace_context

        _header_config = (
            BentoMLContainer.logging_formatting.get(),
            bool(BentoMLContainer.http.response.trace_id.get()),
            trace_context,
        )
    logging_format, with_trace_id, trace_context = _header_config
    resp.headers["Server"] = f"BentoML Service/{self.service.name}"
    if trace_context.request_id is not None:
        resp.headers["X-BentoML-Request-ID"] = format(
            trace_context.request_id, logging_format["span_id"]
        )
    if with_trace_id and trace_context.trace_id is not None:
        resp.headers["X-BentoML-Trace-ID"] = format(
            trace_context.trace_id, logging_format["trace_id"]
        )


def apply() -> None:
    """Idempotent; called when service.py is imported in a server worker."""
    global _applied
    if _applied:
        return
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    if workarounds_enabled():
        from _bentoml_sdk.io_models import IOMixin
        from _bentoml_sdk.method import APIMethod
        from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

        TimeoutMiddleware.__call__ = _timeout_call  # type: ignore[method-assign]
        APIMethod._local_call = _cached_local_call(APIMethod._local_call)
        ServiceAppFactory._add_response_headers = _add_response_headers
        IOMixin.model_fields = _ClassFields()
        RunnerTrafficMetricsMiddleware._setup = _wrap_metrics_setup(  # type: ignore[method-assign]
            RunnerTrafficMetricsMiddleware._setup
        )
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        HttpToolsProtocol.connection_made = _coalescing_connection_made(  # type: ignore[method-assign,assignment]
            HttpToolsProtocol.connection_made
        )
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        OpenTelemetryMiddleware.__call__ = _skip_excluded_paths(  # type: ignore[method-assign,assignment]
            OpenTelemetryMiddleware.__call__
        )
        from _bentoml_impl.server.mount import PassiveMount
        from starlette.routing import Mount, Route, Router

        Router.app = _static_route_lookup(  # type: ignore[method-assign,assignment]
            Router.app, (Route, Mount, PassiveMount)
        )
        from uvicorn.server import Server

        Server.startup = _fan_out_accepts(Server.startup)  # type: ignore[method-assign,assignment]

    # Workarounds 11, 12, 14 and 15 fix behaviour, not cost: never part of the benchmark switch.
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from botmodels.config import get_settings

    install_head_timeout(HttpToolsProtocol, get_settings().header_timeout_s)
    ServiceAppFactory.__call__ = _without_slash_redirects(ServiceAppFactory.__call__)
    import _bentoml_impl.server.app as bentoml_app
    from uvicorn.protocols.http.h11_impl import H11Protocol

    HttpToolsProtocol.send_400_response = _httptools_send_400  # type: ignore[method-assign]
    H11Protocol.send_400_response = _h11_send_400  # type: ignore[method-assign]
    bentoml_app.log_exception = _client_errors_in_one_line(bentoml_app.log_exception)

    original_create = ServiceAppFactory.create_instance

    async def create_instance(self: Any, app: Any) -> None:
        from botmodels.dispatch import wire_service

        await original_create(self, app)
        wire_service(self)

    ServiceAppFactory.create_instance = create_instance
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    ProxyHeadersMiddleware.__call__ = _keeping_the_peer(  # type: ignore[method-assign,assignment]
        ProxyHeadersMiddleware.__call__
    )
    _applied = True


def _keeping_the_peer(call: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Workaround 17: the TCP peer, as the server saw it, kept before uvicorn rewrites it."""
    from botmodels.auth import PEER_SCOPE_KEY

    async def keep_the_peer(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            scope[PEER_SCOPE_KEY] = scope.get("client")
        await call(self, scope, receive, send)

    return keep_the_peer


class OpenAPIDocument(dict[str, Any]):
    """A finished OpenAPI document where BentoML expects its spec object: `asdict()` for
    `/docs.json`, and a mapping for the YAML dump of `bentoml build` (representer below)."""

    def asdict(self) -> dict[str, Any]:
        return dict(self)


_documents: dict[str, Callable[[], dict[str, Any]]] = {}


def document_service(service: Any, build: Callable[[], dict[str, Any]]) -> None:
    """Workaround 13: `service.openapi_spec` answers `build()` (called per request, so the
    document follows the settings of the process that serves it)."""
    import yaml
    from _bentoml_sdk.service.factory import Service

    if not _documents:
        upstream = Service.openapi_spec

        def openapi_spec(self: Any) -> Any:
            builder = _documents.get(self.name)
            if builder is None:
                return upstream.fget(self)
            return OpenAPIDocument(builder())

        Service.openapi_spec = property(openapi_spec)
        yaml.add_representer(
            OpenAPIDocument, lambda dumper, document: dumper.represent_dict(dict(document))
        )
    _documents[service.name] = build


def workarounds_enabled() -> bool:
    """`BOTMODELS_BENTOML_WORKAROUNDS=off` runs BentoML as shipped: only for the benchmark that
    shows what the timer fix and gc.freeze() are worth (scripts/bench_overhead.py)."""
    from botmodels.config import get_settings

    return get_settings().bentoml_workarounds.lower() != "off"


def freeze_heap() -> None:
    """Move everything alive now (imports, loaded models) out of the GC's generations.

    Full collections then stop rescanning the import-time objects on every pass
    (docs/benchmarks.md, Workarounds).
    """
    if not workarounds_enabled():
        return
    gc.collect()
    gc.freeze()
    log.info("gc.freeze(): %d objects moved to the permanent generation", gc.get_freeze_count())
