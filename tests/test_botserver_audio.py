"""botserver replay: the video editor's `/api/audio/tts`, built exactly as botserver builds it
and read the way it reads the answer.

botserver (generalbots/generalbots at f59afde5, 2026-05-19),
`botserver/crates/botvideo/src/engine/effects.rs`, `text_to_speech`, lines 163-201: a
`reqwest::Client::new()` (no timeout) posts `.json({"text", "voice", "speed", "language"})`
(so `Content-Type: application/json`) to `{BOTMODELS_URL}/api/audio/tts` with **no key**; a
non-2xx answer becomes "TTS service error: {body text}"; a 2xx answer's bytes are written as they
come to `tts_<uuid>.mp3` and measured with `ffprobe -show_entries format=duration`.
`botserver/crates/botvideo/src/handlers/audio.rs`, lines 91-93: `voice` defaults to "alloy",
`speed` to 1.0 (an f32), `language` to "en".

The real call sends no key; until keyless callers from trusted networks are allowed these tests
send the test key (the only header botserver does not send).
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

from botmodels.speech import audio
from tests.conftest import auth


def _botserver_tts(client: Any, text: str, voice: str, speed: float, language: str) -> Any:
    """effects.rs:173-183."""
    return client.post(
        "/api/audio/tts",
        json={"text": text, "voice": voice, "speed": speed, "language": language},
        headers=auth(),
    )


def _saved_as_mp3(data: bytes, folder: Path) -> float:
    """effects.rs:190-196: the bytes go to `tts_<uuid>.mp3`; ffprobe reads its duration. Here:
    the file is an MPEG audio stream (what a player opening a `.mp3` expects) and its
    duration."""
    import av

    path = folder / f"tts_{uuid.uuid4()}.mp3"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        assert container.format.name == "mp3"
        assert "MPEG audio layer 3" in container.streams.audio[0].codec_context.codec.long_name
        assert container.duration is not None
        seconds = container.duration / 1_000_000
    return float(seconds)


def test_editor_tts_is_mp3_bytes(client: Any, tmp_path: Path) -> None:
    # a voice the editor's user picked (botserver passes `req.voice` through)
    response = _botserver_tts(client, "Welcome to the video editor.", "joe", 1.0, "en")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/mpeg"
    seconds = _saved_as_mp3(response.content, tmp_path)
    assert 0.5 < seconds < 10.0


def test_editor_tts_speed_is_honoured(client: Any, tmp_path: Path) -> None:
    text = "It is going to rain tomorrow in the morning."
    normal, fast = (_botserver_tts(client, text, "joe", speed, "en") for speed in (1.0, 2.0))
    assert normal.status_code == fast.status_code == 200
    assert _saved_as_mp3(fast.content, tmp_path) < 0.7 * _saved_as_mp3(normal.content, tmp_path)


def test_editor_tts_botservers_default_voice(client: Any, tmp_path: Path) -> None:
    # handlers/audio.rs:91-93: what botserver sends when its caller chose nothing
    response = _botserver_tts(client, "Hello.", "alloy", 1.0, "en")
    assert response.status_code == 200, response.text
    assert _saved_as_mp3(response.content, tmp_path) > 0.2


def test_editor_tts_error_is_text_botserver_can_show(client: Any) -> None:
    # effects.rs:185-188: botserver shows the body's text; it must say what was wrong
    response = _botserver_tts(client, "", "joe", 1.0, "en")
    assert response.status_code == 400
    assert "text" in response.text
    assert response.json()["error"]["param"] == "text"
    assert io.BytesIO(response.content).read(1) == b"{"  # never audio bytes on failure
    assert audio.CONTENT_TYPES["mp3"] not in response.headers["content-type"]
