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
from runners.embeddings import EmbeddingsRunner, build_tiny


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
