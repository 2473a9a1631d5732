"""Embeddings benchmark, all in one run (so the ratios compare like with like):

1. in-process, per quantization (none / int8 / 4bit), each in a fresh subprocess: sentences/s at
   batch 32 and batch 1, state-dict bytes, process RSS, and cosine similarity to fp32;
2. served (`bentoml serve`, default settings): single-sentence `/v1/embeddings` requests at
   concurrency 1, 16 and 64 with p50/p99 latency. The machine's speed drifts by tens of percent
   over minutes (shared host), so the c=64 vs in-process ratio is measured in rounds: each round
   runs the in-process batch-32 rate, then c=64 against the (idle, already running) server,
   then the in-process rate again, and the round's ratio is c=64 over the mean of the two;
   the table reports the median round;
3. the unbatched baseline: the same server with BOTMODELS_EMBEDDINGS_BATCHING=false at 64.

    python scripts/bench_embeddings.py [--requests 3000] [--json bench-results/embeddings.json]

Uses the current BENTOML_HOME (imports the offline profile if missing). Numbers are only
comparable within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
COSINE_SET = [
    "The cat sits on the mat.",
    "A kitten rests on a rug.",
    "Stocks fell sharply today after the earnings report.",
    "How do I reset my password?",
    "O gato está dormindo no sofá.",
    "Der Hund spielt im Garten.",
    "cat",
    "Please send the invoice to the accounting department by Friday.",
    "The meeting has been moved to 3 pm tomorrow.",
    "Photosynthesis converts light energy into chemical energy.",
    "I would like to book a table for two at eight.",
    "Error 503: the upstream service is unavailable.",
]


def sentences_per_s(embed: Callable[[list[str]], object], batch: int, seconds: float) -> float:
    """Sentences per second of `embed` on batches of one sentence repeated, after a warm-up."""
    texts = [SENTENCE] * batch
    embed(texts)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        embed(texts)
        done += batch
    return done / (time.perf_counter() - started)


def measure_in_process(quantization: str, seconds: float, only_batch32: bool) -> dict[str, Any]:
    """Runs in a subprocess: one model per process, so RSS is this model's."""
    import numpy as np
    import psutil
    import torch

    from botmodels.config import get_settings
    from botmodels.device import set_threads
    from botmodels.store import find_stored
    from runners.embeddings import EmbeddingsRunner

    settings = get_settings()
    set_threads(settings.threads)
    stored = find_stored("embeddings-all-minilm-l6-v2:latest")
    assert stored is not None, "import the offline profile first"
    rss_before = psutil.Process().memory_info().rss
    runner = EmbeddingsRunner(  # as the server builds it (service.py)
        Path(stored.path),
        quantization=quantization,  # type: ignore[arg-type]
        device="cpu",
        engine=settings.embeddings_engine_choice,
        workers=settings.embeddings_workers,
        threads=settings.threads,
    )
    runner.load()
    state_bytes = 0
    model = runner._model  # None on the ONNX engine: the graph's weights are its file
    if model is None:
        graph = Path(stored.path) / "onnx"
        state_bytes = sum(p.stat().st_size for p in graph.iterdir())
    for tensor in [] if model is None else model.state_dict().values():
        if isinstance(tensor, torch.Tensor):
            state_bytes += tensor.numel() * tensor.element_size()
        elif isinstance(tensor, tuple):  # packed quantized params: (weight, bias)
            for part in tensor:
                if isinstance(part, torch.Tensor):
                    state_bytes += part.numel() * part.element_size()

    def rate(batch: int) -> float:
        return sentences_per_s(runner.embed, batch, seconds)

    if only_batch32:
        return {"batch32_per_s": rate(32)}
    result = {
        "quantization": quantization,
        "batch32_per_s": rate(32),
        "batch1_per_s": rate(1),
        "state_dict_mb": state_bytes / 2**20,
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
        "rss_model_mb": (psutil.Process().memory_info().rss - rss_before) / 2**20,
        "vectors": runner.embed(COSINE_SET).vectors.astype(np.float64).tolist(),
    }
    return result


