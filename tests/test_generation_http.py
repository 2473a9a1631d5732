"""/api/image/generate, /api/video/generate, /v1/images/generations and the jobs routes through
the real ASGI app and middleware, with the tiny random pipelines (synthetic: outputs are noise,
so tests assert sizes, formats, frame counts, determinism and the HTTP contract, not content)."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from PIL import Image

from tests.conftest import KEY, auth
from tests.helpers import assert_error

IMAGE = {"prompt": "a red square", "steps": 2, "width": 64, "height": 64, "guidance_scale": 5.0}
VIDEO = {"prompt": "a paper boat", "num_frames": 6, "fps": 12, "steps": 2}
NAME = re.compile(r"/outputs/(images|videos)/[0-9a-f]{32}\.(png|mp4)")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """The tiny pipelines are too small to split across threads: on this shared 2-core machine
    two torch threads made each call ~4x slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Across batch compositions (one image alone, or the first of two), the same seed gives the same
# picture within these bounds, in 0-255 levels per channel (docs/benchmarks.md, Image seeds).
PIXEL_TOLERANCE_MAX = 4
PIXEL_TOLERANCE_MEAN = 0.1


def _pixel_diff(a: bytes, b: bytes) -> Any:
    import numpy as np

    with Image.open(io.BytesIO(a)) as one, Image.open(io.BytesIO(b)) as other:
        assert one.size == other.size
        return np.abs(
            np.asarray(one.convert("RGB"), dtype=np.int16)
            - np.asarray(other.convert("RGB"), dtype=np.int16)
        )


