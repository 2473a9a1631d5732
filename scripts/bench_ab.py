"""Paired A/B of two checkouts of this project: worker CPU per request, req/s and p99, in
alternating rounds against two servers started side by side (so machine drift hits both).

    git worktree add /tmp/botmodels-base <commit>
    python scripts/bench_ab.py /tmp/botmodels-base . [--rounds 16] [--requests 4000]
        [--clients 16] [--path /api/ping] [--b-env KEY=VALUE ...]

Both servers run with only the embeddings runner, from this venv. The verdict is the median of
the per-round B/A ratios of worker CPU per request (user + system time of the worker process
over the round, divided by its requests): less sensitive to the machine's drift than req/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from scripts.loadgen import run_load
from scripts.serverproc import Server

ROOT = Path(__file__).resolve().parent.parent

EMBEDDINGS_BODY = {"input": "The quick brown fox jumps over the lazy dog.", "model": "ab"}


def main() -> int:
    import psutil

    parser = argparse.ArgumentParser()
    parser.add_argument("a", type=Path, help="checkout A (the base)")
    parser.add_argument("b", type=Path, help="checkout B (the change)")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--path", default="/api/ping", choices=["/api/ping", "/v1/embeddings"])
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    key = os.environ.get("BOTMODELS_API_KEYS", "").split(",")[0] or "bench-key-0123456789abcdef"
    base_env = {"BOTMODELS_API_KEYS": key, "BOTMODELS_RUNNERS": "embeddings"}
    b_env = dict(item.split("=", 1) for item in args.b_env)
    servers = [
        Server({**base_env, "SERVE_CWD": str(args.a.resolve())}),
        Server({**base_env, **b_env, "SERVE_CWD": str(args.b.resolve())}),
    ]
    body = b"{}" if args.path == "/api/ping" else json.dumps(EMBEDDINGS_BODY).encode()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    rows: list[list[tuple[float, float, float]]] = [[], []]
    try:
        for server in servers:
            server.wait_ready()
        workers = [psutil.Process(server.worker_pids()[0]) for server in servers]
        for server in servers:
            run_load(server.url, args.path, body, headers, 2000, args.clients)  # warm-up
        print("| round | side | req/s | p99 ms | worker CPU µs/request |")
        print("|---|---|---|---|---|")
        for number in range(args.rounds):
            for side in (0, 1) if number % 2 == 0 else (1, 0):
                cpu_before = sum(workers[side].cpu_times()[:2])
                result = run_load(
                    servers[side].url, args.path, body, headers, args.requests, args.clients
                )
                cpu = (sum(workers[side].cpu_times()[:2]) - cpu_before) / args.requests * 1e6
                rows[side].append((result.rate, result.p99, cpu))
                print(
                    f"| {number + 1} | {'AB'[side]} | {result.rate:.0f} | {result.p99:.2f} | "
                    f"{cpu:.0f} |",
                    flush=True,
                )
    finally:
        for server in servers:
            server.stop()
    print("\n| side | median req/s | median p99 ms | median CPU µs/request |")
    print("|---|---|---|---|")
    for side in (0, 1):
        medians = [statistics.median(row[k] for row in rows[side]) for k in range(3)]
        print(f"| {'AB'[side]} | {medians[0]:.0f} | {medians[1]:.2f} | {medians[2]:.0f} |")
    ratios = sorted(b[2] / a[2] for a, b in zip(rows[0], rows[1], strict=True))
    print(
        f"\nB/A worker CPU per request, per round: median {statistics.median(ratios):.3f} "
        f"(range {ratios[0]:.3f}-{ratios[-1]:.3f}, {len(ratios)} rounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
