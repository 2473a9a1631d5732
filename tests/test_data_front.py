"""The anomaly votes of `/api/detect` (botmodels/data/front.py) on small inputs whose answers are
computed by hand in each test, plus skipping, the error cases, and inputs at a double's limits.
Every answer is held to the documented schema (botmodels/data/schemas.py)."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from botmodels.data.front import FieldError, detect, detect_json, detect_rows
from botmodels.data.schemas import DetectResponse
from botmodels.errors import InvalidInput, PayloadTooLarge


@pytest.fixture(autouse=True)
def no_numpy_warnings() -> Iterator[None]:
    """No division by zero, no overflow, no invalid value: a warning fails the test (underflow
    is allowed: it rounds terms far below the others' precision)."""
    with warnings.catch_warnings(), np.errstate(divide="raise", over="raise", invalid="raise"):
        warnings.simplefilter("error")
        yield


def _answer(values: list[Any], field: str = "v", max_rows: int = 1000) -> dict[str, Any]:
    answer = detect_rows([{field: v} for v in values], field, max_rows=max_rows)
    DetectResponse.model_validate(answer)  # every key documented, nothing else
    return answer


def test_a_clear_outlier_gets_all_three_votes() -> None:
    # sorted: 9 9 10 10 10 10 11 11 12 100 (n = 10)
    # q1: position 0.25·9 = 2.25 → 10; q3: 6.75 → 11; IQR 1; fences 8.5 and 12.5
    # median 10; |x - 10|: 0 0 0 0 1 1 1 1 2 90 → MAD 1; 100: 0.6745·90/1 = 60.705
    # mean 19.2; Σ(x - 19.2)² = 4·9.2² + 2·8.2² + 2·10.2² + 7.2² + 80.8² = 7261.6; std √726.16
    answer = _answer([10, 11, 9, 10, 12, 10, 11, 9, 10, 100])
    assert answer["detected"] is True
    assert (answer["total_records"], answer["anomalies_found"], answer["skipped"]) == (10, 1, 0)
    assert answer["anomaly_rate"] == pytest.approx(0.1)
    [anomaly] = answer["anomalies"]
    assert anomaly["index"] == 9
    assert anomaly["record"] == {"v": 100}
    assert anomaly["value"] == 100.0
    assert anomaly["methods"] == {"zscore": True, "iqr": True, "mad": True}
    assert anomaly["confidence"] == 1.0
    assert anomaly["zscore_score"] == pytest.approx(80.8 / math.sqrt(726.16))
    assert anomaly["mad_score"] == pytest.approx(60.705)
    assert anomaly["iqr_details"] == {
        "index": 9,
        "value": 100.0,
        "q1": 10.0,
        "q3": 11.0,
        "iqr": 1.0,
        "lower_bound": 8.5,
        "upper_bound": 12.5,
    }
    summary = answer["summary"]
    assert summary["count"] == 10
    assert summary["mean"] == pytest.approx(19.2)
    assert summary["std"] == pytest.approx(math.sqrt(726.16))
    assert (summary["median"], summary["min"], summary["max"]) == (10.0, 9.0, 100.0)
    assert (summary["q1"], summary["q3"], summary["mad"]) == (10.0, 11.0, 1.0)
    assert answer["thresholds"] == {"zscore": 2.5, "iqr": 1.5, "mad": 3.5}
    assert answer["reason"] is None


def test_a_borderline_value_gets_one_vote() -> None:
    # 1..10 and 17 (n = 11): q1 at 2.5 → 3.5, q3 at 7.5 → 8.5, IQR 5, upper fence 16 < 17
    # mean 72/11; Σx² = 385 + 289 = 674; var = 674/11 - (72/11)²; z(17) = 2.435 < 2.5
    # median 6; |x - 6|: 0 1 1 2 2 3 3 4 4 5 11 → MAD 3; 0.6745·11/3 = 2.473 < 3.5
    answer = _answer([*range(1, 11), 17])
    [anomaly] = answer["anomalies"]
    assert anomaly["index"] == 10
    assert anomaly["methods"] == {"zscore": False, "iqr": True, "mad": False}
    assert anomaly["confidence"] == pytest.approx(1 / 3)
    mean = 72 / 11
    std = math.sqrt(674 / 11 - mean**2)
    assert anomaly["zscore_score"] == pytest.approx((17 - mean) / std)
    assert anomaly["mad_score"] == pytest.approx(0.6745 * 11 / 3)
    assert anomaly["iqr_details"]["upper_bound"] == 16.0
    assert answer["detected"] is True


def test_equal_values_are_never_anomalies() -> None:
    answer = _answer([42.5] * 20)
    assert answer["detected"] is False
    assert answer["anomalies"] == []
    summary = answer["summary"]
    assert (summary["std"], summary["mad"], summary["q1"], summary["q3"]) == (0.0, 0.0, 42.5, 42.5)


def test_a_zero_mad_abstains_while_the_others_vote() -> None:
    # nine 5s and a 6: q1 = q3 = 5, fences 5 and 5 → 6 is outside; MAD 0 → no MAD vote;
    # mean 5.1, std √(0.81·0.1 + 0.01·0.9) = 0.3, z(6) = 0.9/0.3 = 3 > 2.5
    answer = _answer([5] * 9 + [6])
    [anomaly] = answer["anomalies"]
    assert anomaly["methods"] == {"zscore": True, "iqr": True, "mad": False}
    assert anomaly["confidence"] == pytest.approx(2 / 3)
    assert anomaly["zscore_score"] == pytest.approx(3.0)
    assert anomaly["mad_score"] == 0.0


def test_skipped_values_are_counted_and_indexes_stay_the_rows() -> None:
    rows: list[dict[str, Any]] = [
        {"v": None},
        {"v": True},
        {"v": "abc"},
        {"other": 1},
        {"v": [1]},
        {"v": {"a": 1}},
        {"v": "NaN"},
        {"v": "-inf"},
        {"v": 10**400},  # beyond a double
        {"v": ""},
        {"v": False},
        {"v": 10},
        {"v": "12.5"},
        {"v": " 11 "},
        {"v": 10.5},
        {"v": "1e1"},
        {"v": 11},
        {"v": 9},
        {"v": 10},
        {"v": 500},
    ]
    answer = detect_rows(rows, "v", max_rows=100)
    DetectResponse.model_validate(answer)
    assert answer["total_records"] == 20
    assert answer["skipped"] == 11
    assert answer["summary"]["count"] == 9
    assert answer["summary"]["max"] == 500.0
    assert answer["summary"]["min"] == 9.0
    [anomaly] = answer["anomalies"]
    assert anomaly["index"] == 19
    assert anomaly["record"] == {"v": 500}
    assert anomaly["iqr_details"]["index"] == 19
    assert answer["anomaly_rate"] == pytest.approx(1 / 20)  # of all rows, as upstream


def test_fewer_than_three_numbers_is_not_detected_with_a_reason() -> None:
    answer = detect_rows([{"v": 1}, {"v": "x"}, {"v": 1000}], "v", max_rows=10)
    DetectResponse.model_validate(answer)
    assert answer["detected"] is False
    assert answer["anomalies"] == []
    assert answer["skipped"] == 1
    assert answer["summary"]["count"] == 2
    assert "at least 3" in answer["reason"]


def test_an_unknown_field_lists_the_fields_the_rows_have() -> None:
    rows = [{"id": i, "nome": f"n{i}", "salario": 100 + i} for i in range(5)]
    rows[1]["extra"] = True
    with pytest.raises(FieldError) as raised:
        detect_rows(rows, "valor", max_rows=10)
    error = raised.value
    assert (error.status, error.code, error.param) == (400, "unknown_field", "value_field")
    assert "id, nome, salario, extra" in error.message
    body = error.body()["error"]
    assert body["available_fields"] == ["id", "nome", "salario", "extra"]
    assert body["data_sample"] == rows[:3]
    assert {"message", "type", "code", "param"} <= set(body)


def test_a_field_without_numbers_is_its_own_error() -> None:
    rows = [{"nome": "a", "cargo": "x"}, {"nome": "b", "cargo": None}]
    with pytest.raises(FieldError) as raised:
        detect_rows(rows, "cargo", max_rows=10)
    assert raised.value.code == "no_numeric_values"
    assert raised.value.body()["error"]["available_fields"] == ["nome", "cargo"]


def test_the_data_sample_of_an_error_is_valid_json() -> None:
    with pytest.raises(FieldError) as raised:
        detect_rows([{"a": 1e400}], "b", max_rows=10)  # a JSON number beyond a double
    assert raised.value.body()["error"]["data_sample"] == [{"a": None}]
    json.dumps(raised.value.body(), allow_nan=False)


@pytest.mark.parametrize(
    ("rows", "field", "param"),
    [
        ([], "v", "data"),
        ([{"v": 1}, [1]], "v", "data"),
        ([{"v": 1}, "row"], "v", "data"),
    ],
)
def test_bad_rows_are_400(rows: list[Any], field: str, param: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        detect_rows(rows, field, max_rows=10)
    assert raised.value.param == param


def test_too_many_rows_names_the_setting() -> None:
    with pytest.raises(PayloadTooLarge) as raised:
        detect_rows([{"v": 1}] * 4, "v", max_rows=3)
    assert raised.value.status == 413
    assert raised.value.code == "too_many_rows"
    assert "BOTMODELS_DETECT_MAX_ROWS" in raised.value.message


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"", None),
        (b"[1, 2]", None),
        (b'{"data": [{"v": NaN}], "value_field": "v"}', None),
        (b'{"data": [{"v": Infinity}], "value_field": "v"}', None),
        (b"[" * 10_000 + b"]" * 10_000, None),
        (b"\xff\xfe", None),
        (b'{"value_field": "v"}', "data"),
        (b'{"data": {"v": 1}, "value_field": "v"}', "data"),
        (b'{"data": [{"v": 1}], "value_field": 3}', "value_field"),
        (b'{"data": [{"v": 1}], "value_field": ""}', "value_field"),
    ],
)
def test_bad_bodies_are_400(raw: bytes, param: str | None) -> None:
    with pytest.raises(InvalidInput) as raised:
        detect_json(raw, max_rows=10)
    assert raised.value.status == 400
    assert raised.value.param == param