def _png(client: Any, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    response = client.post("/api/image/generate", json=body, headers=auth())
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    file = client.get(result["file_path"])  # no key: botserver's bots fetch it bare
    assert file.status_code == 200
    assert file.headers["content-type"] == "image/png"
    assert file.headers["x-content-type-options"] == "nosniff"
    return result, file.content


def test_image_generate_writes_a_png_of_the_requested_size(client: Any) -> None:
    result, payload = _png(client, {**IMAGE, "width": 96, "height": 64, "seed": 7})
    assert result["status"] == "completed"
    assert result["error"] is None
    assert NAME.fullmatch(result["file_path"])
    assert result["file_path"].endswith(".png")
    assert result["generation_time"] > 0
    assert result["seed"] == 7
    datetime.fromisoformat(result["timestamp"])
    with Image.open(io.BytesIO(payload)) as image:
        assert image.format == "PNG"
        assert image.size == (96, 64)
        assert image.mode == "RGB"


def test_same_seed_same_bytes_different_seed_different_image(client: Any) -> None:
    _, first = _png(client, {**IMAGE, "seed": 42})
    _, again = _png(client, {**IMAGE, "seed": 42})
    _, other = _png(client, {**IMAGE, "seed": 43})
    assert first == again
    assert first != other


def test_no_seed_gets_a_random_one_that_reproduces(client: Any) -> None:
    result, payload = _png(client, IMAGE)
    assert isinstance(result["seed"], int)
    _, again = _png(client, {**IMAGE, "seed": result["seed"]})
    assert payload == again


def test_video_generate_writes_an_h264_mp4(client: Any) -> None:
    av = pytest.importorskip("av")
    response = client.post("/api/video/generate", json={**VIDEO, "seed": 1}, headers=auth())
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "completed"
    assert NAME.fullmatch(result["file_path"])
    assert result["file_path"].endswith(".mp4")
    assert (result["num_frames"], result["fps"]) == (6, 12)
    file = client.get(result["file_path"])
    assert file.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(file.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 12
        assert (stream.width, stream.height) == (64, 64)
        frames = list(container.decode(video=0))
    assert len(frames) == 6


@pytest.mark.parametrize(
    ("path", "body", "needle", "param"),
    [
        ("/api/image/generate", {**IMAGE, "prompt": ""}, "empty", "prompt"),
        ("/api/image/generate", {**IMAGE, "prompt": "   "}, "empty", "prompt"),
        (
            "/api/image/generate",
            {k: v for k, v in IMAGE.items() if k != "prompt"},
            "string",
            "prompt",
        ),
        ("/api/image/generate", {**IMAGE, "prompt": "x" * 2001}, "limit is 2000", "prompt"),
        ("/api/image/generate", {**IMAGE, "steps": 0}, "between 1 and 100", "steps"),
        ("/api/image/generate", {**IMAGE, "steps": 101}, "between 1 and 100", "steps"),
        ("/api/image/generate", {**IMAGE, "steps": 2.5}, "integer", "steps"),
        ("/api/image/generate", {**IMAGE, "steps": "2"}, "integer", "steps"),
        ("/api/image/generate", {**IMAGE, "width": 100}, "divisible by 8", "width"),
        ("/api/image/generate", {**IMAGE, "height": 4096}, "between 64 and 1536", "height"),
        ("/api/image/generate", {**IMAGE, "width": 32}, "between 64 and 1536", "width"),
        (
            "/api/image/generate",
            {**IMAGE, "guidance_scale": -1},
            "between 0.0 and 30.0",
            "guidance_scale",
        ),
        ("/api/image/generate", {**IMAGE, "seed": -1}, "seed", "seed"),
        ("/api/image/generate", {**IMAGE, "model": "dall-e-9"}, "not served", "model"),
        ("/api/video/generate", {**VIDEO, "fps": 0}, "between 1 and 60", "fps"),
        ("/api/video/generate", {**VIDEO, "fps": 61}, "between 1 and 60", "fps"),
        ("/api/video/generate", {**VIDEO, "num_frames": 0}, "between 1 and 64", "num_frames"),
        ("/api/video/generate", {**VIDEO, "num_frames": 1000}, "between 1 and 64", "num_frames"),
        ("/api/video/generate", {**VIDEO, "steps": 500}, "between 1 and 100", "steps"),
        ("/api/video/generate", {**VIDEO, "width": 70}, "divisible by 8", "width"),
        ("/api/video/generate", {**VIDEO, "prompt": ""}, "empty", "prompt"),
        ("/api/image/jobs", {**IMAGE, "steps": 0}, "between 1 and 100", "steps"),
        ("/api/video/jobs", {**VIDEO, "fps": 0}, "between 1 and 60", "fps"),
        ("/v1/images/generations", {"prompt": "x", "n": 5}, "between 1 and 4", "n"),
        ("/v1/images/generations", {"prompt": "x", "n": 0}, "between 1 and 4", "n"),
        ("/v1/images/generations", {"prompt": "x", "size": "big"}, "512x512", "size"),
        ("/v1/images/generations", {"prompt": "x", "size": "100x64"}, "divisible by 8", "width"),
        (
            "/v1/images/generations",
            {"prompt": "x", "response_format": "png"},
            "b64_json",
            "response_format",
        ),
        ("/v1/images/generations", {"prompt": ""}, "empty", "prompt"),
    ],
)
def test_bad_input_is_4xx_naming_the_rule(
    client: Any, path: str, body: dict[str, Any], needle: str, param: str
) -> None:
    response = client.post(path, json=body, headers=auth())
    status = 404 if param == "model" else 400
    error = assert_error(response, status)
    assert needle in error["message"]
    assert error["param"] == param


def test_unknown_model_on_openai_route_is_404(client: Any) -> None:
    response = client.post(
        "/v1/images/generations", json={"prompt": "x", "model": "dall-e-3"}, headers=auth()
    )
    assert assert_error(response, 404)["code"] == "model_not_found"


@pytest.mark.parametrize(
    "path",
    [
        "/api/image/generate",
        "/api/video/generate",
        "/api/image/jobs",
        "/api/video/jobs",
        "/v1/images/generations",
        "/runners/image/generate",
        "/runners/video/generate",
    ],
)
def test_generation_routes_need_a_key(client: Any, path: str) -> None:
    assert_error(client.post(path, json=IMAGE), 401)
    assert_error(client.post(path, json=IMAGE, headers=auth("wrong-key-0123456789")), 401)


def test_job_routes_need_a_key(client: Any) -> None:
    assert_error(client.get("/api/jobs/job_x"), 401)
    assert_error(client.get("/api/jobs/job_x/result"), 401)
    assert_error(client.post("/api/jobs/job_x/cancel"), 401)
    assert_error(client.delete("/api/jobs/job_x"), 401)


@pytest.mark.parametrize(
    "path",
    [
        "/outputs/images/" + "0" * 32 + ".png",
        "/outputs/images/../api-key",
        "/outputs/images/%2e%2e%2fapi-key",
        "/outputs/images/..%2f..%2fapi-key",
        "/outputs/../api-key",
        "/outputs/images/" + "A" * 32 + ".png",
        "/outputs/images/x.png",
        "/outputs/jobs.sqlite3/x",
    ],
)
def test_outputs_never_leak_other_files(client: Any, path: str) -> None:
    response = client.get(path)
    # 401 where the client folded the dots away and left a keyed path (`/api-key`)
    assert response.status_code in (401, 404), (path, response.status_code)
    assert response.headers["content-type"] == "application/json"
    assert KEY not in response.text


def test_models_report_device_dtype_quantization(client: Any) -> None:
    models = {m["runner"]: m for m in client.get("/api/models", headers=auth()).json()["models"]}
    for kind in ("image", "video"):
        model = models[kind]
        assert model["loaded"] is True
        assert model["device"] == "cpu"
        assert model["dtype"] == "float32"
        assert model["quantization"] == "none"
        assert model["synthetic"] is True
        assert model["source"] == f"tiny:{kind}"


def _wait_job(client: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}", headers=auth()).json()
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_image_job_submit_poll_result(client: Any) -> None:
    started = time.monotonic()
    response = client.post("/api/image/jobs", json={**IMAGE, "seed": 42}, headers=auth())
    assert response.status_code == 202, response.text
    job = response.json()
    assert time.monotonic() - started < 5  # the id comes back at once, not after the work
    assert job["status"] in ("queued", "running")
    assert job["id"].startswith("job_")
    assert job["progress"]["total_steps"] == 2
    done = _wait_job(client, job["id"])
    assert done["status"] == "completed"
    assert done["progress"] == {"step": 2, "total_steps": 2, "fraction": 1.0}
    result = client.get(f"/api/jobs/{job['id']}/result", headers=auth())
    assert result.status_code == 200
    body = result.json()
    assert body["status"] == "completed"
    assert body["job_id"] == job["id"]
    # the job path and the blocking path make the same picture for the same seed
    _, blocking = _png(client, {**IMAGE, "seed": 42})
    assert client.get(body["file_path"]).content == blocking


def test_video_job(client: Any) -> None:
    response = client.post("/api/video/jobs", json=VIDEO, headers=auth())
    assert response.status_code == 202, response.text
    done = _wait_job(client, response.json()["id"])
    assert done["status"] == "completed", done
    assert done["result"]["file_path"].endswith(".mp4")


def test_cancel_stops_the_pipeline_at_the_next_step(client: Any) -> None:
    response = client.post("/api/image/jobs", json={**IMAGE, "steps": 100}, headers=auth())
    job_id = response.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job_id}", headers=auth()).json()["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cancelled = client.post(f"/api/jobs/{job_id}/cancel", headers=auth())
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    # A cancelled job answers as cancelled, not as an error.
    result = client.get(f"/api/jobs/{job_id}/result", headers=auth())
    assert result.status_code == 200
    assert result.json()["status"] == "cancelled"
    # The runner is free again long before 100 steps would have finished.
    quick = client.post("/api/image/generate", json=IMAGE, headers=auth())
    assert quick.status_code == 200
    final = client.get(f"/api/jobs/{job_id}", headers=auth()).json()
    assert final["status"] == "cancelled"
    assert final["progress"]["step"] < 100
    assert final["result"] is None
    # cancelling again, or cancelling a finished job, answers its state
    assert client.delete(f"/api/jobs/{job_id}", headers=auth()).json()["status"] == "cancelled"


def test_unknown_job_is_404(client: Any) -> None:
    for response in (
        client.get("/api/jobs/job_nope", headers=auth()),
        client.get("/api/jobs/job_nope/result", headers=auth()),
        client.post("/api/jobs/job_nope/cancel", headers=auth()),
    ):
        assert assert_error(response, 404)["code"] == "job_not_found"


def test_queue_limit_answers_429_with_retry_after(client: Any) -> None:
    import service

    admission = service._service().generation.admission["image"]
    limit = admission.limit
    admission.limit = 1
    try:
        job = client.post("/api/image/jobs", json={**IMAGE, "steps": 100}, headers=auth()).json()
        for path in ("/api/image/generate", "/api/image/jobs", "/v1/images/generations"):
            response = client.post(path, json=IMAGE, headers=auth())
            error = assert_error(response, 429)
            assert "limit is 1" in error["message"]
            assert int(response.headers["retry-after"]) >= 1
        client.post(f"/api/jobs/{job['id']}/cancel", headers=auth())
        _wait_job(client, job["id"])
    finally:
        admission.limit = limit
    deadline = time.monotonic() + 60
    while admission.in_flight:  # the cancelled job leaves at its next step
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.post("/api/image/generate", json=IMAGE, headers=auth()).status_code == 200


def test_official_openai_client_images(client: Any) -> None:
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=client)
    b64 = api.images.generate(
        prompt="a lighthouse",
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 5, "steps": 2},
    )
    assert len(b64.data) == 1
    payload = base64.b64decode(b64.data[0].b64_json)
    with Image.open(io.BytesIO(payload)) as image:
        assert image.size == (64, 64)
    urls = api.images.generate(
        prompt="a lighthouse", n=2, size="64x64", extra_body={"seed": 5, "steps": 2}
    )
    assert len(urls.data) == 2
    first, second = (client.get(item.url).content for item in urls.data)
    assert all(NAME.fullmatch(item.url.removeprefix("http://testserver")) for item in urls.data)
    # Seed 5 again, as the first of a batch of two: the same picture within a small tolerance.
    # Not bit-equal: a batch's kernels need not give the same floats as a batch of one (they do
    # on AVX2, not on AVX-512). The README (Generation) states this guarantee.
    diff = _pixel_diff(first, payload)
    assert diff.max() <= PIXEL_TOLERANCE_MAX, diff.max()
    assert diff.mean() <= PIXEL_TOLERANCE_MEAN, diff.mean()
    assert _pixel_diff(first, second).mean() > 10 * PIXEL_TOLERANCE_MEAN  # seeds 5 and 6 differ
    with pytest.raises(openai.BadRequestError) as caught:
        api.with_options(max_retries=0).images.generate(prompt="x", n=9)
    assert "between 1 and 4" in str(caught.value)


