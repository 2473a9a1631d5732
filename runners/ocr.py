"""OCR: the tesseract 5 LSTM engine (Debian `tesseract-ocr`), with its language data in the store.

Why tesseract and not rapidocr (PP-OCR ONNX): on text rendered in English and Portuguese both
read every word exactly, but tesseract was 5-10x faster on this 2-core CPU (docs/benchmarks.md), and
its per-language models map one to one onto the tesseract-style `language` codes botserver sends.

Reads top to bottom: load (find the binary, list the `.traineddata` files of the store folder) ->
check the language -> recognise a batch (one tesseract process per image, run side by side) ->
words with their confidences.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runners.base import Device, InvalidItem, Quantization

log = logging.getLogger("botmodels.runners.ocr")

# The store folder is a copy of Debian's tessdata (models.toml: source = "local"); it must keep
# the `configs/` subfolder, where the `tsv` output config lives.
TESSDATA_DIR = Path("/usr/share/tesseract-ocr/5/tessdata")
TESSERACT = "tesseract"  # found on PATH

# Every language code tesseract publishes data for (tessdata 4.x/5.x). A code in this list whose
# data is not installed is "not installed"; anything else is "unknown". Scripts (`script/Latin`)
# are left out: botserver sends languages.
TESSERACT_LANGUAGES = frozenset(
    {
        "afr",
        "amh",
        "ara",
        "asm",
        "aze",
        "aze_cyrl",
        "bel",
        "ben",
        "bod",
        "bos",
        "bre",
        "bul",
        "cat",
        "ceb",
        "ces",
        "chi_sim",
        "chi_sim_vert",
        "chi_tra",
        "chi_tra_vert",
        "chr",
        "cos",
        "cym",
        "dan",
        "deu",
        "deu_latf",
        "div",
        "dzo",
        "ell",
        "eng",
        "enm",
        "epo",
        "equ",
        "est",
        "eus",
        "fao",
        "fas",
        "fil",
        "fin",
        "fra",
        "frm",
        "fry",
        "gla",
        "gle",
        "glg",
        "grc",
        "guj",
        "hat",
        "heb",
        "hin",
        "hrv",
        "hun",
        "hye",
        "iku",
        "ind",
        "isl",
        "ita",
        "ita_old",
        "jav",
        "jpn",
        "jpn_vert",
        "kan",
        "kat",
        "kat_old",
        "kaz",
        "khm",
        "kir",
        "kmr",
        "kor",
        "kor_vert",
        "lao",
        "lat",
        "lav",
        "lit",
        "ltz",
        "mal",
        "mar",
        "mkd",
        "mlt",
        "mon",
        "mri",
        "msa",
        "mya",
        "nep",
        "nld",
        "nor",
        "oci",
        "ori",
        "osd",
        "pan",
        "pol",
        "por",
        "pus",
        "que",
        "ron",
        "rus",
        "san",
        "sin",
        "slk",
        "slv",
        "snd",
        "spa",
        "spa_old",
        "sqi",
        "srp",
        "srp_latn",
        "sun",
        "swa",
        "swe",
        "syr",
        "tam",
        "tat",
        "tel",
        "tgk",
        "tha",
        "tir",
        "ton",
        "tur",
        "uig",
        "ukr",
        "urd",
        "uzb",
        "uzb_cyrl",
        "vie",
        "yid",
        "yor",
    }
)
# Two-letter ISO 639-1 codes some callers send instead.
ISO_639_1 = {
    "en": "eng",
    "pt": "por",
    "es": "spa",
    "fr": "fra",
    "de": "deu",
    "it": "ita",
    "nl": "nld",
    "ru": "rus",
    "zh": "chi_sim",
    "ja": "jpn",
    "ko": "kor",
    "ar": "ara",
}


class UnknownLanguage(InvalidItem):
    """The language code is not a tesseract code, or its data is not installed."""

    param = "language"


@dataclass(frozen=True)
class OcrResult:
    text: str  # lines joined with "\n", paragraphs with a blank line
    confidence: float  # mean word confidence reported by tesseract, 0..1 (0 when no word)
    words: int
    language: str  # the tesseract code(s) used, e.g. "por" or "eng+por"


def parse_tsv(tsv: str) -> tuple[str, float, int]:
    """tesseract's TSV: one row per page/block/paragraph/line/word; words (level 5) carry conf."""
    lines: dict[tuple[int, int, int, int], list[str]] = {}
    confidences: list[float] = []
    for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
        if row.get("level") != "5":
            continue
        word = (row.get("text") or "").strip()
        conf = float(row.get("conf") or -1)
        if not word or conf < 0:
            continue
        key = (
            int(row["page_num"]),
            int(row["block_num"]),
            int(row["par_num"]),
            int(row["line_num"]),
        )
        lines.setdefault(key, []).append(word)
        confidences.append(conf / 100.0)
    parts: list[str] = []
    previous: tuple[int, int, int] | None = None
    for key, words in lines.items():
        paragraph = key[:3]
        if previous is not None and paragraph != previous:
            parts.append("")
        parts.append(" ".join(words))
        previous = paragraph
    mean = sum(confidences) / len(confidences) if confidences else 0.0
    return "\n".join(parts), round(min(1.0, max(0.0, mean)), 4), len(confidences)


