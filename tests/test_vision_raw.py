"""Every vision upload route takes the raw body (`application/octet-stream`) as well as multipart
field `file`; a raw body's other fields come from the query string, and a form field wins."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from tests.conftest import auth
from tests.helpers import assert_error
from tests.vision_media import png_bytes, symbol_image, video_bytes

RAW = {**auth(), "content-type": "application/octet-stream"}


def _photo() -> bytes:
    image = Image.new("RGB", (120, 90), (30, 120, 200))
    image.paste(Image.new("RGB", (40, 40), (250, 200, 0)), (40, 25))
    return png_bytes(image)


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/api/vision/describe", {"description", "confidence"}),
        ("/api/vision/vqa?question=what%20colour", {"description", "answer", "question"}),
        ("/api/vision/barcode", {"success", "barcodes", "count"}),
        ("/api/vision/analyze", {"success", "description", "text", "codes", "metadata"}),
        ("/api/vision/qrcode", {"success", "data", "codes", "count"}),
        ("/api/vision/ocr", {"success", "text", "language"}),
        ("/api/image/describe", {"description", "confidence"}),
    ],
)
def test_image_routes_take_the_raw_body(client: Any, path: str, fields: set[str]) -> None:
    response = client.post(path, content=_photo(), headers=RAW)
    assert response.status_code == 200, response.text
    assert fields <= set(response.json())


@pytest.mark.parametrize(
    "path", ["/api/vision/describe-video", "/api/vision/describe_video", "/api/video/describe"]
)
def test_describe_video_takes_the_raw_body_and_num_frames_from_the_query(
    client: Any, path: str
) -> None:
    video = video_bytes("mp4", "libx264", frames=12)
    response = client.post(path, content=video, headers=RAW)
    assert response.status_code == 200, response.text
    assert response.json()["frame_count"] == 8  # the default
    assert (
        client.post(f"{path}?num_frames=3", content=video, headers=RAW).json()["frame_count"] == 3
    )
    # any declared type is ignored but JSON and forms: the bytes are sniffed
    typed = client.post(path, content=video, headers={**auth(), "content-type": "video/mp4"})
    assert typed.status_code == 200, typed.text
    bad = client.post(f"{path}?num_frames=0", content=video, headers=RAW)
    assert assert_error(bad, 400)["param"] == "num_frames"


def test_raw_fields_from_the_query_and_the_form_wins(client: Any) -> None:
    prompted = client.post(
        "/api/vision/describe?prompt=a%20photo%20of", content=_photo(), headers=RAW
    )
    assert prompted.json()["description"].startswith("a photo of")
    answer = client.post("/api/vision/vqa?question=is%20it%20blue", content=_photo(), headers=RAW)
    assert answer.json()["question"] == "is it blue"
    both = client.post(
        "/api/vision/vqa?question=from%20the%20query",
        headers=auth(),
        data={"question": "from the form"},
        files={"file": ("image.png", _photo(), "image/png")},
    )
    assert both.json()["question"] == "from the form"


def test_raw_vqa_without_a_question_says_where_to_put_it(client: Any) -> None:
    error = assert_error(client.post("/api/vision/vqa", content=_photo(), headers=RAW), 400)
    assert "?question=" in error["message"]


def test_raw_barcode_reads_the_code(client: Any) -> None:
    image = png_bytes(symbol_image("Code128", "BOT-12345"))
    body = client.post("/api/vision/barcode", content=image, headers=RAW).json()
    assert body["success"] is True
    assert body["barcodes"][0]["data"] == "BOT-12345"


@pytest.mark.parametrize("path", ["/api/vision/describe", "/api/vision/describe-video"])
def test_non_media_raw_bodies_are_415(client: Any, path: str) -> None:
    assert_error(client.post(path, content=b"%PDF-1.4 not media", headers=RAW), 415)
