"""`POST /api/audio/detect-beats` (botserver's video editor, `botvideo/src/engine/chat_ai.rs`,
`detect_beats`): `{audio_url, sensitivity}` -> `{beats: [{time_ms, strength, type}], tempo_bpm}`.

This module takes the audio's bytes; fetching `audio_url` is the URL fetcher's job, done before.
botserver sends `sensitivity` 0.5 unless its caller chose one, reads `time_ms` as an integer,
`strength` as a float (1.0 when absent), `type` as a string ("beat" when absent) and
`tempo_bpm` as a float (120 when absent; we always send it: 0 when no beat was found).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from botmodels.editor.beats import SAMPLE_RATE, detect_beats
from botmodels.errors import InvalidInput, PayloadTooLarge
from botmodels.speech import audio as audio_io

DEFAULT_SENSITIVITY = 0.5  # botserver's default (chat_ai.rs)
AUDIO_PARAM = "audio_url"  # errors about the audio name the field the caller sent


def check_sensitivity(body: dict[str, Any]) -> float:
    value = body.get("sensitivity")
    if value is None:
        return DEFAULT_SENSITIVITY
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(
            f"`sensitivity` must be a number from 0 to 1, got {value!r}", param="sensitivity"
        )
    if not 0.0 <= value <= 1.0:
        raise InvalidInput(
            f"`sensitivity` must be from 0 (only the most accented beats) to 1 (every beat), "
            f"got {value}",
            param="sensitivity",
        )
    return float(value)


def _beats(data: bytes, sensitivity: float, max_seconds: float) -> dict[str, Any]:
    samples = audio_io.decode(data, rate=SAMPLE_RATE, max_seconds=max_seconds, param=AUDIO_PARAM)
    result = detect_beats(samples, SAMPLE_RATE, sensitivity)
    return {
        "beats": [
            {"time_ms": b.time_ms, "strength": b.strength, "type": b.type} for b in result.beats
        ],
        "tempo_bpm": result.tempo_bpm,
    }


async def beats_from_bytes(
    data: bytes, body: dict[str, Any], *, max_bytes: int, max_seconds: float
) -> dict[str, Any]:
    """The route's answer for audio already fetched: decoding and tracking run off the event
    loop. Bad fields are 400s, audio over `max_bytes` or `max_seconds` a 413."""
    sensitivity = check_sensitivity(body)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the audio is {len(data)} bytes; the limit is {max_bytes}", param=AUDIO_PARAM
        )
    return await asyncio.to_thread(_beats, data, sensitivity, max_seconds)
