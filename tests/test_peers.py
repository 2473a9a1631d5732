"""The `/runners/*` routes (the batchable APIs that peers call) keep the public routes' rules:
limits in the one error shape, and the generation admission queue (429)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import auth
from tests.helpers import assert_error

TASK = {
    "task_id": "t1",
    "prompt": "a red square",
    "width": 64,
    "height": 64,
    "steps": 2,
    "guidance_scale": 5.0,
    "seed": 1,
}
VIDEO_TASK = {**TASK, "num_frames": 4, "fps": 8}


def test_embeddings_runner_route_refuses_more_texts_than_a_public_request(client: Any) -> None:
    response = client.post(
        "/runners/embeddings/embed", json={"texts": ["hello"] * 3000}, headers=auth()
    )
    error = assert_error(response, 400)
    assert error["param"] == "texts"
    assert "2048" in error["message"]


@pytest.mark.parametrize(
    ("texts", "rule"),
    [([""], "empty"), (["x" * 100_001], "characters"), ("one", "list"), ([3], "token ids")],
)
def test_embeddings_runner_route_checks_each_text(client: Any, texts: Any, rule: str) -> None:
    response = client.post("/runners/embeddings/embed", json={"texts": texts}, headers=auth())
    assert rule in assert_error(response, 400)["message"]


def test_embeddings_runner_route_still_serves_peers(client: Any) -> None:
    response = client.post("/runners/embeddings/embed", json={"texts": ["a", "b"]}, headers=auth())
    assert response.status_code == 200, response.text
    assert [item["tokens"] > 0 for item in response.json()] == [True, True]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"steps": 300}, "steps"),
        ({"width": 2048}, "width"),
        ({"width": 0}, "width"),
        ({"height": 63}, "height"),
        ({"guidance_scale": 1e9}, "guidance_scale"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_image_runner_route_applies_the_public_limits(
    client: Any, change: dict[str, Any], param: str
) -> None:
    response = client.post(
        "/runners/image/generate", json={"tasks": [{**TASK, **change}]}, headers=auth()
    )
    assert assert_error(response, 400)["param"] == param


def test_image_runner_route_refuses_more_tasks_than_a_batch(client: Any) -> None:
    tasks = [{**TASK, "task_id": f"t{i}"} for i in range(5)]
    response = client.post("/runners/image/generate", json={"tasks": tasks}, headers=auth())
    assert "BOTMODELS_IMAGE_MAX_BATCH_SIZE" in assert_error(response, 400)["message"]


def test_video_runner_route_applies_the_public_limits(client: Any) -> None:
    response = client.post(
        "/runners/video/generate",
        json={"tasks": [{**VIDEO_TASK, "num_frames": 100}]},
        headers=auth(),
    )
    assert assert_error(response, 400)["param"] == "num_frames"


def test_image_runner_route_still_generates_for_peers(client: Any) -> None:
    response = client.post("/runners/image/generate", json={"tasks": [TASK]}, headers=auth())
    assert response.status_code == 200, response.text
    (result,) = response.json()
    assert result["status"] == "completed"
    assert result["task_id"] == "t1"


def test_image_runner_route_goes_through_the_admission_queue(client: Any) -> None:
    import service

    admission = service._service().generation.admission["image"]
    limit = admission.limit
    admission.limit = 1
    try:
        body = {"prompt": "slow", "steps": 100, "width": 64, "height": 64}
        job = client.post("/api/image/jobs", json=body, headers=auth()).json()
        response = client.post("/runners/image/generate", json={"tasks": [TASK]}, headers=auth())
        assert "limit is 1" in assert_error(response, 429)["message"]
        assert int(response.headers["retry-after"]) >= 1
        client.post(f"/api/jobs/{job['id']}/cancel", headers=auth())
    finally:
        admission.limit = limit
    deadline = time.monotonic() + 60
    while admission.in_flight:  # the cancelled job leaves at its next step
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("job", "param"),
    [
        ({"text": "hello", "speed": 0.01}, "speed"),
        ({"text": "hello", "speed": 0}, "speed"),
        ({"text": "x" * 13_000}, "text"),
        ({"text": ""}, "text"),
    ],
)
def test_tts_runner_route_applies_the_public_limits(
    client: Any, job: dict[str, Any], param: str
) -> None:
    response = client.post("/runners/tts/synthesize", json={"jobs": [job]}, headers=auth())
    assert assert_error(response, 400)["param"] == param


def test_stt_runner_route_refuses_audio_longer_than_the_limit(client: Any) -> None:
    import service

    settings = service._service().speech.settings
    before = settings.stt_max_audio_s
    settings.stt_max_audio_s = 2.0  # the JSON body limit would otherwise come first
    try:
        audio = "A" * (3 * 16_000 * 4 * 4 // 3)  # 3 s of float32 samples, base64
        response = client.post(
            "/runners/stt/transcribe", json={"jobs": [{"audio": audio}]}, headers=auth()
        )
    finally:
        settings.stt_max_audio_s = before
    error = assert_error(response, 400)
    assert error["param"] == "audio"
    assert "BOTMODELS_STT_MAX_AUDIO_S" in error["message"]


def test_vision_runner_routes_refuse_more_items_than_a_batch(client: Any) -> None:
    items = [{"image_png_b64": "iVBORw0KGgo="}] * 17
    for route in ("/runners/vision/caption", "/runners/vqa/answer"):
        response = client.post(route, json={"items": items}, headers=auth())
        assert "MAX_BATCH_SIZE" in assert_error(response, 400)["message"], route


def test_runner_routes_still_need_a_key(client: Any) -> None:
    response = client.post("/runners/embeddings/embed", json={"texts": ["a"] * 3000})
    assert_error(response, 401)
