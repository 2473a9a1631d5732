"""The `/runners/*` routes: the batchable APIs that other botmodels instances call.

In this process a front checks a request and admits it before its items reach the dispatcher,
so the batchable APIs themselves trust their items. Over HTTP the same APIs are reachable by any
key holder, so `RunnerRouteGuard` gives them the public routes' rules: it reads the JSON body,
runs the domain's check for that route (the same limits, in the one error shape) and holds the
domain's admission (image and video generation: the 429 queue) while the request runs. The body
is then handed on unchanged. A body that is not a JSON object goes on to BentoML, whose
validation answers 400.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from botmodels.asgi import replay_body
from botmodels.errors import BotModelsError, InvalidInput, send_exception

# A route's check: the parsed JSON body in, an admission held while the request runs out.
RunnerCheck = Callable[[dict[str, Any]], AbstractContextManager[Any]]


def batch_items(
    payload: Mapping[str, Any], field: str, most: int, setting: str
) -> list[dict[str, Any]]:
    """The non-empty list of objects under `field`, at most `most` long (a batch: the setting
    that bounds it is named in the error)."""
    items = payload.get(field)
    if not isinstance(items, list) or not items:
        raise InvalidInput(f"`{field}` must be a non-empty list", param=field)
    if len(items) > most:
        raise InvalidInput(
            f"`{field}` has {len(items)} items; at most {most} per call ({setting})", param=field
        )
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"`{field}[{i}]` must be an object", param=field)
    return items


class RunnerRouteGuard:
    """ASGI middleware; `checks()` gives route -> check once the service exists."""

    def __init__(self, app: ASGIApp, checks: Callable[[], Mapping[str, RunnerCheck]]) -> None:
        self.app = app
        self.checks = checks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or not path.startswith("/runners/"):
            await self.app(scope, receive, send)
            return
        try:
            check = self.checks().get(path)
        except BotModelsError as exc:  # the service is not constructed yet
            await send_exception(send, exc)
            return
        if check is None:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the caller went away; nothing to answer
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # Recursion: nested too deep
            payload = None
        admission = contextlib.ExitStack()
        if isinstance(payload, dict):
            try:
                admission.enter_context(check(payload))  # a full queue raises here
            except BotModelsError as exc:
                await send_exception(send, exc)
                return
        with admission:
            await self.app(scope, replay_body(bytes(body), receive), send)
