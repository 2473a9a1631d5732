"""The decorators BentoML APIs wear so a typed error becomes its answer.

The mapping itself (exception -> status, body, headers) is `botmodels.errors`; these are the
BentoML side of it: `json_errors` for an entry API (the error returned as a Response, stamped on
`ctx.response` too), `batch_errors` for a batchable API (a client error raised as an exception
BentoML answers with its status). They live apart from `errors.py` so that module stays free of
BentoML imports (middleware and scripts import it).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, ParamSpec, TypeVar, cast

from bentoml.exceptions import BentoMLException

from botmodels.errors import BotModelsError, error_response

log = logging.getLogger("botmodels.api")

P = ParamSpec("P")
R = TypeVar("R")


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


class BatchClientError(BentoMLException, BotModelsError):
    """A client error raised inside a batch, as both kinds of exception: BentoML answers a
    `/runners/*` request with the status of its own exceptions only (anything else is a 500),
    and an in-process caller of the dispatcher still gets the BotModelsError, with its code and
    parameter, that its route answers."""

    status = 400
    code = "invalid_input"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        BotModelsError.__init__(self, message, param=param, code=code, headers=headers)
        if status is not None:
            self.status = status
        self.error_code = HTTPStatus(self.status)

    @classmethod
    def of(cls, error: BotModelsError) -> BatchClientError:
        return cls(
            error.message,
            param=error.param,
            code=error.code,
            headers=error.headers,
            status=error.status,
        )


def batch_errors(func: Callable[P, R]) -> Callable[P, R]:
    """For a batchable API (sync or async): a client error (a BotModelsError below 500) that
    the batch raises, e.g. a runner decoding an item or finding no such voice, becomes a
    `BatchClientError`, so a `/runners/*` caller gets its 4xx and message instead of a 500.
    What can be checked before the batch runs belongs in the route's schema or the runner
    route's check (botmodels/peers.py) instead: a batch that raises is re-run request by
    request to find whose input it was."""

    def translated(exc: BotModelsError) -> BotModelsError:
        return exc if exc.status >= 500 else BatchClientError.of(exc)

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            try:
                return await func(*args, **kwargs)
            except BatchClientError:
                raise
            except BotModelsError as exc:
                raise translated(exc) from exc

        return cast(Callable[P, R], async_wrapper)

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except BatchClientError:
            raise
        except BotModelsError as exc:
            raise translated(exc) from exc

    return wrapper
