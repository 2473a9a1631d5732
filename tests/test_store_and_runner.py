"""Model store import, manifest, runner pool, and the embeddings runner on a tiny model."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from botmodels.config import Settings
from botmodels.pool import RunnerPool
from botmodels.store import (
    ManifestError,
    ModelSpec,
    find_stored,
    import_spec,
    load_manifest,
    tree_sha256,
)
from runners.embeddings import EmbeddingsRunner, build_tiny

ROOT = Path(__file__).resolve().parent.parent


def test_project_version_matches_service() -> None:
    import service

    pyproject = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "(.+)"', pyproject, re.M)
    assert match is not None
    assert match.group(1) == service.VERSION


def test_manifest_has_every_profile_for_every_runner() -> None:
    from botmodels.config import KNOWN_RUNNERS

    manifest = load_manifest(ROOT / "models.toml")
    for runner in KNOWN_RUNNERS:
        assert set(manifest[runner]) >= {"offline", "cpu", "gpu", "tiny"}, runner
        for profile in ("cpu", "gpu"):
            spec = manifest[runner][profile]
            assert spec.source != "tiny", (runner, profile)  # real models only
            if spec.source == "hub":
                assert spec.repo
                assert spec.revision


def test_manifest_errors_name_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text('[embeddings.offline]\nname = "x"\nsource = "ftp"\nquantization = "none"\n')
    with pytest.raises(ManifestError, match=r"embeddings\.offline: source"):
        load_manifest(bad)


def test_tree_sha256_depends_on_names_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    first = tree_sha256(tmp_path)
    (tmp_path / "a").write_bytes(b"2")
    assert tree_sha256(tmp_path) != first
    (tmp_path / "a").write_bytes(b"1")
    assert tree_sha256(tmp_path) == first
    (tmp_path / "a").rename(tmp_path / "b")
    assert tree_sha256(tmp_path) != first


def test_local_import_is_idempotent_and_labelled(tmp_path: Path, offline_store: None) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    build_tiny(folder)
    spec = ModelSpec(
        runner="embeddings",
        profile="test",
        name="embeddings-local-test",
        source="local",
        quantization="none",
        path=str(folder),
    )
    messages: list[str] = []
    first = import_spec(spec, {}, messages.append)
    second = import_spec(spec, {}, messages.append)
    assert first.tag == second.tag
    assert any("already stored" in m for m in messages)
    labels = first.info.labels
    assert labels["source"] == f"local:{folder}"
    assert labels["sha256"] == tree_sha256(folder)
    assert str(first.tag.version) == labels["sha256"][:20]
    assert labels["synthetic"] == "false"


def test_hub_import_records_the_resolved_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline_store: None
) -> None:
    """The hub path, fed local files: what snapshot_download returns is what gets stored."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "snapshots" / commit
    snapshot.mkdir(parents=True)
    build_tiny(snapshot)
    calls: list[dict[str, Any]] = []

    def fake_snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        return str(snapshot)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    spec = ModelSpec(
        runner="embeddings",
        profile="cpu",
        name="embeddings-hub-test",
        source="hub",
        quantization="int8",
        repo="org/model",
        revision="main",
    )
    stored = import_spec(spec, {}, lambda _: None)
    assert calls[0]["repo_id"] == "org/model"
    assert calls[0]["revision"] == "main"
    assert stored.info.labels["source"] == f"hub:org/model@{commit}"
    assert stored.info.labels["revision"] == commit
    assert stored.info.labels["quantization"] == "int8"
    runner = EmbeddingsRunner(Path(stored.path), quantization="none", device="cpu")
    runner.load()
    assert runner.embed(["hello"]).vectors.shape == (1, 64)


