"""`POST /api/detect` through the real ASGI app (middleware and all): the answer's shape, auth,
content type, and every error in the one shape, the two extra keys of a missing column included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from botmodels.data.schemas import DetectResponse
from tests.conftest import auth
from tests.helpers import assert_error

ROUTE = "/api/detect"
FIELD_EXTRA = ("available_fields", "data_sample")


def _rows() -> list[dict[str, Any]]:
    salaries = [3100, 3200, 2950, 3050, 3150, 3000, 3080, 2990, 3120, 31000]
    return [
        {"id": i, "nome": f"Servidor {i}", "salario": s, "cargo": "analista"}
        for i, s in enumerate(salaries)
    ]


def test_answer_shape(client: Any) -> None:
    response = client.post(ROUTE, headers=auth(), json={"data": _rows(), "value_field": "salario"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    DetectResponse.model_validate(body)
    assert body["detected"] is True
    assert [a["index"] for a in body["anomalies"]] == [9]
    assert body["anomalies"][0]["record"] == _rows()[9]
    assert body["anomalies"][0]["confidence"] == 1.0


def test_numeric_strings_count_and_other_values_are_skipped(client: Any) -> None:
    data = [{"v": "10"}, {"v": 11}, {"v": "9.5"}, {"v": None}, {"v": "n/a"}, {"v": True}, {}]
    body = client.post(ROUTE, headers=auth(), json={"data": data, "value_field": "v"}).json()
    assert (body["total_records"], body["skipped"], body["summary"]["count"]) == (7, 4, 3)
    assert body["detected"] is False


def test_a_key_is_needed(client: Any) -> None:
    response = client.post(ROUTE, json={"data": _rows(), "value_field": "salario"})
    assert_error(response, 401)


def test_unknown_field_lists_the_available_fields(client: Any) -> None:
    response = client.post(ROUTE, headers=auth(), json={"data": _rows(), "value_field": "valor"})
    error = assert_error(response, 400, extra=FIELD_EXTRA)
    assert (error["code"], error["param"]) == ("unknown_field", "value_field")
    assert error["available_fields"] == ["id", "nome", "salario", "cargo"]
    assert error["data_sample"] == _rows()[:3]
    assert "id, nome, salario, cargo" in error["message"]


def test_a_text_column_has_no_numbers(client: Any) -> None:
    response = client.post(ROUTE, headers=auth(), json={"data": _rows(), "value_field": "nome"})
    error = assert_error(response, 400, extra=FIELD_EXTRA)
    assert error["code"] == "no_numeric_values"


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"not json", None),
        (b'{"data": [{"v": NaN}, {"v": 1}], "value_field": "v"}', None),
        (b'{"data": [], "value_field": "v"}', "data"),
        (b'{"data": [1, 2, 3], "value_field": "v"}', "data"),
        (b'{"data": "rows", "value_field": "v"}', "data"),
        (b'{"data": [{"v": 1}], "value_field": null}', "value_field"),
    ],
)
def test_bad_bodies(client: Any, content: bytes, param: str | None) -> None:
    headers = {**auth(), "Content-Type": "application/json"}
    error = assert_error(client.post(ROUTE, headers=headers, content=content), 400)
    assert error["param"] == param


def test_a_json_body_is_required(client: Any) -> None:
    response = client.post(ROUTE, headers=auth(), data={"data": "x"})  # a form
    assert_error(response, 415)


def test_too_many_rows_is_413_naming_the_setting(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service

    monkeypatch.setattr(service._service().data.settings, "detect_max_rows", 5)
    response = client.post(ROUTE, headers=auth(), json={"data": _rows(), "value_field": "salario"})
    error = assert_error(response, 413)
    assert error["code"] == "too_many_rows"
    assert "BOTMODELS_DETECT_MAX_ROWS" in error["message"]


def test_a_body_over_the_json_limit_is_413(client: Any) -> None:
    import service

    limit = service._service().settings.max_json_bytes
    rows = [{"v": 1.0, "pad": "x" * 1000}] * (limit // 1000 + 1)
    headers = {**auth(), "Content-Type": "application/json"}
    response = client.post(ROUTE, headers=headers, content=json.dumps({"data": rows}).encode())
    assert_error(response, 413)
