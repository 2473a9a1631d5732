"""The embeddings runner on its tiny model and on the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from botmodels.config import Settings
from botmodels.store import (
    find_stored,
)
from runners.embeddings import EmbeddingsRunner, _float32_model, build_tiny, export_onnx

# The offline profile's real model, with the ONNX graph its import exported.
OFFLINE = "embeddings-all-minilm-l6-v2:latest"


@pytest.fixture(scope="module", params=["onnx", "torchscript"])
def embedder(tiny_runner: Callable[..., Any], request: pytest.FixtureRequest) -> EmbeddingsRunner:
    """The tiny model on each engine that the CPU default can pick."""
    runner: EmbeddingsRunner = tiny_runner("embeddings", engine=request.param)
    assert runner.engine == request.param
    return runner


def test_runner_mean_pooling_and_normalisation_are_exact(embedder: EmbeddingsRunner) -> None:
    import torch

    texts = ["hello world", "the cat sits on the mat today"]
    batch = embedder.embed(texts)
    tokenizer, model = embedder._tokenizer, _float32_model(embedder.model_dir)
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
    export_onnx(tmp_path)
    runner = EmbeddingsRunner(tmp_path, quantization="none", device="cpu")
    runner.load()
    assert (runner.pooling, runner.engine) == ("cls", "onnx")
    assert runner.embed(["hello"]).vectors.shape == (1, 64)
    eager = EmbeddingsRunner(tmp_path, quantization="none", device="cpu", engine="eager")
    eager.load()
    texts = ["hello", "the cat sits on the mat"]
    np.testing.assert_allclose(runner.embed(texts).vectors, eager.embed(texts).vectors, atol=1e-5)


def test_onnx_engine_matches_eager_on_the_real_model(offline_store: None) -> None:
    """The import exported the graph; the default engine runs it and gives the eager vectors
    on shapes the export and the load check never saw."""
    stored = find_stored(OFFLINE)
    assert stored is not None
    assert len(stored.info.labels["export_sha256"]) == 64
    onnx = EmbeddingsRunner(Path(stored.path), quantization="none", device="cpu", threads=2)
    onnx.load()
    eager = EmbeddingsRunner(Path(stored.path), quantization="none", device="cpu", engine="eager")
    eager.load()
    assert (onnx.engine, onnx.dtype, onnx.compute) == ("onnx", "float32", "onnx, 2 thread(s)")
    assert onnx._model is None  # the PyTorch reference was dropped after the check
    texts = ["cat", "hello there", "word " * 300, "A kitten rests on a rug.", "Olá, tudo bem?"]
    for batch in (texts, texts[:1], texts[1:3]):
        got, want = onnx.embed(batch), eager.embed(batch)
        np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
        assert got.tokens == want.tokens


def test_onnx_int8_keeps_the_bar_or_runs_float32(
    offline_store: None, caplog: pytest.LogCaptureFixture
) -> None:
    """int8 only where it keeps cosine 0.99 to float32; where this CPU's int8 kernels miss it,
    the float32 graph runs and says so."""
    stored = find_stored(OFFLINE)
    assert stored is not None
    fp32 = EmbeddingsRunner(Path(stored.path), quantization="none", device="cpu")
    fp32.load()
    int8 = EmbeddingsRunner(Path(stored.path), quantization="int8", device="cpu")
    int8.load()
    texts = ["The cat sits on the mat.", "Stocks fell sharply today.", "Quero pagar a fatura."]
    cos = (int8.embed(texts).vectors * fp32.embed(texts).vectors).sum(axis=1)
    assert int8.engine == "onnx"
    if int8.dtype == "int8":
        assert int8.quantization == "int8"
        assert (cos >= 0.99).all(), cos
        assert (cos < 1 - 1e-7).any(), cos  # and really int8
    else:
        assert (int8.dtype, int8.quantization) == ("float32", "none")
        assert "ONNX int8 differs from PyTorch float32" in caplog.text


def test_a_graph_that_differs_from_the_weights_falls_back_to_pytorch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The load check, not the file's presence, decides: a graph exported before the weights
    changed is refused with a log line, and so is one that does not open."""
    from transformers import BertModel

    build_tiny(tmp_path)
    export_onnx(tmp_path)
    model = BertModel.from_pretrained(tmp_path)
    model.embeddings.word_embeddings.weight.data.mul_(-1.0)
    model.save_pretrained(tmp_path)
    runner = EmbeddingsRunner(tmp_path, quantization="none", device="cpu")
    runner.load()
    assert runner.engine == "torchscript"
    assert "ONNX float32 differs from PyTorch float32" in caplog.text
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"not a graph")
    runner = EmbeddingsRunner(tmp_path, quantization="none", device="cpu", engine="onnx")
    runner.load()
    assert runner.engine == "torchscript"
    assert "ONNX graph unusable" in caplog.text


