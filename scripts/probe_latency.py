"""Probe latency under a burst: do `/readyz` and `/livez` answer within a Kubernetes probe's
1 s timeout while the worker is flooded with embeddings requests?

Serves `BOTMODELS_RUNNERS=embeddings` with `bentoml serve`, then for each round fires a burst of
concurrent single-sentence `/v1/embeddings` requests (one connection each, all at once) while a
separate process probes `/readyz` and `/livez` every 100 ms, each probe on a new connection as
the kubelet does, and records each probe's latency.

    python scripts/probe_latency.py [--requests 700] [--rounds 3] [--pooled] [--json out.json]

Uses the current BENTOML_HOME (the offline profile must be imported). The probes run in their
own process so that the load generator's event loop cannot delay them.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PROBE_PATHS = ("/readyz", "/livez", "/api/health")
PROBE_TIMEOUT_S = 30.0


def probe_once(port: int, path: str) -> tuple[int, float]:
    """(status, seconds) of one probe on a new connection; status 0 when it failed."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        connection.close()
    return status, time.perf_counter() - started


def run_prober(port: int, interval: float) -> None:
    """Child process: one probe of each path every `interval` s, each in its own thread (a slow
    probe does not delay the next, as with the kubelet), one JSON line per probe on stdout,
    until stdin closes."""
    lock = threading.Lock()

    def one(path: str) -> None:
        sent = time.time()
        status, seconds = probe_once(port, path)
        line = json.dumps({"path": path, "sent": sent, "status": status, "seconds": seconds})
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    stop = threading.Event()

    def stop_when_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=stop_when_stdin_closes, daemon=True).start()
    probes: list[threading.Thread] = []
    while not stop.is_set():
        for path in PROBE_PATHS:
            probe = threading.Thread(target=one, args=(path,))
            probe.start()
            probes.append(probe)
        stop.wait(interval)
    for probe in probes:  # the slow ones are the point: wait for every answer
        probe.join()


class _Start:
    """Holds a pooled burst until every connection is open (or failed), then releases it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.all_open = asyncio.Event()
        self.go = asyncio.Event()

    def opened(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.all_open.set()


async def _one_request(port: int, request: bytes, start: _Start | None) -> int:
    """Send one request on its own connection, at once or (with `start`) once every connection
    of the burst is open; its status (0 when the connection failed)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        if start is not None:
            start.opened()
        return 0
    try:
        if start is not None:
            start.opened()
            await start.go.wait()
        writer.write(request)
        status_line = await reader.readline()
        await reader.read()  # Connection: close, so the body ends with the connection
        parts = status_line.split()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except OSError:
        return 0
    finally:
        writer.close()


def burst(port: int, request: bytes, count: int, pooled: bool) -> tuple[Counter[int], float]:
    """`count` requests at once, one connection each, and when they were sent. `pooled` opens
    every connection first and then sends on all of them together (a client's connection pool);
    otherwise each request opens its connection as it goes."""

    async def run() -> tuple[list[int], float]:
        start = _Start(count) if pooled else None
        sending = asyncio.gather(*(_one_request(port, request, start) for _ in range(count)))
        if start is not None:
            await start.all_open.wait()
            start.go.set()
        sent_at = time.time()
        return await sending, sent_at

    try:
        import uvloop

        statuses, sent_at = uvloop.run(run())
    except ImportError:
        statuses, sent_at = asyncio.run(run())
    return Counter(statuses), sent_at


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in PROBE_PATHS:
        mine = sorted(s["seconds"] for s in samples if s["path"] == path)
        if not mine:
            continue
        out[path] = {
            "probes": len(mine),
            "failed": sum(1 for s in samples if s["path"] == path and s["status"] != 200),
            "p50_ms": round(mine[len(mine) // 2] * 1000, 1),
            "max_ms": round(mine[-1] * 1000, 1),
            "over_1s": sum(1 for v in mine if v > 1.0),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=700, help="requests per burst")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pooled",
        action="store_true",
        help="open the burst's connections first, then send on all at once",
    )
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between probes")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--prober", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prober is not None:
        run_prober(args.prober, args.interval)
        return 0

    from scripts.loadgen import build_request, run_load
    from scripts.serverproc import Server

    key = os.environ.get("BOTMODELS_API_KEYS", "").split(",")[0] or "bench-key-0123456789abcdef"
    server = Server({"BOTMODELS_API_KEYS": key, "BOTMODELS_RUNNERS": "embeddings"})
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    body = json.dumps({"input": "The quick brown fox jumps over the lazy dog."}).encode()
    request = build_request(
        "127.0.0.1", server.port, "POST", "/v1/embeddings", body, {**headers, "Connection": "close"}
    )
    rounds: list[dict[str, Any]] = []
    try:
        server.wait_ready()
        run_load(server.url, "/v1/embeddings", body, headers, 200, 16)  # warm-up
        for index in range(args.rounds):
            prober = subprocess.Popen(
                [sys.executable, __file__, "--prober", str(server.port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)  # a few idle probes first
            statuses, burst_start = burst(server.port, request, args.requests, args.pooled)
            burst_end = time.time()
            time.sleep(1.0)
            out, _ = prober.communicate("", timeout=PROBE_TIMEOUT_S + 30)
            samples = [json.loads(line) for line in out.splitlines() if line.strip()]
            during = [s for s in samples if burst_start <= s["sent"] <= burst_end]
            idle = [s for s in samples if s["sent"] < burst_start]
            row = {
                "round": index + 1,
                "burst_s": round(burst_end - burst_start, 2),
                "burst_statuses": {str(k): v for k, v in sorted(statuses.items())},
                "idle": summarise(idle),
                "during_burst": summarise(during),
            }
            rounds.append(row)
            print(json.dumps(row), flush=True)
            time.sleep(2.0)
    finally:
        server.stop()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"requests": args.requests, "rounds": rounds}, indent=2))
    worst = max(
        (p["max_ms"] for r in rounds for p in r["during_burst"].values()),
        default=0.0,
    )
    print(f"slowest probe during a burst: {worst:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
