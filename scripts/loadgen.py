"""A small keep-alive HTTP/1.1 load generator for benchmarks on this machine.

httpx spends more CPU per request than the server under test does, and on 2 cores that CPU is
taken from the server; this client is raw asyncio streams (uvloop when present): one pre-built
request, Content-Length bodies only.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return (self.requests - self.errors) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        return self.percentile(99)


def build_request(
    host: str, port: int, method: str, path: str, body: bytes, headers: dict[str, str]
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _worker(
    host: str, port: int, request: bytes, count: list[int], result: LoadResult
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while count[0] > 0:
            count[0] -= 1
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            if not status_line.startswith(b"HTTP/1.1 200"):
                result.errors += 1
    finally:
        writer.close()


async def _run(host: str, port: int, request: bytes, total: int, concurrency: int) -> LoadResult:
    result = LoadResult(total, 0, 0.0, [])
    count = [total]
    started = time.perf_counter()
    await asyncio.gather(*(_worker(host, port, request, count, result) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def run_load(
    url: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    total: int,
    concurrency: int,
    method: str = "POST",
) -> LoadResult:
    host, _, port = url.removeprefix("http://").partition(":")
    request = build_request(host, int(port), method, path, body, headers)
    try:
        import uvloop

        return uvloop.run(_run(host, int(port), request, total, concurrency))
    except ImportError:
        return asyncio.run(_run(host, int(port), request, total, concurrency))