def test_tiny_build_is_deterministic(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    build_tiny(tmp_path / "a")
    build_tiny(tmp_path / "b")
    assert tree_sha256(tmp_path / "a") == tree_sha256(tmp_path / "b")


def test_offline_store_has_real_and_synthetic_models(offline_store: None) -> None:
    real = find_stored("embeddings-all-minilm-l6-v2:latest")
    tiny = find_stored("embeddings-tiny-bert:latest")
    assert real is not None
    assert tiny is not None
    assert real.info.labels["synthetic"] == "false"
    assert tiny.info.labels["synthetic"] == "true"
    assert tiny.info.labels["source"] == "tiny:embeddings"


@pytest.fixture(scope="module")
def embedder(tiny_runner: Callable[..., Any]) -> EmbeddingsRunner:
    runner: EmbeddingsRunner = tiny_runner("embeddings")
    return runner


def test_runner_mean_pooling_and_normalisation_are_exact(embedder: EmbeddingsRunner) -> None:
    import torch

    texts = ["hello world", "the cat sits on the mat today"]
    batch = embedder.embed(texts)
    tokenizer, model = embedder._tokenizer, embedder._model
    for i, text in enumerate(texts):
        encoded = tokenizer([text], return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state[0]
        expected = hidden.mean(dim=0)
        expected = (expected / expected.norm()).numpy()
        np.testing.assert_allclose(batch.vectors[i], expected, atol=1e-5)
        assert batch.tokens[i] == encoded["input_ids"].shape[1]
    # padding in a batch does not change a text's vector
    alone = embedder.embed([texts[0]]).vectors[0]
    np.testing.assert_allclose(batch.vectors[0], alone, atol=1e-5)


def test_tiny_tokenizer_knows_its_words(embedder: EmbeddingsRunner) -> None:
    words = ["hello", "world", "the", "cat"]
    assert embedder._tokenizer.tokenize(" ".join(words)) == words
    different = embedder.embed(["cat", "stocks"]).vectors
    assert not np.allclose(different[0], different[1])


def test_runner_truncates_to_max_seq_length(embedder: EmbeddingsRunner) -> None:
    long_text = "cat " * 1000
    batch = embedder.embed([long_text])
    assert batch.tokens == [embedder.max_seq_length]


def test_runner_cls_pooling_from_config(tmp_path: Path) -> None:
    build_tiny(tmp_path)
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True})
    )
    runner = EmbeddingsRunner(tmp_path, quantization="none", device="cpu")
    runner.load()
    assert runner.pooling == "cls"
    assert runner.embed(["hello"]).vectors.shape == (1, 64)


@pytest.mark.parametrize("quantization", ["int8", "4bit"])
def test_quantized_runner_stays_close_to_fp32(
    embedder: EmbeddingsRunner, quantization: Any
) -> None:
    runner = EmbeddingsRunner(embedder.model_dir, quantization=quantization, device="cpu")
    runner.load()
    texts = ["hello world", "the cat sits on the mat"]
    cos = (runner.embed(texts).vectors * embedder.embed(texts).vectors).sum(axis=1)
    assert (cos > 0.9).all(), cos
    assert runner.quantization == quantization


def _pool_settings(tmp_path: Path, manifest: str, **kwargs: Any) -> Settings:
    path = tmp_path / "models.toml"
    path.write_text(manifest)
    return Settings.model_construct(
        **{**Settings().model_dump(), "manifest": path, "runners": ["good", "bad"], **kwargs}
    )


class GoodRunner:
    dtype = "float32"

    def __init__(self, path: Path, quantization: Any, device: Any) -> None:
        self.path = path

    def load(self) -> None:
        pass


class BrokenRunner(GoodRunner):
    def load(self) -> None:
        raise OSError("weights are corrupt")


def test_pool_reports_a_failed_runner_and_keeps_the_others(
    tmp_path: Path, offline_store: None
) -> None:
    manifest = (
        '[good.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
        '[bad.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
    )
    pool = RunnerPool(_pool_settings(tmp_path, manifest), {"good": GoodRunner, "bad": BrokenRunner})
    assert not pool.settled
    pool.load_all()
    assert pool.settled
    assert pool.slots["good"].state == "ready"
    assert isinstance(pool.local("good"), GoodRunner)
    assert pool.slots["bad"].state == "failed"
    assert pool.slots["bad"].error == "OSError: weights are corrupt"
    from botmodels.errors import RunnerUnavailable

    with pytest.raises(RunnerUnavailable, match="failed to load: OSError"):
        pool.local("bad")
    with pytest.raises(RunnerUnavailable, match="not enabled"):
        pool.local("other")
    described = {d["runner"]: d for d in (s.describe() for s in pool.slots.values())}
    assert described["bad"]["error"] == "OSError: weights are corrupt"
    assert described["good"]["synthetic"] is True


