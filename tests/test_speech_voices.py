"""OpenAI's voice names and BOTMODELS_TTS_VOICE_MAP: `SpeechFrontend.resolve_voice`, and
`/v1/audio/speech` with `voice="alloy"` through the real app (offline profile: Piper `joe`), and
the cpu/gpu profiles' English and Portuguese voices picked by `language` through the routes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from botmodels.config import Settings
from botmodels.errors import InvalidInput
from botmodels.speech.front import OPENAI_VOICES, SpeechFrontend
from tests.conftest import auth
from tests.helpers import assert_error


class _Pool:
    def __init__(self, voices: dict[str, Any] | None) -> None:
        self._runner = None if voices is None else SimpleNamespace(voices=voices)

    def loaded(self, kind: str) -> Any:
        return self._runner


def front(voice_map: str = "", voices: dict[str, Any] | None = None) -> SpeechFrontend:
    settings = Settings(tts_voice_map=voice_map)
    return SpeechFrontend(settings, _Pool(voices), outputs=None, remotes={})  # type: ignore[arg-type]


INSTALLED = {"joe": object(), "faber": object()}


def test_openai_names_speak_as_the_default_voice_of_the_language() -> None:
    speech = front(voices=INSTALLED)
    names = "alloy echo fable onyx nova shimmer ash ballad coral sage verse"
    assert frozenset(names.split()) == OPENAI_VOICES
    for name in OPENAI_VOICES:
        assert speech.resolve_voice(name, "en") is None  # the runner: first `en` voice
        assert speech.resolve_voice(name.upper(), None) is None
    assert speech.resolve_voice(None, "pt") is None


def test_installed_voices_and_unknown_names_pass_through() -> None:
    speech = front(voices=INSTALLED)
    assert speech.resolve_voice("joe", None) == "joe"
    assert speech.resolve_voice("Faber", "pt") == "Faber"
    assert speech.resolve_voice("bogus", None) == "bogus"  # the runner's 400 lists voices
    # a remote runner: its voices are unknown here, the rules are the same
    assert front().resolve_voice("alloy", None) is None
    assert front().resolve_voice("bogus", None) == "bogus"


def test_the_map_overrides_and_adds_aliases() -> None:
    speech = front("alloy=faber, Narrator = joe", voices=INSTALLED)
    assert speech.resolve_voice("alloy", "en") == "faber"
    assert speech.resolve_voice("narrator", None) == "joe"
    assert speech.resolve_voice("nova", None) is None  # not mapped: the default
    assert speech.voice_aliases()["alloy"] == "faber"
    assert speech.voice_aliases()["nova"] is None
    # an installed voice keeps its name even if the map lists it
    assert front("joe=faber", voices=INSTALLED).resolve_voice("joe", None) == "joe"


def test_a_map_to_a_voice_that_is_not_installed_says_so() -> None:
    with pytest.raises(InvalidInput, match="BOTMODELS_TTS_VOICE_MAP") as caught:
        front("alloy=missing", voices=INSTALLED).resolve_voice("alloy", None)
    assert "joe" in caught.value.message


def test_a_malformed_map_refuses_to_start() -> None:
    with pytest.raises(ValidationError, match="BOTMODELS_TTS_VOICE_MAP"):
        Settings(tts_voice_map="alloy")
    with pytest.raises(ValidationError, match="not `alias=voice`"):
        Settings(tts_voice_map="alloy=joe,=joe")


def test_openai_speech_with_alloy_answers_audio(client: Any) -> None:
    response = client.post(
        "/v1/audio/speech",
        headers=auth(),
        json={"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "wav"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("audio/wav")
    assert response.content[:4] == b"RIFF"
    generated = client.post(
        "/api/speech/generate", headers=auth(), json={"prompt": "Hello.", "voice": "nova"}
    )
    assert generated.json()["voice"] == "joe"


def test_other_unknown_voices_are_still_a_400_listing_the_installed(client: Any) -> None:
    response = client.post(
        "/v1/audio/speech", headers=auth(), json={"voice": "bogus", "input": "Hello."}
    )
    error = assert_error(response, 400)
    assert error["param"] == "voice"
    assert "joe" in error["message"]


# --- the cpu/gpu profiles' two voices: English `joe` and Brazilian Portuguese `faber` -----------
@pytest.fixture
def two_voices(client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The served tts runner swapped for one over rhasspy/piper-voices' two-voice layout (as
    the cpu/gpu profiles import it; tests/hub_models.py), loaded on the CPU. The voices its
    results came back with, in order."""
    import service
    from runners.tts import TtsJob, TtsResult, TtsRunner
    from tests.hub_models import _piper_voices

    _piper_voices(tmp_path)
    runner = TtsRunner(tmp_path, quantization="none", device="cpu")
    runner.load()
    # the offline runner loaded first (it loads on its first request), so the swap stays
    assert client.post("/api/speech/generate", headers=auth(), json={"prompt": "Hi."}).is_success
    slot = service._service().pool.slot("tts")
    assert slot is not None
    assert slot.state == "ready"
    monkeypatch.setattr(slot, "instance", runner)
    spoken: list[str] = []
    synthesize = runner.synthesize

    def recording(jobs: list[TtsJob]) -> list[TtsResult]:
        results = synthesize(jobs)
        spoken.extend(r.voice for r in results)
        return results

    monkeypatch.setattr(runner, "synthesize", recording)
    return spoken


def test_portuguese_picks_the_pt_br_voice_through_the_routes(
    client: Any, two_voices: list[str]
) -> None:
    listed = client.get("/api/speech/voices", headers=auth()).json()["voices"]
    assert listed == [
        {"voice": "joe", "language": "en_US", "engine": "piper"},
        {"voice": "faber", "language": "pt_BR", "engine": "piper"},
    ]
    for language, voice in [("pt", "faber"), ("pt-BR", "faber"), ("en", "joe"), (None, "joe")]:
        body = {"prompt": "Olá, bom dia! Como você está?", "language": language}
        response = client.post("/api/speech/generate", headers=auth(), json=body)
        assert response.status_code == 200, response.text
        assert response.json()["voice"] == voice
    # OpenAI's route: its voice names speak as the language's first voice
    openai_bodies: list[dict[str, str]] = [
        {"input": "Olá, bom dia!", "voice": "alloy", "language": "pt-BR"},
        {"input": "Olá, bom dia!", "voice": "nova", "language": "pt"},
        {"input": "Olá, bom dia!", "voice": "faber"},
    ]
    for openai_body in openai_bodies:
        response = client.post(
            "/v1/audio/speech", headers=auth(), json={**openai_body, "response_format": "wav"}
        )
        assert response.status_code == 200, response.text
        assert response.content[:4] == b"RIFF"
    assert two_voices[-3:] == ["faber", "faber", "faber"]
    # a language no voice speaks: a 400 that names what is installed
    error = assert_error(
        client.post(
            "/api/speech/generate", headers=auth(), json={"prompt": "Hola", "language": "pt-PT"}
        ),
        400,
    )
    assert "faber" in error["message"]
