"""Against real `bentoml serve` processes: adaptive batching, a runner split out by URL, a failed
runner's health, and the worker's memory over 5,000 requests (the TimeoutMiddleware leak fix)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import KEY, Server, auth
from tests.helpers import assert_all_ok, fire

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def served(offline_store: None) -> Iterator[Server]:
    server = Server({})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def batch_histogram(metrics: str, method: str) -> tuple[float, float, float]:
    """(batches, items, batches of size 1) from bentoml_service_adaptive_batch_size."""

    def value(suffix: str, extra: str = "") -> float:
        pattern = (
            rf"^bentoml_service_adaptive_batch_size_{suffix}\{{[^}}]*"
            rf'method_name="{method}"[^}}]*{extra}[^}}]*\}} (\S+)$'
        )
        return sum(float(m) for m in re.findall(pattern, metrics, re.M))

    return value("count"), value("sum"), value("bucket", r'le="1\.0"')


def test_concurrent_requests_are_batched(served: Server) -> None:
    texts = [f"sentence {i} about batching" for i in range(400)]
    assert_all_ok(asyncio.run(fire(served.url, texts, 64)), served)
    metrics = httpx.get(served.url + "/metrics").text
    batches, items, singles = batch_histogram(metrics, "embed_batch")
    assert items >= len(texts)
    assert batches - singles > 0, "no batch larger than 1 was executed"
    assert items / batches > 1.5, f"mean batch {items / batches:.2f}"
    models = httpx.get(served.url + "/api/models", headers=auth()).json()
    (embeddings,) = [m for m in models["models"] if m["runner"] == "embeddings"]
    # the default on the CPU: the ONNX graph the import exported, one session
    assert embeddings["engine"] == "onnx"
    assert embeddings["compute"].startswith("onnx, ")


def test_cpu_workers_serve_the_same_vectors(served: Server, tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("CPU workers need two CPUs")
    texts = [f"sentence {i} about " + "workers " * (i % 7) for i in range(200)]
    # Its own BENTOML_HOME with the same store: `bentoml serve` empties the Prometheus
    # directory under BENTOML_HOME at start, which would wipe `served`'s metrics.
    (tmp_path / "models").symlink_to(Path(os.environ["BENTOML_HOME"]) / "models")
    workers = Server(
        {
            "BOTMODELS_RUNNERS": "embeddings",
            "BOTMODELS_EMBEDDINGS_ENGINE": "torchscript",  # workers split the trace's batches
            "BOTMODELS_EMBEDDINGS_WORKERS": "2",
            "BENTOML_HOME": str(tmp_path),
        }
    )
    try:
        workers.wait_ready()
        models = httpx.get(workers.url + "/api/models", headers=auth()).json()["models"]
        assert models[0]["compute"] == "torchscript, 2 workers x 1 torch thread(s)"
        got = assert_all_ok(asyncio.run(fire(workers.url, texts, 64)), workers)
    finally:
        workers.stop()
    want = assert_all_ok(asyncio.run(fire(served.url, texts, 64)), served)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(
            a.json()["data"][0]["embedding"], b.json()["data"][0]["embedding"], atol=1e-5
        )


def test_runner_served_elsewhere_by_url(served: Server, tmp_path: Path) -> None:
    """The entry service with an empty model store, pointed at `served` by URL."""
    entry = Server({"BOTMODELS_EMBEDDINGS_URL": served.url, "BENTOML_HOME": str(tmp_path)})
    try:
        entry.wait_ready()
        before = batch_histogram(httpx.get(served.url + "/metrics").text, "embed_batch")
        texts = [f"remote sentence {i}" for i in range(300)]
        responses = assert_all_ok(asyncio.run(fire(entry.url, texts, 64)), entry)  # none dropped

        direct = httpx.post(
            served.url + "/v1/embeddings", json={"input": texts[7]}, headers=auth()
        ).json()
        np.testing.assert_allclose(
            responses[7].json()["data"][0]["embedding"], direct["data"][0]["embedding"], atol=1e-5
        )
        after = batch_histogram(httpx.get(served.url + "/metrics").text, "embed_batch")
        assert after[1] - before[1] >= len(texts)  # the remote did the work...
        assert (after[0] - before[0]) < len(texts)  # ...in batches

        models = httpx.get(entry.url + "/api/models", headers=auth()).json()["models"]
        assert models[0]["state"] == "remote"
        assert models[0]["remote_url"] == served.url
        health = httpx.get(entry.url + "/api/health").json()
        assert health["runners"]["embeddings"] == {"state": "remote", "healthy": True}
        assert httpx.get(entry.url + "/health").status_code == 200
    finally:
        entry.stop()


def test_failed_runner_is_named_and_the_others_keep_serving(
    tmp_path: Path, offline_store: None
) -> None:
    """The embeddings model is missing from the store (a manifest naming a model never
    imported); the image runner loads, and keeps generating."""
    from tests.conftest import ROOT

    manifest = (ROOT / "models.toml").read_text()
    manifest = manifest.replace(
        '[embeddings.offline]\nname = "embeddings-all-minilm-l6-v2"',
        '[embeddings.offline]\nname = "embeddings-never-imported"',
    )
    (tmp_path / "models.toml").write_text(manifest)
    server = Server(
        {
            "BOTMODELS_MANIFEST": str(tmp_path / "models.toml"),
            "BOTMODELS_RUNNERS": "embeddings,image",
        }
    )
    try:
        server.wait_ready()  # ready: one runner is usable
        response = httpx.get(server.url + "/api/health", timeout=5)
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unhealthy"
        assert body["unhealthy_runners"] == ["embeddings"]
        assert "not in the BentoML store" in body["runners"]["embeddings"]["error"]
        assert body["runners"]["image"] == {"state": "ready", "healthy": True}
        assert httpx.get(server.url + "/health").status_code == 503
        failed = httpx.post(server.url + "/v1/embeddings", json={"input": "x"}, headers=auth())
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == "runner_failed"
        image = httpx.post(
            server.url + "/api/image/generate",
            json={
                "prompt": "a red circle",
                "steps": 1,
                "width": 64,
                "height": 64,
                "guidance_scale": 1.0,
            },
            headers={"X-API-Key": KEY},
            timeout=120,
        )
        assert image.status_code == 200, image.text
        assert image.json()["status"] == "completed"
    finally:
        server.stop()


def test_worker_memory_is_flat_over_5000_requests(served: Server) -> None:
    import psutil

    async def hammer(n: int) -> None:
        limits = httpx.Limits(max_connections=16, keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=served.url, headers=auth(), limits=limits) as c:
            sem = asyncio.Semaphore(16)

            async def one() -> None:
                async with sem:
                    response = await c.post("/api/ping", json={})
                    assert response.status_code == 200

            await asyncio.gather(*(one() for _ in range(n)))

    (pid,) = served.worker_pids()
    asyncio.run(hammer(500))  # warm-up: allocator pools, caches
    before = psutil.Process(pid).memory_info().rss
    asyncio.run(hammer(5000))
    after = psutil.Process(pid).memory_info().rss
    growth = (after - before) / before
    assert growth <= 0.15, f"worker RSS grew {growth:.1%} ({before >> 20} -> {after >> 20} MiB)"


def test_readme_curl_example_runs(served: Server, tmp_path: Path) -> None:
    """The README's curl example, as written, against a real server (only host port and key
    file differ), so the documentation cannot rot."""
    import subprocess

    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    block = next(
        b for b in re.findall(r"```sh\n(.*?)```", readme, re.S) if "curl -s localhost:8089" in b
    )
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    script = block.replace("~/.botmodels/api-key", str(key_file)).replace(
        "localhost:8089", f"127.0.0.1:{served.port}"
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    import json

    body = json.loads(done.stdout)
    assert len(body["data"]) == 2
    assert len(body["data"][0]["embedding"]) == 384
