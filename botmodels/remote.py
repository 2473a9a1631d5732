"""Calling a runner that another botmodels serves (`BOTMODELS_<RUNNER>_URL`).

One pooled httpx client per remote, kept for the process's life: unlike BentoML's `depends`
client (which closes its session every 100 requests while calls are in flight, see
bentoml-notes.md) nothing is dropped under load. The remote's batchable route batches our calls
together with everyone else's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from botmodels.errors import InvalidInput, RunnerUnavailable, UpstreamError, is_error_shape


class RemoteRunner:
    def __init__(self, base_url: str, api_key: bytes, timeout_s: float) -> None:
        self.base_url = base_url
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"X-API-Key": api_key.decode()},
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            # Idle connections are dropped before the server's 5 s keep-alive timeout (uvicorn's
            # default), so we never write into a connection the server is closing.
            limits=httpx.Limits(
                max_connections=256, max_keepalive_connections=256, keepalive_expiry=2.0
            ),
        )

    async def post(self, route: str, payload: dict[str, Any]) -> Any:
        try:
            try:
                response = await self._client.post(route, json=payload)
            except httpx.RemoteProtocolError:
                # The server closed a kept-alive connection without answering: nothing was
                # processed, so sending once more on a fresh connection is safe.
                response = await self._client.post(route, json=payload)
        except httpx.HTTPError as exc:
            raise RunnerUnavailable(
                f"remote runner at {self.base_url} is unreachable: {type(exc).__name__}",
                code="remote_unreachable",
                headers={"Retry-After": "2"},
            ) from exc
        if response.status_code == 200:
            return response.json()
        message = response.text[:500]
        try:
            body = response.json()
            if is_error_shape(body):
                message = body["error"]["message"]
        except (ValueError, json.JSONDecodeError):
            pass
        if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 429):
            raise InvalidInput(f"remote runner rejected the input: {message}")
        if response.status_code in (429, 503):
            raise RunnerUnavailable(
                f"remote runner at {self.base_url} is busy or not ready: {message}",
                headers={"Retry-After": response.headers.get("retry-after", "2")},
            )
        raise UpstreamError(
            f"remote runner at {self.base_url} answered {response.status_code}: {message}"
        )

    async def ready(self) -> bool:
        try:
            response = await self._client.get("/readyz", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._client.aclose()
