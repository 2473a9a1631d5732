"""`POST /api/detect`: anomalies in one numeric column of rows (botserver's DETECT keyword).

botserver (`botbasic_data/src/keywords/detect.rs`) sends up to 1500 rows of a table as JSON
objects and the column to look at; it hands the whole JSON answer to the bot script as text, and a
non-2xx answer's body becomes the script's error. The answer keeps upstream botmodels' fields and
meanings (its `api/v1/endpoints/anomaly.py`): three votes per value, one vote lists the row, and
`confidence` is the share of votes. Upstream's `index` counted numeric values only, so its
`record` was another row's once a row was skipped; here `index` is always the row's position.

Rules:
- a value is a JSON number or a string Python's `float` reads ("12.5", " 7 ", "1e3"); anything
  else (missing key, null, boolean, object, list, other text) is skipped and counted, and so is a
  non-finite one ("NaN", "inf", a number beyond a double's range);
- JSON's forbidden `NaN`/`Infinity` tokens make the body invalid JSON (400);
- no numeric value at all: 400 naming the fields the rows do have (`available_fields`, and the
  first rows as `data_sample`), so the script's error says what to pick;
- one or two numeric values: 200 with `detected: false` and a `reason` (no statistics tell an
  outlier among fewer than three values; the script carries on, as with upstream);
- every vote is a strict inequality; a vote whose spread is zero (std, MAD) abstains, so equal
  values are never anomalies.

Everything after the body is read runs in a worker thread: parsing, numpy, the answer's JSON.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic_core
from numpy.typing import NDArray
from starlette.requests import Request
from starlette.responses import Response

from botmodels.config import Settings
from botmodels.errors import InvalidInput, PayloadTooLarge

ZSCORE_THRESHOLD = 2.5
IQR_MULTIPLIER = 1.5
MAD_THRESHOLD = 3.5
# The MAD of a normal distribution is 0.6745 of its std: the modified z-score reads like a z.
MAD_SCALE = 0.6745
VOTES = 3
MIN_VALUES = 3
DEFAULT_FIELD = "value"  # upstream's default when `value_field` is omitted
FIELD_ROWS = 100  # `available_fields`: the keys of this many first rows
SAMPLE_ROWS = 3  # `data_sample`: this many first rows
NAMES_IN_MESSAGE = 30

Floats = NDArray[np.float64]
Flags = NDArray[np.bool_]
_MISSING = object()


def _sanitized(value: Any) -> Any:
    """`value` with numbers beyond a double's range as null (JSON has no infinity)."""
    return pydantic_core.from_json(pydantic_core.to_json(value, inf_nan_mode="null"))


def available_fields(rows: list[dict[str, Any]]) -> list[str]:
    """The keys of the first rows, in the order they first appear."""
    return list(dict.fromkeys(key for row in rows[:FIELD_ROWS] for key in row))


class FieldError(InvalidInput):
    """`value_field` gives no numeric value: the error lists what the rows have.

    The one error shape with two more keys in `error`: `available_fields` and `data_sample`."""

    def __init__(self, message: str, *, code: str, rows: list[dict[str, Any]]) -> None:
        fields = available_fields(rows)
        names = ", ".join(fields[:NAMES_IN_MESSAGE]) + (
            ", …" if len(fields) > NAMES_IN_MESSAGE else ""
        )
        super().__init__(
            f"{message}; the rows have: {names or 'no fields'}", param="value_field", code=code
        )
        self.available_fields = fields
        self.data_sample = _sanitized(rows[:SAMPLE_ROWS])

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["available_fields"] = self.available_fields
        body["error"]["data_sample"] = self.data_sample
        return body


def parse_request(raw: bytes) -> tuple[list[Any], str]:
    """The body's `data` and `value_field`, checked for type."""
    try:
        body = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:  # also: not UTF-8, nested too deep
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput('body must be a JSON object: {"data": [rows], "value_field": "..."}')
    data = body.get("data")
    if not isinstance(data, list):
        raise InvalidInput("`data` is required: a list of row objects", param="data")
    field = body.get("value_field", DEFAULT_FIELD)
    if not isinstance(field, str) or not field:
        raise InvalidInput("`value_field` must be a non-empty string", param="value_field")
    return data, field


def _number(value: Any) -> float:
    """A row's value as a float; NaN for one to skip."""
    kind = type(value)  # exact types: a bool is an int to isinstance, and is skipped
    if kind is float:
        return float(value)
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return math.nan
    if kind is str:
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def numeric_column(rows: list[dict[str, Any]], field: str) -> tuple[Floats, NDArray[np.intp]]:
    """The finite numeric values of `field` and the positions of their rows."""
    numbers = np.fromiter(
        (_number(row.get(field)) for row in rows), dtype=np.float64, count=len(rows)
    )
    keep = np.isfinite(numbers)
    return numbers[keep], np.flatnonzero(keep)


@dataclass(frozen=True)
class Detection:
    """The three votes on a set of values, and the statistics they were drawn from."""

    zscore: Flags
    iqr: Flags
    mad: Flags
    zscore_score: Floats
    mad_score: Floats
    mean: float
    median: float
    std: float
    min: float
    max: float
    q1: float
    q3: float
    iqr_width: float
    lower_bound: float
    upper_bound: float
    mad_value: float

    @property
    def votes(self) -> NDArray[np.int_]:
        return self.zscore.astype(np.int_) + self.iqr + self.mad


