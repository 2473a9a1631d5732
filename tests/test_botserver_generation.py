"""botserver replay: the IMAGE and VIDEO keywords, built exactly as botserver's Rust client builds
them, against a real `bentoml serve` of the `tiny` profile (random pipelines whose manifest
ranges are Turbo's: guidance 0, 1-4 steps), and read the way botserver reads the answer.

The client is `BotModelsClient` in `botserver/crates/botmultimodal/src/multimodal.rs`
(generalbots/generalbots, 2026-05-19), the same code as `src/multimodal/mod.rs`
(GeneralBots/botserver, 2026-04-18), at the same line numbers:
  * one reqwest client per keyword call, `create_tls_client(Some(300))` (line 237; 236 in
    GeneralBots/botserver): a 300 s timeout on the whole request, whatever the keyword waits
    (IMAGE 300 s, VIDEO 600 s: GeneralBots/botserver `src/basic/keywords/multimodal.rs:48, 115`);
  * `POST {base_url}/api/image/generate` with `.header("X-API-Key", api_key).json(&request)`:
    `Content-Type: application/json`, the key from the bot's `botmodels-api-key` (default "";
    keyless callers are item 1 of issue 12, not this file's), fields in struct order with `None`
    skipped (`skip_serializing_if`): `prompt`, `steps` (`image-generator-steps`, default 4),
    `width`, `height` (512; 64 here, below), `guidance_scale` **7.5 always** (line 274), no `seed`;
  * `POST {base_url}/api/video/generate`: `prompt`, `num_frames` (`video-generator-frames`, 24),
    `fps` (8), `steps` **50 always** (line 323), no `seed`, no size, no guidance;
  * the answer: any non-2xx is an error with the body's text (lines 286-290); else
    `GenerationResponse {status, file_path, generation_time, error}` (lines 196-202; serde
    ignores the other fields), and the keyword's value is `base_url + file_path` when `status`
    is "completed" (lines 294-299), else `error` or "Unknown error".
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import KEY, Server

pytestmark = pytest.mark.serve

# multimodal.rs `ImageGeneratorConfig` / `VideoGeneratorConfig` defaults (lines 74-156), but
# for the image size: the bot's `image-generator-width`/`-height` set to 64, since the default
# 512 (the same body, other numbers) costs the tiny pipeline (its VAE scales by 2, not 8)
# minutes of a shared CPU.
IMAGE_STEPS, IMAGE_WIDTH, IMAGE_HEIGHT = 4, 64, 64
VIDEO_FRAMES, VIDEO_FPS = 24, 8
BOTSERVER_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def server(offline_store: None) -> Iterator[Server]:
    srv = Server(
        {
            "BOTMODELS_RUNNERS": "image,video",
            "BOTMODELS_PROFILE": "tiny",
            "BOTMODELS_THREADS": "1",
            "BOTMODELS_HOME": tempfile.mkdtemp(prefix="botmodels-serve-botserver-gen-"),
        }
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@dataclass
class Keyword:
    """What the keyword hands the bot script (the URL), and what the test inspects."""

    url: str
    answer: dict[str, Any]


def _botserver_post(base_url: str, path: str, request: dict[str, Any]) -> Keyword:
    """`generate_image` / `generate_video`: the request as reqwest sends it, the answer read as
    serde reads it into `GenerationResponse`."""
    # serde_json: struct fields in order, `None` skipped, no spaces.
    body = json.dumps({k: v for k, v in request.items() if v is not None}, separators=(",", ":"))
    with httpx.Client(timeout=BOTSERVER_TIMEOUT_S) as client:
        response = client.post(
            f"{base_url}{path}",
            content=body.encode(),
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )
    assert response.is_success, f"{path} failed: {response.text}"  # lines 286-290
    answer: dict[str, Any] = response.json()  # `response.json::<GenerationResponse>()`
    assert isinstance(answer["status"], str)
    assert answer.get("file_path") is None or isinstance(answer["file_path"], str)
    assert answer.get("generation_time") is None or isinstance(answer["generation_time"], float)
    assert answer.get("error") is None or isinstance(answer["error"], str)
    assert answer["status"] == "completed", answer.get("error") or "Unknown error"
    assert answer["file_path"] is not None
    return Keyword(url=f"{base_url}{answer['file_path']}", answer=answer)  # line 296 / 345


def test_image_keyword_guidance_7_5_runs_as_the_turbo_model_wants(server: Server) -> None:
    """IMAGE: `multimodal.rs:258-306` (guidance_scale 7.5 at line 274). The model's range
    (guidance 0, 1-4 steps) fits the 7.5 to 0 instead of refusing it or doubling the UNet's work,
    and the answer says so; the URL botserver builds serves the PNG without a key."""
    image = _botserver_post(
        server.url,
        "/api/image/generate",
        {
            "prompt": "a lighthouse at dusk",
            "steps": IMAGE_STEPS,
            "width": IMAGE_WIDTH,
            "height": IMAGE_HEIGHT,
            "guidance_scale": 7.5,
            "seed": None,
        },
    )
    assert (image.answer["guidance_scale"], image.answer["steps"]) == (0.0, 4)
    assert (image.answer["width"], image.answer["height"]) == (IMAGE_WIDTH, IMAGE_HEIGHT)
    png = httpx.get(image.url, timeout=30)  # the bot script fetches the URL bare
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")


def test_image_keyword_with_more_steps_than_the_model_takes(server: Server) -> None:
    """IMAGE with the bot's `image-generator-steps` set past the model's range
    (`multimodal.rs:79-83, 271`): fitted to the model's 4, not refused."""
    image = _botserver_post(
        server.url,
        "/api/image/generate",
        {"prompt": "x", "steps": 30, "width": 64, "height": 64, "guidance_scale": 7.5},
    )
    assert (image.answer["steps"], image.answer["guidance_scale"]) == (4, 0.0)


def test_video_keyword_50_steps_run_in_the_model_range(server: Server) -> None:
    """VIDEO: `multimodal.rs:308-355` (steps 50 at line 323, no guidance, no size). The 50 steps
    are fitted to the model's range (4 here; ModelScope's 25 on the cpu and gpu profiles), the
    default guidance into its range too; 24 frames at 8 fps at the model's native size."""
    video = _botserver_post(
        server.url,
        "/api/video/generate",
        {
            "prompt": "a paper boat on a river",
            "num_frames": VIDEO_FRAMES,
            "fps": VIDEO_FPS,
            "steps": 50,
            "seed": None,
        },
    )
    assert (video.answer["steps"], video.answer["guidance_scale"]) == (4, 0.0)
    assert (video.answer["num_frames"], video.answer["fps"]) == (VIDEO_FRAMES, VIDEO_FPS)
    mp4 = httpx.get(video.url, timeout=30)
    assert mp4.status_code == 200
    assert mp4.headers["content-type"] == "video/mp4"


def test_models_show_the_ranges_the_keywords_were_fitted_to(server: Server) -> None:
    models = httpx.get(f"{server.url}/api/models", headers={"X-API-Key": KEY}, timeout=30).json()[
        "models"
    ]
    ranges = {m["runner"]: (m["guidance_range"], m["steps_range"]) for m in models}
    assert ranges == {"image": ([0.0, 0.0], [1, 4]), "video": ([0.0, 0.0], [1, 4])}
