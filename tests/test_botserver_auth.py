"""botserver's keyless calls, replayed against real `bentoml serve` processes.

Four botserver calls send no key and no timeout, with the raw file as an
`application/octet-stream` body. Each test builds its request exactly as the Rust code does and
reads the answer the way it does: from a trusted network (BOTMODELS_TRUSTED_NETWORKS =
127.0.0.1/32, the test's own address) it is a 200 with the field botserver reads; from anywhere
else, a 401 that names the setting.

Sources (generalbots/generalbots at 2026-05-19, GeneralBots/botserver at 2026-04-18):
- HEAR AS QRCODE: `botserver/crates/botbasic_core/src/keywords/hearing/processing.rs:157-184`
  (GeneralBots/botserver `src/basic/keywords/hearing/processing.rs:157-184`);
- HEAR AS AUDIO: same file, lines 205-233;
- HEAR AS VIDEO: same file, lines 254-282;
- the OCR keyword: `botserver/crates/botbasic_ai/src/keywords/ai_tools.rs:207-227`
  (GeneralBots/botserver `src/basic/keywords/ai_tools.rs:213-233`).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from botmodels.speech import audio
from tests.conftest import KEY, Server
from tests.vision_media import png_bytes, symbol_image, text_image, video_bytes

pytestmark = pytest.mark.serve

# reqwest::Client::new() plus `.header("Content-Type", "application/octet-stream")`: no key, no
# timeout.
OCTET_STREAM = {"Content-Type": "application/octet-stream"}


NO_TIMEOUT = None  # as botserver's clients


def _post(base: str, path: str, body: bytes) -> httpx.Response:
    no_timeout = NO_TIMEOUT
    return httpx.post(f"{base}{path}", content=body, headers=OCTET_STREAM, timeout=no_timeout)


@pytest.fixture(scope="module")
def trusted(offline_store: None) -> Iterator[Server]:
    """botserver next door: the README's setup (tiny random models: fields, not content)."""
    server = Server(
        {
            "BOTMODELS_PROFILE": "tiny",
            "BOTMODELS_RUNNERS": "vision,ocr,stt,tts",
            "BOTMODELS_TRUSTED_NETWORKS": "127.0.0.1/32,::1/128",
            # DETECT and SCAN BARCODE's default key, next to the real one (README, Authentication)
            "BOTMODELS_API_KEYS": f"{KEY},starter",
            "BOTMODELS_ALLOW_SHORT_KEYS": "true",
        }
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Trusts 10.0.0.0/8 only (not the test's 127.0.0.1); no runner: auth answers first."""
    root = tmp_path_factory.mktemp("untrusted")
    (root / "bentoml").mkdir()
    server = Server(
        {
            "BOTMODELS_RUNNERS": "",
            "BOTMODELS_HOME": str(root / "home"),
            "BENTOML_HOME": str(root / "bentoml"),
            "BOTMODELS_TRUSTED_NETWORKS": "10.0.0.0/8",
        }
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _qr_png() -> bytes:
    return png_bytes(symbol_image("QRCode", "https://pragmatismo.com.br/ticket/42"))


def _speech_wav() -> bytes:
    t = np.arange(16_000 * 2) / 16_000
    samples = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return audio.wav_bytes(samples, 16_000)


def _video_mp4() -> bytes:
    return video_bytes("mp4", "libx264", frames=12)


def _text_png() -> bytes:
    return png_bytes(text_image(["INVOICE 2024", "TOTAL 42"]))


CALLS = [
    ("/api/vision/qrcode", _qr_png),
    ("/api/speech/to-text", _speech_wav),
    ("/api/vision/describe-video", _video_mp4),
    ("/ocr", _text_png),
]


def test_hear_as_qrcode(trusted: Server) -> None:
    """processing.rs:157-184: `result.get("data").and_then(|d| d.as_str())` is the answer."""
    response = _post(trusted.url, "/api/vision/qrcode", _qr_png())
    assert response.status_code == 200, response.text
    assert response.json()["data"] == "https://pragmatismo.com.br/ticket/42"


def test_hear_as_audio(trusted: Server) -> None:
    """processing.rs:205-233: `text` as a string; `language` and `confidence` kept as they are."""
    response = _post(trusted.url, "/api/speech/to-text", _speech_wav())
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["text"], str)
    assert "language" in body
    assert isinstance(body["confidence"], float)


def test_hear_as_video(trusted: Server) -> None:
    """processing.rs:254-282: `description` as a string, `frame_count` kept."""
    response = _post(trusted.url, "/api/vision/describe-video", _video_mp4())
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["description"], str)
    assert body["description"]
    assert body["frame_count"] == 8


def test_ocr_keyword(trusted: Server) -> None:
    """ai_tools.rs:207-227: `response["text"].as_str()`, whatever the status (no check)."""
    response = _post(trusted.url, "/ocr", _text_png())
    assert response.status_code == 200, response.text
    assert "INVOICE" in response.json()["text"]


@pytest.mark.parametrize(("path", "media"), CALLS, ids=[path for path, _ in CALLS])
def test_the_same_calls_from_an_untrusted_network_are_401_naming_the_setting(
    untrusted: Server, path: str, media: object
) -> None:
    """The same requests; botserver reports "Failed to …" on a non-2xx, and an operator reads
    botmodels' answer for why."""
    assert callable(media)
    response = _post(untrusted.url, path, media())
    assert response.status_code == 401
    error = response.json()["error"]
    assert "BOTMODELS_TRUSTED_NETWORKS" in error["message"]
    assert "127.0.0.1" in error["message"]  # the address it came from


def test_x_forwarded_for_from_loopback_is_not_believed(untrusted: Server) -> None:
    """uvicorn would take a loopback peer's X-Forwarded-For as the client (botmodels/patches.py,
    workaround 17): 10.1.2.3 is trusted, but the TCP peer, 127.0.0.1, is not a trusted proxy."""
    response = httpx.post(
        f"{untrusted.url}/api/ping", json={}, headers={"X-Forwarded-For": "10.1.2.3"}
    )
    assert response.status_code == 401
    assert "127.0.0.1" in response.json()["error"]["message"]


def test_a_wrong_key_from_a_trusted_network_is_401(trusted: Server) -> None:
    wrong = {"X-API-Key": "wrong-key-0123456789abcdef"}
    response = httpx.post(f"{trusted.url}/api/ping", json={}, headers=wrong)
    assert response.status_code == 401
    assert httpx.post(f"{trusted.url}/api/ping", json={}).status_code == 200


def test_the_start_up_log_names_the_trusted_networks(trusted: Server) -> None:
    assert "BOTMODELS_TRUSTED_NETWORKS=127.0.0.1/32,::1/128" in trusted.output()


def test_video_editor_tts_sends_no_key(trusted: Server) -> None:
    """botserver/crates/botvideo/src/engine/effects.rs:163-201 (generate_tts): reqwest with no
    key and no timeout posts `.json({text, voice, speed, language})` to
    {BOTMODELS_URL}/api/audio/tts and writes the answer's bytes to `tts_<uuid>.mp3`;
    handlers/audio.rs:91-93 default the voice to `alloy`, speed 1.0, language `en`."""
    response = httpx.post(
        f"{trusted.url}/api/audio/tts",
        json={"text": "Hello from the editor.", "voice": "alloy", "speed": 1.0, "language": "en"},
        timeout=NO_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/mpeg"
    decoded = audio.decode(response.content, max_seconds=60)  # what ffprobe then reads
    assert decoded.size > 0


def test_detect_with_botservers_default_key_starter(trusted: Server) -> None:
    """botserver/crates/botbasic_data/src/keywords/detect.rs:113-135: POST
    {BOTMODELS_HOST}/api/detect with `X-API-Key: ` + env BOTMODELS_API_KEY, default `starter`;
    a non-2xx answer fails the script, a 2xx one is kept as text."""
    rows = [{"month": m, "amount": 100 + (m % 3)} for m in range(1, 24)] + [
        {"month": 24, "amount": 900}
    ]
    response = httpx.post(
        f"{trusted.url}/api/detect",
        headers={"X-API-Key": "starter"},
        json={"data": rows, "value_field": "amount"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["anomalies_found"] >= 1
    assert [a["index"] for a in answer["anomalies"]][-1] == 23
