"""Where API keys come from. There is no default key.

Order: `BOTMODELS_API_KEYS` (comma-separated); else the key file (`BOTMODELS_API_KEYS_FILE`, or
`<home>/api-key`), one key per line; else a random key is generated into that file (mode 600,
created exclusively so that several workers agree on one key) and its *path* is logged.

Keys under 16 characters refuse to start, unless `BOTMODELS_ALLOW_SHORT_KEYS` is true *and* the
bind address is loopback: botserver's DETECT and SCAN BARCODE send `starter` when unconfigured,
and a guessable key is tolerable only where nothing off this machine can reach the port. A
short key in use is a WARNING at every start.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from botmodels.config import Settings, is_loopback_host

log = logging.getLogger("botmodels.auth")

MIN_KEY_LENGTH = 16


class KeyConfigError(RuntimeError):
    """The configured keys are unusable; the server must not start with them."""


def key_file_path(settings: Settings) -> Path:
    return settings.api_keys_file or settings.home / "api-key"


def _parse(text: str, where: str, settings: Settings) -> list[bytes]:
    keys = [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]
    if not keys:
        raise KeyConfigError(f"{where} holds no key")
    short = [i + 1 for i, key in enumerate(keys) if len(key) < MIN_KEY_LENGTH]
    if short:
        _check_short_keys(short, where, settings)
    return [key.encode() for key in keys]


def _check_short_keys(numbers: list[int], where: str, settings: Settings) -> None:
    what = f"{where}: key number(s) {numbers} are shorter than {MIN_KEY_LENGTH} characters"
    if not settings.allow_short_keys:
        raise KeyConfigError(
            f"{what}; use e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'` "
            f"(or, for botserver's default key `starter` on a loopback bind only, set "
            f"BOTMODELS_ALLOW_SHORT_KEYS=true)"
        )
    if not is_loopback_host(settings.host):
        raise KeyConfigError(
            f"{what}, and BOTMODELS_ALLOW_SHORT_KEYS accepts short keys only on a loopback bind, "
            f"but BOTMODELS_HOST={settings.host!r} can be reached from other machines: a short "
            f"key there can be guessed; give every key at least {MIN_KEY_LENGTH} characters"
        )
    log.warning(
        "%s: accepted because BOTMODELS_ALLOW_SHORT_KEYS=true and BOTMODELS_HOST=%s is loopback; "
        "a short key is guessable by anything on this machine",
        what,
        settings.host,
    )


def _generate(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another worker won the race; use its key
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    log.warning(
        "No BOTMODELS_API_KEYS configured: generated a random API key into %s (mode 600). "
        "Give it to botserver as botmodels-api-key.",
        path,
    )


def load_api_keys(settings: Settings) -> list[bytes]:
    if settings.api_keys is not None:
        return _parse(settings.api_keys.get_secret_value(), "BOTMODELS_API_KEYS", settings)
    path = key_file_path(settings)
    if not path.exists():
        if settings.api_keys_file is not None:
            raise KeyConfigError(f"BOTMODELS_API_KEYS_FILE={path} does not exist")
        _generate(path)
    return _parse(path.read_text(encoding="utf-8"), str(path), settings)