@pytest.mark.parametrize("quantization", ["int8", "4bit"])
def test_quantized_runner_stays_close_to_fp32(
    embedder: EmbeddingsRunner, quantization: Any
) -> None:
    runner = EmbeddingsRunner(
        embedder.model_dir, quantization=quantization, device="cpu", engine=embedder.engine
    )
    runner.load()
    texts = ["hello world", "the cat sits on the mat"]
    cos = (runner.embed(texts).vectors * embedder.embed(texts).vectors).sum(axis=1)
    assert (cos > 0.9).all(), cos


def test_runner_uses_a_checked_torchscript_trace_of_the_real_model(offline_store: None) -> None:
    stored = find_stored(OFFLINE)
    assert stored is not None
    traced = EmbeddingsRunner(
        Path(stored.path), quantization="none", device="cpu", engine="torchscript"
    )
    traced.load()
    eager = EmbeddingsRunner(Path(stored.path), quantization="none", device="cpu", engine="eager")
    eager.load()
    assert (traced.engine, eager.engine) == ("torchscript", "eager")
    # shapes the trace never saw: one word, and a padded batch with a long text in it
    for texts in (["cat"], ["hello there", "word " * 200, "A kitten rests on a rug."]):
        got, want = traced.embed(texts), eager.embed(texts)
        np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
        assert got.tokens == want.tokens


def test_int8_runner_is_traced_too(embedder: EmbeddingsRunner) -> None:
    runner = EmbeddingsRunner(
        embedder.model_dir, quantization="int8", device="cpu", engine="torchscript"
    )
    runner.load()
    assert (runner.engine, runner.dtype) == ("torchscript", "float32")
    eager = EmbeddingsRunner(embedder.model_dir, quantization="int8", device="cpu", engine="eager")
    eager.load()
    texts = ["hello world", "the cat sits on the mat today"]
    np.testing.assert_allclose(runner.embed(texts).vectors, eager.embed(texts).vectors, atol=1e-5)


