"""The Schemathesis gate: every operation of the served `/docs.json`, against `bentoml serve`.

Schemathesis generates requests from the document the server publishes (valid and invalid data:
its coverage phase's boundary, missing-field and wrong-type cases, then random fuzzing), sends
them with a valid key, and checks every answer: never a 5xx, and always as documented (status
code, content type, body schema). The server runs the tiny profile with small bounds
(scripts/fuzz.py, SERVER_ENV), and the document follows those bounds, so every request it allows
is cheap. `scripts/fuzz.py` runs this same test with more examples and prints a summary.

Operations left out: runner routes whose items can ask for unbounded work
(scripts/fuzz.HEAVY_FIELDS) while the document does not bound those fields;
tests/test_openapi.py::test_runner_work_is_bounded fails until it does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from scripts import fuzz
from tests.conftest import KEY, Server

pytestmark = pytest.mark.serve
JSON = "application/json"

# Small enough for CI (2 cores): the coverage phase's cases plus this many random ones per
# operation and generation mode.
EXAMPLES = int(os.environ.get(fuzz.ENV_EXAMPLES, "5"))
# Fixed for the gate, so a failure reproduces; scripts/fuzz.py draws a new one unless told.
SEED = int(os.environ[fuzz.ENV_SEED]) if fuzz.ENV_SEED in os.environ else 20261130


@pytest.fixture(scope="module")
def target(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(base URL, key) of the server to fuzz: one started here, or scripts/fuzz.py's --url."""
    url = os.environ.get(fuzz.ENV_URL)
    if url:
        yield url, os.environ[fuzz.ENV_KEY]
        return
    request.getfixturevalue("offline_store")
    home = tempfile.mkdtemp(prefix="botmodels-fuzz-")
    server = Server({**fuzz.SERVER_ENV, "BOTMODELS_HOME": home})
    try:
        server.wait_ready()
        yield server.url, KEY
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def api_schema(target: tuple[str, str]) -> Iterator[Any]:
    url, key = target
    fuzz.register_media()
    heavy = fuzz.unbounded(httpx.get(url + "/docs.json").json())
    yield schemathesis.openapi.from_url(
        url + "/docs.json", config=fuzz.config(key, examples=EXAMPLES, seed=SEED, skip=heavy)
    )
    report = os.environ.get(fuzz.ENV_REPORT)
    if report:
        fuzz.TALLY.dump(Path(report))


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Schemathesis 4.32.5's `from_fixture` relabels the test per operation through
    `node._nodeid`, which pytest 9.2 no longer has (AttributeError before any request). Drop
    this when Schemathesis supports pytest 9.2's node ids."""
    node: Any = request.node
    node._nodeid = node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_answers_as_documented(case: Any) -> None:
    response = case.call()
    fuzz.TALLY.record(case.operation.label, response.status_code)
    try:
        case.validate_response(response)
    except BaseExceptionGroup as failures:  # Schemathesis' FailureGroup: one per check failed
        fuzz.TALLY.fail(case.operation.label, response.status_code, str(failures))
        raise


def _checked(schema: Any, method: str, path: str, *statuses: int, **case: Any) -> Any:
    """Send one hand-made case and check its answer against the document, as the gate does."""
    operation = schema[path][method]
    made = operation.Case(**case)
    response = made.call(headers=schema.config.headers_for(operation=operation))
    fuzz.TALLY.record(operation.label, response.status_code)
    assert response.status_code in statuses, f"{method} {path}: {response.text[:500]}"
    made.validate_response(response)
    return response


def test_answers_random_data_rarely_reaches_match_the_document(api_schema: Any) -> None:
    """Real audio (random bytes are never audio), every transcription and speech format, and a
    job's whole life down to its file: the success answers the fuzzing above seldom or never
    gets, checked against the same document."""
    import time

    import numpy as np

    from botmodels.speech import audio
    from botmodels.speech.front import SPEECH_FORMATS, TRANSCRIPTION_FORMATS

    tone = (0.3 * np.sin(np.linspace(0, 2 * np.pi * 440, 16_000))).astype(np.float32)
    wav = audio.wav_bytes(tone, 16_000)
    form = "multipart/form-data"
    for path in ("/api/speech/totext", "/api/speech/detect_language"):
        _checked(api_schema, "POST", path, 200, body={"file": wav}, media_type=form)
        _checked(api_schema, "POST", path, 200, body=wav, media_type="audio/wav")
    for fmt in TRANSCRIPTION_FORMATS:
        body = {"file": wav, "response_format": fmt}
        _checked(api_schema, "POST", "/v1/audio/transcriptions", 200, body=body, media_type=form)
    for fmt in SPEECH_FORMATS:
        body = {"input": "Hello there.", "response_format": fmt}
        _checked(api_schema, "POST", "/v1/audio/speech", 200, body=body, media_type=JSON)
    speech = {"prompt": "Hello there."}
    spoken = _checked(api_schema, "POST", "/api/speech/generate", 200, body=speech).json()

    job = _checked(api_schema, "POST", "/api/image/jobs", 202, body={"prompt": "a dot"}).json()
    ids = {"job_id": job["id"]}
    deadline = time.monotonic() + 60
    while True:  # 202 with the job while it runs, then 200 with its answer
        _checked(api_schema, "GET", "/api/jobs/{job_id}", 200, path_parameters=ids)
        result = _checked(
            api_schema, "GET", "/api/jobs/{job_id}/result", 200, 202, path_parameters=ids
        )
        if result.status_code == 200:
            break
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.2)
    _checked(api_schema, "POST", "/api/jobs/{job_id}/cancel", 200, path_parameters=ids)
    _checked(api_schema, "DELETE", "/api/jobs/{job_id}", 200, path_parameters=ids)
    for file_path in (result.json()["file_path"], spoken["file_path"]):
        _, _, kind, name = file_path.split("/")
        where = {"kind": kind, "name": name}
        _checked(api_schema, "GET", "/outputs/{kind}/{name}", 200, path_parameters=where)
        _checked(api_schema, "HEAD", "/outputs/{kind}/{name}", 200, path_parameters=where)
