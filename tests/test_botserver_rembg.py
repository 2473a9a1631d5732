"""botserver replay: the video editor's background removal, built as botserver's Rust code
builds it and read back as it reads it (generalbots/generalbots, commit f59afde, 2026-05-19):
botserver/crates/botvideo/src/engine/chat_ai.rs lines 120-154 (VideoEngine::remove_background).

It POSTs `{BOTMODELS_URL}/api/video/remove-background` with reqwest's `.json(...)` (Content-Type
application/json), no key, no timeout, body `{"video_url": clip.source_url, "replacement":
Option<String>}` (`null` when the user named none); a non-2xx is an error with the body as
text; otherwise `result["processed_url"].as_str()` and `result["duration_ms"].as_i64()` (an
integer: a float would read as 0).

The editor reaches botmodels keyless through BOTMODELS_TRUSTED_NETWORKS; the test client's peer
is not an IP address, so the test sends the key the editor's deployment would not need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runners.video import write_mp4
from tests.conftest import auth


@pytest.mark.parametrize("replacement", [None, "#ffffff"])
def test_remove_background_as_the_editor_sends_it(
    fetching: Any, file_server: tuple[Path, str], replacement: str | None
) -> None:
    root, base = file_server
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)
    write_mp4(frames, 10, root / "source.mp4")
    # serde_json::json!({"video_url": &clip.source_url, "replacement": replacement})
    body = json.dumps({"video_url": f"{base}/source.mp4", "replacement": replacement})
    response = fetching.post(
        "/api/video/remove-background",
        content=body,
        headers={"Content-Type": "application/json", **auth()},
    )
    assert 200 <= response.status_code < 300, response.text
    result = response.json()
    processed_url = result["processed_url"]
    duration_ms = result["duration_ms"]
    assert isinstance(processed_url, str)
    assert processed_url.startswith("http")
    assert isinstance(duration_ms, int)
    assert not isinstance(duration_ms, bool)
    assert duration_ms == 600  # 6 frames at 10 fps
    assert result["replacement"] == (replacement or "#00ff00")
    # the editor hands processed_url on: it is served without a key
    path = "/" + processed_url.split("/", 3)[3]
    assert fetching.get(path).headers["content-type"] == "video/mp4"
