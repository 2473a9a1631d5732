"""/api/image/generate, /api/video/generate, /v1/images/generations and the jobs routes through
the real ASGI app and middleware, with the tiny random pipelines (synthetic: outputs are noise,
so tests assert sizes, formats, frame counts, determinism and the HTTP contract, not content)."""

from __future__ import annotations

import base64
import io
import re
import time
from datetime import datetime
from typing import Any

import pytest
from PIL import Image

from tests.conftest import KEY, auth
from tests.test_http_embeddings import assert_error

IMAGE = {"prompt": "a red square", "steps": 2, "width": 64, "height": 64, "guidance_scale": 5.0}
VIDEO = {"prompt": "a paper boat", "num_frames": 6, "fps": 12, "steps": 2}
NAME = re.compile(r"/outputs/(images|videos)/[0-9a-f]{32}\.(png|mp4)")


def _png(client: Any, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    response = client.post("/api/image/generate", json=body, headers=auth())
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    file = client.get(result["file_path"])  # no key: botserver's bots fetch it bare
    assert file.status_code == 200
    assert file.headers["content-type"] == "image/png"
    return result, file.content


def test_image_generate_writes_a_png_of_the_requested_size(client: Any) -> None:
    result, payload = _png(client, {**IMAGE, "width": 96, "height": 64, "seed": 7})
    assert result["status"] == "completed"
    assert result["error"] is None
    assert NAME.fullmatch(result["file_path"])
    assert result["file_path"].endswith(".png")
    assert result["generation_time"] > 0
    assert result["seed"] == 7
    datetime.fromisoformat(result["timestamp"])
    with Image.open(io.BytesIO(payload)) as image:
        assert image.format == "PNG"
        assert image.size == (96, 64)
        assert image.mode == "RGB"