def test_finished_job_is_still_there_for_a_restarted_process(client: Any) -> None:
    """A restart opens the same SQLite file and outputs folder: what a new process would see."""
    import service
    from botmodels.generation.jobs import JobStore
    from botmodels.outputs import OutputStore

    job = client.post("/api/image/jobs", json=IMAGE, headers=auth()).json()
    assert _wait_job(client, job["id"])["status"] == "completed"
    settings = service._service().settings
    fresh = JobStore(settings.jobs_path)
    try:
        record = fresh.get(job["id"])
    finally:
        fresh.close()
    assert record is not None
    assert record.status == "completed"
    assert record.result is not None
    outputs = OutputStore(settings.outputs_root, settings.outputs_max_age_s, 10**12)
    assert outputs.resolve(record.result["file_path"]) is not None


def test_generation_routes_are_in_the_openapi_schema(client: Any) -> None:
    schema = client.get("/docs.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/api/image/generate", "/api/video/generate", "/v1/images/generations"):
        assert path in paths


# --- the served model's ranges -----------------------------------------------------------------
@pytest.fixture
def turbo(client: Any) -> Iterator[dict[str, Any]]:
    """The served image and video slots with the `tiny` profile's ranges (Turbo's: guidance 0,
    1-4 steps), as a server of that profile has them; this app serves `offline`, whose random
    models declare the settings' whole bounds. Restored after the test."""
    import service
    from botmodels.store import load_manifest

    pool = service._service().pool
    manifest = load_manifest(pool.settings.manifest)
    kept = {k: (pool.slots[k].guidance_range, pool.slots[k].steps_range) for k in KINDS}
    ranges = {k: (manifest[k]["tiny"].guidance, manifest[k]["tiny"].steps) for k in KINDS}
    for kind, (guidance, steps) in ranges.items():
        assert (guidance, steps) == ((0.0, 0.0), (1, 4))
        pool.slots[kind].guidance_range, pool.slots[kind].steps_range = guidance, steps
    try:
        yield ranges
    finally:
        for kind, (guidance, steps) in kept.items():
            pool.slots[kind].guidance_range, pool.slots[kind].steps_range = guidance, steps


