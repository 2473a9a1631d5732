"""botserver replay: the calls whose input is named by path or URL, built as botserver's Rust
code builds them and read back as it reads them (generalbots/generalbots, commit f59afde,
2026-05-19, under botserver/crates/).

The served files come from a local HTTP server on 127.0.0.1 (allowed by a CIDR entry of
BOTMODELS_FETCH_ALLOW) or a directory of BOTMODELS_FETCH_ROOTS: the service's fetcher is
swapped for one with those settings for the length of a test.

Keys: SCAN BARCODE sends `X-API-Key` (its configured key). The video editor sends none; it
reaches botmodels keyless through BOTMODELS_TRUSTED_NETWORKS, which the test client's peer
(not an IP address) is not in, so these tests send the key the editor's deployment would not
need (`_editor_headers`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from botmodels.editor.beats import SAMPLE_RATE
from botmodels.speech import audio
from tests.conftest import KEY, auth
from tests.helpers import assert_error
from tests.speech_helpers import click_track, wer
from tests.vision_media import png_bytes, symbol_image

SENTENCE = "Please send the invoice to the finance team before Friday."


def _editor_headers() -> dict[str, str]:
    """The editor's request headers: reqwest's `.json()` sets the type; the key is the test's
    stand-in for a trusted network (module docstring)."""
    return {"Content-Type": "application/json", **auth()}


def _scan_barcode(client: Any, image_path: str) -> Any:
    """botbasic_data/src/keywords/products.rs:320-341 (scan_barcode): POST
    {host}/api/barcode/scan, `X-API-Key` (the configured key), `.json({image_path, bot_id})`,
    a 30 s client timeout; the body is read as text and parsed as JSON, falling back to
    `{"data": text}`, and handed to the script whole."""
    response = client.post(
        "/api/barcode/scan",
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        content=json.dumps(
            {"image_path": image_path, "bot_id": "00000000-0000-0000-0000-000000000000"}
        ),
    )  # botserver's 30 s timeout: the fetch's own limit (BOTMODELS_FETCH_TIMEOUT_S) is 30 s
    try:
        parsed = json.loads(response.text)
    except ValueError:
        parsed = {"data": response.text}
    return response.status_code, parsed


def test_scan_barcode_by_path(fetching: Any, file_server: tuple[Path, str]) -> None:
    """products.rs:320-341: `image_path` is a file on botserver's side, here under the roots."""
    root, _ = file_server
    (root / "product.png").write_bytes(png_bytes(symbol_image("EAN13", "5901234123457")))
    status, answer = _scan_barcode(fetching, str(root / "product.png"))
    assert status == 200, answer
    assert answer["success"] is True
    assert answer["count"] == 1
    assert answer["barcodes"][0]["data"] == "5901234123457"
    assert answer["barcodes"][0]["type"] == "EAN13"


def test_scan_barcode_by_url(fetching: Any, file_server: tuple[Path, str]) -> None:
    """products.rs:320-341: `image_path` may be a URL; the answer is /api/vision/barcode's."""
    root, base = file_server
    (root / "box.png").write_bytes(png_bytes(symbol_image("Code128", "SKU-42")))
    status, answer = _scan_barcode(fetching, f"{base}/box.png")
    assert status == 200, answer
    assert [(b["data"], b["type"]) for b in answer["barcodes"]] == [("SKU-42", "CODE128")]
    # no code in the picture: a 200 that says so, as /api/vision/barcode answers
    (root / "blank.png").write_bytes(png_bytes(symbol_image("Code128", "x").point(lambda _: 255)))
    status, answer = _scan_barcode(fetching, f"{base}/blank.png")
    assert status == 200
    assert answer == {
        "success": False,
        "barcodes": [],
        "count": 0,
        "error": "No barcode found in image",
    }


def test_scan_barcode_refusals(client: Any, fetching: Any, file_server: tuple[Path, str]) -> None:
    """products.rs:338-341 hands any body to the script: errors are the one JSON shape."""
    root, base = file_server
    status, answer = _scan_barcode(fetching, f"{root}/../outside.png")
    assert status == 400
    assert "BOTMODELS_FETCH_ROOTS" in answer["error"]["message"]
    status, answer = _scan_barcode(fetching, "http://169.254.169.254/latest/meta-data/")
    assert status == 400
    assert answer["error"]["param"] == "image_path"
    (root / "notes.txt").write_bytes(b"not an image")
    status, answer = _scan_barcode(fetching, f"{base}/notes.txt")
    assert status == 415


def test_url_inputs_are_refused_by_default(client: Any) -> None:
    """With BOTMODELS_FETCH_ALLOW and BOTMODELS_FETCH_ROOTS unset, a 400 names the setting."""
    response = client.post(
        "/api/audio/waveform",
        json={"audio_url": "http://127.0.0.1:9/a.wav", "samples_per_second": 10},
        headers=auth(),
    )
    assert "BOTMODELS_FETCH_ALLOW" in assert_error(response, 400)["message"]
    response = client.post(
        "/api/barcode/scan", json={"image_path": "/srv/a.png", "bot_id": "b"}, headers=auth()
    )
    assert "BOTMODELS_FETCH_ROOTS" in assert_error(response, 400)["message"]


