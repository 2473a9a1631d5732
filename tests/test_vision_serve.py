"""Captions are batched across concurrent requests under a real `bentoml serve` (a TestClient
never batches): BentoML's own histogram of batch sizes for `caption_batch` must show batches."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from PIL import Image

from scripts.serverproc import batch_histogram
from tests.conftest import KEY, Server


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (shade, 100, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


async def _describe_all(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/vision/describe",
                    files={"file": ("image.png", _png(i * 7 % 256), "image/png")},
                )
                for i in range(n)
            )
        )
    return [r.status_code for r in responses]


@pytest.mark.serve
def test_concurrent_captions_are_batched(offline_store: None) -> None:
    server = Server({"BOTMODELS_RUNNERS": "vision", "BOTMODELS_PROFILE": "offline"})
    try:
        server.wait_ready()
        # BentoML's dispatcher runs its first ~18 calls one by one while it learns the latency
        assert asyncio.run(_describe_all(server.url, 24)) == [200] * 24
        before = batch_histogram(httpx.get(server.url + "/metrics").text, "caption_batch")
        assert asyncio.run(_describe_all(server.url, 32)) == [200] * 32
        after = batch_histogram(httpx.get(server.url + "/metrics").text, "caption_batch")
    finally:
        server.stop()
    items, calls = after[0] - before[0], after[1] - before[1]
    assert items == 32
    assert calls < 32, f"32 concurrent captions ran in {calls} model calls: no batching"