def test_cpu_workers_split_a_batch_and_give_the_one_team_result(offline_store: None) -> None:
    import threading

    import torch

    stored = find_stored(OFFLINE)
    assert stored is not None
    path = Path(stored.path)
    torch.set_num_threads(2)
    traced: dict[str, Any] = {"quantization": "none", "device": "cpu", "engine": "torchscript"}
    one = EmbeddingsRunner(path, workers=1, threads=2, **traced)
    one.load()
    two = EmbeddingsRunner(path, workers=2, threads=2, **traced)
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

    stored = find_stored(OFFLINE)
    assert stored is not None
    runner = EmbeddingsRunner(
        Path(stored.path),
        quantization="none",
        device="cpu",
        engine="torchscript",
        workers=2,
        threads=2,
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
    def workers(engine: Any = "torchscript", **kwargs: Any) -> int:
        runner = EmbeddingsRunner(embedder.model_dir, quantization="none", engine=engine, **kwargs)
        runner.load()
        return runner.workers

    assert workers(device="cpu", workers=2, threads=2) == 2
    assert workers(device="cpu", workers=4, threads=2) == 2  # never more than the threads
    assert workers(device="cpu", workers=2, threads=1) == 1
    assert workers(device="cpu", workers=2, threads=None) == 1  # no thread budget given
    assert workers("eager", device="cpu", workers=2, threads=2) == 1  # eager: GIL
    assert workers("onnx", device="cpu", workers=2, threads=2) == 1  # one session, all threads


def test_batches_at_once_follows_the_runners_workers() -> None:
    from botmodels.embeddings.front import batches_at_once

    def count(**kwargs: Any) -> int:
        return batches_at_once(Settings(device="cpu", threads=2, **kwargs))

    assert count() == 1  # the default: one team, one batch at a time
    assert count(embeddings_workers=2) == 1  # the ONNX engine: one session
    assert count(embeddings_workers=2, embeddings_engine="torchscript") == 2
    assert count(embeddings_workers=8, embeddings_engine="torchscript") == 2
    assert count(embeddings_workers=2, embeddings_engine="eager") == 1
    assert (
        count(embeddings_workers=2, embeddings_engine="torchscript", embeddings_torchscript=False)
        == 1
    )
    assert count(embeddings_workers=2, embeddings_url="http://other:8089") == 1
    assert batches_at_once(Settings(device="cpu", threads=1, embeddings_workers=2)) == 1


# --- the multilingual models' paths: a stored prefix, SentencePiece, XLM-RoBERTa ---------------
def _staged(tmp_path: Path, build: Callable[[Path], None], **manifest: Any) -> Path:
    """The folder the import stores for a `source = "local"` entry over `build`'s files (the
    manifest's keys applied, the ONNX graph exported, as the import does)."""
    from botmodels.store import ModelSpec, stage

    source = tmp_path / "source"
    source.mkdir()
    build(source)
    spec = ModelSpec(
        runner="embeddings",
        profile="test",
        name="embeddings-test",
        source="local",
        quantization="none",
        path=str(source),
        **manifest,
    )
    staging = tmp_path / "staging"
    staging.mkdir()
    folder, _, _ = stage(spec, staging, {})
    export_onnx(folder)
    return folder


def test_the_manifest_prefix_is_stored_and_put_before_every_input(tmp_path: Path) -> None:
    """e5's `prefix = "query: "`: written as sentence-transformers' default prompt, so the stored
    folder alone carries it; each input is embedded as prefix + text, and its tokens (what the
    model read) are counted in `tokens`."""
    from tests.hub_models import _e5_small

    folder = _staged(tmp_path, _e5_small, prefix="query: ")
    stored = json.loads((folder / "config_sentence_transformers.json").read_text("utf-8"))
    assert stored["prompts"][stored["default_prompt_name"]] == "query: "
    assert not (tmp_path / "source" / "config_sentence_transformers.json").exists()

    runner = EmbeddingsRunner(folder, quantization="none", device="cpu", engine="eager")
    runner.load()
    assert runner.prefix == "query: "
    texts = ["qual é a capital do Brasil?", "the cat sits on the mat"]
    batch = runner.embed(texts)
    tokenizer = runner._tokenizer
    assert batch.tokens == [len(tokenizer("query: " + t)["input_ids"]) for t in texts]
    assert all(n > len(tokenizer(t)["input_ids"]) for n, t in zip(batch.tokens, texts, strict=True))

    # the same vectors as a model without a prefix given the prefixed texts
    (folder / "config_sentence_transformers.json").unlink()
    plain = EmbeddingsRunner(folder, quantization="none", device="cpu", engine="eager")
    plain.load()
    assert plain.prefix == ""
    np.testing.assert_allclose(
        batch.vectors, plain.embed(["query: " + t for t in texts]).vectors, atol=1e-5
    )
    assert not np.allclose(batch.vectors, plain.embed(texts).vectors, atol=1e-3)


def test_a_prefix_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    from botmodels.store import ManifestError, load_manifest

    manifest = tmp_path / "models.toml"
    manifest.write_text(
        '[embeddings.x]\nname = "e"\nsource = "tiny"\nquantization = "none"\nprefix = 1\n',
        encoding="utf-8",
    )
    with pytest.raises(ManifestError, match="prefix must be a string"):
        load_manifest(manifest)


@pytest.mark.parametrize("repo", ["e5-bert-sentencepiece", "bge-m3-xlm-roberta"])
def test_onnx_engine_matches_eager_on_the_multilingual_architectures(
    tmp_path: Path, repo: str
) -> None:
    """BERT with XLM-R's SentencePiece tokenizer (e5, mean pooling) and XLM-RoBERTa, whose
    position ids start after the padding id and skip padded tokens (bge-m3, CLS pooling):
    the exported graph passes the load-time check, and gives eager's vectors on a padded
    batch of Portuguese and English."""
    from tests.hub_models import _bge_m3, _e5_small

    build, pooling = (_e5_small, "mean") if repo.startswith("e5") else (_bge_m3, "cls")
    folder = _staged(tmp_path, build)
    onnx = EmbeddingsRunner(folder, quantization="none", device="cpu", engine="onnx")
    onnx.load()
    assert onnx.engine == "onnx"  # not the PyTorch fallback: the check passed
    assert onnx.pooling == pooling
    eager = EmbeddingsRunner(folder, quantization="none", device="cpu", engine="eager")
    eager.load()
    texts = ["o gato está no tapete", "Lisbon", "qual é a capital do Brasil? " * 5]
    got, want = onnx.embed(texts), eager.embed(texts)
    # the pooling the repo's 1_Pooling names: the first token's state, or the masked mean
    import torch

    encoded = eager._tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = _float32_model(folder)(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    pooled = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
    expected = torch.nn.functional.normalize(pooled, dim=1).numpy()
    np.testing.assert_allclose(want.vectors, expected, atol=1e-5)
    assert got.tokens == want.tokens
    assert len(set(got.tokens)) == 3  # padded: three lengths in one batch
    np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-4)
    # and a text's vector does not depend on the batch's padding
    np.testing.assert_allclose(got.vectors[1], onnx.embed([texts[1]]).vectors[0], atol=1e-4)
