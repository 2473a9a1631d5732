"""botserver replay: the video editor's `POST /api/video/enhance`, built as botserver's Rust code
builds it and read back as it reads it (generalbots/generalbots, commit f59afde, 2026-05-19,
`botserver/crates/botvideo/src/engine/chat_ai.rs:154-191`, `enhance_video`), and the route's
refusals of bad input.

The clip is served by a local HTTP server on 127.0.0.1, allowed by a CIDR entry of
BOTMODELS_FETCH_ALLOW: the service's fetcher is swapped for one with that setting for the length
of a test. botserver sends no key (it reaches botmodels through BOTMODELS_TRUSTED_NETWORKS); the
test client's peer is not an IP address, so these tests send the key the editor's deployment
would not need."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np
import pytest

from tests.conftest import auth
from tests.helpers import assert_error
from tests.vision_media import clip_with_audio


def _clip(frames: int = 16, fps: int = 8) -> bytes:
    """A grey gradient with a square drifting across it, shaken by the camera, with a tone."""
    rng = np.random.default_rng(3)
    shots = []
    for index in range(frames):
        frame = np.tile(np.linspace(50, 200, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))
        dy, dx = rng.integers(-2, 3, 2)
        frame[20 + dy : 30 + dy, 10 + index + dx : 20 + index + dx] = (220, 40, 40)
        shots.append(frame)
    return clip_with_audio(shots, fps=fps)


def _enhance_video(client: Any, video_url: str, **options: Any) -> tuple[int, Any]:
    """chat_ai.rs:154-191 (enhance_video): `reqwest::Client::new()` (no timeout, no key),
    POST {BOTMODELS_URL}/api/video/enhance with `.json({video_url: clip.source_url,
    upscale_factor, denoise, stabilize, color_correct})`, each an `Option` serialised as
    `null` when the editor's caller left it out. A non-2xx answer becomes an error with the body
    as text; otherwise the body is parsed as JSON and only `enhanced_url` (string, "" when
    absent) and `enhancements` (strings) are read."""
    body = {
        "video_url": video_url,
        "upscale_factor": options.get("upscale_factor"),
        "denoise": options.get("denoise"),
        "stabilize": options.get("stabilize"),
        "color_correct": options.get("color_correct"),
    }
    response = client.post(
        "/api/video/enhance",
        headers={"Content-Type": "application/json", **auth()},
        content=json.dumps(body),
    )
    if not 200 <= response.status_code < 300:
        return response.status_code, response.text
    result = response.json()
    enhanced_url = result.get("enhanced_url")
    enhancements = result.get("enhancements")
    return response.status_code, {
        "enhanced_url": enhanced_url if isinstance(enhanced_url, str) else "",
        "enhancements_applied": [v for v in enhancements or [] if isinstance(v, str)],
    }


def _video_at(client: Any, url: str) -> tuple[int, float, int, int, list[str]]:
    """(frames, fps, width, height, audio codecs) of the MP4 an absolute URL names."""
    response = client.get(urlsplit(url).path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    box: Any = av.open(io.BytesIO(response.content))
    with box:
        video = box.streams.video[0]
        count = len(list(box.decode(video)))
        audio = [s.codec_context.name for s in box.streams.audio]
        return count, float(video.average_rate), video.width, video.height, audio


def test_enhance_video(fetching: Any, file_server: tuple[Path, str]) -> None:
    """chat_ai.rs:154-191 with the editor's caller asking for a 2x upscale and no stabilising:
    the answer's URL is absolute (botserver hands it on as it is), the file keeps the frame
    count, the rate and the audio."""
    root, base = file_server
    (root / "clip.mp4").write_bytes(_clip())
    status, answer = _enhance_video(fetching, f"{base}/clip.mp4", upscale_factor=2, stabilize=False)
    assert status == 200, answer
    assert answer["enhancements_applied"] == ["denoise", "color_correct", "upscale_lanczos_2x"]
    url = answer["enhanced_url"]
    assert urlsplit(url).scheme == "http"
    assert urlsplit(url).path.startswith("/outputs/videos/")
    assert _video_at(fetching, url) == (16, 8.0, 128, 96, ["aac"])


def test_enhance_video_with_every_option_left_out(
    fetching: Any, file_server: tuple[Path, str]
) -> None:
    """chat_ai.rs:164-175: every `Option` None is sent as `null`: the three filters run, no
    upscale."""
    root, base = file_server
    (root / "plain.mp4").write_bytes(_clip(frames=9, fps=12))
    status, answer = _enhance_video(fetching, f"{base}/plain.mp4")
    assert status == 200, answer
    assert answer["enhancements_applied"] == ["denoise", "stabilize", "color_correct"]
    assert _video_at(fetching, answer["enhanced_url"]) == (9, 12.0, 64, 48, ["aac"])


def _outputs(client: Any) -> set[Path]:
    import service

    assert service._instance is not None
    folder = service._instance.outputs.root / "videos"
    return set(folder.iterdir()) if folder.is_dir() else set()


@pytest.mark.parametrize(
    ("options", "status", "param"),
    [
        ({"upscale_factor": 0}, 400, "upscale_factor"),
        ({"upscale_factor": 5}, 400, "upscale_factor"),
        ({"upscale_factor": "big"}, 400, "upscale_factor"),
        ({"denoise": "loud"}, 400, "denoise"),
    ],
)
def test_bad_fields_are_400s(
    fetching: Any, file_server: tuple[Path, str], options: dict[str, Any], status: int, param: str
) -> None:
    root, base = file_server
    (root / "ok.mp4").write_bytes(_clip(frames=4))
    before = _outputs(fetching)
    response = fetching.post(
        "/api/video/enhance", headers=auth(), json={"video_url": f"{base}/ok.mp4", **options}
    )
    assert assert_error(response, status)["param"] == param
    assert _outputs(fetching) == before


def test_bad_videos_are_refused_and_leave_no_file(
    fetching: Any, file_server: tuple[Path, str]
) -> None:
    root, base = file_server
    (root / "notes.txt").write_bytes(b"not a video at all, just text")
    data = _clip(frames=6)
    (root / "cut.mp4").write_bytes(data[: len(data) // 3])
    before = _outputs(fetching)
    cases = [
        ({}, 400, "video_url"),  # missing
        ({"video_url": f"{base}/notes.txt"}, 415, "video_url"),
        ({"video_url": f"{base}/cut.mp4"}, 400, "video_url"),
        ({"video_url": f"{base}/missing.mp4"}, 400, "video_url"),
        ({"video_url": "http://169.254.169.254/latest/meta-data"}, 400, "video_url"),
    ]
    for body, status, param in cases:
        response = fetching.post("/api/video/enhance", headers=auth(), json=body)
        assert assert_error(response, status)["param"] == param
    assert _outputs(fetching) == before


def test_too_many_frames_is_413(
    fetching: Any, file_server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import service

    assert service._instance is not None
    settings = service._instance.editor.settings.model_copy(update={"editor_max_frames": 5})
    monkeypatch.setattr(service._instance.editor, "settings", settings)
    root, base = file_server
    (root / "long.mp4").write_bytes(_clip(frames=8))
    response = fetching.post(
        "/api/video/enhance", headers=auth(), json={"video_url": f"{base}/long.mp4"}
    )
    assert assert_error(response, 413)["param"] == "video_url"
    assert "BOTMODELS_EDITOR_MAX_FRAMES" in response.json()["error"]["message"]
