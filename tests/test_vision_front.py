"""Unit tests of the vision pieces with exact answers: tesseract's TSV parsing, language codes,
UPC-E, frame sampling, caption merging, and the tiny BLIP runners' batching."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from botmodels.errors import InvalidInput, UnsupportedMediaType
from botmodels.media import decode_image, decode_video_frames
from botmodels.vision.codes import _upce_from_upca
from botmodels.vision.front import _merge_captions
from runners.ocr import OcrRunner, UnknownLanguage, parse_tsv
from runners.vision import VisionJob, VisionRunner
from tests.vision_media import png_bomb, png_bytes, video_bytes

TSV_HEADER = (
    "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
)


def _row(level: int, block: int, par: int, line: int, conf: float, text: str) -> str:
    return f"{level}\t1\t{block}\t{par}\t{line}\t1\t0\t0\t1\t1\t{conf}\t{text}"


def test_parse_tsv_lines_paragraphs_and_mean_confidence() -> None:
    tsv = "\n".join(
        [
            TSV_HEADER,
            _row(1, 0, 0, 0, -1, ""),
            _row(5, 1, 1, 1, 90, "Não"),
            _row(5, 1, 1, 1, 80, "há"),
            _row(5, 1, 1, 2, 70, "ação"),
            _row(5, 1, 1, 2, -1, ""),  # tesseract's empty word rows carry conf -1
            _row(5, 2, 1, 1, 60, "fim"),
        ]
    )
    text, confidence, words = parse_tsv(tsv)
    assert text == "Não há\nação\n\nfim"
    assert words == 4
    assert confidence == pytest.approx((0.9 + 0.8 + 0.7 + 0.6) / 4)
    assert parse_tsv(TSV_HEADER) == ("", 0.0, 0)


@pytest.mark.parametrize(
    ("upca", "upce"),
    [
        ("012345000065", "01234565"),  # last rule: product 0000d with d >= 5
        ("012000003455", "01234505"),  # manufacturer x x 0 0 0
        ("012300000645", "01236435"),  # manufacturer x x x 0 0
        ("012340000055", "01234545"),  # manufacturer x x x x 0
        ("036000291452", None),  # not zero-suppressible
    ],
)
def test_upce_from_upca(upca: str, upce: str | None) -> None:
    assert _upce_from_upca(upca) == upce


def test_merge_captions_keeps_order_and_drops_repeats() -> None:
    assert _merge_captions(["a dog", "a dog", "a cat", "", "a dog"]) == "a dog. Then a cat"
    assert _merge_captions([]) == ""


def test_resolve_language(tmp_path: Path) -> None:
    runner = OcrRunner(tmp_path, quantization="none", device="cpu")
    runner.languages = frozenset({"eng", "por"})
    assert runner.resolve_language("eng") == "eng"
    assert runner.resolve_language("PT") == "por"
    assert runner.resolve_language("eng+por+en") == "eng+por"
    for bad, needle in [("spa", "not installed"), ("zz", "not a tesseract"), ("", "empty")]:
        with pytest.raises(UnknownLanguage, match=needle):
            runner.resolve_language(bad)


def test_image_bomb_is_refused_from_the_header() -> None:
    bomb = png_bomb(100_000, 100_000)
    assert len(bomb) < 1000
    started = time.perf_counter()
    with pytest.raises(InvalidInput, match="10000000000 pixels"):
        decode_image(bomb, max_pixels=40_000_000)
    assert time.perf_counter() - started < 1.0
    with pytest.raises(InvalidInput, match="limit is 100 pixels"):
        decode_image(png_bytes(Image.new("RGB", (20, 20))), max_pixels=100)


def test_decode_image_converts_to_rgb() -> None:
    image = decode_image(png_bytes(Image.new("LA", (7, 5))), max_pixels=100)
    assert (image.mode, image.size, image.info["source_format"]) == ("RGB", (7, 5), "PNG")


def test_video_frames_are_sampled_evenly() -> None:
    # frames fade from red (first) to blue (last): the sampled ones must follow in order
    data = video_bytes("matroska", "mpeg4", frames=12)
    video = decode_video_frames(data, 4, max_pixels=10**6, max_packets=1000)
    assert video.total_frames == 12
    assert len(video.frames) == 4
    blues = [frame.getpixel((32, 24))[2] for frame in video.frames]
    reds = [frame.getpixel((32, 24))[0] for frame in video.frames]
    assert blues == sorted(blues)
    assert reds == sorted(reds, reverse=True)
    assert reds[0] > 200 > blues[0]
    assert blues[-1] > 200 > reds[-1]


def test_video_limits() -> None:
    data = video_bytes("mp4", "libx264", frames=6)
    with pytest.raises(InvalidInput, match="more than 3 video frames"):
        decode_video_frames(data, 2, max_pixels=10**6, max_packets=3)
    with pytest.raises(InvalidInput, match="64x48"):
        decode_video_frames(data, 2, max_pixels=1000, max_packets=100)
    with pytest.raises(UnsupportedMediaType, match="not a video"):
        decode_video_frames(png_bytes(Image.new("RGB", (8, 8))), 2, max_pixels=10**6, max_packets=9)


@pytest.fixture(scope="module")
def tiny_captioner(tiny_runner: Callable[..., Any]) -> VisionRunner:
    runner: VisionRunner = tiny_runner("vision", max_new_tokens=8)
    return runner


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (40 + 10 * i, 30), (60 * i, 20, 200 - 40 * i)) for i in range(4)]


def test_caption_batch_equals_one_by_one_and_keeps_order(tiny_captioner: VisionRunner) -> None:
    images = _images()
    jobs = [
        VisionJob(images[0]),
        VisionJob(images[1], prompt="a photo of"),
        VisionJob(images[2]),
        VisionJob(images[3], prompt="a photo of"),
    ]
    batch = tiny_captioner.caption(jobs)
    single = [tiny_captioner.caption([job])[0] for job in jobs]
    assert [a.text for a in batch] == [a.text for a in single]
    for a, b in zip(batch, single, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-3)
    assert batch[1].text.startswith("a photo of")
    assert batch[3].text.startswith("a photo of")
    assert all(0 < a.confidence <= 1 for a in batch)
    assert tiny_captioner.can_caption
    assert not tiny_captioner.can_answer
    with pytest.raises(RuntimeError, match="cannot answer"):
        tiny_captioner.answer([VisionJob(images[0], question="what?")])


def test_vqa_batch_equals_one_by_one(tiny_runner: Callable[..., Any]) -> None:
    runner: VisionRunner = tiny_runner("vqa", max_new_tokens=6)
    runner.load()  # idempotent: the vision and vqa kinds may share one runner
    jobs = [
        VisionJob(image, question=q)
        for image, q in zip(
            _images(), ["what color", "how many dogs", "is it red", "what"], strict=True
        )
    ]
    batch = runner.answer(jobs)
    single = [runner.answer([job])[0] for job in jobs]
    assert [a.text for a in batch] == [a.text for a in single]
    assert runner.can_answer
    assert not runner.can_caption
