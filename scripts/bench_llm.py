"""In-process language-model throughput: one stream, then 8 concurrent streams, on one runner.

    python -m scripts.bench_llm                  # the offline model from the store (import first)
    python -m scripts.bench_llm --model-dir DIR --tokens 32 --streams 8 --dtype bfloat16

Greedy decoding of a fixed prompt for a fixed number of tokens (no EOS stop), so every run does
the same work. Prints the load time and resident memory, single-stream tokens/s, the concurrent
streams' aggregate tokens/s, their ratio, and the mean decode batch (continuous batching). The
served rows (HTTP overhead, TTFT) are measured against a running server elsewhere.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path

import psutil

from runners.llm import LlmEvent, LlmRequest, LlmRunner

PROMPT = "The history of the city of Lisbon begins"


def _stream(runner: LlmRunner, ids: list[int], tokens: int) -> float:
    """Run one greedy request to its end; the seconds from submit to the final event."""
    done = threading.Event()

    def on_event(event: LlmEvent) -> None:
        if event.finish_reason is not None:
            done.set()

    started = time.perf_counter()
    runner.submit(LlmRequest(ids, tokens, temperature=0.0, top_p=1.0, seed=None), on_event)
    done.wait()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a model folder (default: the store's)")
    parser.add_argument("--tokens", type=int, default=32, help="generated tokens per stream")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)

    model_dir = args.model_dir
    if model_dir is None:
        from botmodels.store import find_stored

        stored = find_stored("llm-gemma-3-270m-q4-k-m:latest")
        if stored is None:
            parser.error("no offline llm in the store: python -m scripts.import_models offline")
        model_dir = Path(stored.path)
    runner = LlmRunner(
        model_dir,
        quantization="none",
        device="cpu",
        max_running=args.streams,
        cpu_dtype=args.dtype,
    )
    started = time.perf_counter()
    runner.load()
    load_s = time.perf_counter() - started
    rss_mib = psutil.Process().memory_info().rss / 2**20
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ids = runner.encode(PROMPT)
    try:
        _stream(runner, ids, 4)  # warm-up
        single_s = _stream(runner, ids, args.tokens)
        before = runner.stats()
        threads = [
            threading.Thread(target=_stream, args=(runner, ids, args.tokens))
            for _ in range(args.streams)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        many_s = time.perf_counter() - started
        after = runner.stats()
    finally:
        runner.close()
    single = args.tokens / single_s
    aggregate = args.streams * args.tokens / many_s
    steps = after["steps"] - before["steps"]
    report = {
        "model": model_dir.name,
        "dtype": runner.dtype,
        "load_s": round(load_s, 1),
        "rss_mib": round(rss_mib),
        "peak_rss_mib": round(peak_mib),
        "single_tokens_per_s": round(single, 2),
        "streams": args.streams,
        "aggregate_tokens_per_s": round(aggregate, 2),
        "ratio": round(aggregate / single, 2),
        "mean_batch": round((after["step_sequences"] - before["step_sequences"]) / steps, 2),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
