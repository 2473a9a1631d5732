"""Embeddings under real traffic, side by side in one run (ratios compare like with like).

1. The in-process limit: the runner and sentence-transformers' `encode`, batch 32 and batch 1,
   each in a fresh subprocess (the best batch-32 figure is "the limit").
2. The anchors: a minimal FastAPI server (scripts/anchor_fastapi.py) with the same model,
   unbatched and with a 2 ms / 32-item micro-batcher, at 64 clients.
3. botmodels (`bentoml serve`, embeddings runner only), in the order traffic really comes:
   fresh at 1 client, 16, 64 (a burst), 1 again, one large legal request (256 inputs of 2,000
   characters), 1 again. A lone request after a burst or a large request must not be held.

    python scripts/bench_traffic.py [--requests 3000] [--json bench-results/traffic.json]

Targets (issue "Under real traffic"): 1-client p50 after the burst and after the large request
<= 1.5x the fresh server's; the large request answers 200; served c=64 >= 90 % of the limit and
above the micro-batch anchor. Uses the current BENTOML_HOME (imports the offline model set if
missing). Numbers are only comparable within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.bench_embeddings import SENTENCE, in_process, sentences_per_s
from scripts.loadgen import LoadResult, run_load

ROOT = Path(__file__).resolve().parent.parent

MODEL_TAG = "embeddings-all-minilm-l6-v2:latest"


def model_dir() -> str:
    from botmodels.store import find_stored

    stored = find_stored(MODEL_TAG)
    assert stored is not None, "import the offline profile first"
    return str(stored.path)


def measure_st(seconds: float) -> dict[str, float]:
    """Runs in a subprocess: sentence-transformers' own `encode` on the same folder."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir(), device="cpu")

    def rate(batch: int) -> float:
        return sentences_per_s(lambda t: model.encode(t, batch_size=batch), batch, seconds)

    return {"batch32_per_s": rate(32), "batch1_per_s": rate(1)}


def st_in_process(seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--st", "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def row(name: str, result: LoadResult) -> dict[str, Any]:
    print(f"{name}: {result.rate:.0f}/s p50 {result.p50:.1f} ms", flush=True)
    return {
        "name": name,
        "per_s": result.rate,
        "p50_ms": result.p50,
        "p99_ms": result.p99,
        "errors": result.errors,
    }


def anchor(mode: str, requests: int) -> dict[str, Any]:
    import httpx

    from scripts.serverproc import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "anchor_fastapi.py"),
            "--mode",
            mode,
            "--port",
            str(port),
            "--model",
            model_dir(),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "anchor server exited"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "anchor server not ready"
            time.sleep(0.25)
        body = json.dumps({"input": SENTENCE, "model": "bench"}).encode()
        headers = {"Content-Type": "application/json"}
        run_load(url, "/v1/embeddings", body, headers, 300, 64)  # warm-up
        return row(
            f"FastAPI {mode}, c=64", run_load(url, "/v1/embeddings", body, headers, requests, 64)
        )
    finally:
        proc.terminate()
        proc.wait(20)


def batch_items(metrics: str) -> tuple[float, float]:
    from scripts.serverproc import samples

    found = samples(metrics, "botmodels_batch_items_sum")
    counts = samples(metrics, "botmodels_batch_items_count")
    key = 'api="embed_batch"'
    return found.get(key, 0.0), counts.get(key, 0.0)