def test_pool_missing_model_says_how_to_import(tmp_path: Path, offline_store: None) -> None:
    manifest = (
        '[good.offline]\nname = "not-imported"\nsource = "tiny"\nquantization = "none"\n'
        '[bad.offline]\nname = "not-imported"\nsource = "tiny"\nquantization = "none"\n'
    )
    pool = RunnerPool(_pool_settings(tmp_path, manifest), {"good": GoodRunner, "bad": GoodRunner})
    pool.load_all()
    error = pool.slots["good"].error or ""
    assert "not in the BentoML store" in error
    assert "scripts/import_models.py offline" in error


def test_settings_reject_unknown_runner() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown runner"):
        Settings(runners="embeddings,telepathy")
    assert Settings(runners="embeddings, embeddings").runners == ["embeddings"]


def test_runner_uses_a_checked_torchscript_trace_of_the_real_model(offline_store: None) -> None:
    stored = find_stored("embeddings-all-minilm-l6-v2:latest")
    assert stored is not None
    traced = EmbeddingsRunner(Path(stored.path), quantization="none", device="cpu")
    traced.load()
    eager = EmbeddingsRunner(
        Path(stored.path), quantization="none", device="cpu", torchscript=False
    )
    eager.load()
    assert (traced.graph, eager.graph) == ("torchscript", "eager")
    # shapes the trace never saw: one word, and a padded batch with a long text in it
    for texts in (["cat"], ["hello there", "word " * 200, "A kitten rests on a rug."]):
        got, want = traced.embed(texts), eager.embed(texts)
        np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
        assert got.tokens == want.tokens


def test_int8_runner_is_traced_too(embedder: EmbeddingsRunner) -> None:
    runner = EmbeddingsRunner(embedder.model_dir, quantization="int8", device="cpu")
    runner.load()
    assert runner.graph == "torchscript"
    eager = EmbeddingsRunner(
        embedder.model_dir, quantization="int8", device="cpu", torchscript=False
    )
    eager.load()
    texts = ["hello world", "the cat sits on the mat today"]
    np.testing.assert_allclose(runner.embed(texts).vectors, eager.embed(texts).vectors, atol=1e-5)


class OneThreadRunner(GoodRunner):
    def load(self) -> None:
        import torch

        torch.set_num_threads(1)  # what `import silero_vad` does, process-wide


def test_pool_restores_torch_threads_a_runner_import_changed(
    tmp_path: Path, offline_store: None
) -> None:
    import torch

    manifest = (
        '[good.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
        '[bad.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
    )
    before = torch.get_num_threads()
    settings = _pool_settings(tmp_path, manifest, threads=2)
    pool = RunnerPool(settings, {"good": OneThreadRunner, "bad": GoodRunner})
    try:
        pool.load_all()
        assert pool.slots["good"].state == "ready"
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_importing_silero_vad_really_sets_one_thread() -> None:
    # The reason for keep_threads: if silero-vad stops doing this, the guard can go.
    import silero_vad

    source = (Path(silero_vad.__file__).parent / "model.py").read_text()
    assert "torch.set_num_threads(1)" in source


