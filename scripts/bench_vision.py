"""Vision benchmark: captions per second served (concurrency 1 and 16) vs in-process batched,
and OCR / QR / barcode latency per image, through a real `bentoml serve`.

    python scripts/bench_vision.py                    # BLIP-base-sized random weights
    python scripts/bench_vision.py --model tiny       # the tests' tiny BLIP (overhead only)
    python scripts/bench_vision.py --model /path/to/blip-image-captioning-base

With no model hub here, the default builds a BLIP with blip-image-captioning-base's exact shapes
(ViT-B/16 at 384 px, 12-layer BERT decoder) and random weights: the compute per caption is the
real model's; the words are not. Random weights rarely emit end-of-sequence, so every caption is
`--tokens` long (a fixed workload). Also compares the OCR engines (tesseract, and rapidocr when
installed) on rendered English and Portuguese text. Writes bench-results/vision.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.serverproc import Server, batch_histogram

ROOT = Path(__file__).resolve().parent.parent

KEY = "bench-key-0123456789abcdef"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
ENGLISH = ["Invoice 2024-117", "Total: 42.50 EUR", "The quick brown fox jumps over the lazy dog"]
PORTUGUESE = [
    "Atenção: a reunião começa às nove",
    "Informações sobre preços e orçamento",
    "Não há ação sem coração",
]


# 1. Inputs ------------------------------------------------------------------------------------
def build_model(kind: str, folder: Path) -> Path:
    from runners import vision

    if kind == "tiny":
        vision.build_tiny(folder)
        return folder
    if kind != "base-random":
        return Path(kind)
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = [f"w{i}" for i in range(30_000)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *words]
    tokenizer = BertTokenizer(
        vocab={w: i for i, w in enumerate(vocab)},
        bos_token="[DEC]",  # noqa: S106 - BLIP's decoder token
    )
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=tokenizer
    )
    processor.save_pretrained(folder)
    torch.manual_seed(0)
    config = BlipConfig(  # blip-image-captioning-base's sizes
        text_config={
            "vocab_size": len(vocab),
            "bos_token_id": 5,
            "pad_token_id": 0,
            "sep_token_id": 3,
        },
        vision_config={"image_size": 384, "patch_size": 16},
    )
    model = BlipForConditionalGeneration(config)
    model.generation_config.bos_token_id = 5
    model.generation_config.decoder_start_token_id = 5
    model.generation_config.eos_token_id = 3
    model.generation_config.pad_token_id = 0
    model.config.architectures = ["BlipForConditionalGeneration"]
    model.save_pretrained(folder)
    return folder


def photo(seed: int) -> Any:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def text_image(lines: list[str]) -> Any:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 32)
    image = Image.new("RGB", (900, 64 * len(lines) + 40), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((20, 20 + 64 * i), line, font=font, fill="black")
    return image


def symbol_image(fmt: str, text: str) -> Any:
    import numpy as np
    import zxingcpp
    from PIL import Image

    barcode = zxingcpp.create_barcode(text, getattr(zxingcpp.BarcodeFormat, fmt))
    symbol = Image.fromarray(np.asarray(barcode.to_image(scale=3))).convert("RGB")
    page = Image.new("RGB", (symbol.width + 60, symbol.height + 60), "white")
    page.paste(symbol, (30, 30))
    return page


# 2. In-process --------------------------------------------------------------------------------
def in_process_rate(model: Path, batch: int, requests: int, tokens: int) -> dict[str, Any]:
    from runners.vision import VisionJob, VisionRunner

    runner = VisionRunner(model, quantization="none", device="cpu", max_new_tokens=tokens)
    runner.load()
    images = [photo(i) for i in range(batch)]
    for image in images:
        image.thumbnail((768, 768))  # what the route does before queueing
    runner.caption([VisionJob(images[0])])  # warm up
    started = time.perf_counter()
    done = 0
    while done < requests:
        runner.caption([VisionJob(image) for image in images])
        done += batch
    seconds = time.perf_counter() - started
    single_started = time.perf_counter()
    for image in images[:4]:
        runner.caption([VisionJob(image)])
    single = 4 / (time.perf_counter() - single_started)
    return {"batched_per_s": done / seconds, "batch": batch, "one_by_one_per_s": single}


def ocr_engines() -> dict[str, Any]:
    """Each engine on each rendered text: median seconds of 3 and whether every line is exact."""
    import numpy as np

    results: dict[str, Any] = {}
    for name, lines, code in (("en", ENGLISH, "eng"), ("pt", PORTUGUESE, "por")):
        image = text_image(lines)
        data = png(image)
        times = []
        text = ""
        for _ in range(3):
            started = time.perf_counter()
            text = subprocess.run(
                ["tesseract", "stdin", "stdout", "-l", code],
                input=data,
                capture_output=True,
                check=True,
            ).stdout.decode()
            times.append(time.perf_counter() - started)
        got = [line for line in text.splitlines() if line.strip()]
        results[f"tesseract/{name}"] = {"s": statistics.median(times), "exact": got == lines}
        try:
            from rapidocr import RapidOCR  # optional: pip install rapidocr onnxruntime
        except ImportError:
            continue
        engine = results.setdefault("_rapid", RapidOCR())
        array = np.array(image)
        engine(array)
        times = []
        out: Any = None
        for _ in range(3):
            started = time.perf_counter()
            out = engine(array)
            times.append(time.perf_counter() - started)
        results[f"rapidocr/{name}"] = {
            "s": statistics.median(times),
            "exact": list(out.txts) == lines,
        }
    results.pop("_rapid", None)
    return results


# 3. Served ------------------------------------------------------------------------------------
def serve(model: Path, home: Path, tokens: int, batch: int) -> Server:
    manifest = home / "models.toml"
    manifest.write_text(
        f'[vision.offline]\nname = "bench-vision"\nsource = "local"\npath = "{model}"\n'
        'quantization = "none"\n\n[ocr.offline]\nname = "ocr-tesseract-tessdata"\n'
        'source = "local"\npath = "/usr/share/tesseract-ocr/5/tessdata"\nquantization = "none"\n',
        encoding="utf-8",
    )
    env = {
        "BENTOML_HOME": str(home / "bentoml"),
        "BOTMODELS_HOME": str(home),
        "BOTMODELS_MANIFEST": str(manifest),
        "BOTMODELS_API_KEYS": KEY,
        "BOTMODELS_RUNNERS": "vision,ocr",
        "BOTMODELS_VISION_MAX_NEW_TOKENS": str(tokens),
        "BOTMODELS_VISION_MAX_BATCH_SIZE": str(batch),
    }
    os.environ.update({k: env[k] for k in ("BENTOML_HOME", "BOTMODELS_MANIFEST")})
    from scripts.import_models import main as import_main  # reads BENTOML_HOME on import

    if import_main(["offline", "--runners", "vision,ocr", "--manifest", str(manifest)]) != 0:
        raise SystemExit("model import failed")
    return Server(env)


async def post_many(
    url: str, path: str, bodies: list[bytes], concurrency: int, form: dict[str, str] | None = None
) -> tuple[float, list[float], int]:
    """(seconds, per-request latencies in ms, errors) for all bodies at `concurrency` in flight."""
    import httpx

    latencies: list[float] = []
    errors = 0
    queue = list(enumerate(bodies))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"X-API-Key": KEY}, timeout=600, limits=limits
    ) as client:

        async def worker() -> None:
            nonlocal errors
            while queue:
                _, body = queue.pop(0)
                started = time.perf_counter()
                response = await client.post(
                    path, files={"file": ("image.png", body, "image/png")}, data=form or {}
                )
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, errors


async def batch_sizes(url: str) -> tuple[float, float]:
    """(sum, count) of the caption API's adaptive batch sizes, from Prometheus /metrics."""
    import httpx

    async with httpx.AsyncClient() as client:
        text = (await client.get(url + "/metrics", timeout=10)).text
    return batch_histogram(text, "caption_batch")


