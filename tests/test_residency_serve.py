"""Residency under a real `bentoml serve`: only the preload set loads at start-up, the other
runners load on their first request, and a memory budget smaller than the models' sum serves a
mixed workload across three runners with no error, unloading idle runners (evictions counted)."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import KEY, Server

RUNNERS = ("embeddings", "vision", "tts")


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (shade, 100, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _estimates() -> dict[str, int]:
    from botmodels.config import get_settings
    from botmodels.pool import estimate_bytes
    from botmodels.store import find_stored, load_manifest, spec_for

    manifest = load_manifest(get_settings().manifest)
    sizes = {}
    for kind in RUNNERS:
        spec = spec_for(manifest, kind, "tiny")
        stored = find_stored(spec.tag)
        assert stored is not None
        sizes[kind] = estimate_bytes(Path(stored.path), spec.quantization)
    return sizes


async def _request(client: httpx.AsyncClient, i: int) -> httpx.Response:
    kind = RUNNERS[i % len(RUNNERS)]
    if kind == "embeddings":
        return await client.post("/v1/embeddings", json={"input": [f"text {i}", "another"]})
    if kind == "vision":
        files = {"file": ("image.png", _png(i * 7 % 256), "image/png")}
        return await client.post("/api/vision/describe", files=files)
    return await client.post(
        "/v1/audio/speech", json={"input": f"hello {i}", "response_format": "wav"}
    )


async def _workload(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as client:
        return list(await asyncio.gather(*(_request(client, i) for i in range(n))))


def _models(url: str) -> dict[str, Any]:
    body = httpx.get(url + "/api/models", headers={"X-API-Key": KEY}, timeout=10).json()
    return {m["runner"]: m for m in body["models"]}


@pytest.mark.serve
def test_a_budget_below_the_sum_serves_a_mixed_workload(offline_store: None) -> None:
    sizes = _estimates()
    budget = sum(sizes.values()) - 1  # the largest fits, never all three at once
    server = Server(
        {
            "BOTMODELS_PROFILE": "tiny",
            "BOTMODELS_RUNNERS": ",".join(RUNNERS),
            "BOTMODELS_PRELOAD": "embeddings",
            "BOTMODELS_MEMORY_BUDGET": str(budget),
        }
    )
    try:
        server.wait_ready()
        models = _models(server.url)
        assert models["embeddings"]["state"] == "ready"
        assert models["vision"]["state"] == "unloaded"
        assert models["tts"]["state"] == "unloaded"
        health = httpx.get(server.url + "/api/health", headers={"X-API-Key": KEY}, timeout=10)
        assert health.status_code == 200  # unloaded runners are healthy
        for _ in range(3):
            responses = asyncio.run(_workload(server.url, 12))
            assert [r.status_code for r in responses] == [200] * 12, [
                r.text for r in responses if r.status_code != 200
            ]
        models = _models(server.url)
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        log = Path(server.log.name).read_text(errors="replace")
    finally:
        server.stop()
    assert sum(m["evictions"] for m in models.values()) >= 1
    assert all(m["loads"] >= 1 for m in models.values())
    assert all(m["estimated_bytes"] == sizes[k] for k, m in models.items())
    resident = sum(m["estimated_bytes"] for m in models.values() if m["state"] == "ready")
    assert resident <= budget
    evicted = re.findall(r'botmodels_runner_evictions_total\{runner="(\w+)"\} (\S+)', metrics)
    assert sum(float(v) for _, v in evicted) >= 1
    assert 'botmodels_runner_loads_total{runner="vision"}' in metrics
    assert "memory budget: cpu" in log
    assert "runner vision: on first request, estimated" in log


@pytest.mark.serve
def test_a_budget_below_every_model_refuses_to_start(offline_store: None) -> None:
    smallest = min(_estimates().values())
    server = Server(
        {
            "BOTMODELS_PROFILE": "tiny",
            "BOTMODELS_RUNNERS": ",".join(RUNNERS),
            "BOTMODELS_MEMORY_BUDGET": str(smallest - 1),
        }
    )
    try:
        with pytest.raises(RuntimeError, match="server exited") as exited:
            server.wait_ready()
    finally:
        server.stop()
    assert server.proc.returncode not in (None, 0)
    message = str(exited.value)
    assert f"BOTMODELS_MEMORY_BUDGET={smallest - 1} bytes" in message
    assert "is smaller than the smallest enabled model" in message
    assert all(f"{kind} " in message.split("estimated footprints:")[-1] for kind in RUNNERS)