def test_cpu_workers_split_a_batch_and_give_the_one_team_result(offline_store: None) -> None:
    import threading

    import torch

    stored = find_stored("embeddings-all-minilm-l6-v2:latest")
    assert stored is not None
    path = Path(stored.path)
    torch.set_num_threads(2)
    one = EmbeddingsRunner(path, quantization="none", device="cpu", workers=1, threads=2)
    one.load()
    two = EmbeddingsRunner(path, quantization="none", device="cpu", workers=2, threads=2)
    two.load()
    assert (one.workers, two.workers) == (1, 2)
    assert two.compute == "torchscript, 2 workers x 1 torch thread(s)"
    assert two._pool is not None
    # Each worker runs one torch thread; every other thread still starts with two.
    assert {two._pool.submit(torch.get_num_threads).result() for _ in range(8)} == {1}
    assert torch.get_num_threads() == 2
    fresh: list[int] = []
    thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert fresh == [2]
    # Shares are cut to their own longest input: a long text in the first half only.
    texts = ["word " * 200, "hello there", "cat", "A kitten rests on a rug.", "x", "y z"]
    shares = two._shares(two._encode(texts))
    assert [share["input_ids"].shape[0] for share in shares] == [3, 3]
    assert shares[0]["input_ids"].shape[1] > shares[1]["input_ids"].shape[1] == 9
    for batch in (texts, ["cat"], texts[:2]):
        got, want = two.embed(batch), one.embed(batch)
        np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
        assert got.tokens == want.tokens


def test_cpu_workers_serve_concurrent_batches(offline_store: None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stored = find_stored("embeddings-all-minilm-l6-v2:latest")
    assert stored is not None
    runner = EmbeddingsRunner(
        Path(stored.path), quantization="none", device="cpu", workers=2, threads=2
    )
    runner.load()
    batches = [[f"sentence number {i} of batch {b}" for i in range(b % 5 + 1)] for b in range(12)]
    alone = [runner.embed(batch).vectors for batch in batches]
    with ThreadPoolExecutor(4) as callers:  # as the dispatcher's batches arrive, unlocked
        together = list(callers.map(lambda batch: runner.embed(batch).vectors, batches))
    for got, want in zip(together, alone, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert runner._in_flight == 0


def test_workers_need_the_cpu_trace_and_more_than_one_thread(
    embedder: EmbeddingsRunner,
) -> None:
    def workers(**kwargs: Any) -> int:
        runner = EmbeddingsRunner(embedder.model_dir, quantization="none", **kwargs)
        runner.load()
        return runner.workers

    assert workers(device="cpu", workers=2, threads=2) == 2
    assert workers(device="cpu", workers=4, threads=2) == 2  # never more than the threads
    assert workers(device="cpu", workers=2, threads=1) == 1
    assert workers(device="cpu", workers=2, threads=None) == 1  # no thread budget given
    assert workers(device="cpu", workers=2, threads=2, torchscript=False) == 1  # eager: GIL


def test_the_app_factory_gets_botmodels_dispatcher_and_hands_the_service_batch_infer() -> None:
    from types import SimpleNamespace

    from botmodels.dispatch import Batcher, wire_service

    bound: list[Any] = []
    service = SimpleNamespace(
        bind_batch_infer=bound.append, batch_concurrency=lambda: {"embed_batch": 2}
    )
    apis = {
        "embed_batch": SimpleNamespace(max_batch_size=32),
        "other": SimpleNamespace(max_batch_size=4),
    }
    factory = SimpleNamespace(
        _service_instance=service,
        batch_infer="the factory's batch_infer",
        dispatchers={"embed_batch": object(), "other": object()},
        service=SimpleNamespace(apis=apis),
    )
    wire_service(factory)
    assert bound == ["the factory's batch_infer"]
    embed, other = factory.dispatchers["embed_batch"], factory.dispatchers["other"]
    assert isinstance(embed, Batcher)
    assert isinstance(other, Batcher)
    assert (embed.max_batch_size, embed.concurrency) == (32, 2)
    assert (other.max_batch_size, other.concurrency) == (4, 1)


def test_batches_at_once_follows_the_runners_workers() -> None:
    from botmodels.embeddings.front import batches_at_once

    def count(**kwargs: Any) -> int:
        return batches_at_once(Settings(device="cpu", threads=2, **kwargs))

    assert count() == 1  # the default: one team, one batch at a time
    assert count(embeddings_workers=2) == 2
    assert count(embeddings_workers=8) == 2
    assert count(embeddings_workers=2, embeddings_torchscript=False) == 1
    assert count(embeddings_workers=2, embeddings_url="http://other:8089") == 1
    assert batches_at_once(Settings(device="cpu", threads=1, embeddings_workers=2)) == 1
