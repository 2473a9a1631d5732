"""`POST /api/audio/tts` (the video editor's text to speech) through the real ASGI app: formats,
and bad input in the one error shape with the rules of `/api/speech/generate`."""

from __future__ import annotations

from typing import Any

import pytest

from botmodels.speech import audio
from tests.conftest import auth
from tests.helpers import assert_error


def _tts(client: Any, body: dict[str, Any]) -> Any:
    return client.post("/api/audio/tts", json=body, headers=auth())


def test_defaults_to_mp3_and_takes_other_formats(client: Any) -> None:
    mp3 = _tts(client, {"text": "Hello there."})
    assert mp3.status_code == 200, mp3.text
    assert mp3.headers["content-type"] == "audio/mpeg"
    wav = _tts(client, {"text": "Hello there.", "response_format": "wav", "speed": None})
    assert wav.headers["content-type"] == "audio/wav"
    seconds = audio.decode(wav.content, max_seconds=60).size / 16_000
    assert 0.3 < seconds < 5.0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "text"),
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": 12}, "text"),
        ({"text": "x" * 5000}, "text"),
        ({"text": "hi", "voice": "nobody"}, "voice"),
        ({"text": "hi", "voice": 3}, "voice"),
        ({"text": "hi", "language": "pt"}, "language"),
        ({"text": "hi", "speed": 0.1}, "speed"),
        ({"text": "hi", "speed": 9}, "speed"),
        ({"text": "hi", "speed": "fast"}, "speed"),
        ({"text": "hi", "response_format": "ogg"}, "response_format"),
    ],
)
def test_bad_input_is_400(client: Any, body: dict[str, Any], param: str) -> None:
    error = assert_error(_tts(client, body), 400)
    assert error["param"] == param
    if param in ("voice", "language") and isinstance(body.get(param), str):
        assert "joe (en_US)" in error["message"]  # lists what is installed


def test_not_json_is_refused(client: Any) -> None:
    response = client.post(
        "/api/audio/tts", content=b"text=hi", headers={**auth(), "Content-Type": "text/plain"}
    )
    assert_error(response, 415)
