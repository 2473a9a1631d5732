"""Bad input that used to crash (a 500, some of them plain text) is a 4xx in the one error shape,
through the real ASGI app and middleware; an unexpected exception is a JSON 500; a client error
on a BentoML API logs one line. The keep-alive side is in test_errors_shape.py (uvicorn) and
test_errors_serve.py (`bentoml serve`)."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from botmodels.auth import sign
from botmodels.errors import GENERIC_500
from tests.conftest import KEY, auth
from tests.helpers import assert_error
from tests.vision_media import png_bad_pixels, png_bomb, png_bytes

RUNNER_ROUTES = {
    "/runners/embeddings/embed": "texts",
    "/runners/vision/caption": "items",
    "/runners/vqa/answer": "items",
    "/runners/ocr/recognize": "items",
    "/runners/image/generate": "tasks",
    "/runners/video/generate": "tasks",
    "/runners/stt/transcribe": "jobs",
    "/runners/tts/synthesize": "jobs",
    "/runners/segment/masks": "items",
}
IMAGE_ITEM_ROUTES = {
    "/runners/vision/caption": {},
    "/runners/vqa/answer": {"question": "what colour is it?"},
    "/runners/ocr/recognize": {"language": "eng"},
    "/runners/segment/masks": {},
}
IMAGE_TASK = {
    "task_id": "t1",
    "prompt": "a red square",
    "width": 64,
    "height": 64,
    "steps": 1,
    "guidance_scale": 1.0,
    "seed": 7,
}
VIDEO_TASK = {**IMAGE_TASK, "num_frames": 2, "fps": 4}


def post_json(client: Any, path: str, body: Any, **headers: str) -> Any:
    """JSON as Python writes it: NaN and Infinity included, as a JSON client may send them."""
    return client.post(
        path,
        content=json.dumps(body, allow_nan=True),
        headers={**auth(), "content-type": "application/json", **headers},
    )


def _png() -> bytes:
    return png_bytes(Image.new("RGB", (40, 30), (200, 30, 30)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- runner routes ------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "field"), RUNNER_ROUTES.items())
def test_empty_batch_is_400(client: Any, path: str, field: str) -> None:
    """VQA's processor raised IndexError on an empty batch; every runner route refuses one."""
    error = assert_error(post_json(client, path, {field: []}), 400)
    assert error["param"] == field
    assert "empty" in error["message"]


@pytest.mark.parametrize("path", IMAGE_ITEM_ROUTES)
@pytest.mark.parametrize(
    ("image", "needle"),
    [
        ("", "is empty"),
        ("é" * 8, "non-ASCII"),  # base64.b64decode raised UnicodeEncodeError/ValueError
        ("abc", "not base64"),
        ("not base64!", "not base64"),
        (b64(b"hello, not an image"), "not an image"),
        (b64(_png()[:-20]), "truncated or corrupt PNG"),
        (b64(_png()[:30]), "truncated or corrupt"),
        (b64(png_bomb()), "too many pixels"),
    ],
)
def test_bad_image_item_is_400_naming_the_item(
    client: Any, path: str, image: str, needle: str
) -> None:
    items = [{"image_png_b64": b64(_png()), **IMAGE_ITEM_ROUTES[path]}] * 2
    items.insert(1, {"image_png_b64": image, **IMAGE_ITEM_ROUTES[path]})
    error = assert_error(post_json(client, path, {"items": items}), 400)
    assert error["param"] == "items.1.image_png_b64"
    assert needle in error["message"]


@pytest.mark.parametrize("path", IMAGE_ITEM_ROUTES)
def test_image_item_with_corrupt_pixel_data_is_400(client: Any, path: str) -> None:
    """Valid chunks and checksums, broken pixel data: found when the runner decodes it."""
    item = {"image_png_b64": b64(png_bad_pixels()), **IMAGE_ITEM_ROUTES[path]}
    error = assert_error(post_json(client, path, {"items": [item]}), 400)
    assert "`image_png_b64` is a truncated or corrupt PNG" in error["message"]


@pytest.mark.parametrize(
    ("path", "task", "param", "needle"),
    [
        ("/runners/image/generate", {"width": -8}, "width", "got -8"),
        ("/runners/image/generate", {"height": 0}, "height", "got 0"),
        ("/runners/image/generate", {"width": 100}, "width", "divisible by 8"),
        ("/runners/image/generate", {"steps": 0}, "steps", "got 0"),
        ("/runners/image/generate", {"steps": float("inf")}, "steps", "must be an integer"),
        ("/runners/image/generate", {"guidance_scale": float("inf")}, "guidance_scale", "number"),
        ("/runners/image/generate", {"guidance_scale": float("nan")}, "guidance_scale", "number"),
        ("/runners/image/generate", {"seed": 2**70}, "seed", "between 0 and"),
        ("/runners/image/generate", {"seed": -1}, "seed", "between 0 and"),
        ("/runners/video/generate", {"num_frames": 0}, "num_frames", "got 0"),
        ("/runners/video/generate", {"fps": 0}, "fps", "got 0"),
        ("/runners/video/generate", {"width": 7}, "width", "got 7"),
    ],
)
def test_malformed_generation_task_is_400(
    client: Any, path: str, task: dict[str, Any], param: str, needle: str
) -> None:
    """Each of these crashed the pipeline (negative or odd sizes, zero steps, a seed past
    the generator's range) or int() (Infinity)."""
    base = IMAGE_TASK if path.startswith("/runners/image") else VIDEO_TASK
    error = assert_error(post_json(client, path, {"tasks": [{**base, **task}]}), 400)
    assert error["param"] == param
    assert needle in error["message"]


