"""Language model, served: the HTTP overhead and continuous batching, side by side in one run.

    python -m scripts.bench_llm_served                     # the offline model (imported if needed)
    python -m scripts.bench_llm_served --profile tiny --tokens 32 --rounds 1

Measures, with the same chat prompt, greedy, `--tokens` new tokens at most:
  1. in-process single stream: the runner alone (`submit`, events on its thread): tokens/s;
  2. served single stream: `bentoml serve`, `/v1/chat/completions` with `stream: true`, read
     event by event: tokens/s, and the overhead against (1);
  3. served, 8 concurrent streams: aggregate tokens/s (and its ratio to the served single
     stream), time to first token p50/p99, and the mean decode batch from /metrics
     (botmodels_llm_step_sequences_total / botmodels_llm_steps_total).
Tokens are the answers' `usage.completion_tokens`. Each figure is the median of `--rounds`.
Numbers depend on the machine (and on what else runs on it): run it idle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import httpx

from scripts.serverproc import Server, samples

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
TAGS = {"offline": "llm-gemma-3-270m-q4-k-m:latest", "tiny": "llm-tiny-llama:latest"}


def in_process(profile: str, tokens: int, rounds: int) -> dict[str, float]:
    from botmodels import registry
    from botmodels.config import get_settings
    from botmodels.device import set_threads
    from botmodels.store import find_stored
    from runners.llm import LlmEvent, LlmRequest

    set_threads(get_settings().threads)
    stored = find_stored(TAGS[profile])
    assert stored is not None, f"import the {profile} profile first"
    runner = registry.factories()["llm"](Path(stored.path), "none", "cpu")
    runner.load()
    try:
        prompt = runner.render_chat(MESSAGES)
        rates, firsts = [], []
        for _ in range(rounds + 1):  # the first round warms up
            done = threading.Event()
            got: list[int] = []
            first: list[float] = []
            started = time.perf_counter()

            def on_event(
                event: LlmEvent,
                got: list[int] = got,
                first: list[float] = first,
                done: threading.Event = done,
            ) -> None:
                if event.tokens and not first:
                    first.append(time.perf_counter())
                got.append(event.tokens)
                if event.finish_reason is not None:
                    done.set()

            runner.submit(LlmRequest(prompt, tokens, 0.0, 1.0, None), on_event)
            done.wait()
            elapsed = time.perf_counter() - started
            rates.append(sum(got) / elapsed)
            firsts.append(first[0] - started if first else elapsed)
        return {
            "tokens_per_s": statistics.median(rates[1:]),
            "ttft_s": statistics.median(firsts[1:]),
        }
    finally:
        runner.close()


def stream_once(url: str, tokens: int) -> tuple[int, float, float]:
    """One streamed chat: (completion tokens, seconds to the first text, seconds in all)."""
    body = {
        "model": "default",
        "messages": MESSAGES,
        "stream": True,
        "max_tokens": tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    used = 0
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers={"X-API-Key": KEY}, timeout=600
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                used = int(chunk["usage"]["completion_tokens"])
            elif first is None and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
    total = time.perf_counter() - started
    return used, first if first is not None else total, total


def served(profile: str, tokens: int, rounds: int, clients: int) -> dict[str, float]:
    server = Server(
        {
            "BOTMODELS_PROFILE": profile,
            "BOTMODELS_RUNNERS": "llm",
            "BOTMODELS_API_KEYS": KEY,
            "BOTMODELS_LLM_MAX_RUNNING": str(max(clients, 8)),
        }
    )
    try:
        server.wait_ready(timeout=900)
        stream_once(server.url, tokens)  # warm-up
        single = []
        for _ in range(rounds):
            used, _, total = stream_once(server.url, tokens)
            single.append(used / total)
        aggregate, ttfts, batches = [], [], []
        for _ in range(rounds):
            metrics = httpx.get(f"{server.url}/metrics").text
            steps0 = sum(samples(metrics, "botmodels_llm_steps_total").values())
            seqs0 = sum(samples(metrics, "botmodels_llm_step_sequences_total").values())
            results: list[tuple[int, float, float]] = []
            barrier = threading.Barrier(clients)

            def one(
                results: list[tuple[int, float, float]] = results,
                barrier: threading.Barrier = barrier,
            ) -> None:
                barrier.wait()
                results.append(stream_once(server.url, tokens))

            threads = [threading.Thread(target=one) for _ in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            aggregate.append(sum(r[0] for r in results) / wall)
            ttfts += [r[1] for r in results]
            time.sleep(0.5)
            metrics = httpx.get(f"{server.url}/metrics").text
            steps = sum(samples(metrics, "botmodels_llm_steps_total").values()) - steps0
            seqs = sum(samples(metrics, "botmodels_llm_step_sequences_total").values()) - seqs0
            batches.append(seqs / steps if steps else 0.0)
        ttfts.sort()
        return {
            "single_tokens_per_s": statistics.median(single),
            "concurrent_tokens_per_s": statistics.median(aggregate),
            "ttft_p50_s": ttfts[len(ttfts) // 2],
            "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))],
            "mean_batch": statistics.median(batches),
        }
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", choices=sorted(TAGS), default="offline")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    from scripts.import_models import main as import_models

    if import_models([args.profile, "--runners", "llm"]) != 0:
        return 1
    local = in_process(args.profile, args.tokens, args.rounds)
    print(f"in-process single stream: {local['tokens_per_s']:.1f} tokens/s", flush=True)
    remote = served(args.profile, args.tokens, args.rounds, args.clients)
    overhead = 1 - remote["single_tokens_per_s"] / local["tokens_per_s"]
    speedup = remote["concurrent_tokens_per_s"] / remote["single_tokens_per_s"]
    print(
        f"\n| {args.profile} model, ≤ {args.tokens} new tokens, greedy | value |\n|---|---|\n"
        f"| in-process single stream | {local['tokens_per_s']:.1f} tokens/s |\n"
        f"| served single stream | {remote['single_tokens_per_s']:.1f} tokens/s "
        f"(overhead {overhead:.1%}) |\n"
        f"| served {args.clients} concurrent streams | "
        f"{remote['concurrent_tokens_per_s']:.1f} tokens/s ({speedup:.2f}x single) |\n"
        f"| time to first token, {args.clients} concurrent | p50 {remote['ttft_p50_s']:.2f} s, "
        f"p99 {remote['ttft_p99_s']:.2f} s |\n"
        f"| mean decode batch ({args.clients} concurrent) | {remote['mean_batch']:.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
