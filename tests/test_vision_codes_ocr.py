"""QR codes, barcodes and OCR through the real ASGI app: symbols generated here, text rendered
here, read back through HTTP with the real engines (zxing-cpp, tesseract)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import auth
from tests.helpers import assert_error
from tests.vision_media import png_bytes, symbol_image, text_image

# (zxing writer format, text written, type reported, text read back)
SYMBOLS = [
    (
        "QRCode",
        "https://pragmatismo.com.br/?q=ação",
        "QRCODE",
        "https://pragmatismo.com.br/?q=ação",
    ),
    ("DataMatrix", "DM-2024-117", "DATAMATRIX", "DM-2024-117"),
    ("PDF417", "PDF417 shipping label 42", "PDF417", "PDF417 shipping label 42"),
    ("EAN13", "4006381333931", "EAN13", "4006381333931"),
    ("EAN8", "96385074", "EAN8", "96385074"),
    ("UPCA", "036000291452", "UPCA", "036000291452"),
    ("UPCE", "01234565", "UPCE", "01234565"),
    ("Code128", "Code128-abc/42", "CODE128", "Code128-abc/42"),
    ("Code39", "CODE39 TEST", "CODE39", "CODE39 TEST"),
    ("ITF", "12345678", "ITF", "12345678"),
    ("Codabar", "A40156B", "CODABAR", "A40156B"),
]


def _multipart(data: bytes) -> dict[str, Any]:
    # botserver names every upload image.png / image/png, whatever it holds
    return {"files": {"file": ("image.png", data, "image/png")}}


@pytest.mark.parametrize(("fmt", "text", "kind", "read"), SYMBOLS, ids=[s[0] for s in SYMBOLS])
def test_barcode_round_trip(client: Any, fmt: str, text: str, kind: str, read: str) -> None:
    image = symbol_image(fmt, text)
    response = client.post("/api/vision/barcode", headers=auth(), **_multipart(png_bytes(image)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["error"] is None
    assert body["count"] == 1
    (code,) = body["barcodes"]
    assert (code["type"], code["data"]) == (kind, read)
    rect = code["rect"]
    assert set(rect) == {"left", "top", "width", "height"}
    # pasted 30 px in from the page's corner, plus the writer's own quiet zone
    assert 28 <= rect["left"] <= 75
    assert rect["width"] > 0
    assert rect["left"] + rect["width"] <= image.width
    assert rect["top"] + rect["height"] <= image.height


def test_qrcode_multipart_and_raw_octet_stream_agree(client: Any) -> None:
    data = png_bytes(symbol_image("QRCode", "WIFI:S:botnet;T:WPA;P:secret;;"))
    multipart = client.post("/api/vision/qrcode", headers=auth(), **_multipart(data))
    raw = client.post(
        "/api/vision/qrcode",
        content=data,
        headers={**auth(), "content-type": "application/octet-stream"},
    )
    for response in (multipart, raw):
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"success", "data", "codes", "count", "error"}
        assert body["success"] is True
        assert body["data"] == "WIFI:S:botnet;T:WPA;P:secret;;"
        assert body["count"] == 1
        (code,) = body["codes"]
        assert code["type"] == "QRCODE"
        assert len(code["polygon"]) == 4
        assert set(code["rect"]) == {"left", "top", "width", "height"}
    assert multipart.json() == raw.json()


def test_qrcode_reads_several_and_ignores_barcodes(client: Any) -> None:
    from PIL import Image

    page = Image.new("RGB", (1300, 300), "white")
    page.paste(symbol_image("QRCode", "first"), (0, 0))
    page.paste(symbol_image("QRCode", "second"), (300, 0))
    page.paste(symbol_image("Code128", "not a qr"), (560, 40))
    body = client.post("/api/vision/qrcode", headers=auth(), **_multipart(png_bytes(page))).json()
    assert body["count"] == 2
    assert sorted(c["data"] for c in body["codes"]) == ["first", "second"]
    assert body["data"] in ("first", "second")
    everything = client.post(
        "/api/vision/barcode", headers=auth(), **_multipart(png_bytes(page))
    ).json()
    assert sorted(c["data"] for c in everything["barcodes"]) == ["first", "not a qr", "second"]


def test_jpeg_sent_as_image_png_is_sniffed(client: Any) -> None:
    data = png_bytes(symbol_image("QRCode", "jpeg inside", scale=6), fmt="JPEG")
    assert data[:3] == b"\xff\xd8\xff"
    body = client.post("/api/vision/qrcode", headers=auth(), **_multipart(data)).json()
    assert body["data"] == "jpeg inside"


def test_no_code_is_a_normal_200_with_success_false(client: Any) -> None:
    blank = png_bytes(text_image(["no symbols here"]))
    qr = client.post("/api/vision/qrcode", headers=auth(), **_multipart(blank))
    assert qr.status_code == 200
    assert qr.json() == {
        "success": False,
        "data": None,
        "codes": [],
        "count": 0,
        "error": "No QR code found in image",
    }
    bar = client.post("/api/vision/barcode", headers=auth(), **_multipart(blank))
    assert bar.status_code == 200
    assert bar.json()["success"] is False
    assert bar.json()["count"] == 0
    assert bar.json()["barcodes"] == []


# --- OCR ---------------------------------------------------------------------------------------
ENGLISH = ["Invoice 2024-117", "Total: 42.50 EUR", "The quick brown fox jumps over the lazy dog"]
PORTUGUESE = ["Atenção: a reunião começa às nove", "Não há ação sem coração, João"]


def _words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize(
    ("lines", "language", "expected_language"),
    [(ENGLISH, "eng", "eng"), (PORTUGUESE, "por", "por"), (PORTUGUESE, "pt", "por")],
)
def test_ocr_reads_rendered_text_exactly(
    client: Any, lines: list[str], language: str, expected_language: str
) -> None:
    data = png_bytes(text_image(lines))
    response = client.post(
        "/api/vision/ocr", headers=auth(), data={"language": language}, **_multipart(data)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"success", "text", "confidence", "language", "word_count", "error"}
    assert body["success"] is True
    assert body["error"] is None
    assert body["language"] == expected_language
    assert _words(body["text"]) == _words(" ".join(lines))
    assert body["text"].split("\n")[0] == lines[0]
    assert body["word_count"] == len(_words(" ".join(lines)))
    assert 0.8 < body["confidence"] <= 1.0


def test_ocr_confidence_is_the_engines_not_a_constant(client: Any) -> None:
    clean = png_bytes(text_image(["Clear printed words"], size=40))
    from PIL import ImageFilter

    blurred_image = text_image(["Clear printed words"], size=14).filter(ImageFilter.GaussianBlur(1))
    blurred = png_bytes(blurred_image)
    high = client.post("/api/vision/ocr", headers=auth(), **_multipart(clean)).json()
    low = client.post("/api/vision/ocr", headers=auth(), **_multipart(blurred)).json()
    assert high["confidence"] > low["confidence"]
    empty = client.post(
        "/api/vision/ocr", headers=auth(), **_multipart(png_bytes(text_image([" "])))
    ).json()
    assert (empty["text"], empty["word_count"], empty["confidence"]) == ("", 0, 0.0)


@pytest.mark.parametrize("path", ["/api/vision/ocr", "/ocr"])
def test_ocr_raw_body_and_older_route(client: Any, path: str) -> None:
    data = png_bytes(text_image(["Não há ação sem coração"]))
    response = client.post(
        f"{path}?language=por",
        content=data,
        headers={**auth(), "content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "Não há ação sem coração"
    assert response.json()["language"] == "por"
    multipart = client.post(
        path, headers=auth(), data={"language": "por"}, **_multipart(data)
    ).json()
    assert multipart == response.json()


def test_ocr_default_language_is_english(client: Any) -> None:
    body = client.post(
        "/api/vision/ocr", headers=auth(), **_multipart(png_bytes(text_image(ENGLISH[:1])))
    ).json()
    assert body["language"] == "eng"
    assert body["text"] == ENGLISH[0]


@pytest.mark.parametrize(
    ("language", "needle"),
    [
        ("klingon", "not a tesseract language code"),
        ("xx", "not a tesseract language code"),
        ("deu", "not installed"),
        ("eng+", "malformed"),
        ("e" * 65, "characters long"),
    ],
)
def test_ocr_unknown_language_is_400(client: Any, language: str, needle: str) -> None:
    data = png_bytes(text_image(["hello"]))
    response = client.post(
        "/api/vision/ocr", headers=auth(), data={"language": language}, **_multipart(data)
    )
    error = assert_error(response, 400)
    assert needle in error["message"]
    assert error["param"] == "language"


def test_ocr_two_languages(client: Any) -> None:
    data = png_bytes(text_image(["Invoice total", "Informações sobre preços"]))
    body = client.post(
        "/api/vision/ocr", headers=auth(), data={"language": "eng+por"}, **_multipart(data)
    ).json()
    assert body["language"] == "eng+por"
    # like tesseract's own text output, a blank line separates paragraphs
    lines = [line for line in body["text"].split("\n") if line]
    assert lines == ["Invoice total", "Informações sobre preços"]
