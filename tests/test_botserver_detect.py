"""botserver's DETECT keyword, replayed: the request built as its Rust code builds it, the answer
read as it reads it.

Source: generalbots/generalbots (2026-05-19), `botserver/crates/botbasic_data/src/keywords/
detect.rs` (the same code as GeneralBots/botserver 2026-04-18 `src/basic/keywords/detect.rs`,
two lines up):
- line 94: the rows are `SELECT row_to_json(t)::text … LIMIT 1500`, each parsed into a
  `serde_json::Value` (numeric columns are JSON numbers, dates are strings, NULL is null);
- line 157, `find_numeric_field`: the column is the first whose name contains a "numeric" word,
  else the first without a "text" word, else the last;
- lines 113-127: `POST {BOTMODELS_HOST}/api/detect` with `X-API-Key: {BOTMODELS_API_KEY}`
  (default `starter`, a key the short-key policy decides on: here the operator's key is set) and
  reqwest's `.json({"data": records, "value_field": value_field})`: compact JSON, Content-Type
  `application/json`, each row's keys sorted (serde_json's default map is a BTreeMap); a client
  with no timeout, while the keyword gives up after 300 s (line 55);
- lines 129-135: a non-2xx answer becomes the script's error `BotModels error: {body text}`; a
  2xx body is parsed as JSON (serde_json: no NaN or Infinity) and handed to the script as text.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import KEY

NUMERIC_WORDS = (
    "salario", "salary", "valor", "value", "amount", "preco", "price", "temperatura", "temp",
    "pressao", "pressure", "quantidade", "quantity", "decimal", "numerico", "numeric", "base",
    "liquido", "bruto", "desconto", "vantagem", "gratificacao",
)  # fmt: skip
TEXT_WORDS = (
    "id", "nome", "cpf", "matricula", "orgao", "cargo", "nivel", "mes", "ano", "tipo",
    "categoria", "data", "status", "email", "telefone", "protocolo", "servidor",
)  # fmt: skip


class ScriptError(Exception):
    """What the keyword returns as `Err` (the BASIC script's runtime error)."""


def find_numeric_field(columns: list[str]) -> str:
    """detect.rs:157-185."""
    for column in columns:
        if any(word in column.lower() for word in NUMERIC_WORDS):
            return column
    for column in columns:
        if not any(word in column.lower() for word in TEXT_WORDS):
            return column
    return columns[-1] if columns else "value"


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"serde_json refuses {token}")

    return json.loads(text, parse_constant=refuse)


def detect(client: Any, columns: list[str], table: list[dict[str, Any]]) -> str:
    """`detect_anomalies_in_table` from the rows on: what DETECT gives the script."""
    records = [_strict_json(json.dumps(row, sort_keys=True)) for row in table[:1500]]
    if not records:
        raise ScriptError("No data found in table")
    body = {"data": records, "value_field": find_numeric_field(columns)}
    response = client.post(
        "/api/detect",
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        content=json.dumps(body, separators=(",", ":"), sort_keys=True).encode(),
    )  # no client timeout, as reqwest::Client::new(); the app's own limit is 300 s too
    if not 200 <= response.status_code < 300:
        raise ScriptError(f"BotModels error: {response.text}")
    return json.dumps(_strict_json(response.text), separators=(",", ":"))


def _payroll() -> tuple[list[str], list[dict[str, Any]]]:
    columns = ["id", "nome", "cargo", "salario_base", "data_admissao"]
    rows = [
        {
            "id": i,
            "nome": f"Servidor {i}",
            "cargo": "analista",
            "salario_base": 3100.5 + (i % 7) * 25,
            "data_admissao": "2020-01-02",
        }
        for i in range(1500)
    ]
    rows[700]["salario_base"] = 48000.0  # the one everybody should ask about
    rows[900]["salario_base"] = None  # a NULL in the column
    return columns, rows


def test_detect_finds_the_outlier_in_a_payroll_table(client: Any) -> None:
    columns, rows = _payroll()
    assert find_numeric_field(columns) == "salario_base"
    text = detect(client, columns, rows)
    answer = json.loads(text)
    assert answer["detected"] is True
    assert answer["total_records"] == 1500
    assert answer["skipped"] == 1
    flagged = {a["index"]: a for a in answer["anomalies"]}
    assert 700 in flagged
    assert flagged[700]["record"]["nome"] == "Servidor 700"
    assert flagged[700]["confidence"] == 1.0
    assert flagged[700]["methods"] == {"zscore": True, "iqr": True, "mad": True}
    assert set(answer["summary"]) >= {"mean", "median", "std", "min", "max"}


def test_detect_on_a_text_column_fails_the_script_naming_the_fields(client: Any) -> None:
    """No numeric word and every column but one a text word: botserver picks `observacao`."""
    columns = ["id", "nome", "observacao"]
    rows = [{"id": i, "nome": f"n{i}", "observacao": "ok"} for i in range(10)]
    assert find_numeric_field(columns) == "observacao"
    with pytest.raises(ScriptError) as raised:
        detect(client, columns, rows)
    message = str(raised.value)
    assert message.startswith("BotModels error: ")
    error = json.loads(message.removeprefix("BotModels error: "))["error"]
    assert error["code"] == "no_numeric_values"
    assert set(error["available_fields"]) == {"id", "nome", "observacao"}
    assert len(error["data_sample"]) == 3
    assert "observacao" in error["message"]


def test_detect_on_a_tiny_table_answers_not_detected(client: Any) -> None:
    """Two rows: the script gets an answer it can test (`detected` false), not an error."""
    columns = ["id", "valor"]
    text = detect(client, columns, [{"id": 1, "valor": 10}, {"id": 2, "valor": 9000}])
    answer = json.loads(text)
    assert answer["detected"] is False
    assert answer["reason"]
