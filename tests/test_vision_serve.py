"""Captions are batched across concurrent requests under a real `bentoml serve` (a TestClient
never batches): BentoML's own histogram of batch sizes for `caption_batch` must show batches."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from scripts.serverproc import batch_histogram
from tests.conftest import KEY, Server


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (shade, 100, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


async def _describe_all(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/vision/describe",
                    files={"file": ("image.png", _png(i * 7 % 256), "image/png")},
                )
                for i in range(n)
            )
        )
    return [r.status_code for r in responses]


@pytest.mark.serve
def test_concurrent_captions_are_batched(offline_store: None) -> None:
    server = Server({"BOTMODELS_RUNNERS": "vision", "BOTMODELS_PROFILE": "offline"})
    try:
        server.wait_ready()
        # BentoML's dispatcher runs its first ~18 calls one by one while it learns the latency
        assert asyncio.run(_describe_all(server.url, 24)) == [200] * 24
        before = batch_histogram(httpx.get(server.url + "/metrics").text, "caption_batch")
        assert asyncio.run(_describe_all(server.url, 32)) == [200] * 32
        after = batch_histogram(httpx.get(server.url + "/metrics").text, "caption_batch")
    finally:
        server.stop()
    items, calls = after[0] - before[0], after[1] - before[1]
    assert items == 32
    assert calls < 32, f"32 concurrent captions ran in {calls} model calls: no batching"


@pytest.mark.serve
def test_one_smolvlm_serves_captions_questions_and_video(tmp_path: Path) -> None:
    """A tiny SmolVLM named by both the vision and the vqa entries (as the cpu and gpu profiles
    do): imported once, loaded once, and every caption route answers through it."""
    from runners.vision import build_tiny_smolvlm
    from scripts.import_models import main
    from tests.conftest import ROOT
    from tests.vision_media import video_bytes

    build_tiny_smolvlm(tmp_path / "smolvlm")
    manifest = (ROOT / "models.toml").read_text()
    entry = f'name = "vision-tiny-smolvlm"\nsource = "local"\npath = "{tmp_path / "smolvlm"}"'
    for kind, name in (("vision", "vision-tiny-blip-caption"), ("vqa", "vqa-tiny-blip")):
        old = f'[{kind}.offline]\nname = "{name}"\nsource = "tiny"'
        assert old in manifest
        manifest = manifest.replace(old, f"[{kind}.offline]\n{entry}")
    (tmp_path / "models.toml").write_text(manifest)
    args = ["offline", "--runners", "vision,vqa", "--manifest", str(tmp_path / "models.toml")]
    assert main(args) == 0
    server = Server(
        {
            "BOTMODELS_MANIFEST": str(tmp_path / "models.toml"),
            "BOTMODELS_RUNNERS": "vision,vqa",
            "BOTMODELS_PROFILE": "offline",
        }
    )
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=120) as c:
            models = {m["runner"]: m for m in c.get("/api/models").json()["models"]}
            assert models["vision"]["store_tag"] == models["vqa"]["store_tag"]
            assert models["vision"]["store_tag"].startswith("vision-tiny-smolvlm:")
            picture = {"file": ("image.png", _png(40), "image/png")}
            caption = c.post("/api/vision/describe", files=picture, data={"prompt": "a photo of"})
            assert caption.status_code == 200, caption.text
            assert caption.json()["description"].startswith("a photo of")
            assert 0 < caption.json()["confidence"] <= 1
            answer = c.post("/api/vision/vqa", files=picture, data={"question": "what <image>?"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["question"] == "what <image>?"
            clip = {"file": ("clip.mp4", video_bytes("mp4", "libx264", frames=6), "video/mp4")}
            video = c.post("/api/vision/describe-video", files=clip, data={"num_frames": "3"})
            assert video.status_code == 200, video.text
            assert video.json()["frame_count"] == 3
            assert len(video.json()["frame_captions"]) == 3
    finally:
        server.stop()
