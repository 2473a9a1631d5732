"""Captions, visual questions, video description and analyze through the real ASGI app with the
offline profile's tiny random BLIP models (synthetic: shapes, types and fields, not content),
plus auth and every kind of bad upload on every vision route."""

from __future__ import annotations

import time
from typing import Any

import pytest
from PIL import Image

from tests.conftest import auth
from tests.helpers import assert_error
from tests.vision_media import png_bomb, png_bytes, symbol_image, text_image, video_bytes

ROUTES = [
    "/api/vision/describe",
    "/api/vision/describe-video",
    "/api/vision/describe_video",
    "/api/vision/vqa",
    "/api/vision/qrcode",
    "/api/vision/barcode",
    "/api/vision/ocr",
    "/ocr",
    "/api/vision/analyze",
]
IMAGE_ROUTES = [r for r in ROUTES if "video" not in r]


def _file(data: bytes, name: str = "image.png", kind: str = "image/png") -> dict[str, Any]:
    return {"files": {"file": (name, data, kind)}}


def _photo() -> bytes:
    image = Image.new("RGB", (120, 90), (30, 120, 200))
    image.paste(Image.new("RGB", (40, 40), (250, 200, 0)), (40, 25))
    return png_bytes(image)


def test_describe_shape(client: Any) -> None:
    response = client.post("/api/vision/describe", headers=auth(), **_file(_photo()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"description", "confidence"}
    assert isinstance(body["description"], str)
    assert body["description"]
    assert 0.0 < body["confidence"] <= 1.0
    again = client.post("/api/vision/describe", headers=auth(), **_file(_photo())).json()
    assert again == body  # greedy decoding: deterministic


def test_describe_prompt_conditions_the_caption(client: Any) -> None:
    body = client.post(
        "/api/vision/describe", headers=auth(), data={"prompt": "a photo of"}, **_file(_photo())
    ).json()
    # BLIP continues the prompt: the caption starts with it (tiny vocabulary has these words)
    assert body["description"].startswith("a photo of")


def test_vqa_shape(client: Any) -> None:
    response = client.post(
        "/api/vision/vqa",
        headers=auth(),
        data={"question": "what color is the car?"},
        **_file(_photo()),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"description", "answer", "question", "confidence"}
    assert body["description"] == body["answer"]
    assert isinstance(body["answer"], str)
    assert body["question"] == "what color is the car?"
    assert 0.0 < body["confidence"] <= 1.0


@pytest.mark.parametrize(
    ("container", "codec"),
    [
        ("mp4", "libx264"),
        ("webm", "libvpx"),
        ("mov", "mpeg4"),
        ("matroska", "mpeg4"),
        ("avi", "mjpeg"),
    ],
)
def test_describe_video_containers(client: Any, container: str, codec: str) -> None:
    data = video_bytes(container, codec, frames=12)
    response = client.post(
        "/api/vision/describe-video",
        headers=auth(),
        data={"num_frames": "4"},
        **_file(data, "video.mp4", "video/mp4"),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"description", "frame_count", "confidence", "frame_captions"}
    assert body["frame_count"] == 4
    assert len(body["frame_captions"]) == 4
    assert isinstance(body["description"], str)
    assert body["description"]
    assert 0.0 < body["confidence"] <= 1.0


def test_video_with_fewer_frames_than_asked_and_the_default(client: Any) -> None:
    data = video_bytes("mp4", "libx264", frames=3)
    short = client.post(
        "/api/vision/describe_video", headers=auth(), data={"num_frames": "8"}, **_file(data)
    ).json()
    assert short["frame_count"] == 3
    longer = video_bytes("webm", "libvpx", frames=20)
    default = client.post("/api/vision/describe_video", headers=auth(), **_file(longer)).json()
    assert default["frame_count"] == 8  # botserver's default num_frames


def test_analyze_runs_all_three(client: Any) -> None:
    page = Image.new("RGB", (900, 260), "white")
    page.paste(text_image(["Invoice 2024-117"]), (0, 0))
    page.paste(symbol_image("QRCode", "pay me"), (600, 20))
    response = client.post("/api/vision/analyze", headers=auth(), **_file(png_bytes(page)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"success", "description", "text", "codes", "metadata", "error"}
    assert body["success"] is True
    assert body["error"] is None
    assert isinstance(body["description"], str)
    assert body["text"].split("\n")[0] == "Invoice 2024-117"
    assert [c["data"] for c in body["codes"]] == ["pay me"]
    meta = body["metadata"]
    assert (meta["width"], meta["height"], meta["format"]) == (900, 260, "PNG")
    assert meta["code_count"] == 1
    assert meta["word_count"] >= 2


# --- auth -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": ""}, {"X-API-Key": "wrong-key-0123456789"}])
def test_missing_or_wrong_key_is_401(client: Any, path: str, headers: dict[str, str]) -> None:
    response = client.post(path, headers=headers, **_file(_photo()))
    assert assert_error(response, 401)["type"] == "authentication_error"


def test_batch_routes_need_a_key_too(client: Any) -> None:
    for path in ("/runners/vision/caption", "/runners/vqa/answer", "/runners/ocr/recognize"):
        assert_error(client.post(path, json={"items": []}), 401)


# --- bad input --------------------------------------------------------------------------------
def _truncated_png() -> bytes:
    data = png_bytes(Image.new("RGB", (400, 300), (10, 200, 30)))
    return data[: len(data) // 2]


@pytest.mark.parametrize("path", IMAGE_ROUTES)
@pytest.mark.parametrize(
    ("data", "status", "needle"),
    [
        (b"", 400, "empty"),
        (b"%PDF-1.4 this is not an image at all", 415, "not an image"),
        (b"\x00" * 5000, 415, "not an image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", 400, ""),  # a PNG signature and nothing else
        ("truncated", 400, "truncated"),
        ("bomb", 400, "pixels"),
    ],
    ids=["empty", "pdf", "zeros", "signature-only", "truncated", "bomb"],
)
def test_bad_images_are_4xx(client: Any, path: str, data: Any, status: int, needle: str) -> None:
    if data == "truncated":
        data = _truncated_png()
    elif data == "bomb":
        data = png_bomb()
    form = {"question": "what?"} if path.endswith("vqa") else {}
    started = time.perf_counter()
    response = client.post(path, headers=auth(), data=form, **_file(data))
    elapsed = time.perf_counter() - started
    error = assert_error(response, status)
    assert needle in error["message"]
    assert error["param"] == "file"
    assert elapsed < 10  # answered from the header, never decoded


@pytest.mark.parametrize("path", ["/api/vision/describe-video", "/api/vision/describe_video"])
@pytest.mark.parametrize(
    ("data", "status"),
    [(b"", 400), (b"just some text, not a video", 415), ("png", 415), ("truncated", 400)],
    ids=["empty", "text", "image", "truncated"],
)
def test_bad_videos_are_4xx(client: Any, path: str, data: Any, status: int) -> None:
    if data == "png":
        data = _photo()
    elif data == "truncated":
        whole = video_bytes("mp4", "libx264", frames=12)
        data = whole[: len(whole) // 3]
    error = assert_error(client.post(path, headers=auth(), **_file(data)), status)
    assert error["param"] == "file"


@pytest.mark.parametrize(
    ("value", "needle"),
    [("0", "between 1 and 32"), ("33", "between 1 and 32"), ("many", "integer")],
)
def test_bad_num_frames_is_400(client: Any, value: str, needle: str) -> None:
    data = video_bytes("mp4", "libx264", frames=3)
    response = client.post(
        "/api/vision/describe-video", headers=auth(), data={"num_frames": value}, **_file(data)
    )
    error = assert_error(response, 400)
    assert needle in error["message"]
    assert error["param"] == "num_frames"


def test_question_and_prompt_limits(client: Any) -> None:
    too_long = "why " * 200  # 800 characters, the limit is 500
    vqa = client.post(
        "/api/vision/vqa", headers=auth(), data={"question": too_long}, **_file(_photo())
    )
    assert "500" in assert_error(vqa, 400)["message"]
    missing = client.post("/api/vision/vqa", headers=auth(), **_file(_photo()))
    assert assert_error(missing, 400)["param"] == "question"
    blank = client.post(
        "/api/vision/vqa", headers=auth(), data={"question": "   "}, **_file(_photo())
    )
    assert_error(blank, 400)
    describe = client.post(
        "/api/vision/describe", headers=auth(), data={"prompt": too_long}, **_file(_photo())
    )
    assert assert_error(describe, 400)["param"] == "prompt"


@pytest.mark.parametrize("path", ROUTES)
def test_over_the_upload_limit_is_413(client: Any, path: str) -> None:
    from botmodels.config import get_settings

    big = b"\x89PNG" + b"\0" * (get_settings().max_upload_bytes + 10)
    response = client.post(path, headers=auth(), **_file(big))
    assert assert_error(response, 413)["code"] == "payload_too_large"


@pytest.mark.parametrize("path", ["/api/vision/qrcode", "/api/vision/ocr", "/ocr"])
def test_raw_body_over_the_limit_is_413(client: Any, path: str) -> None:
    from botmodels.config import get_settings

    big = b"\0" * (get_settings().max_upload_bytes + 1)
    response = client.post(
        path, content=big, headers={**auth(), "content-type": "application/octet-stream"}
    )
    assert_error(response, 413)


def test_wrong_body_shapes(client: Any) -> None:
    # multipart without `file`
    response = client.post(
        "/api/vision/describe", headers=auth(), files={"image": ("x.png", _photo(), "image/png")}
    )
    assert "`file`" in assert_error(response, 400)["message"]
    # a body that is neither multipart nor a raw file
    raw = client.post(
        "/api/vision/describe", content=_photo(), headers={**auth(), "content-type": "text/plain"}
    )
    assert "multipart" in assert_error(raw, 415)["message"]
    # JSON anywhere
    assert_error(client.post("/api/vision/qrcode", json={"file": "x"}, headers=auth()), 415)
    # a broken multipart body
    broken = client.post(
        "/api/vision/barcode",
        content=b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
        headers={**auth(), "content-type": "multipart/form-data; boundary=xyz"},
    )
    assert broken.status_code == 400
    assert_error(broken, 400)
    # GET is not a route
    assert_error(client.get("/api/vision/describe", headers=auth()), 405)


def test_still_serving_after_bad_inputs(client: Any) -> None:
    for data in (b"", png_bomb(), _truncated_png()):
        client.post("/api/vision/describe", headers=auth(), **_file(data))
    ok = client.post(
        "/api/vision/qrcode", headers=auth(), **_file(png_bytes(symbol_image("QRCode", "alive")))
    )
    assert ok.json()["data"] == "alive"


def test_batch_routes_over_http(client: Any) -> None:
    """What a botmodels configured with BOTMODELS_VISION_URL / _OCR_URL sends to this one."""
    import base64

    image = base64.b64encode(_photo()).decode()
    captions = client.post(
        "/runners/vision/caption",
        json={
            "items": [{"image_png_b64": image}, {"image_png_b64": image, "prompt": "a photo of"}]
        },
        headers=auth(),
    )
    assert captions.status_code == 200, captions.text
    first, second = captions.json()
    assert set(first) == {"text", "confidence"}
    assert second["text"].startswith("a photo of")
    words = base64.b64encode(png_bytes(text_image(["Olá mundo"]))).decode()
    ocr = client.post(
        "/runners/ocr/recognize",
        json={"items": [{"image_png_b64": words, "language": "pt"}]},
        headers=auth(),
    )
    assert ocr.status_code == 200, ocr.text
    assert ocr.json()[0]["text"] == "Olá mundo"
    assert ocr.json()[0]["language"] == "por"
    bad = client.post(
        "/runners/ocr/recognize",
        json={"items": [{"image_png_b64": words, "language": "xx"}]},
        headers=auth(),
    )
    assert "xx" in assert_error(bad, 400)["message"]


def test_models_and_health_list_the_vision_runners(client: Any) -> None:
    models = {m["runner"]: m for m in client.get("/api/models", headers=auth()).json()["models"]}
    assert models["vision"]["synthetic"] is True  # tiny random BLIP: no package ships BLIP
    assert models["vision"]["store_tag"].startswith("vision-tiny-blip-caption:")
    assert models["vqa"]["synthetic"] is True
    assert models["ocr"]["synthetic"] is False
    assert models["ocr"]["source"] == "local:/usr/share/tesseract-ocr/5/tessdata"
    assert all(models[k]["loaded"] for k in ("vision", "vqa", "ocr"))
    health = client.get("/api/health").json()
    for kind in ("vision", "vqa", "ocr"):
        assert health["runners"][kind] == {"state": "ready", "healthy": True}