def test_transcribe_by_url(fetching: Any, file_server: tuple[Path, str]) -> None:
    """botvideo/src/engine/effects.rs:53-110 (transcribe_audio): POST
    {BOTMODELS_URL}/api/audio/transcribe `{audio_url: clip.source_url, language: "auto",
    word_timestamps: true}`, no key, no timeout; reads `segments[].start/end` as seconds
    (x1000 to ms), `text`, `confidence` (default 0.9), and `language` (default "en")."""
    root, base = file_server
    spoken = fetching.post(
        "/v1/audio/speech", json={"input": SENTENCE, "response_format": "wav"}, headers=auth()
    )
    assert spoken.status_code == 200, spoken.text
    (root / "clip.wav").write_bytes(spoken.content)
    response = fetching.post(
        "/api/audio/transcribe",
        content=json.dumps(
            {"audio_url": f"{base}/clip.wav", "language": "auto", "word_timestamps": True}
        ),
        headers=_editor_headers(),
    )
    assert response.status_code == 200, response.text
    result = response.json()
    segments = [
        {
            "start_ms": int(s["start"] * 1000),
            "end_ms": int(s["end"] * 1000),
            "text": s["text"],
            "confidence": s["confidence"],
        }
        for s in result["segments"]
    ]
    assert segments
    assert wer(SENTENCE, " ".join(s["text"] for s in segments)) <= 0.2
    assert result["language"] == "en"
    duration_ms = len(audio.decode(spoken.content, max_seconds=60)) * 1000 // 16_000
    assert 0 <= segments[0]["start_ms"] < segments[-1]["end_ms"] <= duration_ms + 100
    assert all(0.0 < s["confidence"] <= 1.0 for s in segments)
    words = [w for s in result["segments"] for w in s["words"]]
    assert len(words) >= 8  # CTranslate2 Whisper: word times asked for, given


def test_waveform_by_url(fetching: Any, file_server: tuple[Path, str]) -> None:
    """botvideo/src/engine/chat_ai.rs:238-275 (generate_waveform): POST
    {BOTMODELS_URL}/api/audio/waveform `{audio_url: track.source_url, samples_per_second: 10}`,
    no key; reads `samples` (f64 list), `duration_ms` (i64), `sample_rate` (i64, default 10:
    the envelope's values per second)."""
    root, base = file_server
    rate = 16_000
    t = np.arange(rate, dtype=np.float32) / rate
    tone = np.concatenate([np.zeros(rate, np.float32), 0.5 * np.sin(2 * np.pi * 440 * t)])
    (root / "track.wav").write_bytes(audio.wav_bytes(tone.astype(np.float32), rate))
    response = fetching.post(
        "/api/audio/waveform",
        content=json.dumps({"audio_url": f"{base}/track.wav", "samples_per_second": 10}),
        headers=_editor_headers(),
    )
    assert response.status_code == 200, response.text
    result = response.json()
    samples = [float(v) for v in result["samples"]]
    assert int(result["duration_ms"]) == 2000
    assert int(result["sample_rate"]) == 10
    assert len(samples) == 20
    assert max(samples[:10]) == 0.0
    assert all(v == pytest.approx(0.5, abs=0.02) for v in samples[10:])
    # a rate out of bounds is a 400 naming the field, before anything is fetched
    response = fetching.post(
        "/api/audio/waveform",
        json={"audio_url": f"{base}/track.wav", "samples_per_second": 100_000},
        headers=_editor_headers(),
    )
    assert assert_error(response, 400)["param"] == "samples_per_second"


def test_detect_beats_by_url(fetching: Any, file_server: tuple[Path, str]) -> None:
    """botvideo/src/engine/chat_ai.rs:193-236 (detect_beats): POST
    {BOTMODELS_URL}/api/audio/detect-beats `{audio_url: track.source_url, sensitivity}` (0.5
    unless its caller chose one), no key; reads `beats[].time_ms` (i64), `strength` (f64, 1.0
    when absent), `type` (string, "beat" when absent) and `tempo_bpm` (f64, 120 when absent)."""
    root, base = file_server
    track, clicks = click_track(120.0, amplitudes=(1.0, 0.8, 0.8, 0.8))
    (root / "beat.wav").write_bytes(audio.wav_bytes(track, SAMPLE_RATE))
    response = fetching.post(
        "/api/audio/detect-beats",
        content=json.dumps({"audio_url": f"{base}/beat.wav", "sensitivity": 0.5}),
        headers=_editor_headers(),
    )
    assert response.status_code == 200, response.text
    result = response.json()
    tempo = float(result.get("tempo_bpm", 120.0))
    beats = [
        (int(b["time_ms"]), float(b.get("strength", 1.0)), str(b.get("type", "beat")))
        for b in result["beats"]
    ]
    assert tempo == pytest.approx(120.0, abs=2.0)
    found = np.array([t for t, _, _ in beats]) / 1000
    assert all(np.min(np.abs(found - c)) <= 0.05 for c in clicks)
    assert {kind for _, _, kind in beats} == {"beat", "downbeat"}
    assert all(0.0 <= strength <= 1.0 for _, strength, _ in beats)
    # a sensitivity out of range is a 400 naming the field
    response = fetching.post(
        "/api/audio/detect-beats",
        json={"audio_url": f"{base}/beat.wav", "sensitivity": 7},
        headers=_editor_headers(),
    )
    assert assert_error(response, 400)["param"] == "sensitivity"
