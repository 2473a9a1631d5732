"""Replicas sharing PostgreSQL (BOTMODELS_DATABASE_URL) against one replica on SQLite.

Measures, on real `bentoml serve` processes (offline profile: the real all-MiniLM-L6-v2 and the
tiny image model):
  * the job path: POST /api/image/jobs (insert and retention) and GET /api/jobs/{id} (a read),
  * an HMAC-signed request (the replay claim) on /api/ping,
latencies p50/p99, sequential requests; and embeddings throughput (/v1/embeddings, one text
each, a fixed concurrency) through one replica, then through two behind a round-robin client.

One replica gets every CPU's torch threads; each of the two gets half, so both set-ups use the
same cores. Run: `.venv/bin/python -m scripts.bench_replicas [--requests N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import tempfile
import time
from typing import Any

import httpx

from botmodels.auth import sign
from scripts.pgserver import PostgresServer
from scripts.serverproc import Server

KEY = "bench-key-0123456789abcdef"
HEADERS = {"X-API-Key": KEY}
JOB = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "seed": 1}


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms"


def timed(call: Any) -> float:
    started = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - started
    assert response.status_code < 300, response.text
    return elapsed


def job_and_hmac(urls: list[str], requests: int) -> dict[str, list[float]]:
    """Sequential calls, alternating replicas when there are two (a poll lands anywhere)."""
    found: dict[str, list[float]] = {"submit": [], "poll": [], "signed": []}
    replicas = itertools.cycle(urls)
    with httpx.Client(timeout=60) as client:
        job_ids = []
        for _ in range(max(10, requests // 10)):
            url = next(replicas)
            started = time.perf_counter()
            response = client.post(f"{url}/api/image/jobs", json=JOB, headers=HEADERS)
            found["submit"].append(time.perf_counter() - started)
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
            while client.get(f"{url}/api/jobs/{job_ids[-1]}", headers=HEADERS).json()["status"] in (
                "queued",
                "running",
            ):
                time.sleep(0.02)  # one at a time: the generation is not what is measured
        for i in range(requests):
            url, job_id = next(replicas), job_ids[i % len(job_ids)]
            found["poll"].append(
                timed(lambda: client.get(f"{url}/api/jobs/{job_id}", headers=HEADERS))  # noqa: B023
            )
        for i in range(requests):
            url = next(replicas)
            path = f"/api/ping?n={i}"  # a new signature each time
            ts = int(time.time())
            signed = {
                "X-BotModels-Timestamp": str(ts),
                "X-BotModels-Signature": sign(KEY.encode(), ts, "POST", path, b"{}"),
                "content-type": "application/json",
            }
            found["signed"].append(
                timed(lambda: client.post(url + path, content=b"{}", headers=signed))  # noqa: B023
            )
    return found


async def embeddings_throughput(urls: list[str], requests: int, concurrency: int) -> float:
    replicas = itertools.cycle(urls)
    limits = httpx.Limits(max_connections=concurrency * len(urls))
    async with httpx.AsyncClient(timeout=120, headers=HEADERS, limits=limits) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                response = await client.post(
                    f"{next(replicas)}/v1/embeddings", json={"input": f"sentence number {i}"}
                )
                assert response.status_code == 200, response.text

        await asyncio.gather(*(one(i) for i in range(concurrency)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        return requests / (time.perf_counter() - started)


def serve(count: int, env: dict[str, str]) -> list[Server]:
    cpus = len(os.sched_getaffinity(0))
    servers = [
        Server(
            {
                "BOTMODELS_PROFILE": "offline",
                "BOTMODELS_RUNNERS": "embeddings,image",
                "BOTMODELS_API_KEYS": KEY,
                "BOTMODELS_THREADS": str(max(1, cpus // count)),
                "BOTMODELS_HOME": tempfile.mkdtemp(prefix="botmodels-bench-replica-"),
                **env,
            }
        )
        for _ in range(count)
    ]
    for server in servers:
        server.wait_ready(600)
    return servers


def measure(label: str, servers: list[Server], args: argparse.Namespace) -> None:
    urls = [s.url for s in servers]
    latencies = job_and_hmac(urls, args.requests)
    throughput = asyncio.run(embeddings_throughput(urls, args.embeddings, args.concurrency))
    print(f"== {label}")
    for name, samples in latencies.items():
        print(f"  {name:7s} {percentiles(samples)}  (n={len(samples)})")
    print(f"  embeddings {throughput:6.1f} requests/s (concurrency {args.concurrency})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--embeddings", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    from scripts.import_models import main as import_models

    # the current BENTOML_HOME's offline models (imported if missing)
    assert import_models(["offline", "--runners", "embeddings,image"]) == 0
    outputs = tempfile.mkdtemp(prefix="botmodels-bench-outputs-")

    servers = serve(1, {"BOTMODELS_OUTPUTS_DIR": outputs})
    try:
        measure("one replica, SQLite (the default)", servers, args)
    finally:
        for server in servers:
            server.stop()

    postgres = PostgresServer()
    try:
        postgres.start()
        shared = {"BOTMODELS_OUTPUTS_DIR": outputs, "BOTMODELS_DATABASE_URL": postgres.url}
        servers = serve(1, shared)
        try:
            measure("one replica, PostgreSQL", servers, args)
        finally:
            for server in servers:
                server.stop()
        servers = serve(2, shared)
        try:
            measure("two replicas, PostgreSQL, round-robin client", servers, args)
        finally:
            for server in servers:
                server.stop()
    finally:
        postgres.close()


if __name__ == "__main__":
    main()
