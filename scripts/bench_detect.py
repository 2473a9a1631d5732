"""`/api/detect` benchmark: a table of payroll-like rows (default 100,000) through a real
`bentoml serve` (no runner loaded: the route needs none), timed by the client from the first byte
sent to the last byte read, and the same body through the route's thread work in-process
(parse, votes, answer JSON) to show where the time goes.

    python -m scripts.bench_detect                  # 100,000 rows, 5 requests
    python -m scripts.bench_detect --rows 1500      # botserver's own table size

Writes bench-results/detect.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.serverproc import Server

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789abcdef"


def payroll(rows: int, seed: int = 1) -> bytes:
    """`rows` rows shaped like botserver's `row_to_json` (about 110 bytes each), 0.5 % outliers."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    data = []
    for i in range(rows):
        salary = round(rng.gauss(5200, 700), 2)
        if rng.random() < 0.005:
            salary *= 8
        data.append(
            {
                "cargo": rng.choice(["analista", "tecnico", "assessor"]),
                "data_admissao": "2019-03-01",
                "id": i,
                "nome": f"Servidor {i}",
                "salario_base": salary,
            }
        )
    return json.dumps({"data": data, "value_field": "salario_base"}, separators=(",", ":")).encode()


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "detect.json")
    args = parser.parse_args()

    import httpx

    from botmodels.data.front import detect_json

    body = payroll(args.rows)
    in_process = []
    for _ in range(args.requests):
        started = time.perf_counter()
        answer = detect_json(body, max_rows=10**7)
        in_process.append(time.perf_counter() - started)

    home = tempfile.mkdtemp(prefix="bench-detect-")
    server = Server(
        {
            "BENTOML_HOME": f"{home}/bentoml",
            "BOTMODELS_HOME": f"{home}/home",
            "BOTMODELS_API_KEYS": KEY,
            "BOTMODELS_RUNNERS": "",
            "BOTMODELS_MAX_JSON_BYTES": str(len(body) + 1024),
        }
    )
    served = []
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=300) as client:
            headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
            client.post("/api/detect", headers=headers, content=body).raise_for_status()  # warm
            for _ in range(args.requests):
                started = time.perf_counter()
                response = client.post("/api/detect", headers=headers, content=body)
                response.raise_for_status()
                response.json()
                served.append(time.perf_counter() - started)
    finally:
        server.stop()

    result: dict[str, Any] = {
        "rows": args.rows,
        "body_bytes": len(body),
        "answer_bytes": len(answer),
        "anomalies_found": json.loads(answer)["anomalies_found"],
        "requests": args.requests,
        "served_ms_median": _median_ms(served),
        "served_ms_max": round(max(served) * 1000, 1),
        "in_process_ms_median": _median_ms(in_process),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