KINDS = ("image", "video")


def test_models_show_each_generation_model_ranges(client: Any) -> None:
    """/api/models shows the served profile's manifest ranges for the generation models."""
    import service
    from botmodels.store import load_manifest

    settings = service._service().settings
    manifest = load_manifest(settings.manifest)
    models = {m["runner"]: m for m in client.get("/api/models", headers=auth()).json()["models"]}
    for kind in KINDS:
        spec = manifest[kind][settings.profile]
        assert models[kind]["guidance_range"] == list(spec.guidance or ())
        assert models[kind]["steps_range"] == list(spec.steps or ())
    assert "steps_range" not in models["embeddings"]


def test_out_of_range_values_are_fitted_and_reported(client: Any, turbo: Any) -> None:
    """botserver's IMAGE guidance 7.5 and any steps past the model's are run as the model's
    range says, and the answer says what ran: the same picture as asking for those values."""
    body = {**IMAGE, "steps": 50, "guidance_scale": 7.5, "seed": 11}
    fitted, payload = _png(client, body)
    assert (fitted["steps"], fitted["guidance_scale"]) == (4, 0.0)
    asked, same = _png(client, {**IMAGE, "steps": 4, "guidance_scale": 0.0, "seed": 11})
    assert (asked["steps"], asked["guidance_scale"]) == (4, 0.0)
    assert payload == same
    response = client.post(
        "/api/video/generate", json={**VIDEO, "steps": 50, "seed": 1}, headers=auth()
    )
    assert response.status_code == 200, response.text
    assert (response.json()["steps"], response.json()["guidance_scale"]) == (4, 0.0)