def in_process(quantization: str, seconds: float, only_batch32: bool = False) -> dict[str, Any]:
    extra = ["--only-batch32"] if only_batch32 else []
    out = subprocess.run(
        [sys.executable, __file__, "--in-process", quantization, "--seconds", str(seconds), *extra],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def served(
    requests: int, env: dict[str, str], levels: list[int], rounds: int = 0, seconds: float = 6.0
) -> tuple[list[dict[str, Any]], list[dict[str, float]]]:
    from scripts.loadgen import run_load
    from scripts.serverproc import Server  # the same start/stop the serve tests use

    key = os.environ.get("BOTMODELS_API_KEYS", "").split(",")[0] or "bench-key-0123456789abcdef"
    # Only the embeddings runner: the other runners' idle models would share the worker.
    server = Server({"BOTMODELS_API_KEYS": key, "BOTMODELS_RUNNERS": "embeddings", **env})
    rows = []
    paired: list[dict[str, float]] = []
    try:
        ready_s = server.wait_ready()
        body = json.dumps({"input": SENTENCE, "model": "bench"}).encode()
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        run_load(server.url, "/v1/embeddings", body, headers, 300, 64)  # warm-up, batch learning
        for concurrency in levels:
            total = requests if concurrency > 1 else max(200, requests // 8)
            result = run_load(server.url, "/v1/embeddings", body, headers, total, concurrency)
            print(f"served {env or 'default'} c={concurrency}: {result.rate:.0f}/s", flush=True)
            rows.append(
                {
                    "concurrency": concurrency,
                    "per_s": result.rate,
                    "p50_ms": result.p50,
                    "p99_ms": result.p99,
                    "errors": result.errors,
                    "ready_s": ready_s,
                }
            )
        for _ in range(rounds):
            before = in_process("none", seconds, only_batch32=True)["batch32_per_s"]
            result = run_load(server.url, "/v1/embeddings", body, headers, requests, 64)
            after = in_process("none", seconds, only_batch32=True)["batch32_per_s"]
            paired.append(
                {
                    "before": before,
                    "served": result.rate,
                    "after": after,
                    "ratio": result.rate / ((before + after) / 2),
                    "p99_ms": result.p99,
                }
            )
            print(
                f"round: in-process {before:.0f}, served c=64 {result.rate:.0f}, in-process "
                f"{after:.0f}: {paired[-1]['ratio']:.0%}",
                flush=True,
            )
    finally:
        server.stop()
    return rows, paired


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--in-process", choices=["none", "int8", "4bit"])
    parser.add_argument("--only-batch32", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="setting for the batched server, e.g. BOTMODELS_EMBEDDINGS_TORCHSCRIPT=false (A/B)",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "embeddings.json")
    args = parser.parse_args()
    if args.in_process:
        print(json.dumps(measure_in_process(args.in_process, args.seconds, args.only_batch32)))
        return 0

    import numpy as np

    from scripts.import_models import main as import_models

    import_models(["offline", "--runners", "embeddings"])
    quant = {}
    for q in ("none", "int8", "4bit"):
        quant[q] = in_process(q, args.seconds)
        print(f"in-process {q}: {quant[q]['batch32_per_s']:.0f}/s at batch 32", flush=True)
    reference = np.array(quant["none"]["vectors"])
    for row in quant.values():
        cos = (np.array(row.pop("vectors")) * reference).sum(axis=1)
        row["cos_mean"], row["cos_min"] = float(cos.mean()), float(cos.min())
    extra = dict(item.split("=", 1) for item in args.env)
    batched, rounds = served(args.requests, extra, [1, 16, 64], args.rounds, args.seconds)
    unbatched, _ = served(args.requests, {"BOTMODELS_EMBEDDINGS_BATCHING": "false"}, [64])

    inproc32 = quant["none"]["batch32_per_s"]
    c64 = next(r for r in batched if r["concurrency"] == 64)
    ratios = sorted(r["ratio"] for r in rounds)
    print("\n| what | sentences/s | p50 ms | p99 ms | vs in-process batch 32 |")
    print("|---|---|---|---|---|")
    print(f"| in-process, batch 32 (fp32) | {inproc32:.0f} | | | 100 % |")
    print(
        f"| in-process, batch 1 (fp32) | {quant['none']['batch1_per_s']:.0f} | | | "
        f"{quant['none']['batch1_per_s'] / inproc32:.0%} |"
    )
    for row in batched:
        print(
            f"| served, concurrency {row['concurrency']} | {row['per_s']:.0f} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['per_s'] / inproc32:.0%} |"
        )
    for row in unbatched:
        print(
            f"| served unbatched (batching off), concurrency 64 | {row['per_s']:.0f} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['per_s'] / inproc32:.0%} |"
        )
    print("\n| round | in-process before | served c=64 | in-process after | served / in-process |")
    print("|---|---|---|---|---|")
    for number, r in enumerate(rounds, 1):
        print(
            f"| {number} | {r['before']:.0f} | {r['served']:.0f} | {r['after']:.0f} | "
            f"{r['ratio']:.0%} |"
        )
    if ratios:
        print(
            f"\nmedian served c=64 / in-process batch 32, paired rounds: "
            f"{ratios[len(ratios) // 2]:.0%}"
        )
    batch1 = quant["none"]["batch1_per_s"]
    print(
        f"\nbatching gain of the model itself, in-process batch 32 / batch 1: "
        f"{inproc32 / batch1:.1f}x (the served/unbatched ratio's ceiling when the unbatched "
        f"server keeps up with in-process batch 1; it ran at {unbatched[0]['per_s'] / batch1:.0%} "
        f"of it)"
    )
    print(
        f"served c=64 / unbatched c=64: {c64['per_s'] / unbatched[0]['per_s']:.1f}x; "
        f"errors: {sum(r['errors'] for r in batched + unbatched)}; "
        f"ready after {batched[0]['ready_s']:.1f} s"
    )
    print(
        "\n| quantization | batch 32 sentences/s | speed vs fp32 | state dict MB | "
        "process RSS MB | cosine to fp32 (mean / min) |"
    )
    print("|---|---|---|---|---|---|")
    for q, row in quant.items():
        print(
            f"| {q} | {row['batch32_per_s']:.0f} | {row['batch32_per_s'] / inproc32:.2f}x | "
            f"{row['state_dict_mb']:.1f} | {row['rss_mb']:.0f} | "
            f"{row['cos_mean']:.4f} / {row['cos_min']:.4f} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"quantization": quant, "served": batched, "rounds": rounds, "unbatched": unbatched},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
