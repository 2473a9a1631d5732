"""/v1/rerank through the real ASGI app and its middleware: the offline profile has no
cross-encoder, so the route scores with the real all-MiniLM-L6-v2 embeddings (labelled); with a
tiny cross-encoder put in the pool, with the rerank runner."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import auth
from tests.helpers import assert_error

QUERY = "How do I reset my password?"
DOCUMENTS = [
    "Stock markets fell sharply today after the announcement.",
    "To reset your password, open Settings, choose Security and click 'Forgot password'.",
    "The cat sits on the mat.",
]


def _rerank(client: Any, **body: Any) -> Any:
    return client.post("/v1/rerank", json=body, headers=auth())


def test_fallback_ranks_the_related_document_first(client: Any) -> None:
    response = _rerank(client, query=QUERY, documents=DOCUMENTS, model="rerank-english-v3.0")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "method", "results", "usage"}
    assert body["method"] == "embeddings"
    assert body["model"] == "embeddings-all-minilm-l6-v2"
    results = body["results"]
    assert results[0]["index"] == 1  # the password document
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > scores[1] + 0.2  # a real model: the related one stands out
    assert all(-1 <= s <= 1 for s in scores)
    assert [r["document"] for r in results] == [{"text": DOCUMENTS[r["index"]]} for r in results]
    assert body["usage"]["total_tokens"] > 20


def test_fallback_score_is_the_cosine_of_the_embeddings(client: Any) -> None:
    body = _rerank(client, query=QUERY, documents=DOCUMENTS).json()
    embedded = client.post("/v1/embeddings", json={"input": [QUERY, *DOCUMENTS]}, headers=auth())
    vectors = np.array([d["embedding"] for d in embedded.json()["data"]], dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = vectors[1:] @ vectors[0]
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    np.testing.assert_allclose([got[i] for i in range(3)], expected, atol=1e-5)
    assert body["usage"]["total_tokens"] == embedded.json()["usage"]["total_tokens"]


def test_top_n_return_documents_and_text_objects(client: Any) -> None:
    documents: list[Any] = [{"text": DOCUMENTS[0], "id": "a"}, DOCUMENTS[1], {"text": DOCUMENTS[2]}]
    body = _rerank(client, query=QUERY, documents=documents, top_n=2, return_documents=False).json()
    assert len(body["results"]) == 2
    assert body["results"][0]["index"] == 1
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])
    everything = _rerank(client, query=QUERY, documents=documents, top_n=50).json()
    assert len(everything["results"]) == 3  # top_n beyond the list: all of it
    assert everything["results"][:2] == [
        dict(r, document={"text": DOCUMENTS[r["index"]]}) for r in body["results"]
    ]


@pytest.fixture
def cross_encoder(client: Any, tiny_runner: Callable[..., Any]) -> Iterator[Any]:
    """The app with the tiny cross-encoder as its rerank runner, for one test."""
    import service
    from botmodels.pool import RunnerSlot

    instance = service._instance
    assert instance is not None
    runner = tiny_runner("rerank")
    slot = RunnerSlot("rerank", "rerank-tiny-bert:test", "none", state="ready", instance=runner)
    instance.pool.slots["rerank"] = slot
    try:
        yield runner
    finally:
        del instance.pool.slots["rerank"]


def test_cross_encoder_scores_sorted_and_labelled(client: Any, cross_encoder: Any) -> None:
    documents = ["the cat sits on the mat", "stocks fell today", "hello world", "a dog"]
    body = _rerank(client, query="where is the cat", documents=documents).json()
    assert body["method"] == "cross-encoder"
    assert body["model"] == "rerank-tiny-bert"
    expected = cross_encoder.predict([("where is the cat", d) for d in documents])
    order = list(np.argsort(-expected.scores, kind="stable"))
    assert [r["index"] for r in body["results"]] == order
    np.testing.assert_allclose(
        [r["relevance_score"] for r in body["results"]], expected.scores[order], atol=1e-5
    )
    assert body["usage"]["total_tokens"] == sum(expected.tokens)
    top = _rerank(client, query="where is the cat", documents=documents, top_n=1).json()
    assert [r["index"] for r in top["results"]] == order[:1]


def test_the_runner_route_scores_pairs(client: Any, cross_encoder: Any) -> None:
    pairs = [{"query": "cat", "document": "the cat"}, {"query": "cat", "document": "stocks"}]
    response = client.post("/runners/rerank/score", json={"pairs": pairs}, headers=auth())
    assert response.status_code == 200, response.text
    expected = cross_encoder.predict([("cat", "the cat"), ("cat", "stocks")])
    np.testing.assert_allclose([r["score"] for r in response.json()], expected.scores, atol=1e-5)
    bad = client.post("/runners/rerank/score", json={"pairs": [{"query": 1}]}, headers=auth())
    assert_error(bad, 400)


def test_the_runner_route_without_a_rerank_runner_is_503(client: Any) -> None:
    pairs = [{"query": "cat", "document": "the cat"}]
    response = client.post("/runners/rerank/score", json={"pairs": pairs}, headers=auth())
    assert assert_error(response, 503)["code"] == "runner_disabled"


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"query": "", "documents": ["a"]}, "query", "empty"),
        ({"query": "   ", "documents": ["a"]}, "query", "empty"),
        ({"documents": ["a"]}, "query", "required"),
        ({"query": 3, "documents": ["a"]}, "query", "string"),
        ({"query": ["q"], "documents": ["a"]}, "query", "string"),
        ({"query": "q", "documents": []}, "documents", "empty"),
        ({"query": "q"}, "documents", "required"),
        ({"query": "q", "documents": "a"}, "documents", "list"),
        ({"query": "q", "documents": ["a", 3]}, "documents", "documents[1]"),
        ({"query": "q", "documents": [None]}, "documents", "documents[0]"),
        ({"query": "q", "documents": [{"title": "no text"}]}, "documents", "documents[0]"),
        ({"query": "q", "documents": [{"text": 5}]}, "documents", "documents[0]"),
        ({"query": "q", "documents": [["a"]]}, "documents", "documents[0]"),
        ({"query": "q", "documents": ["a"] * 1001}, "documents", "at most 1000"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n", "greater than or equal"),
        ({"query": "q", "documents": ["a"], "top_n": -3}, "top_n", "greater than or equal"),
        ({"query": "q", "documents": ["a"], "top_n": "2"}, "top_n", "integer"),
        ({"query": "q", "documents": ["a"], "top_n": 1.5}, "top_n", "integer"),
        ({"query": "q", "documents": ["a"], "top_n": True}, "top_n", "integer"),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents", ""),
        ({"query": "q", "documents": ["a"], "model": 7}, "model", "string"),
        ({"query": "q" * 100_001, "documents": ["a"]}, "query", "100000"),
        ({"query": "q", "documents": ["a", "d" * 100_001]}, "documents", "documents[1]"),
    ],
)
def test_bad_input_is_400(client: Any, body: dict[str, Any], param: str, needle: str) -> None:
    error = assert_error(_rerank(client, **body), 400)
    assert error["param"] == param
    assert needle in error["message"]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b"{", b"null"])
def test_a_body_that_is_not_a_json_object_is_400(client: Any, raw: bytes) -> None:
    headers = {**auth(), "Content-Type": "application/json"}
    assert_error(client.post("/v1/rerank", content=raw, headers=headers), 400)


def test_other_content_types_and_no_key(client: Any) -> None:
    form = client.post("/v1/rerank", data={"query": "q"}, headers=auth())
    assert_error(form, 415)
    assert_error(client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}), 401)
