"""The vision front: captions, visual questions, video description, OCR, QR codes and barcodes.

Why the public routes are Starlette routes (botmodels/vision/routes.py, mounted by service.py)
and not `@bentoml.api`s:
botserver sends uploads either as multipart field `file` or as the raw body
(`application/octet-stream`: HEAR AS QRCODE, HEAR AS VIDEO, the OCR keyword), and a BentoML API
declares one body shape. Every upload route takes both; a raw body's other fields come from the
query string (`?prompt=`, `?question=`, `?num_frames=`, `?language=`), a form field wins over
the query. Keeping every vision route here gives them one upload reader (`botmodels.media`: size,
format sniffing, image-bomb checks) and one set of rules; they still pass through the same ASGI
middleware as every other route (auth, limits, the one error shape). Only the public side lives
here: the model work goes through the batchable BentoML APIs of service.py (`caption_batch`,
`vqa_batch`, `ocr_batch`), reached through botmodels' dispatcher (`batch_infer`), so
concurrent requests are batched exactly as the embeddings route's are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from starlette.requests import Request

from botmodels.config import Settings, get_settings
from botmodels.dispatch import BatchInfer, run_on_runner
from botmodels.errors import BotModelsError, InvalidInput, PayloadTooLarge, runner_errors
from botmodels.media import decode_image, decode_video_frames, encode_png, read_upload
from botmodels.peers import batch_items
from botmodels.pool import RunnerPool
from botmodels.remote import RemoteRunner
from botmodels.vision.codes import read_codes
from botmodels.vision.schemas import (
    AnalyzeResponse,
    BarcodeItem,
    BarcodeResponse,
    DescribeResponse,
    OcrAnswerOut,
    OcrJobIn,
    OcrResponse,
    QrCodeResponse,
    VideoDescribeResponse,
    VisionAnswerOut,
    VisionJobIn,
    VqaResponse,
    b64_image,
)
from runners.ocr import OcrResult, OcrRunner
from runners.vision import VisionAnswer, VisionJob, VisionRunner

CAPTION_API, CAPTION_ROUTE = "caption_batch", "/runners/vision/caption"
VQA_API, VQA_ROUTE = "vqa_batch", "/runners/vqa/answer"
OCR_API, OCR_ROUTE = "ocr_batch", "/runners/ocr/recognize"
NO_QR = "No QR code found in image"
NO_BARCODE = "No barcode found in image"
# The models read 384-512 px views (SmolVLM also reads tiles of an upscaled copy on CUDA);
# keeping at most this many pixels a side bounds what waits in the queue.
MODEL_SIDE = 768


# --- the batch side (called by service.py's batchable APIs) -----------------------------------
def _item_image(image_png_b64: str) -> Any:
    """A runner item's image, decoded; its schema checked all but the pixel data (a bad one is
    InvalidInput, which `batch_errors` answers as a 400)."""
    return decode_image(
        b64_image(image_png_b64),
        max_pixels=get_settings().vision_max_image_pixels,
        name="image_png_b64",
    )


def _to_job(item: VisionJobIn | VisionJob) -> VisionJob:
    if isinstance(item, VisionJob):  # in-process: BentoML passes our objects through untouched
        return item
    return VisionJob(
        image=_item_image(item.image_png_b64), prompt=item.prompt, question=item.question
    )


def _to_wire(job: VisionJob) -> VisionJobIn:
    # model_construct: a PNG we just encoded needs none of the checks a received one gets.
    png = base64.b64encode(encode_png(job.image)).decode()
    return VisionJobIn.model_construct(image_png_b64=png, prompt=job.prompt, question=job.question)


def caption_items(runner: VisionRunner, items: Sequence[VisionJobIn | VisionJob]) -> list[Any]:
    return _out(runner.caption([_to_job(i) for i in items]))


def answer_items(runner: VisionRunner, items: Sequence[VisionJobIn | VisionJob]) -> list[Any]:
    return _out(runner.answer([_to_job(i) for i in items]))


def _out(answers: list[VisionAnswer]) -> list[Any]:
    return [VisionAnswerOut(text=a.text, confidence=a.confidence) for a in answers]


def ocr_items(runner: OcrRunner, items: Sequence[OcrJobIn | tuple[bytes, str]]) -> list[Any]:
    pngs: list[bytes] = []
    languages: list[str] = []
    for item in items:
        if isinstance(item, tuple):  # in-process: (png bytes, resolved language)
            pngs.append(item[0])
            languages.append(item[1])
        else:  # over HTTP from another botmodels: a bad image or code is the caller's 400
            _item_image(item.image_png_b64)  # tesseract's own failure would read as ours
            pngs.append(b64_image(item.image_png_b64))
            with runner_errors():
                languages.append(runner.resolve_language(item.language))
    return [
        OcrAnswerOut(text=r.text, confidence=r.confidence, words=r.words, language=r.language)
        for r in runner.recognize(pngs, languages)
    ]


# --- request checks --------------------------------------------------------------------------
def _fields(request: Request, form: dict[str, str]) -> dict[str, str]:
    """The request's text fields: the query string's (a raw body has no other place for them),
    then the form's, which win."""
    return {**request.query_params, **form}


