"""Glue shared by every entry route: typed errors -> the one JSON error response."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar, cast

from starlette.responses import JSONResponse

from botmodels.errors import BotModelsError

log = logging.getLogger("botmodels.api")

P = ParamSpec("P")
R = TypeVar("R")


def error_response(exc: BotModelsError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def json_errors(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Answer a BotModelsError raised by an API as its status and the one error shape.

    BentoML returns a Response object untouched, so the route keeps its declared output type
    for the OpenAPI schema while errors carry their own status and headers (Retry-After).
    """

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        except BotModelsError as exc:
            if exc.status >= 500:
                log.warning("%s: %s", func.__name__, exc.message)
            # An API that takes a `ctx: bentoml.Context` gets ctx.response's status and headers
            # stamped on whatever it returns: put the error's there too.
            ctx = kwargs.get("ctx")
            response_ctx = getattr(ctx, "response", None)
            if response_ctx is not None:
                response_ctx.status_code = exc.status
                for name, value in exc.headers.items():
                    response_ctx.headers[name] = value
            return cast(R, error_response(exc))

    return wrapper
