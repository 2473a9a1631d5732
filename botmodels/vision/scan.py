"""`POST /api/barcode/scan`: botserver's SCAN BARCODE keyword (botbasic_data/src/keywords/
products.rs, scan_barcode). It sends `{image_path, bot_id}`, a path or URL on botserver's side,
and hands the whole JSON answer to the script: the answer is `/api/vision/barcode`'s.

The image is read by the one fetcher (botmodels/fetch.py: BOTMODELS_FETCH_ROOTS for paths,
BOTMODELS_FETCH_ALLOW for URLs), then decoded and read exactly as an uploaded one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from botmodels.api import json_errors
from botmodels.config import Settings
from botmodels.fetch import Fetcher
from botmodels.media import decode_image, read_json_model
from botmodels.vision.codes import read_codes
from botmodels.vision.front import NO_BARCODE
from botmodels.vision.schemas import BarcodeItem, BarcodeResponse


class BarcodeScanRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image_path: str = Field(
        min_length=1,
        max_length=4096,
        description="an absolute path under BOTMODELS_FETCH_ROOTS, or an http(s) URL allowed by "
        "BOTMODELS_FETCH_ALLOW",
    )
    bot_id: str | None = Field(None, max_length=128, description="accepted, unused")


async def scan(request: Request, settings: Settings, fetcher: Fetcher) -> BarcodeResponse:
    body = await read_json_model(request, BarcodeScanRequest)
    data = await fetcher.fetch(body.image_path, param="image_path")
    image = await asyncio.to_thread(
        decode_image, data, max_pixels=settings.vision_max_image_pixels, name="image_path"
    )
    codes = await asyncio.to_thread(read_codes, image)
    items = [BarcodeItem(data=c.data, type=c.type, rect=c.rect) for c in codes]
    if not items:
        return BarcodeResponse(success=False, barcodes=[], count=0, error=NO_BARCODE)
    return BarcodeResponse(success=True, barcodes=items, count=len(items))


def routes(settings: Callable[[], Settings], fetcher: Callable[[], Fetcher]) -> list[Route]:
    """`fetcher()` is the service's fetcher (it raises 503 while the service starts)."""

    @json_errors
    async def barcode_scan(request: Request) -> Response:
        result = await scan(request, settings(), fetcher())
        return JSONResponse(result.model_dump(mode="json"))

    return [Route("/api/barcode/scan", barcode_scan, methods=["POST"])]
