"""Framework overhead: p50/p99 of the authenticated no-op route `/api/ping` at 1 and 16 clients,
and the worker's RSS before and after, with BentoML's timer leak fixed (default) and as shipped
(BOTMODELS_BENTOML_WORKAROUNDS=off), in one run.

    python scripts/bench_overhead.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from scripts.loadgen import run_load
from scripts.serverproc import Server

ROOT = Path(__file__).resolve().parent.parent


def measure(requests: int, env: dict[str, str]) -> list[tuple[str, float, float, float, int]]:
    import psutil

    key = os.environ.get("BOTMODELS_API_KEYS", "").split(",")[0] or "bench-key-0123456789abcdef"
    server = Server({"BOTMODELS_API_KEYS": key, "BOTMODELS_RUNNERS": "embeddings", **env})
    rows = []
    try:
        server.wait_ready()
        (pid,) = server.worker_pids()
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        run_load(server.url, "/api/ping", b"{}", headers, 1000, 16)  # warm-up
        rss_before = psutil.Process(pid).memory_info().rss
        for clients, total in ((1, requests // 4), (16, requests)):
            result = run_load(server.url, "/api/ping", b"{}", headers, total, clients)
            rss = psutil.Process(pid).memory_info().rss
            rows.append(
                (
                    f"{clients} client(s), {total} requests",
                    result.p50,
                    result.p99,
                    result.rate,
                    (rss - rss_before) >> 20,
                )
            )
    finally:
        server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    print("| BentoML workarounds | load | p50 ms | p99 ms | req/s | worker RSS growth MiB |")
    print("|---|---|---|---|---|---|")
    for label, env in (
        ("on (default)", {}),
        ("off (as shipped)", {"BOTMODELS_BENTOML_WORKAROUNDS": "off"}),
    ):
        for load, p50, p99, rate, growth in measure(args.requests, env):
            print(
                f"| {label} | {load} | {p50:.2f} | {p99:.2f} | {rate:.0f} | {growth} |", flush=True
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
