"""Generated files, served without a key at `/outputs/<kind>/<name>` (botserver fetches them
later with no credentials, so the name is the only secret).

* Names carry 128 random bits (`secrets.token_hex(16)`) plus an extension from a fixed list:
  unguessable, and never derived from the prompt.
* Serving only accepts `<kind>/<32 hex>.<known ext>` for a known kind: no path traversal, no
  symlinks followed outside the root, the content type comes from the extension.
* Retention: files older than `max_age_s` go, then the oldest go until the total is under
  `max_bytes`. Pruning runs after each save (cheap: one directory scan), so the disk never fills
  and the service stays stateless (a lost file is a 404; botserver regenerates).

Image and video generation use the same store with `kind="images"` / `"videos"`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from botmodels.errors import NotFoundError, error_bytes

log = logging.getLogger("botmodels.outputs")

KINDS = frozenset({"audio", "images", "videos"})
CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/ogg",
    "ogg": "audio/ogg",
    "aac": "audio/aac",
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "webm": "video/webm",
}
_NAME = re.compile(r"^[0-9a-f]{32}\.([a-z0-9]{2,5})$")
URL_PREFIX = "/outputs"


@dataclass(frozen=True)
class SavedOutput:
    path: Path
    url_path: str  # what goes in `file_path`: "/outputs/audio/<hex>.wav"


class OutputStore:
    def __init__(self, root: Path, *, max_age_s: float, max_bytes: int) -> None:
        self.root = root
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # one prune at a time; saves never collide (random names)

    def save(self, kind: str, data: bytes, ext: str) -> SavedOutput:
        if kind not in KINDS:
            raise ValueError(f"unknown output kind {kind!r}; one of {sorted(KINDS)}")
        if ext not in CONTENT_TYPES:
            raise ValueError(f"unknown output extension {ext!r}")
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{secrets.token_hex(16)}.{ext}"  # 128 random bits
        final = folder / name
        partial = folder / f".{name}.part"  # never served: the name pattern rejects it
        partial.write_bytes(data)
        os.replace(partial, final)  # atomic: a reader never sees half a file
        self.prune()
        return SavedOutput(final, f"{URL_PREFIX}/{kind}/{name}")

    def resolve(self, kind: str, name: str) -> Path:
        """The file for a URL, or NotFoundError for anything that is not one of ours."""
        match = _NAME.match(name)
        if kind not in KINDS or match is None or match.group(1) not in CONTENT_TYPES:
            raise NotFoundError("no such output")
        path = self.root / kind / name
        try:
            if not path.is_file() or path.is_symlink():
                raise NotFoundError("no such output (expired or never made)")
        except OSError as exc:
            raise NotFoundError("no such output") from exc
        if time.time() - path.stat().st_mtime > self.max_age_s:
            raise NotFoundError("no such output (expired)")
        return path

    def prune(self, now: float | None = None) -> int:
        """Remove expired files, then the oldest until under the size budget. Returns count."""
        now = time.time() if now is None else now
        removed = 0
        with self._lock:
            files: list[tuple[float, int, Path]] = []
            for kind in KINDS:
                folder = self.root / kind
                if not folder.is_dir():
                    continue
                for entry in os.scandir(folder):
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        stat = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    files.append((stat.st_mtime, stat.st_size, Path(entry.path)))
            files.sort()
            total = sum(size for _, size, _ in files)
            for mtime, size, path in files:
                expired = now - mtime > self.max_age_s
                # a `.part` older than a minute is a save that died halfway
                stale_part = path.name.startswith(".") and now - mtime > 60
                if not (expired or stale_part or total > self.max_bytes):
                    continue
                with contextlib.suppress(FileNotFoundError):  # another worker pruned it
                    path.unlink()
                total -= size
                removed += 1
        if removed:
            log.info("outputs: pruned %d file(s)", removed)
        return removed


async def serve_output(request: Request, store: OutputStore) -> Response:
    """GET /outputs/{kind}/{name}: open (no key), read-only, safe names only."""
    kind = str(request.path_params.get("kind", ""))
    name = str(request.path_params.get("name", ""))
    try:
        path = store.resolve(kind, name)
    except NotFoundError as exc:
        return Response(
            error_bytes(404, exc.message, code="not_found"),
            status_code=404,
            media_type="application/json",
        )
    ext = name.rsplit(".", 1)[1]
    return FileResponse(
        path,
        media_type=CONTENT_TYPES[ext],
        headers={
            # The name is a capability: keep it out of shared caches and referrers.
            "Cache-Control": "private, max-age=3600",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
