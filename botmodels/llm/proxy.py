"""The language model served by an OpenAI-compatible server (`BOTMODELS_LLM_URL`): vLLM,
SGLang, llama-server, or another botmodels.

botmodels keeps its own auth, limits and metrics in front; the request body goes on unchanged
but for `model`, which becomes the remote's own model name (read once from its `/v1/models`:
vLLM refuses any other name, and clients here may send any). Its answer comes back unchanged;
a stream is re-framed event by event, so each event leaves here in one write whatever the
remote's writes were. The client going away closes the upstream request (the remote cancels).

The key sent is `Authorization: Bearer <BOTMODELS_LLM_KEY>`, or, unset, this server's own first
key, as every other remote runner sends it (another botmodels shares the keys).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.responses import JSONResponse, Response, StreamingResponse

from botmodels.errors import InvalidInput, Overloaded, RunnerUnavailable, UpstreamError
from botmodels.remote import RemoteRunner

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class OpenAIRemote(RemoteRunner):
    def __init__(self, base_url: str, api_key: bytes, timeout_s: float) -> None:
        super().__init__(base_url, api_key, timeout_s)
        self._client.headers.pop("X-API-Key", None)
        self._client.headers["Authorization"] = f"Bearer {api_key.decode()}"
        self._model: str | None = None

    async def remote_model(self) -> str | None:
        """The remote's first model id (cached), or None when it does not say."""
        if self._model is None:
            try:
                response = await self._client.get("/v1/models", timeout=5.0)
                data = response.json().get("data") if response.status_code == 200 else None
                if isinstance(data, list) and data and isinstance(data[0].get("id"), str):
                    self._model = str(data[0]["id"])
            except (httpx.HTTPError, ValueError, AttributeError):
                return None
        return self._model

    async def ready(self) -> bool:
        """botmodels answers /readyz; vLLM, SGLang and llama-server answer /health."""
        for path in ("/readyz", "/health"):
            try:
                response = await self._client.get(path, timeout=1.0)
            except httpx.HTTPError:
                return False
            if response.status_code == 200:
                return True
        return False

    async def forward(self, route: str, payload: dict[str, Any], stream: bool) -> Response:
        from botmodels.llm.front import TTFT

        body = dict(payload)
        model = await self.remote_model()
        if model is not None:
            body["model"] = model
        started = time.perf_counter()
        request = self._client.build_request("POST", route, json=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise RunnerUnavailable(
                f"the language model at {self.base_url} is unreachable: {type(exc).__name__}",
                code="remote_unreachable",
                headers={"Retry-After": "2"},
            ) from exc
        if response.status_code != 200:
            raw = await response.aread()
            await response.aclose()
            raise self._error(response.status_code, raw, response.headers.get("retry-after"))
        if not stream:
            try:
                raw = await response.aread()
            finally:
                await response.aclose()
            TTFT.labels("remote").observe(time.perf_counter() - started)
            try:
                return JSONResponse(json.loads(raw))
            except ValueError as exc:
                raise UpstreamError(
                    f"the language model at {self.base_url} answered no JSON"
                ) from exc

        async def events() -> AsyncIterator[bytes]:
            first = True
            try:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, `event:` lines
                    if first:
                        TTFT.labels("remote").observe(time.perf_counter() - started)
                        first = False
                    yield line.encode() + b"\n\n"
            except httpx.HTTPError:
                # The remote broke off mid-stream: the client sees the stream end without
                # [DONE], as it would from the remote itself.
                return
            finally:
                await response.aclose()

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    def _error(self, status: int, raw: bytes, retry_after: str | None) -> Exception:
        message = raw.decode("utf-8", "replace")[:500]
        try:
            parsed = json.loads(raw)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                message = str(parsed["error"].get("message", message))
            elif isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
                message = parsed["error"]
        except ValueError:
            pass
        if status == 429:
            return Overloaded(
                f"the language model at {self.base_url} is at capacity: {message}",
                headers={"Retry-After": retry_after or "1"},
            )
        if status == 503:
            return RunnerUnavailable(
                f"the language model at {self.base_url} is not ready: {message}",
                headers={"Retry-After": retry_after or "2"},
            )
        if 400 <= status < 500 and status not in (401, 403):
            return InvalidInput(f"the language model rejected the request: {message}")
        return UpstreamError(f"the language model at {self.base_url} answered {status}: {message}")