async def served(url: str, requests: int) -> dict[str, Any]:
    images = [png(photo(100 + i)) for i in range(requests)]
    results: dict[str, Any] = {}
    # warm up: BentoML's dispatcher runs its first ~18 calls one by one while it learns the
    # API's latency, and batches well only after that
    await post_many(url, "/api/vision/describe", images[:24], 16)
    before = await batch_sizes(url)
    for concurrency in (1, 16):
        count = max(4, requests // 4) if concurrency == 1 else requests
        seconds, latencies, errors = await post_many(
            url, "/api/vision/describe", images[:count], concurrency
        )
        results[f"describe_c{concurrency}"] = {
            "per_s": (count - errors) / seconds,
            "p50_ms": statistics.median(latencies),
            "errors": errors,
            "requests": count,
        }
    after = await batch_sizes(url)
    calls = after[1] - before[1]
    results["mean_served_batch"] = (after[0] - before[0]) / calls if calls else None
    per_image: dict[str, Any] = {}
    cases = {
        "ocr_en": ("/api/vision/ocr", png(text_image(ENGLISH)), {"language": "eng"}),
        "ocr_pt": ("/api/vision/ocr", png(text_image(PORTUGUESE)), {"language": "por"}),
        "qrcode": ("/api/vision/qrcode", png(symbol_image("QRCode", "https://example.org")), {}),
        "barcode_ean13": ("/api/vision/barcode", png(symbol_image("EAN13", "4006381333931")), {}),
    }
    for name, (path, body, form) in cases.items():
        await post_many(url, path, [body], 1, form)
        _, latencies, errors = await post_many(url, path, [body] * 8, 1, form)
        per_image[name] = {"p50_ms": statistics.median(latencies), "errors": errors}
    results["per_image"] = per_image
    return results


# 4. Report ------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="base-random", help="base-random, tiny, or a folder")
    parser.add_argument("--requests", type=int, default=32, help="caption requests per run")
    parser.add_argument("--batch", type=int, default=16, help="in-process and served batch")
    parser.add_argument("--tokens", type=int, default=10, help="tokens per caption")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "vision.json")
    args = parser.parse_args()

    import torch

    report: dict[str, Any] = {"model": args.model, "tokens": args.tokens, "cpus": os.cpu_count()}
    report["torch_threads"] = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-vision-") as tmp:
        home = Path(tmp)
        model = build_model(args.model, home / "model")
        print("in-process…", flush=True)
        report["in_process"] = in_process_rate(model, args.batch, args.requests, args.tokens)
        print(json.dumps(report["in_process"]), flush=True)
        print("OCR engines…", flush=True)
        report["ocr_engines"] = ocr_engines()
        print(json.dumps(report["ocr_engines"]), flush=True)
        server = serve(model, home, args.tokens, args.batch)
        try:
            server.wait_ready(timeout=300)
            print("served…", flush=True)
            report["served"] = asyncio.run(served(server.url, args.requests))
        finally:
            server.stop()
    batched = report["in_process"]["batched_per_s"]
    c16 = report["served"]["describe_c16"]["per_s"]
    report["served_c16_vs_in_process"] = c16 / batched
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")

    served_ = report["served"]
    print(f"\n| captions/s ({args.model}, {args.tokens} tokens) | value |\n|---|---|")
    print(f"| in-process, one by one | {report['in_process']['one_by_one_per_s']:.2f} |")
    print(f"| in-process, batch {args.batch} | {batched:.2f} |")
    print(f"| served, concurrency 1 | {served_['describe_c1']['per_s']:.2f} |")
    print(f"| served, concurrency 16 | {c16:.2f} ({100 * c16 / batched:.0f} % of in-process) |")
    print(f"| mean served batch (c1 + c16 runs) | {served_['mean_served_batch']} |")
    print("\n| per image (served, p50) | ms |\n|---|---|")
    for name, item in served_["per_image"].items():
        print(f"| {name} | {item['p50_ms']:.0f} |")
    print("\n| OCR engine / text | s (median of 3) | every line exact |\n|---|---|---|")
    for name, item in report["ocr_engines"].items():
        print(f"| {name} | {item['s']:.2f} | {item['exact']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