def botmodels_sequence(requests: int, env: dict[str, str]) -> dict[str, Any]:
    import httpx

    from scripts.serverproc import Server

    key = os.environ.get("BOTMODELS_API_KEYS", "").split(",")[0] or "bench-key-0123456789abcdef"
    server = Server({"BOTMODELS_API_KEYS": key, "BOTMODELS_RUNNERS": "embeddings", **env})
    body = json.dumps({"input": SENTENCE, "model": "bench"}).encode()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    lone = max(200, requests // 10)
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"rows": rows}
    try:
        out["ready_s"] = server.wait_ready()
        run_load(server.url, "/v1/embeddings", body, headers, 20, 1)  # first-call costs
        rows.append(
            row("fresh c=1", run_load(server.url, "/v1/embeddings", body, headers, lone, 1))
        )
        rows.append(
            row("c=16", run_load(server.url, "/v1/embeddings", body, headers, requests, 16))
        )
        before = batch_items(httpx.get(server.url + "/metrics").text)
        rows.append(
            row("c=64", run_load(server.url, "/v1/embeddings", body, headers, requests, 64))
        )
        after = batch_items(httpx.get(server.url + "/metrics").text)
        out["c64_mean_batch"] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
        rows.append(
            row(
                "c=1 after the burst",
                run_load(server.url, "/v1/embeddings", body, headers, lone, 1),
            )
        )
        big = {"input": [f"{i} " + "word " * 399 for i in range(256)], "model": "bench"}
        assert all(len(t) >= 1995 for t in big["input"])
        started = time.perf_counter()
        response = httpx.post(server.url + "/v1/embeddings", json=big, headers=headers, timeout=600)
        out["big"] = {
            "status": response.status_code,
            "seconds": time.perf_counter() - started,
            "vectors": len(response.json().get("data", [])) if response.status_code == 200 else 0,
        }
        print(f"256 x 2,000 characters: {response.status_code} in {out['big']['seconds']:.1f} s")
        rows.append(
            row(
                "c=1 after the large request",
                run_load(server.url, "/v1/embeddings", body, headers, lone, 1),
            )
        )
    finally:
        server.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--st", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="botmodels setting"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "traffic.json")
    args = parser.parse_args()
    if args.st:
        print(json.dumps(measure_st(args.seconds)))
        return 0

    from scripts.import_models import main as import_models

    import_models(["offline", "--runners", "embeddings"])
    runner = in_process("none", args.seconds)
    runner.pop("vectors", None)
    st = st_in_process(args.seconds)
    print(
        f"in-process runner {runner['batch32_per_s']:.0f}/s (batch 32), "
        f"{runner['batch1_per_s']:.0f}/s (batch 1); sentence-transformers "
        f"{st['batch32_per_s']:.0f}/s, {st['batch1_per_s']:.0f}/s",
        flush=True,
    )
    anchors = [anchor("unbatched", args.requests), anchor("microbatch", args.requests)]
    served = botmodels_sequence(args.requests, dict(item.split("=", 1) for item in args.env))

    limit = max(runner["batch32_per_s"], st["batch32_per_s"])
    rows = {r["name"]: r for r in served["rows"]}
    fresh = rows["fresh c=1"]["p50_ms"]
    print("\n| what | requests/s | p50 ms | p99 ms | vs the in-process limit |")
    print("|---|---|---|---|---|")
    print(
        f"| in-process runner, batch 32 | {runner['batch32_per_s']:.0f} | | | "
        f"{runner['batch32_per_s'] / limit:.0%} |"
    )
    print(
        f"| in-process runner, batch 1 | {runner['batch1_per_s']:.0f} | | | "
        f"{runner['batch1_per_s'] / limit:.0%} |"
    )
    print(
        f"| in-process sentence-transformers `encode`, batch 32 | {st['batch32_per_s']:.0f} | "
        f"| | {st['batch32_per_s'] / limit:.0%} |"
    )
    print(
        f"| in-process sentence-transformers `encode`, batch 1 | {st['batch1_per_s']:.0f} | "
        f"| | {st['batch1_per_s'] / limit:.0%} |"
    )
    for r in anchors + served["rows"]:
        name = r["name"] if r["name"].startswith("FastAPI") else f"botmodels, {r['name']}"
        print(
            f"| {name} | {r['per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['per_s'] / limit:.0%} |"
        )
    big = served["big"]
    print(
        f"| botmodels, one request of 256 x 2,000 characters | status {big['status']}, "
        f"{big['seconds']:.1f} s | | | |"
    )

    c64 = rows["c=64"]["per_s"]
    micro = anchors[1]["per_s"]
    after_burst = rows["c=1 after the burst"]["p50_ms"] / fresh
    after_big = rows["c=1 after the large request"]["p50_ms"] / fresh
    errors = sum(r["errors"] for r in served["rows"])
    checks = [
        (f"c=1 p50 after the burst {after_burst:.2f}x the fresh server's", after_burst <= 1.5),
        (f"c=1 p50 after the large request {after_big:.2f}x the fresh server's", after_big <= 1.5),
        (f"the large request answered {big['status']}", big["status"] == 200),
        (
            f"served c=64 is {c64 / limit:.0%} of the in-process limit ({limit:.0f}/s)",
            c64 >= 0.9 * limit,
        ),
        (f"served c=64 is {c64 / max(micro, 1e-9):.2f}x the micro-batch anchor", c64 > micro),
        (f"errors under load: {errors}", errors == 0),
    ]
    print(
        f"\nmean items per batch at c=64: {served['c64_mean_batch']:.1f}; "
        f"ready after {served['ready_s']:.1f} s"
    )
    for text, ok in checks:
        print(f"{'met' if ok else 'NOT MET'}: {text}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"runner": runner, "st": st, "anchors": anchors, "served": served}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