def test_openai_request_outside_the_range_is_fitted_and_keeps_openai_shape(
    client: Any, turbo: Any
) -> None:
    body = {"prompt": IMAGE["prompt"], "size": "64x64", "seed": 3, "response_format": "b64_json"}
    response = client.post(
        "/v1/images/generations",
        json={**body, "steps": 50, "guidance_scale": 7.5},
        headers=auth(),
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"created", "data"}
    assert set(answer["data"][0]) <= {"url", "b64_json", "revised_prompt"}
    payload = base64.b64decode(answer["data"][0]["b64_json"])
    # what ran: the picture of steps 4 and guidance 0 with that seed
    _, same = _png(client, {**IMAGE, "steps": 4, "guidance_scale": 0.0, "seed": 3})
    assert payload == same


@pytest.mark.parametrize(
    ("path", "body", "needle", "param"),
    [
        ("/api/image/generate", {**IMAGE, "steps": 0}, "between 1 and 100; got 0", "steps"),
        ("/api/image/generate", {**IMAGE, "steps": 101}, "between 1 and 100; got 101", "steps"),
        ("/api/image/generate", {**IMAGE, "steps": 2.5}, "must be an integer", "steps"),
        (
            "/api/image/generate",
            {**IMAGE, "guidance_scale": -1},
            "between 0.0 and 30.0; got -1",
            "guidance_scale",
        ),
        (
            "/api/image/generate",
            {**IMAGE, "guidance_scale": 30.5},
            "between 0.0 and 30.0; got 30.5",
            "guidance_scale",
        ),
        ("/api/image/generate", {**IMAGE, "guidance_scale": "7.5"}, "a number", "guidance_scale"),
        ("/api/video/generate", {**VIDEO, "steps": 500}, "between 1 and 100; got 500", "steps"),
        ("/api/video/jobs", {**VIDEO, "steps": -3}, "between 1 and 100; got -3", "steps"),
        ("/v1/images/generations", {"prompt": "x", "steps": 0}, "between 1 and 100", "steps"),
        (
            "/v1/images/generations",
            {"prompt": "x", "guidance_scale": 99},
            "between 0.0 and 30.0",
            "guidance_scale",
        ),
    ],
)
def test_values_the_settings_refuse_keep_their_400_with_a_model_range(
    client: Any, turbo: Any, path: str, body: dict[str, Any], needle: str, param: str
) -> None:
    error = assert_error(client.post(path, json=body, headers=auth()), 400)
    assert needle in error["message"]
    assert error["param"] == param


def test_jobs_record_the_values_used(client: Any, turbo: Any) -> None:
    import service

    response = client.post(
        "/api/image/jobs", json={**IMAGE, "steps": 50, "guidance_scale": 7.5}, headers=auth()
    )
    assert response.status_code == 202, response.text
    assert response.json()["progress"]["total_steps"] == 4
    done = _wait_job(client, response.json()["id"])
    assert done["status"] == "completed", done
    assert done["progress"] == {"step": 4, "total_steps": 4, "fraction": 1.0}
    assert (done["result"]["steps"], done["result"]["guidance_scale"]) == (4, 0.0)
    record = service._service().jobs.store.get(done["id"])
    assert record is not None
    assert (record.request["steps"], record.request["guidance_scale"]) == (4, 0.0)
    result = client.get(f"/api/jobs/{done['id']}/result", headers=auth()).json()
    assert (result["steps"], result["guidance_scale"]) == (4, 0.0)
