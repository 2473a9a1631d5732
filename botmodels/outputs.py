"""Generated files (`/outputs/<kind>/<name>`): unguessable names, no traversal, bounded retention.

botserver hands `base_url + file_path` to bot scripts, which fetch it later with no API key, so
the name is the only secret: 128 bits from `secrets`, never derived from the prompt. Files older
than `max_age_s` are removed, and the oldest go first once the folder is over `max_total_bytes`.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("botmodels.outputs")

_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")
# /outputs/<kind>/<32+ lowercase hex><suffix>: the only shape resolve() accepts.
_URL = re.compile(r"/outputs/([a-z][a-z0-9_-]{0,31})/([0-9a-f]{32,64}\.[a-z0-9]{1,8})")

CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".opus": "audio/ogg",
    ".ogg": "audio/ogg",
    ".aac": "audio/aac",
}


@dataclass(frozen=True)
class SavedOutput:
    path: Path
    url_path: str  # what goes in `file_path`: "/outputs/audio/<hex>.wav"


class OutputStore:
    def __init__(self, root: Path, max_age_s: float, max_total_bytes: int) -> None:
        self.root = root
        self.max_age_s = max_age_s
        self.max_total_bytes = max_total_bytes
        self._lock = threading.Lock()

    def new_path(self, kind: str, suffix: str) -> tuple[Path, str]:
        """A fresh file path under `<root>/<kind>/` and the URL path that serves it."""
        if not _KIND.fullmatch(kind):
            raise ValueError(f"output kind {kind!r} must match {_KIND.pattern}")
        if not _SUFFIX.fullmatch(suffix):
            raise ValueError(f"output suffix {suffix!r} must match {_SUFFIX.pattern}")
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        name = secrets.token_hex(16) + suffix  # 128 random bits
        return folder / name, f"/outputs/{kind}/{name}"

    def save(self, kind: str, data: bytes | Callable[[Path], object], ext: str) -> SavedOutput:
        """Write a new output, atomically (a reader never sees half a file), then prune: `data`
        is the file's bytes, or a function that writes the file at the path it is given (an
        encoder that writes to a path: a PNG, an MP4)."""
        path, url_path = self.new_path(kind, "." + ext)
        partial = path.with_name(f".{path.name}.part")  # never served: the URL shape rejects it
        try:
            if isinstance(data, bytes):
                partial.write_bytes(data)
            else:
                data(partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)  # a writer that failed half way leaves nothing
        self.prune()
        return SavedOutput(path, url_path)

    def resolve(self, url_path: str) -> Path | None:
        """The file a URL path names, or None: anything but the exact shape new_path() makes
        (dots, slashes, encoded characters, other folders) names nothing."""
        match = _URL.fullmatch(url_path)
        if match is None or Path(match.group(2)).suffix not in CONTENT_TYPES:
            return None  # known extensions only: each is served as its own type, never guessed
        path = self.root / match.group(1) / match.group(2)
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self.root.resolve()) or not resolved.is_file():
            return None
        if time.time() - resolved.stat().st_mtime > self.max_age_s:
            return None  # expired: not served even before the next prune removes it
        return resolved

    def delete(self, url_path: str) -> None:
        path = self.resolve(url_path)
        if path is not None:
            path.unlink(missing_ok=True)

    def prune(self) -> None:
        """Delete files past `max_age_s`, then the oldest until under `max_total_bytes`."""
        if not self.root.is_dir():
            return
        with self._lock:
            now = time.time()
            files: list[tuple[float, int, Path]] = []
            for kind in self.root.iterdir():
                if not kind.is_dir():
                    continue
                for entry in os.scandir(kind):
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                    files.append((stat.st_mtime, stat.st_size, Path(entry.path)))
            kept: list[tuple[float, int, Path]] = []
            for mtime, size, path in files:
                if now - mtime > self.max_age_s:
                    path.unlink(missing_ok=True)
                else:
                    kept.append((mtime, size, path))
            total = sum(size for _, size, _ in kept)
            for _, size, path in sorted(kept):
                if total <= self.max_total_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
                log.info("outputs over %d bytes: removed %s", self.max_total_bytes, path.name)


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix, "application/octet-stream")
