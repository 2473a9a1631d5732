"""Benchmark the image runner: seconds per image, weight memory with and without quantization,
peak RSS, and the gain from batching 4 same-shape requests into one pipeline call.

    python scripts/bench_generation.py                         # the tiny pipeline, built here
    python scripts/bench_generation.py --tag image-sd-turbo:latest --size 512 --steps 2
    python scripts/bench_generation.py --device cuda --quantizations none,4bit   # on a GPU

Each configuration runs in its own child process, so its peak RSS (and, on CUDA, peak GPU
memory) is its own. "sequential" is 4 requests arriving together but run one at a time (what
happens without batching: the runner holds one pipeline call at a time); "batched" is the same 4
as one call, which is what the batchable API does with concurrent same-shape requests.
Results are printed as a Markdown table and written as JSON under bench-results/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from queue import Empty
from typing import Any


def _measure(
    model_dir: str,
    quantization: str,
    device: str,
    size: int,
    steps: int,
    guidance: float,
    repeats: int,
    threads: int,
) -> dict[str, Any]:
    import torch

    from runners.image import ImageRunner, ImageSpec

    torch.set_num_threads(threads)
    started = time.perf_counter()
    runner = ImageRunner(Path(model_dir), quantization=quantization, device=device)  # type: ignore[arg-type]
    runner.load()
    load_s = time.perf_counter() - started

    def spec(seed: int) -> ImageSpec:
        return ImageSpec("a lighthouse at dusk", size, size, steps, guidance, seed)

    runner.generate([spec(0)])  # warm-up
    single: list[float] = []
    for seed in range(repeats):
        t0 = time.perf_counter()
        runner.generate([spec(seed)])
        single.append(time.perf_counter() - t0)

    def four_sequential() -> float:
        # 4 concurrent requests, one pipeline call each (the runner's lock serialises them)
        t0 = time.perf_counter()
        workers = [threading.Thread(target=runner.generate, args=([spec(s)],)) for s in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.perf_counter() - t0

    def four_batched() -> float:
        t0 = time.perf_counter()
        runner.generate([spec(s) for s in range(4)])
        return time.perf_counter() - t0

    # alternate the two, several rounds, and keep the medians: the host may be shared
    rounds = [(four_sequential(), four_batched()) for _ in range(max(3, repeats // 2))]
    sequential = sorted(r[0] for r in rounds)[len(rounds) // 2]
    batched = sorted(r[1] for r in rounds)[len(rounds) // 2]

    result: dict[str, Any] = {
        "quantization": quantization,
        "device": device,
        "dtype": runner.dtype,
        "pipeline": runner.pipeline_class,
        "load_s": round(load_s, 2),
        "s_per_image": round(sorted(single)[len(single) // 2], 4),
        "four_sequential_s": round(sequential, 3),
        "four_batched_s": round(batched, 3),
        "batching_gain": round(sequential / batched, 2),
        "weight_bytes": runner.weight_bytes,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if device == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _child(queue: Any, args: tuple[Any, ...]) -> None:
    try:
        queue.put(_measure(*args))
    except Exception as exc:  # noqa: BLE001 - report the failure as a row
        queue.put({"quantization": args[1], "error": f"{type(exc).__name__}: {exc}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tag", help="a stored image model (default: build the tiny pipeline)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--quantizations", default="none,int8")
    parser.add_argument("--size", type=int, default=None, help="default: the model's native")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        if args.tag:
            import bentoml

            model_dir = str(bentoml.models.get(args.tag).path)
            name = args.tag
        else:
            from runners.image import build_tiny

            build_tiny(Path(tmp))
            model_dir, name = tmp, "tiny random SD (synthetic)"
        size = args.size or (64 if not args.tag else 512)

        context = multiprocessing.get_context("spawn")
        rows: list[dict[str, Any]] = []
        for quantization in args.quantizations.split(","):
            queue = context.Queue()
            child = context.Process(
                target=_child,
                args=(
                    queue,
                    (
                        model_dir,
                        quantization,
                        args.device,
                        size,
                        args.steps,
                        args.guidance,
                        args.repeats,
                        args.threads,
                    ),
                ),
            )
            child.start()
            row: dict[str, Any] | None = None
            while row is None:
                try:
                    row = queue.get(timeout=1.0)
                except Empty:
                    if not child.is_alive():  # killed (out of memory?) before it could report
                        row = {
                            "quantization": quantization,
                            "error": f"child exited with code {child.exitcode}",
                        }
            rows.append(row)
            child.join()

    print(
        f"\nModel: {name}; {size}x{size}, {args.steps} steps, guidance {args.guidance}; "
        f"{args.device}, {args.threads} threads; {platform.processor() or platform.machine()}\n"
    )
    print(
        "| quantization | dtype | s/image | 4 sequential s | 4 batched s | batching gain "
        "| weights MiB | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['quantization']} | failed: {row['error']} |||||||")
            continue
        print(
            f"| {row['quantization']} | {row['dtype']} | {row['s_per_image']} "
            f"| {row['four_sequential_s']} | {row['four_batched_s']} | {row['batching_gain']}x "
            f"| {row['weight_bytes'] / 2**20:.2f} | {row['peak_rss_mib']} |"
        )
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    path = out / f"generation-{int(time.time())}.json"
    path.write_text(json.dumps({"model": name, "size": size, "rows": rows}, indent=2))
    print(f"\n(raw numbers: {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