def _text_field(form: dict[str, str], name: str, limit: int) -> str | None:
    value = form.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > limit:
        raise InvalidInput(
            f"`{name}` has {len(value)} characters; the limit is {limit}", param=name
        )
    return value.strip()


def _int_field(form: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = form.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidInput(f"`{name}` must be an integer, got {raw[:40]!r}", param=name) from None
    if not low <= value <= high:
        raise InvalidInput(f"`{name}` must be between {low} and {high}, got {value}", param=name)
    return value


def _merge_captions(captions: list[str]) -> str:
    """Frame captions, in order, without repeats: "a dog on grass. Then a dog running"."""
    unique: list[str] = []
    for caption in captions:
        if caption and caption not in unique:
            unique.append(caption)
    if not unique:
        return ""
    return ". Then ".join(unique)


class VisionFrontend:
    def __init__(
        self,
        settings: Settings,
        pool: RunnerPool,
        remotes: dict[str, RemoteRunner],
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.remotes = remotes
        self.batch_infer: BatchInfer | None = None

    # 1. Run work on a runner: remote, dispatcher (batched), or in-process ---------------------
    async def _run(
        self,
        kind: str,
        api: str,
        route: str,
        items: list[Any],
        local: Callable[[Any, list[Any]], list[Any]],
        wire: Callable[[Any], Any],
        max_batch: int,
    ) -> list[Any]:
        remote = self.remotes.get(kind)

        async def in_process(batch: list[Any]) -> list[Any]:
            return await asyncio.to_thread(local, self.pool.local(kind), batch)

        async def on_remote(batch: list[Any]) -> list[Any]:
            assert remote is not None
            return list(await remote.post(route, {"items": [wire(i).model_dump() for i in batch]}))

        done = await run_on_runner(
            api,
            items,
            kind=kind,
            pool=self.pool,
            batch_infer=self.batch_infer,
            local=in_process,
            remote=on_remote if remote is not None else None,
            remote_batch=max_batch,
        )
        return [_as_dict(item) for item in done]

    def check_runner_call(self, kind: str, payload: dict[str, Any]) -> AbstractContextManager[Any]:
        """`/runners/{vision,vqa,ocr}/...` from a peer: at most one batch per call, images
        within the upload limit, prompts and questions within the public routes' limit."""
        s = self.settings
        size = {
            "vision": s.vision_max_batch_size,
            "vqa": s.vqa_max_batch_size,
            "ocr": s.ocr_max_batch_size,
        }[kind]
        items = batch_items(payload, "items", size, f"BOTMODELS_{kind.upper()}_MAX_BATCH_SIZE")
        encoded_limit = s.max_upload_bytes * 4 // 3 + 4  # base64 of the upload limit
        for i, item in enumerate(items):
            png = item.get("image_png_b64")
            if isinstance(png, str) and len(png) > encoded_limit:
                raise PayloadTooLarge(
                    f"`items[{i}].image_png_b64` is over the upload limit of "
                    f"{s.max_upload_bytes} bytes (BOTMODELS_MAX_UPLOAD_BYTES)",
                    param="image_png_b64",
                )
            for field in ("prompt", "question"):
                text = item.get(field)
                if isinstance(text, str) and len(text) > s.vision_max_prompt_chars:
                    raise InvalidInput(
                        f"`items[{i}].{field}` has {len(text)} characters; the limit is "
                        f"{s.vision_max_prompt_chars}",
                        param=field,
                    )
        return contextlib.nullcontext()

    async def _captions(self, jobs: list[VisionJob]) -> list[dict[str, Any]]:
        return await self._run(
            "vision",
            CAPTION_API,
            CAPTION_ROUTE,
            jobs,
            caption_items,
            _to_wire,
            self.settings.vision_max_batch_size,
        )

    async def _answers(self, jobs: list[VisionJob]) -> list[dict[str, Any]]:
        return await self._run(
            "vqa",
            VQA_API,
            VQA_ROUTE,
            jobs,
            answer_items,
            _to_wire,
            self.settings.vqa_max_batch_size,
        )

    async def _ocr(self, image: Any, language: str) -> OcrResult:
        if self.remotes.get("ocr") is None:
            async with self.pool.acquire("ocr") as runner:
                with runner_errors():
                    language = runner.resolve_language(language)
        png = await asyncio.to_thread(encode_png, image)
        (out,) = await self._run(
            "ocr",
            OCR_API,
            OCR_ROUTE,
            [(png, language)],
            ocr_items,
            lambda item: OcrJobIn.model_construct(  # our own PNG: see _to_wire
                image_png_b64=base64.b64encode(item[0]).decode(), language=item[1]
            ),
            self.settings.ocr_max_batch_size,
        )
        return OcrResult(
            text=out["text"],
            confidence=float(out["confidence"]),
            words=int(out["words"]),
            language=out["language"],
        )

    # 2. Read and check the upload -----------------------------------------------------------
    async def _image(self, request: Request) -> tuple[Any, dict[str, str]]:
        upload = await read_upload(request, raw="image")
        image = await asyncio.to_thread(
            decode_image, upload.data, max_pixels=self.settings.vision_max_image_pixels
        )
        return image, _fields(request, upload.form)

    @staticmethod
    def _for_model(image: Any) -> Any:
        if max(image.size) > MODEL_SIDE:
            image = image.copy()
            image.thumbnail((MODEL_SIDE, MODEL_SIDE))
        return image

    # 3. Routes ------------------------------------------------------------------------------
    async def describe(self, request: Request) -> DescribeResponse:
        image, form = await self._image(request)
        prompt = _text_field(form, "prompt", self.settings.vision_max_prompt_chars)
        (answer,) = await self._captions([VisionJob(self._for_model(image), prompt=prompt)])
        return DescribeResponse(description=answer["text"], confidence=answer["confidence"])

    async def vqa(self, request: Request) -> VqaResponse:
        image, form = await self._image(request)
        question = _text_field(form, "question", self.settings.vision_max_prompt_chars)
        if question is None:
            raise InvalidInput(
                "`question` is required (a form field, or `?question=` with a raw body)",
                param="question",
            )
        (answer,) = await self._answers([VisionJob(self._for_model(image), question=question)])
        return VqaResponse(
            description=answer["text"],
            answer=answer["text"],
            question=question,
            confidence=answer["confidence"],
        )

    async def describe_video(self, request: Request) -> VideoDescribeResponse:
        upload = await read_upload(request, raw="image")
        num_frames = _int_field(
            _fields(request, upload.form),
            "num_frames",
            self.settings.vision_default_video_frames,
            1,
            self.settings.vision_max_video_frames,
        )
        video = await asyncio.to_thread(
            decode_video_frames,
            upload.data,
            num_frames,
            max_pixels=self.settings.vision_max_image_pixels,
            max_packets=self.settings.vision_max_video_packets,
            max_side=MODEL_SIDE,
        )
        jobs = [VisionJob(self._for_model(frame)) for frame in video.frames]
        answers = await self._captions(jobs)
        captions = [a["text"] for a in answers]
        confidence = sum(a["confidence"] for a in answers) / len(answers)
        return VideoDescribeResponse(
            description=_merge_captions(captions),
            frame_count=len(answers),
            confidence=round(confidence, 4),
            frame_captions=captions,
        )

    async def qrcode(self, request: Request) -> QrCodeResponse:
        image, _ = await self._image(request)
        codes = await asyncio.to_thread(read_codes, image, only_qr=True)
        if not codes:
            return QrCodeResponse(success=False, data=None, codes=[], count=0, error=NO_QR)
        return QrCodeResponse(success=True, data=codes[0].data, codes=codes, count=len(codes))

    async def barcode(self, request: Request) -> BarcodeResponse:
        image, _ = await self._image(request)
        codes = await asyncio.to_thread(read_codes, image)
        items = [BarcodeItem(data=c.data, type=c.type, rect=c.rect) for c in codes]
        if not items:
            return BarcodeResponse(success=False, barcodes=[], count=0, error=NO_BARCODE)
        return BarcodeResponse(success=True, barcodes=items, count=len(items))

    def _language(self, form: dict[str, str]) -> str:
        raw = form.get("language") or ""
        if len(raw) > 64:
            raise InvalidInput(f"`language` is {len(raw)} characters long", param="language")
        return raw.strip() or self.settings.ocr_default_language

    async def ocr(self, request: Request) -> OcrResponse:
        image, form = await self._image(request)
        result = await self._ocr(image, self._language(form))
        return OcrResponse(
            success=True,
            text=result.text,
            confidence=result.confidence,
            language=result.language,
            word_count=result.words,
        )

    async def analyze(self, request: Request) -> AnalyzeResponse:
        """Caption, OCR and codes at once. A part whose runner is unavailable is reported in
        `error` (and `success: false`) while the other parts are still answered."""
        started = time.perf_counter()
        upload = await read_upload(request, raw="image")
        image = await asyncio.to_thread(
            decode_image, upload.data, max_pixels=self.settings.vision_max_image_pixels
        )
        language = self._language(_fields(request, upload.form))
        caption, ocr, codes = await asyncio.gather(
            self._captions([VisionJob(self._for_model(image))]),
            self._ocr(image, language),
            asyncio.to_thread(read_codes, image),
            return_exceptions=True,
        )
        errors: list[str] = []
        for part, value in (("description", caption), ("text", ocr), ("codes", codes)):
            if isinstance(value, InvalidInput):
                raise value  # the request itself is wrong (e.g. language): 4xx as usual
            if isinstance(value, BotModelsError):
                errors.append(f"{part}: {value.message}")
            elif isinstance(value, BaseException):
                raise value
        description = caption[0]["text"] if isinstance(caption, list) else None
        text = ocr.text if isinstance(ocr, OcrResult) else None
        found = codes if isinstance(codes, list) else []
        metadata: dict[str, Any] = {
            "format": image.info.get("source_format"),
            "width": image.size[0],
            "height": image.size[1],
            "bytes": len(upload.data),
            "caption_confidence": caption[0]["confidence"] if isinstance(caption, list) else None,
            "ocr_confidence": ocr.confidence if isinstance(ocr, OcrResult) else None,
            "ocr_language": ocr.language if isinstance(ocr, OcrResult) else None,
            "word_count": ocr.words if isinstance(ocr, OcrResult) else None,
            "code_count": len(found),
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        return AnalyzeResponse(
            success=not errors,
            description=description,
            text=text,
            codes=found,
            metadata=metadata,
            error="; ".join(errors) or None,
        )


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    dumped: dict[str, Any] = item.model_dump()
    return dumped
