"""Rerank benchmark: served `/v1/rerank`, batched against unbatched, in one run.

16 clients each send requests of 1 query and 8 documents (a RAG reranking step). Two models:

- `tiny`: the tiny profile's random cross-encoder (`method: cross-encoder`); unbatched is the
  same server with BOTMODELS_RERANK_BATCHING=false (each request's 8 pairs are one batch);
- `offline`: no cross-encoder, the embeddings fallback on the real all-MiniLM-L6-v2
  (`method: embeddings`); unbatched is BOTMODELS_EMBEDDINGS_BATCHING=false.

    python -m scripts.bench_rerank [--requests 400] [--concurrency 16] [--json out.json]

Pairs/s = answered requests x 8 / wall time. Uses the current BENTOML_HOME (imports the tiny and
offline profiles if missing). Numbers compare only within one run on one machine; a shared
machine moves them by tens of percent.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

QUERY = "How do I reset my password?"
DOCUMENTS = [
    "To reset your password, open Settings, choose Security and click Forgot password.",
    "Stock markets fell sharply today after the earnings report.",
    "The cat sits on the mat while the dog sleeps in the garden.",
    "Passwords must be at least twelve characters long and include a number.",
    "Our office is closed on public holidays; support answers e-mail within a day.",
    "Invoices are sent on the first business day of each month.",
    "If you forgot your user name, the login page can send it to your e-mail.",
    "The meeting has been moved to 3 pm tomorrow in room 204.",
]
CASES = {
    "tiny": ({"BOTMODELS_PROFILE": "tiny"}, "BOTMODELS_RERANK_BATCHING"),
    "offline": ({"BOTMODELS_PROFILE": "offline"}, "BOTMODELS_EMBEDDINGS_BATCHING"),
}


def served(case: str, batching: bool, requests: int, concurrency: int) -> dict[str, Any]:
    from scripts.loadgen import run_load
    from scripts.serverproc import Server

    env, switch = CASES[case]
    key = os.environ.get("BOTMODELS_API_KEYS", "").split(",")[0] or "bench-key-0123456789abcdef"
    server = Server(
        {
            "BOTMODELS_API_KEYS": key,
            "BOTMODELS_RUNNERS": "rerank,embeddings",
            switch: "true" if batching else "false",
            **env,
        }
    )
    try:
        server.wait_ready()
        body = json.dumps({"query": QUERY, "documents": DOCUMENTS, "top_n": 3}).encode()
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        run_load(server.url, "/v1/rerank", body, headers, 4 * concurrency, concurrency)  # warm-up
        result = run_load(server.url, "/v1/rerank", body, headers, requests, concurrency)
    finally:
        server.stop()
    row = {
        "case": case,
        "batching": batching,
        "concurrency": concurrency,
        "requests_per_s": result.rate,
        "pairs_per_s": result.rate * len(DOCUMENTS),
        "p50_ms": result.p50,
        "p99_ms": result.p99,
        "errors": result.errors,
    }
    print(
        f"{case:8} batching={str(batching).lower():5} c={concurrency}: "
        f"{row['pairs_per_s']:.0f} pairs/s, p50 {result.p50:.0f} ms, p99 {result.p99:.0f} ms, "
        f"{result.errors} errors",
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--cases", default="tiny,offline", help="comma-separated: tiny, offline")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from scripts.import_models import main as import_models

    cases = [c for c in args.cases.split(",") if c]
    for profile in cases:
        import_models([profile, "--runners", "rerank,embeddings"])
    rows = [
        served(case, batching, args.requests, args.concurrency)
        for case in cases
        for batching in (True, False)
    ]
    for case in cases:
        on, off = (r for r in rows if r["case"] == case)  # batched first, as run
        print(f"{case}: batched / unbatched = {on['pairs_per_s'] / off['pairs_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
