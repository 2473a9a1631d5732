"""The status routes: health (`/api/health`, botserver's `/health`), the runners' models
(`/api/models`: each one's residency too, botmodels/pool.py), and the model of the key check
(`/api/ping`'s `Pong`).

Health and residency: a runner that is merely unloaded (not preloaded, or unloaded after idling
or for the memory budget) is healthy: its next request loads it. A preloaded runner is
`loading` until its start-up load ends.

The handlers reach the service through a getter: the routes exist before the service instance
does (a worker answers its probes while it starts), and they answer "starting" until it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from botmodels.config import Settings
    from botmodels.pool import RunnerPool
    from botmodels.remote import RemoteRunner
    from botmodels.shutdown import Shutdown


class Pong(BaseModel):
    ok: bool = True
    version: str


class Service(Protocol):
    """What the status routes read of the service."""

    settings: Settings
    pool: RunnerPool
    remotes: dict[str, RemoteRunner]

    async def runner_usable(self, kind: str) -> bool: ...


async def runner_usable(pool: RunnerPool, remotes: dict[str, RemoteRunner], kind: str) -> bool:
    """An enabled runner that can take work: loaded here or loadable on its first request
    (botmodels/pool.py, `usable`), or its remote is ready."""
    slot = pool.slot(kind)
    if slot is None:
        return False
    if slot.state == "remote":
        return await remotes[kind].ready()
    return pool.usable(kind)


async def health(service: Service, *, version: str, draining: bool) -> tuple[dict[str, Any], int]:
    """`/api/health`'s report and status: 200 when every enabled runner is usable."""
    pool = service.pool
    kinds = list(pool.slots)
    if service.remotes:
        usable = list(await asyncio.gather(*(service.runner_usable(k) for k in kinds)))
    else:  # no task per runner: a probe is answered in the loop turn it started in
        usable = [pool.usable(k) for k in kinds]
    runners: dict[str, Any] = {}
    for kind, ok in zip(kinds, usable, strict=True):
        slot = pool.slots[kind]
        entry: dict[str, Any] = {"state": slot.state, "healthy": ok}
        if slot.error:
            entry["error"] = slot.error
        runners[kind] = entry
    failed = [k for k, ok in zip(kinds, usable, strict=True) if not ok]
    loading = [k for k in failed if pool.starting(pool.slots[k])]
    if draining:
        status = "shutting_down"
    elif not failed:
        status = "healthy"
    elif len(loading) == len(failed):
        status = "loading"
    else:
        status = "unhealthy"
    devices = sorted({s.device for s in pool.slots.values() if s.device})
    body = {
        "status": status,
        "version": version,
        "device": devices[0] if len(devices) == 1 else (",".join(devices) or "none"),
        "profile": service.settings.profile,
        "runners": runners,
    }
    if failed:
        body["unhealthy_runners"] = failed
    return body, 200 if not failed and not draining else 503


def _probed(pool: RunnerPool) -> list[str]:
    """What botserver's `/health` probes: its embeddings, and its LLM when this serves one
    (botserver's llm-url readiness check is `GET {llm-url}/health`)."""
    return [kind for kind in ("embeddings", "llm") if pool.slot(kind) is not None] or ["embeddings"]


def models(pool: RunnerPool) -> list[dict[str, Any]]:
    return [slot.describe() for slot in pool.slots.values()]


def routes(service: Callable[[], Service | None], shutdown: Shutdown, version: str) -> list[Route]:
    """The status routes of the mounted app; `service()` is None until the service exists."""

    async def api_health(_: Request) -> JSONResponse:
        current = service()
        if current is None:  # the worker is up, the service not yet constructed
            return JSONResponse({"status": "starting", "version": version}, status_code=503)
        body, status = await health(current, version=version, draining=shutdown.draining)
        return JSONResponse(body, status_code=status)

    async def embeddings_health(_: Request) -> JSONResponse:
        if shutdown.draining:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        current = service()
        ok = current is not None and all(
            [await current.runner_usable(kind) for kind in _probed(current.pool)]
        )
        return JSONResponse(
            {"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503
        )

    async def api_models(_: Request) -> JSONResponse:
        current = service()
        return JSONResponse({"models": models(current.pool) if current is not None else []})

    return [
        Route("/api/health", api_health, methods=["GET"]),
        Route("/health", embeddings_health, methods=["GET", "HEAD"]),
        Route("/api/models", api_models, methods=["GET"]),
    ]