def test_value_field_defaults_to_value_as_upstream() -> None:
    raw = json.dumps({"data": [{"value": v} for v in [1, 1, 1, 1, 1, 1, 1, 1, 50]]}).encode()
    answer = json.loads(detect_json(raw, max_rows=100))
    assert answer["value_field"] == "value"
    assert [a["index"] for a in answer["anomalies"]] == [8]


def test_doubles_at_the_limits_do_not_overflow() -> None:
    big = [1e307] * 9 + [1.7e308]
    answer = _answer(big)
    [anomaly] = answer["anomalies"]
    assert anomaly["index"] == 9
    assert math.isfinite(answer["summary"]["std"])
    tiny = [5e-324] * 9 + [1e-300]
    assert [a["index"] for a in _answer(tiny)["anomalies"]] == [9]
    # and the JSON is valid: a fence beyond a double reads as null
    raw = json.dumps(
        {"data": [{"v": v} for v in [-1.7e308, 1.7e308, 0.0, 1.0]], "value_field": "v"}
    )
    json.loads(detect_json(raw.encode(), max_rows=10), parse_constant=_refuse)


def _refuse(token: str) -> None:
    raise AssertionError(f"{token} in the answer")


def test_scaling_the_values_by_a_power_of_two_changes_no_vote() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.normal(1000, 50, 500), [1400.0, 600.0, 1180.0]])
    base = detect(values)
    for exponent in (-900, -20, 20, 900):
        scaled = detect(np.ldexp(values, exponent))
        for vote in ("zscore", "iqr", "mad"):
            assert np.array_equal(getattr(base, vote), getattr(scaled, vote)), vote
        assert scaled.mean == pytest.approx(math.ldexp(base.mean, exponent))


def test_many_rows_vote_like_a_loop_would() -> None:
    """The vectorised votes against the definitions, value by value."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.lognormal(8, 0.4, 2000), [1e5, 1.0, 30_000.0]])
    d = detect(values)
    mean, std = float(np.mean(values)), float(np.std(values))
    q1, q3 = np.percentile(values, [25, 75])
    median = float(np.median(values))
    mad = float(np.median([abs(v - median) for v in values]))
    for i, v in enumerate(values.tolist()):
        assert bool(d.zscore[i]) == (abs(v - mean) / std > 2.5)
        assert bool(d.iqr[i]) == (v < q1 - 1.5 * (q3 - q1) or v > q3 + 1.5 * (q3 - q1))
        assert bool(d.mad[i]) == (0.6745 * abs(v - median) / mad > 3.5)
