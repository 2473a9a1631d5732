"""The video editor's beat tracker (botmodels/editor/beats.py) on synthetic click tracks, and the
detect-beats front on encoded audio bytes."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import pytest

from botmodels.editor.beats import SAMPLE_RATE, detect_beats
from botmodels.editor.beats_front import beats_from_bytes
from botmodels.errors import InvalidInput, PayloadTooLarge
from botmodels.speech import audio as audio_io
from tests.speech_helpers import click_track


@pytest.mark.parametrize("bpm", [120.0, 90.0])
def test_click_track_tempo_and_every_click(bpm: float) -> None:
    audio, clicks = click_track(bpm)
    result = detect_beats(audio, SAMPLE_RATE, 1.0)
    assert abs(result.tempo_bpm - bpm) <= 2.0
    found = np.array([b.time_ms for b in result.beats]) / 1000.0
    assert len(found) == len(clicks)
    for click in clicks:
        assert np.min(np.abs(found - click)) <= 0.050, click
    assert all(0.0 <= b.strength <= 1.0 for b in result.beats)
    assert {b.type for b in result.beats} == {"downbeat", "beat"}


def test_other_sample_rate() -> None:
    audio, clicks = click_track(120.0, rate=16_000)
    result = detect_beats(audio, 16_000, 1.0)
    assert abs(result.tempo_bpm - 120.0) <= 2.0
    assert len(result.beats) == len(clicks)


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros(5 * SAMPLE_RATE, dtype=np.float32),
        (1e-6 * np.random.default_rng(1).standard_normal(5 * SAMPLE_RATE)).astype(np.float32),
        np.zeros(10, dtype=np.float32),
        np.zeros(0, dtype=np.float32),
    ],
    ids=["silence", "near-silence", "ten-samples", "empty"],
)
def test_silence_has_no_beats(audio: npt.NDArray[np.float32]) -> None:
    result = detect_beats(audio, SAMPLE_RATE, 0.5)
    assert result.beats == []
    assert result.tempo_bpm == 0.0


def test_accents_are_strength_and_downbeats() -> None:
    audio, clicks = click_track(120.0, amplitudes=(1.0, 0.3, 0.3, 0.3))
    result = detect_beats(audio, SAMPLE_RATE, 1.0)
    assert len(result.beats) == len(clicks)
    loud = [b for i, b in enumerate(result.beats) if i % 4 == 0]
    soft = [b for i, b in enumerate(result.beats) if i % 4 != 0]
    assert all(b.type == "downbeat" for b in loud)
    assert all(b.type == "beat" for b in soft)
    assert max(b.strength for b in soft) < min(b.strength for b in loud)


def test_sensitivity_changes_the_count_monotonically() -> None:
    audio, clicks = click_track(120.0, amplitudes=(1.0, 0.3, 0.3, 0.3))
    counts = [len(detect_beats(audio, SAMPLE_RATE, s).beats) for s in np.linspace(0, 1, 11)]
    assert counts == sorted(counts)
    assert counts[0] < counts[-1] == len(clicks)
    # the default (0.5) keeps the accented clicks and drops the soft ones
    assert len(detect_beats(audio, SAMPLE_RATE, 0.5).beats) == len(clicks[::4])


@pytest.mark.parametrize("sensitivity", [-0.1, 1.5])
def test_sensitivity_out_of_range(sensitivity: float) -> None:
    with pytest.raises(ValueError, match="sensitivity"):
        detect_beats(np.zeros(100, dtype=np.float32), SAMPLE_RATE, sensitivity)


# --- the front: encoded bytes in, botserver's fields out -----------------------------------------
def test_front_reads_mp3_bytes() -> None:
    audio, clicks = click_track(120.0)
    mp3 = audio_io.encode(audio, SAMPLE_RATE, "mp3")
    body = asyncio.run(beats_from_bytes(mp3, {"sensitivity": 1}, max_bytes=10**8, max_seconds=60))
    assert abs(body["tempo_bpm"] - 120.0) <= 2.0
    assert len(body["beats"]) == len(clicks)
    first = body["beats"][0]
    assert set(first) == {"time_ms", "strength", "type"}
    assert isinstance(first["time_ms"], int)  # botserver reads it with as_i64()


def test_front_sensitivity_defaults_to_botservers() -> None:
    wav = audio_io.wav_bytes(click_track(120.0, amplitudes=(1.0, 0.3, 0.3, 0.3))[0], SAMPLE_RATE)
    default = asyncio.run(beats_from_bytes(wav, {}, max_bytes=10**8, max_seconds=60))
    explicit = asyncio.run(
        beats_from_bytes(wav, {"sensitivity": 0.5}, max_bytes=10**8, max_seconds=60)
    )
    assert default == explicit


@pytest.mark.parametrize(
    ("body", "data", "param"),
    [
        ({"sensitivity": 2}, b"", "sensitivity"),
        ({"sensitivity": "high"}, b"", "sensitivity"),
        ({"sensitivity": True}, b"", "sensitivity"),
        ({"sensitivity": float("nan")}, b"", "sensitivity"),
        ({}, b"", "audio_url"),
        ({}, b"not audio at all", "audio_url"),
    ],
)
def test_front_bad_input_is_a_400(body: dict[str, object], data: bytes, param: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(beats_from_bytes(data, body, max_bytes=10**8, max_seconds=60))
    assert caught.value.param == param


def test_front_limits_are_413s() -> None:
    wav = audio_io.wav_bytes(click_track(120.0, seconds=4.0)[0], SAMPLE_RATE)
    with pytest.raises(PayloadTooLarge) as caught:
        asyncio.run(beats_from_bytes(wav, {}, max_bytes=10**8, max_seconds=2))
    assert caught.value.param == "audio_url"
    with pytest.raises(PayloadTooLarge):
        asyncio.run(beats_from_bytes(wav, {}, max_bytes=len(wav) - 1, max_seconds=60))
