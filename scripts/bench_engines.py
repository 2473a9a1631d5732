"""The embeddings engines and the served path against the peers, in one run (ratios compare):

1. in-process, each engine in a fresh subprocess (PyTorch eager, the TorchScript trace, ONNX
   Runtime float32 and int8), in alternating rounds (the median reported), the offline
   all-MiniLM-L6-v2 as the server builds it: sentences/s at batch 32 and batch 1, and cosine to
   PyTorch float32 on a fixed sentence set;
2. served: botmodels (`bentoml serve`, default settings: the ONNX engine), single-sentence
   `/v1/embeddings` requests at concurrency 1, 16 and 64;
3. the peers at the same concurrencies, the same model: the FastAPI micro-batch anchor
   (scripts/anchor_fastapi.py) and, with `--infinity-python`, Infinity (`infinity_emb v2`,
   installed in its own virtualenv: it pins numpy < 2 and transformers <= 5.0), per engine.

    python -m scripts.bench_engines [--requests 2000] \
        [--infinity-python /path/bin/python --infinity-engine torch --infinity-engine optimum]

    # Infinity's virtualenv (CPU torch first, so pip does not take a CUDA build):
    python3.11 -m venv /tmp/inf && /tmp/inf/bin/pip install torch==2.13.0 \
        && /tmp/inf/bin/pip install 'infinity-emb[server,torch,optimum]==0.0.78'

Targets (issue: ONNX Runtime for the encoders): ONNX batch 32 >= 1.5x the trace; served c=64 >=
85 % of ONNX batch 32; served c=1 >= 60 % of ONNX batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.bench_embeddings import COSINE_SET, SENTENCE, sentences_per_s

ROOT = Path(__file__).resolve().parent.parent
ENGINES = [("eager", "none"), ("torchscript", "none"), ("onnx", "none"), ("onnx", "int8")]
LEVELS = [1, 16, 64]


def model_dir() -> Path:
    from botmodels.store import find_stored

    stored = find_stored("embeddings-all-minilm-l6-v2:latest")
    assert stored is not None, "import the offline profile first"
    return Path(stored.path)


def measure(engine: str, quantization: str, seconds: float) -> dict[str, Any]:
    """Runs in a subprocess: one engine per process."""
    from botmodels.config import get_settings
    from botmodels.device import set_threads
    from runners.embeddings import EmbeddingsRunner

    settings = get_settings()
    set_threads(settings.threads)
    runner = EmbeddingsRunner(
        model_dir(),
        quantization=quantization,  # type: ignore[arg-type]
        device="cpu",
        engine=engine,  # type: ignore[arg-type]
        threads=settings.threads,
    )
    runner.load()
    return {
        "engine": runner.engine,
        "dtype": runner.dtype,
        "batch32_per_s": sentences_per_s(runner.embed, 32, seconds),
        "batch1_per_s": sentences_per_s(runner.embed, 1, seconds),
        "vectors": runner.embed(COSINE_SET).vectors.astype(float).tolist(),
    }


def in_process(engine: str, quantization: str, seconds: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "scripts.bench_engines", "--seconds", str(seconds)]
    out = subprocess.run(
        [*command, "--measure", engine, quantization],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server at {url} exited")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready")
        time.sleep(0.25)


def load_levels(
    name: str, url: str, path: str, headers: dict[str, str], requests: int
) -> list[dict[str, Any]]:
    from scripts.loadgen import run_load

    body = json.dumps({"input": SENTENCE, "model": "bench"}).encode()
    headers = {"Content-Type": "application/json", **headers}
    run_load(url, path, body, headers, 300, 64)  # warm-up (and the dispatcher's learning)
    rows = []
    for concurrency in LEVELS:
        total = requests if concurrency > 1 else max(200, requests // 8)
        result = run_load(url, path, body, headers, total, concurrency)
        print(f"{name} c={concurrency}: {result.rate:.0f}/s p50 {result.p50:.1f} ms", flush=True)
        rows.append(
            {
                "name": name,
                "concurrency": concurrency,
                "per_s": result.rate,
                "p50_ms": result.p50,
                "p99_ms": result.p99,
                "errors": result.errors,
            }
        )
    return rows


def served_botmodels(requests: int) -> list[dict[str, Any]]:
    from scripts.serverproc import Server

    key = "bench-key-0123456789abcdef"
    server = Server({"BOTMODELS_API_KEYS": key, "BOTMODELS_RUNNERS": "embeddings"})
    try:
        server.wait_ready()
        return load_levels("botmodels", server.url, "/v1/embeddings", {"X-API-Key": key}, requests)
    finally:
        server.stop()


def served_peer(
    name: str, command: list[str], port: int, ready: str, path: str, requests: int
) -> list[dict[str, Any]]:
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + ready)
        return load_levels(name, url, path, {}, requests)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="in-process rounds per engine")
    parser.add_argument("--measure", nargs=2, metavar=("ENGINE", "QUANTIZATION"))
    parser.add_argument("--infinity-python", help="python of a virtualenv with infinity-emb")
    parser.add_argument(
        "--infinity-engine", action="append", default=[], help="torch, optimum (repeatable)"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "engines.json")
    args = parser.parse_args()
    if args.measure:
        engine, quantization = args.measure
        print(json.dumps(measure(engine, quantization, args.seconds)))
        return 0

    import numpy as np

    from scripts.import_models import main as import_models
    from scripts.serverproc import free_port

    import_models(["offline", "--runners", "embeddings"])
    # Rounds, each engine once per round in turn: the machine's speed drifts by tens of percent
    # within minutes, so each engine's figure is its median round, and the ratios hold.
    runs: dict[str, list[dict[str, Any]]] = {f"{e} {q}": [] for e, q in ENGINES}
    for _ in range(args.rounds):
        for e, q in ENGINES:
            runs[f"{e} {q}"].append(in_process(e, q, args.seconds))
    engines = {}
    for name, rows in runs.items():
        row = dict(rows[0])
        for key in ("batch32_per_s", "batch1_per_s"):
            row[key] = statistics.median(r[key] for r in rows)
            row[key + "_all"] = [round(r[key]) for r in rows]
        engines[name] = row
    reference = np.array(engines["eager none"]["vectors"])
    for name, row in engines.items():
        cos = (np.array(row.pop("vectors")) * reference).sum(axis=1)
        row["cos_min"] = float(cos.min())
        print(f"{name}: {row['batch32_per_s_all']}/s at 32, {row['batch1_per_s_all']}/s at 1")
    served = served_botmodels(args.requests)
    port = free_port()
    anchor = [sys.executable, "scripts/anchor_fastapi.py", "--mode", "microbatch"]
    anchor += ["--port", str(port), "--model", str(model_dir())]
    peers = served_peer(
        "FastAPI micro-batch", anchor, port, "/readyz", "/v1/embeddings", args.requests
    )
    for engine in args.infinity_engine if args.infinity_python else []:
        port = free_port()
        infinity = [args.infinity_python, "-m", "infinity_emb.cli", "v2", "--model-id"]
        infinity += [str(model_dir()), "--port", str(port), "--device", "cpu"]
        infinity += ["--engine", engine, "--batch-size", "32"]
        name = f"Infinity ({engine})"
        peers += served_peer(name, infinity, port, "/health", "/embeddings", args.requests)

    onnx, trace = engines["onnx none"], engines["torchscript none"]
    print(
        "\n| engine (in-process) | batch 32 sentences/s | batch 1 sentences/s | "
        "min cosine to eager fp32 |"
    )
    print("|---|---|---|---|")
    for name, row in engines.items():
        print(
            f"| {name} ({row['engine']}, {row['dtype']}) | {row['batch32_per_s']:.0f} | "
            f"{row['batch1_per_s']:.0f} | {row['cos_min']:.7f} |"
        )
    print("\n| served | c=1 /s (p50 ms) | c=16 /s (p99 ms) | c=64 /s (p99 ms) | errors |")
    print("|---|---|---|---|---|")
    for name in dict.fromkeys(r["name"] for r in served + peers):
        level = {r["concurrency"]: r for r in served + peers if r["name"] == name}
        print(
            f"| {name} | {level[1]['per_s']:.0f} ({level[1]['p50_ms']:.1f}) | "
            f"{level[16]['per_s']:.0f} ({level[16]['p99_ms']:.1f}) | "
            f"{level[64]['per_s']:.0f} ({level[64]['p99_ms']:.1f}) | "
            f"{sum(r['errors'] for r in level.values())} |"
        )
    ours = {r["concurrency"]: r for r in served}
    print(
        f"\nONNX batch 32 / trace batch 32: {onnx['batch32_per_s'] / trace['batch32_per_s']:.2f}x"
        f" (target >= 1.5)\nserved c=64 / ONNX batch 32: "
        f"{ours[64]['per_s'] / onnx['batch32_per_s']:.0%} (target >= 85 %)\nserved c=1 / ONNX "
        f"batch 1: {ours[1]['per_s'] / onnx['batch1_per_s']:.0%} (target >= 60 %)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"engines": engines, "served": served + peers}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
