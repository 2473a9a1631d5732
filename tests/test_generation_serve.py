"""Generation under a real `bentoml serve`: the only place BentoML's adaptive batching runs
(TestClient does not batch), so this is where the dispatcher path is proven."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from tests.conftest import KEY, Server

pytestmark = pytest.mark.serve

IMAGE = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "guidance_scale": 0.0}


@pytest.fixture(scope="module")
def server(offline_store: None) -> Iterator[Server]:
    home = tempfile.mkdtemp(prefix="botmodels-serve-gen-")
    srv = Server(
        {
            "BOTMODELS_RUNNERS": "image,video",
            "BOTMODELS_PROFILE": "offline",
            "BOTMODELS_THREADS": "1",
            "BOTMODELS_HOME": home,
        }
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _batches(metrics: str) -> tuple[float, float]:
    """(requests, batches) the image batch API has seen, from its batch-size histogram."""
    found = {}
    for kind in ("sum", "count"):
        match = re.search(
            rf'bentoml_service_adaptive_batch_size_{kind}\{{[^}}]*method_name="generate_images"'
            rf"[^}}]*\}} ([0-9.e+]+)",
            metrics,
        )
        found[kind] = float(match.group(1)) if match else 0.0
    return found["sum"], found["count"]


def test_concurrent_requests_are_batched_and_served(server: Server) -> None:
    import httpx

    headers = {"X-API-Key": KEY}

    async def burst(client: httpx.AsyncClient) -> list[httpx.Response]:
        return await asyncio.gather(
            *(
                client.post("/api/image/generate", json={**IMAGE, "seed": i}, headers=headers)
                for i in range(8)
            )
        )

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            for _ in range(3):
                responses = await burst(client)
                assert [r.status_code for r in responses] == [200] * 8
            requests, batches = _batches((await client.get("/metrics")).text)
            assert requests == 24
            assert batches < requests  # some calls carried several images

            # the same seed answers the same bytes whatever its batch mates were
            first = await client.get(responses[3].json()["file_path"])
            alone = await client.post(
                "/api/image/generate", json={**IMAGE, "seed": 3}, headers=headers
            )
            again = await client.get(alone.json()["file_path"])
            with (
                Image.open(io.BytesIO(first.content)) as a,
                Image.open(io.BytesIO(again.content)) as b,
            ):
                diff = max(abs(x - y) for x, y in zip(a.tobytes(), b.tobytes(), strict=True))
            assert diff <= 1  # float batching may move a value by one level, no more

            # n=4 through the OpenAI route, and a video job, through the dispatcher too
            images = await client.post(
                "/v1/images/generations",
                json={
                    "prompt": "x",
                    "n": 4,
                    "size": "64x64",
                    "steps": 2,
                    "response_format": "b64_json",
                },
                headers=headers,
            )
            assert images.status_code == 200, images.text
            payloads = [base64.b64decode(d["b64_json"]) for d in images.json()["data"]]
            assert len(set(payloads)) == 4
            job = await client.post(
                "/api/video/jobs",
                json={"prompt": "x", "num_frames": 4, "fps": 8, "steps": 2},
                headers=headers,
            )
            assert job.status_code == 202
            deadline = time.monotonic() + 120
            while True:
                state: dict[str, Any] = (
                    await client.get(f"/api/jobs/{job.json()['id']}", headers=headers)
                ).json()
                if state["status"] not in ("queued", "running"):
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert state["status"] == "completed", state
            video = await client.get(state["result"]["file_path"])
            assert video.headers["content-type"] == "video/mp4"

    asyncio.run(run())
