"""Response models of the vision routes: field names exactly as botserver reads them
(shared/reference/botserver-contract.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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


class VisionJobIn(BaseModel):
    """One item of the batchable vision APIs over HTTP (a remote runner): a PNG, base64."""

    image_png_b64: str
    prompt: str | None = None
    question: str | None = None


class VisionAnswerOut(BaseModel):
    text: str
    confidence: float


class OcrJobIn(BaseModel):
    image_png_b64: str
    language: str


class OcrAnswerOut(BaseModel):
    text: str
    confidence: float
    words: int
    language: str
