"""`/api/video/enhance/jobs` and `/api/video/remove-background/jobs`: the video editor's long
work on generation's job manager (botmodels/generation/jobs.py: submit_work). Submit (202 at
once), poll to the end, fetch the blocking route's answer; cancel mid-run (no file kept); a bad
body is answered at submission, not as a failed job. The videos are local files under
BOTMODELS_FETCH_ROOTS."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from botmodels.config import Settings
from botmodels.editor import enhance as video_enhance
from botmodels.fetch import Fetcher
from runners.video import write_mp4
from tests.conftest import auth
from tests.helpers import assert_error
from tests.vision_media import clip_with_audio

ENHANCE = "/api/video/enhance/jobs"
REMOVE = "/api/video/remove-background/jobs"


@pytest.fixture
def editor(client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The service reading local videos under `tmp_path`."""
    import service

    instance = service._instance
    assert instance is not None
    monkeypatch.setattr(instance.editor, "fetcher", Fetcher(Settings(fetch_roots=[tmp_path])))
    return client


def _video(folder: Path, count: int = 8, fps: int = 8) -> Path:
    rng = np.random.default_rng(5)
    small = rng.integers(0, 256, (count, 6, 8, 3), dtype=np.uint8)
    frames = np.ascontiguousarray(small.repeat(8, axis=1).repeat(8, axis=2))
    path = folder / "clip.mp4"
    write_mp4(frames, fps, path)
    return path


def _outputs() -> list[Path]:
    import service

    assert service._instance is not None
    folder = service._instance.outputs.root / "videos"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _wait(client: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}", headers=auth()).json()
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("route", "kind", "extra"),
    [
        (ENHANCE, "video_enhance", {"stabilize": False}),
        (REMOVE, "video_remove_background", {"replacement": "#0000ff"}),
    ],
)
def test_submit_poll_and_fetch_the_result(
    editor: Any, tmp_path: Path, route: str, kind: str, extra: dict[str, Any]
) -> None:
    path = _video(tmp_path, count=8, fps=8)
    response = editor.post(route, json={"video_url": str(path), **extra}, headers=auth())
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["object"], job["kind"]) == ("editor.job", kind)
    assert job["status"] in ("queued", "running", "completed")
    assert job["result_url"] == f"/api/jobs/{job['id']}/result"

    done = _wait(editor, job["id"])
    assert done["status"] == "completed", done
    assert done["progress"]["fraction"] == 1.0
    result = editor.get(done["result_url"], headers=auth())
    assert result.status_code == 200
    body = result.json()
    assert (body["frame_count"], body["fps"], body["width"], body["height"]) == (8, 8.0, 64, 48)
    assert body["file_path"].startswith("/outputs/videos/")
    assert editor.get(body["file_path"]).status_code == 200


def test_enhance_job_keeps_the_audio(editor: Any, tmp_path: Path) -> None:
    import av

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(16)]
    (tmp_path / "talk.mp4").write_bytes(clip_with_audio(frames, fps=8))
    response = editor.post(ENHANCE, json={"video_url": str(tmp_path / "talk.mp4")}, headers=auth())
    assert response.status_code == 202, response.text
    job = _wait(editor, response.json()["id"])
    assert job["status"] == "completed", job
    assert job["progress"]["total_steps"] == 32  # two passes over 16 frames
    served = editor.get(job["result"]["file_path"]).content
    box: Any
    with av.open(io.BytesIO(served)) as box:
        assert [s.codec_context.name for s in box.streams.audio] == ["aac"]
        assert sum(1 for _ in box.decode(box.streams.video[0])) == 16


@pytest.mark.parametrize("route", [ENHANCE, REMOVE])
def test_a_bad_body_is_a_400_at_submission(editor: Any, tmp_path: Path, route: str) -> None:
    (tmp_path / "text.mp4").write_bytes(b"not a video at all " * 20)
    assert_error(editor.post(route, json={}, headers=auth()), 400)
    assert_error(editor.post(route, json={"video_url": ""}, headers=auth()), 400)
    assert_error(
        editor.post(route, json={"video_url": str(tmp_path / "missing.mp4")}, headers=auth()),
        400,
    )
    assert_error(
        editor.post(route, json={"video_url": str(tmp_path / "text.mp4")}, headers=auth()), 415
    )


def test_cancel_mid_run_stops_between_frames_and_keeps_no_file(
    editor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blur of the first frame waits until the test has cancelled: the job is then
    certainly mid-run, and the next frame's check stops it."""
    started, release = threading.Event(), threading.Event()
    blur = video_enhance.binomial_blur

    def held(frame: Any) -> Any:
        started.set()
        release.wait(30)
        return blur(frame)

    monkeypatch.setattr(video_enhance, "binomial_blur", held)
    path = _video(tmp_path, count=12)
    before = _outputs()
    body = {"video_url": str(path), "stabilize": False, "color_correct": False}
    response = editor.post(ENHANCE, json=body, headers=auth())
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert started.wait(60)
    running = editor.get(f"/api/jobs/{job_id}", headers=auth()).json()
    assert running["status"] == "running"
    assert running["progress"]["total_steps"] == 12
    cancelled = editor.post(f"/api/jobs/{job_id}/cancel", headers=auth())
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    release.set()
    job = _wait(editor, job_id)
    assert job["status"] == "cancelled"
    assert job["result"] is None
    # The task has ended once its enhancing slot is free again.
    import service

    assert service._instance is not None
    deadline = time.monotonic() + 30
    while service._instance.editor._enhancing:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _outputs() == before
    result = editor.get(f"/api/jobs/{job_id}/result", headers=auth())
    assert result.status_code == 200
    assert result.json()["status"] == "cancelled"