@pytest.mark.parametrize(
    ("job", "needle"),
    [
        ({"voice": "nobody"}, "`voice` 'nobody' is not installed"),
        ({"language": "xx"}, "`language` 'xx'"),
    ],
)
def test_tts_job_the_runner_refuses_is_400(client: Any, job: dict[str, Any], needle: str) -> None:
    """Only the runner knows its voices: its refusal, raised inside the batch, was a 500."""
    body = {"jobs": [{"text": "hello", **job}]}
    assert (
        needle in assert_error(post_json(client, "/runners/tts/synthesize", body), 400)["message"]
    )


def test_a_runner_error_becomes_the_platforms_400_unchanged() -> None:
    """Runners raise their own InvalidItem subclasses (they import nothing from botmodels/);
    errors.runner_errors() is where they become the 400 the client sees."""
    from botmodels.errors import InvalidInput, runner_errors
    from runners.ocr import UnknownLanguage
    from runners.tts import UnknownVoice

    for raised, code, param in (
        (UnknownVoice("`voice` 'x' is not installed"), "unknown_voice", "voice"),
        (
            UnknownVoice("no voice", param="language", code="unknown_language"),
            "unknown_language",
            "language",
        ),
        (
            UnknownLanguage("`language` 'xx' is not a tesseract language code"),
            "invalid_input",
            "language",
        ),
    ):
        with pytest.raises(InvalidInput) as caught, runner_errors():
            raise raised
        assert (caught.value.status, caught.value.code, caught.value.param) == (400, code, param)
        assert caught.value.message == raised.message
    with pytest.raises(KeyError), runner_errors():  # anything else passes untouched
        raise KeyError("x")


# --- entry routes -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/api/image/generate", "/api/image/jobs", "/v1/images/generations"]
)
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"steps": float("inf")}, "steps"),  # int(inf) raised OverflowError
        ({"seed": float("nan")}, "seed"),  # int(nan) raised ValueError
        ({"seed": float("-inf")}, "seed"),
    ],
)
def test_non_finite_numbers_on_generation_routes_are_400(
    client: Any, path: str, body: dict[str, Any], param: str
) -> None:
    response = post_json(client, path, {"prompt": "a red square", **body})
    assert assert_error(response, 400)["param"] == param


def test_non_finite_sizes_and_counts_are_400(client: Any) -> None:
    for path, body, param in [
        ("/api/image/generate", {"width": float("nan")}, "width"),
        ("/api/video/generate", {"num_frames": float("inf")}, "num_frames"),
        ("/v1/images/generations", {"n": float("inf")}, "n"),
    ]:
        response = post_json(client, path, {"prompt": "a red square", **body})
        assert assert_error(response, 400)["param"] == param


def test_huge_signature_timestamp_is_401_not_500(client: Any) -> None:
    timestamp = 10**400  # an int Python parses, past float's range
    headers = {
        "X-BotModels-Timestamp": str(timestamp),
        "X-BotModels-Signature": sign(KEY.encode(), timestamp, "POST", "/api/ping", b"{}"),
        "content-type": "application/json",
    }
    response = client.post("/api/ping", content=b"{}", headers=headers)
    assert assert_error(response, 401)["message"] == "malformed signature headers"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/livez"),
        ("POST", "/readyz"),
        ("POST", "/metrics"),
        ("PUT", "/api/health"),
        ("POST", "/health"),
        ("DELETE", "/v1/embeddings"),
    ],
)
def test_wrong_method_is_405_in_the_error_shape(client: Any, method: str, path: str) -> None:
    error = assert_error(client.request(method, path, headers=auth()), 405)
    assert (error["type"], error["code"]) == ("invalid_request_error", "method_not_allowed")


