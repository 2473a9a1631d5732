"""Response models of the vision routes: field names exactly as botserver reads them
(shared/reference/botserver-contract.md)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from botmodels.config import get_settings
from botmodels.errors import BotModelsError
from botmodels.media import open_image


class Rect(BaseModel):
    left: int
    top: int
    width: int
    height: int


class Point(BaseModel):
    x: int
    y: int


class CodeFound(BaseModel):
    data: str
    type: str = Field(description="QRCODE, DATAMATRIX, PDF417, EAN13, EAN8, UPCA, UPCE, CODE128…")
    rect: Rect
    polygon: list[Point] = Field(description="corners: top-left, top-right, bottom-right, …")


class BarcodeItem(BaseModel):
    data: str
    type: str
    rect: Rect


class DescribeResponse(BaseModel):
    description: str
    confidence: float = Field(ge=0, le=1, description="the model's own mean token probability")


class VideoDescribeResponse(BaseModel):
    description: str
    frame_count: int = Field(description="frames actually captioned")
    confidence: float = Field(ge=0, le=1)
    frame_captions: list[str]


class VqaResponse(BaseModel):
    description: str = Field(description="the answer (botserver reads `description`)")
    answer: str
    question: str
    confidence: float = Field(ge=0, le=1)


class BarcodeResponse(BaseModel):
    success: bool
    barcodes: list[BarcodeItem]
    count: int
    error: str | None = None


class QrCodeResponse(BaseModel):
    success: bool
    data: str | None = Field(description="the first code's text; null when none was found")
    codes: list[CodeFound]
    count: int
    error: str | None = None


class OcrResponse(BaseModel):
    success: bool
    text: str
    confidence: float = Field(ge=0, le=1, description="tesseract's mean word confidence")
    language: str
    word_count: int
    error: str | None = None


class AnalyzeResponse(BaseModel):
    success: bool
    description: str | None
    text: str | None
    codes: list[CodeFound]
    metadata: dict[str, Any]
    error: str | None = None


def b64_image(value: str) -> bytes:
    """The bytes of a runner item's `image_png_b64`: strict base64 (ValueError otherwise)."""
    if not value.isascii():
        raise ValueError("`image_png_b64` is not base64: it has non-ASCII characters")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"`image_png_b64` is not base64: {exc}") from None


def _check_image_b64(value: str) -> str:
    """Checked when the request is parsed, so that a bad item is its own request's 400 and never
    fails the batch it would have joined. This runs on the event loop, so only what costs about
    as much as parsing the JSON that carried it (and max_json_bytes bounds that): the base64,
    the image header (format, pixel count) and the chunk checksums where the format has them
    (PNG's catch truncation and corruption). The runner decodes the pixels in its thread."""
    data = b64_image(value)
    try:
        image = open_image(
            data, max_pixels=get_settings().vision_max_image_pixels, name="image_png_b64"
        )
    except BotModelsError as exc:
        raise ValueError(exc.message) from None
    try:
        image.verify()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValueError(
            f"`image_png_b64` is a truncated or corrupt {image.format}: {exc}"
        ) from None
    return value


ImageB64 = Annotated[
    str, AfterValidator(_check_image_b64), Field(description="the image (PNG), base64")
]


class VisionJobIn(BaseModel):
    """One item of the batchable vision APIs over HTTP (a remote runner): a PNG, base64."""

    image_png_b64: ImageB64
    prompt: str | None = None
    question: str | None = None


class VisionAnswerOut(BaseModel):
    text: str
    confidence: float


class OcrJobIn(BaseModel):
    image_png_b64: ImageB64
    language: str


class OcrAnswerOut(BaseModel):
    text: str
    confidence: float
    words: int
    language: str
