"""The `/api/detect` answer: upstream botmodels' field names and meanings (its
`api/v1/endpoints/anomaly.py`), which botserver's DETECT keyword hands to the bot script as the
whole JSON text, plus the MAD vote and the counts upstream did not give.

The front builds the answer as plain data (answering 100,000 rows fast); these models document
it (botmodels/openapi.py) and tests/test_data_front.py holds every answer to them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid")


class Votes(BaseModel):
    model_config = _STRICT

    zscore: bool = Field(description="|z| > 2.5 (z from the mean and the population std)")
    iqr: bool = Field(description="below q1 - 1.5·IQR or above q3 + 1.5·IQR")
    mad: bool = Field(description="modified z-score 0.6745·|x - median| / MAD > 3.5")


class IqrDetails(BaseModel):
    model_config = _STRICT

    index: int = Field(description="the row's position in `data`")
    value: float
    q1: float
    q3: float
    iqr: float = Field(description="q3 - q1")
    lower_bound: float | None = Field(description="q1 - 1.5·IQR (null beyond a double's range)")
    upper_bound: float | None = Field(description="q3 + 1.5·IQR (null beyond a double's range)")


class Anomaly(BaseModel):
    model_config = _STRICT

    index: int = Field(description="the row's position in `data` (skipped rows counted)")
    record: dict[str, Any] = Field(description="the row as sent")
    value: float = Field(description="its `value_field`, as a number")
    confidence: float = Field(
        description="votes / 3: 1/3, 2/3 or 1 (one vote is enough to be listed)"
    )
    methods: Votes
    zscore_score: float = Field(description="|z|; 0 when every value is equal")
    mad_score: float = Field(description="the modified z-score; 0 when the MAD is 0")
    iqr_details: IqrDetails


class Summary(BaseModel):
    """Statistics of the numeric values."""

    model_config = _STRICT

    count: int = Field(description="numeric values analysed (total_records - skipped)")
    mean: float
    median: float
    std: float = Field(description="population standard deviation")
    min: float
    max: float
    q1: float = Field(description="25th percentile, linear interpolation")
    q3: float = Field(description="75th percentile, linear interpolation")
    mad: float = Field(description="median absolute deviation from the median")


class Thresholds(BaseModel):
    model_config = _STRICT

    zscore: float
    iqr: float
    mad: float


class DetectResponse(BaseModel):
    model_config = _STRICT

    detected: bool = Field(description="at least one anomaly found")
    total_records: int = Field(description="rows in `data`")
    anomalies_found: int
    anomaly_rate: float = Field(description="anomalies_found / total_records, from 0 to 1")
    anomalies: list[Anomaly] = Field(description="in row order")
    summary: Summary
    value_field: str
    skipped: int = Field(
        description="rows whose value was missing, null, a boolean, an object or list, a "
        "string that is not a number, or not finite (NaN, ±infinity, beyond a double)"
    )
    thresholds: Thresholds
    reason: str | None = Field(
        description="why `detected` is false when it could not look: fewer than 3 numeric "
        "values; null otherwise"
    )
