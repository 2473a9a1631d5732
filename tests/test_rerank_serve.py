"""Against a real `bentoml serve` (tiny profile: the random cross-encoder): the pairs of
concurrent /v1/rerank requests share the runner's batches."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server, auth

pytestmark = pytest.mark.serve

DOCUMENTS = ["the cat sits on the mat", "stocks fell today", "hello world", "a dog"] * 2


@pytest.fixture(scope="module")
def served(offline_store: None) -> Iterator[Server]:
    server = Server({"BOTMODELS_PROFILE": "tiny", "BOTMODELS_RUNNERS": "rerank"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _items_per_batch(metrics: str, api: str) -> tuple[float, float]:
    """(batches, items) from botmodels_batch_items for one batchable API."""

    def value(suffix: str) -> float:
        pattern = rf'^botmodels_batch_items_{suffix}\{{[^}}]*api="{api}"[^}}]*\}} (\S+)$'
        return sum(float(m) for m in re.findall(pattern, metrics, re.M))

    return value("count"), value("sum")


def test_concurrent_requests_share_batches(served: Server) -> None:
    async def send(count: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, headers=auth(), timeout=60) as client:
            bodies = [{"query": f"cat {i}", "documents": DOCUMENTS} for i in range(count)]
            return list(await asyncio.gather(*(client.post("/v1/rerank", json=b) for b in bodies)))

    responses = asyncio.run(send(48))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses[:3]]
    bodies = [r.json() for r in responses]
    assert {b["method"] for b in bodies} == {"cross-encoder"}
    assert all(len(b["results"]) == len(DOCUMENTS) for b in bodies)
    batches, items = _items_per_batch(httpx.get(served.url + "/metrics").text, "rerank_batch")
    assert items >= 48 * len(DOCUMENTS)
    # One request is 8 pairs: a mean batch above that means requests shared batches.
    assert items / batches > len(DOCUMENTS), f"mean batch {items / batches:.1f}"
    health = httpx.get(served.url + "/api/health").json()
    assert health["runners"]["rerank"] == {"state": "ready", "healthy": True}
    models = httpx.get(served.url + "/api/models", headers=auth()).json()["models"]
    (rerank,) = [m for m in models if m["runner"] == "rerank"]
    assert (rerank["compute"], rerank["synthetic"]) == ("torchscript", True)
