"""Workarounds for BentoML 1.4.40 bugs. Each names what to check before dropping it.

1. Leaked timer per request. `TimeoutMiddleware.__call__`
   (bentoml/_internal/server/http/traffic.py) arms `loop.call_later(timeout, ...)` for every
   request and never cancels it, so each request's context (OpenTelemetry span included) lives
   for `traffic.timeout` seconds: under load the worker grew 95 -> 450 MB and full-GC pauses
   reached ~1 s (the whole p99 tail). The replacement below is the same code with the handle
   cancelled when the request ends, and its 504 in botmodels' error shape. Drop it when
   upstream's `__call__` cancels the handle (still missing on upstream main, 2026-11).

2. Batchable APIs reachable from other APIs of the same service. BentoML only feeds a
   batchable API's adaptive-batching dispatcher from HTTP requests to that API's own route; an
   OpenAI-shaped route (one JSON object in, one out) cannot be that route. We keep a handle on
   the app factory's `batch_infer` so an entry route can submit work to the same dispatcher
   (same batching, same `bentoml_service_adaptive_batch_size` metric) without a second HTTP hop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from botmodels.errors import error_bytes

log = logging.getLogger("botmodels.patches")

BatchInfer = Callable[[str, tuple[Any, ...], dict[str, Any]], Awaitable[Any]]
_applied = False


async def _timeout_call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    handle = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            body = error_bytes(504, f"request not processed within {self.timeout} s")
            await send(
                {
                    "type": "http.response.start",
                    "status": 504,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
    else:
        await fut
    finally:
        handle.cancel()  # the fix: the timer must not outlive its request


def apply() -> None:
    """Idempotent; called when service.py is imported in a server worker."""
    global _applied
    if _applied:
        return
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    if workarounds_enabled():
        TimeoutMiddleware.__call__ = _timeout_call  # type: ignore[method-assign]

    original_create = ServiceAppFactory.create_instance

    async def create_instance(self: Any, app: Any) -> None:
        await original_create(self, app)
        bind = getattr(self._service_instance, "bind_batch_infer", None)
        if callable(bind):
            bind(self.batch_infer)

    ServiceAppFactory.create_instance = create_instance
    _applied = True


def workarounds_enabled() -> bool:
    """`BOTMODELS_BENTOML_WORKAROUNDS=off` runs BentoML as shipped: only for the benchmark that
    shows what the timer fix and gc.freeze() are worth (scripts/bench_overhead.py)."""
    return os.environ.get("BOTMODELS_BENTOML_WORKAROUNDS", "on").lower() != "off"


def freeze_heap() -> None:
    """Move everything alive now (imports, loaded models) out of the GC's generations.

    Full collections then stop rescanning ~170k import-time objects on every pass
    (60 ms -> 1-2 ms per full GC, measured with BentoML 1.4.40).
    """
    if not workarounds_enabled():
        return
    gc.collect()
    gc.freeze()
    log.info("gc.freeze(): %d objects moved to the permanent generation", gc.get_freeze_count())