class OcrRunner:
    kind = "ocr"

    def __init__(self, model_dir: Path, *, quantization: Quantization, device: Device) -> None:
        self.model_dir = model_dir
        self.quantization = quantization  # tesseract has one precision; reported, not used
        self.device = device  # tesseract runs on the CPU whatever the device
        self.dtype = "float32"
        self.languages: frozenset[str] = frozenset()
        self._binary: str | None = None
        self._pool: ThreadPoolExecutor | None = None

    # 1. Load --------------------------------------------------------------------------------
    def load(self) -> None:
        binary = shutil.which(TESSERACT)
        if binary is None:
            raise RuntimeError(
                "the `tesseract` binary is not installed; `make system-deps` installs it "
                "(Debian: apt-get install tesseract-ocr)"
            )
        found = {p.stem for p in self.model_dir.glob("*.traineddata")} - {"osd"}
        if not found:
            raise RuntimeError(f"no *.traineddata language files in {self.model_dir}")
        version = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [binary, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.splitlines()[0]
        self._binary = binary
        self.languages = frozenset(found)
        # tesseract uses one core per process here (OMP_THREAD_LIMIT=1), so a batch runs as
        # many processes side by side as this worker has threads.
        self._pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))
        log.info("OCR: %s, languages %s", version, sorted(self.languages))

    def close(self) -> None:
        """Stop the tesseract threads (the model is being unloaded)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # 2. Check inputs ------------------------------------------------------------------------
    def resolve_language(self, code: str) -> str:
        """`eng`, `por`, `eng+por`, or `en`/`pt` -> the tesseract code(s); else UnknownLanguage."""
        parts = [p.strip().lower() for p in code.split("+")]
        if not code.strip() or not all(parts):
            raise UnknownLanguage(f"`language` is empty or malformed: {code!r}")
        resolved: list[str] = []
        for part in parts:
            name = ISO_639_1.get(part, part)
            if name not in TESSERACT_LANGUAGES:
                raise UnknownLanguage(
                    f"`language` {part!r} is not a tesseract language code (e.g. eng, por, spa)"
                )
            if name not in self.languages:
                raise UnknownLanguage(
                    f"`language` {part!r} is a tesseract language whose data is not installed "
                    f"here; installed: {', '.join(sorted(self.languages))}"
                )
            resolved.append(name)
        return "+".join(dict.fromkeys(resolved))

    # 3. Recognise a batch -------------------------------------------------------------------
    def _one(self, png: bytes, language: str) -> OcrResult:
        assert self._binary is not None
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell; image on stdin
            [
                self._binary,
                "stdin",
                "stdout",
                "--tessdata-dir",
                str(self.model_dir),
                "-l",
                language,
                "--psm",
                "3",
                "tsv",
            ],
            input=png,
            capture_output=True,
            env=env,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip()[-300:]
            raise RuntimeError(f"tesseract exited with {done.returncode}: {message}")
        text, confidence, words = parse_tsv(done.stdout.decode("utf-8", "replace"))
        return OcrResult(text=text, confidence=confidence, words=words, language=language)

    def recognize(self, images: list[bytes], languages: list[str]) -> list[OcrResult]:
        """PNG-encoded images and their (already resolved) language codes, in order."""
        if self._pool is None:
            raise RuntimeError("OcrRunner.recognize() called before load()")
        return list(self._pool.map(self._one, images, languages))
