"""The rerank runner (a cross-encoder) on its tiny random BERT: batching, activation, truncation,
and the same scores as sentence-transformers' CrossEncoder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runners.rerank import RerankRunner, UnsupportedModel, activation_of, build_tiny

PAIRS = [
    ("what is a cat", "a cat is a small animal that sits on the mat"),
    ("hello", "world"),
    ("where is the dog", "stocks fell today and the market is down"),
    ("rerank query", "document"),
    ("who rests on the rug", "the kitten rests on the rug today"),
]


@pytest.fixture(scope="module")
def reranker(tiny_runner: Callable[..., Any]) -> RerankRunner:
    runner: RerankRunner = tiny_runner("rerank")
    return runner


def _logits(runner: RerankRunner, pairs: list[tuple[str, str]]) -> np.ndarray:
    """The eager model's logits, pair by pair, with no padding."""
    import torch

    out = []
    for query, document in pairs:
        encoded = runner._tokenizer(
            [query], [document], truncation=True, max_length=runner.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            out.append(float(runner._model(**encoded).logits[0, 0]))
    return np.array(out)


def test_a_batch_scores_as_its_pairs_one_by_one(reranker: RerankRunner) -> None:
    batch = reranker.predict(PAIRS)
    alone = [reranker.predict([pair]) for pair in PAIRS]
    np.testing.assert_allclose(batch.scores, [a.scores[0] for a in alone], atol=1e-5)
    assert batch.tokens == [a.tokens[0] for a in alone]
    assert len(set(np.round(batch.scores, 4))) > 1  # random weights still tell pairs apart


def test_one_logit_gets_the_sigmoid(reranker: RerankRunner) -> None:
    assert reranker.activation == "sigmoid"
    scores = reranker.predict(PAIRS).scores
    expected = 1 / (1 + np.exp(-_logits(reranker, PAIRS)))
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert ((scores > 0) & (scores < 1)).all()


def test_pairs_are_read_together(reranker: RerankRunner) -> None:
    """[CLS] query [SEP] document [SEP], with the document's token type."""
    encoded = reranker._encode([("hello", "world")])
    ids = encoded["input_ids"][0].tolist()
    assert reranker._tokenizer.convert_ids_to_tokens(ids) == [
        "[CLS]",
        "hello",
        "[SEP]",
        "world",
        "[SEP]",
    ]
    assert encoded["token_type_ids"][0].tolist() == [0, 0, 0, 1, 1]


def test_a_long_pair_is_cut_from_the_longer_side(reranker: RerankRunner) -> None:
    long_document = "the cat sits on the mat " * 50
    batch = reranker.predict([("where is the cat", long_document), ("hello", "world")])
    assert batch.tokens == [reranker.max_length, 5]
    encoded = reranker._encode([("where is the cat", long_document)])
    tokens = reranker._tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    assert tokens[:6] == ["[CLS]", "where", "is", "the", "cat", "[SEP]"]  # the query is whole
    assert tokens[-1] == "[SEP]"
    # longest_first: a long query and a long document are cut to about half each
    both = reranker._encode([("cat " * 100, "dog " * 100)])
    types = both["token_type_ids"][0].tolist()
    assert len(types) == reranker.max_length
    assert abs(types.count(0) - types.count(1)) <= 2


def test_max_length_is_the_smallest_limit(tiny_runner: Callable[..., Any]) -> None:
    runner: RerankRunner = tiny_runner("rerank", max_length=16)
    assert runner.max_length == 16
    assert runner.predict([("cat " * 20, "dog")]).tokens == [16]
    assert tiny_runner("rerank").max_length == 64  # the tiny tokenizer's model_max_length


def test_trace_and_eager_agree(tiny_runner: Callable[..., Any], reranker: RerankRunner) -> None:
    eager: RerankRunner = tiny_runner("rerank", torchscript=False)
    assert (reranker.compute, eager.compute) == ("torchscript", "eager")
    np.testing.assert_allclose(
        reranker.predict(PAIRS).scores, eager.predict(PAIRS).scores, atol=1e-5
    )


def test_same_scores_as_sentence_transformers(reranker: RerankRunner) -> None:
    st = pytest.importorskip("sentence_transformers")
    cross_encoder = st.CrossEncoder(str(reranker.model_dir), device="cpu")
    np.testing.assert_allclose(
        reranker.predict(PAIRS).scores, cross_encoder.predict(PAIRS), atol=1e-5
    )


def _copy_with_config(source: Path, folder: Path, **changes: Any) -> Path:
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_an_activation_named_in_the_config_is_followed(
    reranker: RerankRunner, tmp_path: Path
) -> None:
    """ms-marco-MiniLM-L-6-v2's config names the identity: its scores are the raw logits, as
    CrossEncoder.predict gives them."""
    folder = _copy_with_config(
        reranker.model_dir,
        tmp_path / "identity",
        sbert_ce_default_activation_function="torch.nn.modules.linear.Identity",
    )
    runner = RerankRunner(folder, quantization="none", device="cpu")
    runner.load()
    assert runner.activation == "identity"
    np.testing.assert_allclose(runner.predict(PAIRS).scores, _logits(runner, PAIRS), atol=1e-5)
    st = pytest.importorskip("sentence_transformers")
    np.testing.assert_allclose(
        runner.predict(PAIRS).scores,
        st.CrossEncoder(str(folder), device="cpu").predict(PAIRS),
        atol=1e-5,
    )


def test_activation_rules() -> None:
    class Config:
        pass

    config: Any = Config()
    assert activation_of(config) == "sigmoid"
    config.sbert_ce_default_activation_function = "torch.nn.modules.linear.Identity"
    assert activation_of(config) == "identity"
    config.sentence_transformers = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    assert activation_of(config) == "sigmoid"  # the newer key wins
    config.sentence_transformers = {"activation_fn": "torch.nn.modules.activation.Tanh"}
    with pytest.raises(UnsupportedModel, match="Tanh"):
        activation_of(config)


def test_a_model_with_several_labels_is_refused(tmp_path: Path) -> None:
    build_tiny(tmp_path / "tiny")
    folder = _copy_with_config(
        tmp_path / "tiny",
        tmp_path / "two",
        id2label={"0": "no", "1": "yes"},
        label2id={"no": 0, "yes": 1},
    )
    runner = RerankRunner(folder, quantization="none", device="cpu")
    with pytest.raises(UnsupportedModel, match="one logit; this model has 2"):
        runner.load()


def test_quantization_other_than_none_is_refused(tiny_runner: Callable[..., Any]) -> None:
    with pytest.raises(UnsupportedModel, match="int8"):
        tiny_runner("rerank", quantization="int8")


def test_an_empty_batch_and_a_bad_pair(reranker: RerankRunner) -> None:
    assert reranker.predict([]).scores.shape == (0,)
    with pytest.raises(ValueError, match="pair 1"):
        reranker.predict([("a", "b"), ("a", 3)])  # type: ignore[list-item]