def detect(values: Floats) -> Detection:
    """Vote on every value at once. `values`: at least one, all finite."""
    # Work on the values scaled by a power of two: exact (the statistics are those of the values
    # themselves), and no sum of squares can overflow, whatever finite doubles come in.
    _, exponent = np.frexp(np.max(np.abs(values)))
    scale = float(np.ldexp(1.0, int(exponent) - 1))
    y = values / scale
    mean = float(np.mean(y))
    std = float(np.std(y))
    median = float(np.median(y))
    q1, q3 = (float(q) for q in np.percentile(y, [25, 75]))
    width = q3 - q1
    lower, upper = q1 - IQR_MULTIPLIER * width, q3 + IQR_MULTIPLIER * width
    deviation = np.abs(y - median)
    mad = float(np.median(deviation))
    zeros = np.zeros_like(y)
    zscore_score = np.abs(y - mean) / std if std > 0 else zeros
    mad_score = MAD_SCALE * deviation / mad if mad > 0 else zeros
    return Detection(
        zscore=zscore_score > ZSCORE_THRESHOLD,
        iqr=(y < lower) | (y > upper),
        mad=mad_score > MAD_THRESHOLD,
        zscore_score=zscore_score,
        mad_score=mad_score,
        mean=mean * scale,
        median=median * scale,
        std=std * scale,
        min=float(np.min(values)),
        max=float(np.max(values)),
        q1=q1 * scale,
        q3=q3 * scale,
        iqr_width=width * scale,
        lower_bound=lower * scale,
        upper_bound=upper * scale,
        mad_value=mad * scale,
    )


def _summary(d: Detection, count: int) -> dict[str, Any]:
    return {
        "count": count,
        "mean": d.mean,
        "median": d.median,
        "std": d.std,
        "min": d.min,
        "max": d.max,
        "q1": d.q1,
        "q3": d.q3,
        "mad": d.mad_value,
    }


def _anomalies(
    rows: list[dict[str, Any]], values: Floats, index: NDArray[np.intp], d: Detection
) -> list[dict[str, Any]]:
    votes = d.votes
    flagged = np.flatnonzero(votes)
    anomalies = []
    columns = zip(
        index[flagged].tolist(),
        values[flagged].tolist(),
        votes[flagged].tolist(),
        d.zscore[flagged].tolist(),
        d.iqr[flagged].tolist(),
        d.mad[flagged].tolist(),
        d.zscore_score[flagged].tolist(),
        d.mad_score[flagged].tolist(),
        strict=True,
    )
    for row, value, count, by_z, by_iqr, by_mad, z, m in columns:
        anomalies.append(
            {
                "index": row,
                "record": rows[row],
                "value": value,
                "confidence": count / VOTES,
                "methods": {"zscore": by_z, "iqr": by_iqr, "mad": by_mad},
                "zscore_score": z,
                "mad_score": m,
                "iqr_details": {
                    "index": row,
                    "value": value,
                    "q1": d.q1,
                    "q3": d.q3,
                    "iqr": d.iqr_width,
                    "lower_bound": d.lower_bound,
                    "upper_bound": d.upper_bound,
                },
            }
        )
    return anomalies


def detect_rows(rows: list[Any], field: str, *, max_rows: int) -> dict[str, Any]:
    """The answer to `{"data": rows, "value_field": field}` (botmodels/data/schemas.py)."""
    if not rows:
        raise InvalidInput("`data` is empty: send at least one row", param="data")
    if len(rows) > max_rows:
        raise PayloadTooLarge(
            f"`data` has {len(rows)} rows; the limit is {max_rows} (BOTMODELS_DETECT_MAX_ROWS)",
            param="data",
            code="too_many_rows",
        )
    for position, row in enumerate(rows):
        if type(row) is not dict:
            raise InvalidInput(f"`data[{position}]` is not an object", param="data")
    values, index = numeric_column(rows, field)
    if values.size == 0:
        if not any(field in row for row in rows):
            raise FieldError(
                f"value_field `{field}` is in none of the {len(rows)} rows",
                code="unknown_field",
                rows=rows,
            )
        raise FieldError(
            f"value_field `{field}` has no numeric value in any of the {len(rows)} rows",
            code="no_numeric_values",
            rows=rows,
        )
    d = detect(values)
    enough = values.size >= MIN_VALUES
    anomalies = _anomalies(rows, values, index, d) if enough else []
    return {
        "detected": bool(anomalies),
        "total_records": len(rows),
        "anomalies_found": len(anomalies),
        "anomaly_rate": len(anomalies) / len(rows),
        "anomalies": anomalies,
        "summary": _summary(d, int(values.size)),
        "value_field": field,
        "skipped": len(rows) - int(values.size),
        "thresholds": {"zscore": ZSCORE_THRESHOLD, "iqr": IQR_MULTIPLIER, "mad": MAD_THRESHOLD},
        "reason": None
        if enough
        else f"only {values.size} numeric value(s) in `{field}`: at least {MIN_VALUES} are "
        "needed to tell an anomaly",
    }


def detect_json(raw: bytes, *, max_rows: int) -> bytes:
    """The whole route after the body is read: JSON in, JSON out (a double's overflow as null)."""
    rows, field = parse_request(raw)
    return pydantic_core.to_json(detect_rows(rows, field, max_rows=max_rows), inf_nan_mode="null")


class DataFrontend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def api_detect(self, request: Request) -> Response:
        raw = await request.body()
        content = await asyncio.to_thread(detect_json, raw, max_rows=self.settings.detect_max_rows)
        return Response(content, media_type="application/json")
