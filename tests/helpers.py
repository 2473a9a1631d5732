"""Helpers shared by the test files (a test file never imports another one)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from scripts.serverproc import Server
from tests.conftest import auth


def assert_error(response: Any, status: int, *, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The one error shape; `extra`: the keys a route documents beside the four (e.g.
    /api/detect's `available_fields` and `data_sample`)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param", *extra}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert "Traceback" not in response.text
    error: dict[str, Any] = body["error"]
    return error


async def fire(url: str, texts: list[str], concurrency: int) -> list[httpx.Response | str]:
    """POST each text; a transport failure is kept as its description, not raised, so the
    assertion can show it next to the server's log."""
    # keepalive_expiry under uvicorn's 5 s: never reuse a connection the server is closing.
    limits = httpx.Limits(max_connections=concurrency, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, headers=auth(), limits=limits, timeout=120) as c:
        sem = asyncio.Semaphore(concurrency)

        async def one(text: str) -> httpx.Response | str:
            async with sem:
                try:
                    return await c.post("/v1/embeddings", json={"input": text})
                except httpx.TransportError as exc:
                    return f"{type(exc).__name__}: {exc!r}"

        return list(await asyncio.gather(*(one(t) for t in texts)))


def assert_all_ok(results: list[httpx.Response | str], server: Server) -> list[httpx.Response]:
    failures = [r if isinstance(r, str) else f"{r.status_code} {r.text[:200]}" for r in results]
    failures = [
        f
        for r, f in zip(results, failures, strict=True)
        if isinstance(r, str) or r.status_code != 200
    ]
    assert not failures, f"{len(failures)} failed, e.g. {failures[:3]}\n{server.output()}"
    return [r for r in results if isinstance(r, httpx.Response)]


def long_text(unit: str, length: int = 4096) -> str:
    return (unit * (length // len(unit) + 1))[:length]


class Recorder:
    """A StepControl that records progress and cancels itself after `cancel_after` steps."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.steps: list[tuple[int, int]] = []
        self.cancel_after = cancel_after

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.steps) >= self.cancel_after

    def progress(self, step: int, total: int) -> None:
        self.steps.append((step, total))