def test_health_503_keeps_its_report(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import service

    async def down(kind: str) -> bool:
        return False

    monkeypatch.setattr(service._service(), "runner_usable", down)
    response = client.get("/health")
    assert (response.status_code, response.json()) == (503, {"status": "unavailable"})


JSON_ROUTES = [
    *RUNNER_ROUTES,
    "/v1/embeddings",
    "/api/ping",
    "/api/image/generate",
    "/api/video/generate",
    "/api/image/jobs",
    "/api/video/jobs",
    "/v1/images/generations",
    "/api/speech/generate",
    "/v1/audio/speech",
    "/api/detect",
    "/api/barcode/scan",
    "/api/audio/transcribe",
    "/api/audio/waveform",
    "/api/audio/detect-beats",
    "/api/audio/tts",
    "/api/video/enhance",
    "/api/video/enhance/jobs",
    "/api/video/remove-background",
    "/api/video/remove-background/jobs",
    "/v1/rerank",
    "/runners/rerank/score",
    "/v1/chat/completions",
    "/v1/completions",
]


def test_json_routes_listed_here_are_all_of_them() -> None:
    from botmodels.routes import JSON_PATHS

    assert set(JSON_ROUTES) == JSON_PATHS


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_json_nested_too_deep_is_400(client: Any, path: str) -> None:
    """json.loads raises RecursionError (not ValueError) past its nesting limit."""
    deep = b'{"a": ' * 100_000 + b"1" + b"}" * 100_000
    headers = {**auth(), "content-type": "application/json"}
    assert_error(client.post(path, content=deep, headers=headers), 400)


# --- jobs ---------------------------------------------------------------------------------------
def test_interrupted_job_result_is_409_with_a_4xx_type(client: Any, tmp_path: Path) -> None:
    """A job that was running when the server restarted: nothing to fetch, resubmit it."""
    import service
    from botmodels.generation.jobs import JobRecord, JobStore

    job_id = f"job_interrupted_{time.monotonic_ns()}"
    before = JobStore(tmp_path / "jobs.sqlite3")
    before.insert(JobRecord(job_id, "image", "running", {"prompt": "x"}, time.time()))
    before.close()
    restarted = JobStore(tmp_path / "jobs.sqlite3").get(job_id)  # what a restart leaves
    assert restarted is not None
    assert restarted.error is not None
    store = service._service().jobs.store
    store.insert(restarted)
    store.update(job_id, status="interrupted", error=restarted.error)

    assert client.get(f"/api/jobs/{job_id}", headers=auth()).json()["status"] == "interrupted"
    error = assert_error(client.get(f"/api/jobs/{job_id}/result", headers=auth()), 409)
    assert (error["type"], error["code"]) == ("invalid_request_error", "job_interrupted")
    assert "submit it again" in error["message"]


# --- unexpected errors and the log ----------------------------------------------------------
def test_unexpected_exception_is_a_json_500_and_logged(
    client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import service

    async def broken(job_id: str) -> Any:
        raise RuntimeError("the job store broke")

    monkeypatch.setattr(service._service().jobs, "get", broken)
    with caplog.at_level(logging.ERROR):
        response = client.get("/api/jobs/job_x", headers=auth())
    error = assert_error(response, 500)
    assert (error["message"], error["type"]) == (GENERIC_500, "server_error")
    assert "the job store broke" not in response.text
    logged = [r for r in caplog.records if r.exc_info and "the job store broke" in str(r.exc_info)]
    assert [r.getMessage() for r in logged] == ["unhandled error on GET /api/jobs/job_x"]


def test_client_error_on_a_bentoml_api_logs_one_line(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"items": [{"image_png_b64": "not base64!", "question": "what?"}]}
    with caplog.at_level(logging.INFO):
        assert_error(post_json(client, "/runners/vqa/answer", body), 400)
    assert [r.exc_info for r in caplog.records if r.levelno >= logging.ERROR] == []
    (line,) = [r for r in caplog.records if r.name == "botmodels.api"]
    assert line.levelname == "WARNING"
    assert line.getMessage().startswith(
        "POST /runners/vqa/answer: 400 invalid request: items.0.image_png_b64: Value error, "
        "`image_png_b64` is not base64"
    )


def test_server_error_on_a_bentoml_api_keeps_its_traceback(
    client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import service

    async def broken(*args: Any) -> Any:
        raise RuntimeError("the embedder broke")

    monkeypatch.setattr(service._service().embeddings, "create", broken)
    with caplog.at_level(logging.INFO):
        response = post_json(client, "/v1/embeddings", {"input": "hello"})
    assert assert_error(response, 500)["message"] == GENERIC_500
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.levelname == "ERROR"
    assert record.exc_info is not None
    assert "the embedder broke" in str(record.exc_info[1])


def test_what_a_remote_frontend_sends_passes_the_checks(client: Any) -> None:
    from botmodels.vision.front import _to_wire
    from runners.vision import VisionJob

    image = Image.new("RGB", (64, 48), (20, 120, 200))
    item = _to_wire(VisionJob(image, question="what colour is it?")).model_dump()
    response = post_json(client, "/runners/vqa/answer", {"items": [item]})
    assert response.status_code == 200, response.text
    assert set(response.json()[0]) == {"text", "confidence"}
