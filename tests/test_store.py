"""The model store: manifest, imports (local, hub, tiny), and the offline store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from botmodels.store import (
    ManifestError,
    ModelSpec,
    find_stored,
    import_spec,
    load_manifest,
    tree_sha256,
)
from runners.embeddings import EmbeddingsRunner, build_tiny

ROOT = Path(__file__).resolve().parent.parent


def test_project_version_matches_service() -> None:
    import service

    pyproject = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "(.+)"', pyproject, re.M)
    assert match is not None
    assert match.group(1) == service.VERSION


def test_manifest_has_every_profile_for_every_runner() -> None:
    from botmodels.config import KNOWN_RUNNERS
    from botmodels.registry import KINDS

    manifest = load_manifest(ROOT / "models.toml")
    for runner in KNOWN_RUNNERS:
        # An optional kind may have no offline model (rerank: no package ships a cross-encoder).
        required = {"cpu", "gpu", "tiny"} | (set() if KINDS[runner].optional else {"offline"})
        assert set(manifest[runner]) >= required, runner
        for profile in ("cpu", "gpu"):
            spec = manifest[runner][profile]
            assert spec.source != "tiny", (runner, profile)  # real models only
            if spec.source == "hub":
                assert spec.repo
                assert spec.revision


def test_manifest_errors_name_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text('[embeddings.offline]\nname = "x"\nsource = "ftp"\nquantization = "none"\n')
    with pytest.raises(ManifestError, match=r"embeddings\.offline: source"):
        load_manifest(bad)


def test_tree_sha256_depends_on_names_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    first = tree_sha256(tmp_path)
    (tmp_path / "a").write_bytes(b"2")
    assert tree_sha256(tmp_path) != first
    (tmp_path / "a").write_bytes(b"1")
    assert tree_sha256(tmp_path) == first
    (tmp_path / "a").rename(tmp_path / "b")
    assert tree_sha256(tmp_path) != first


def test_local_import_is_idempotent_and_labelled(tmp_path: Path, offline_store: None) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    build_tiny(folder)
    spec = ModelSpec(
        runner="embeddings",
        profile="test",
        name="embeddings-local-test",
        source="local",
        quantization="none",
        path=str(folder),
    )
    messages: list[str] = []
    first = import_spec(spec, {}, messages.append)
    second = import_spec(spec, {}, messages.append)
    assert first.tag == second.tag
    assert any("already stored" in m for m in messages)
    labels = first.info.labels
    assert labels["source"] == f"local:{folder}"
    assert labels["sha256"] == tree_sha256(folder)
    assert str(first.tag.version) == labels["sha256"][:20]
    assert labels["synthetic"] == "false"


def test_import_exports_once_and_a_store_without_the_export_is_stored_again(
    tmp_path: Path, offline_store: None
) -> None:
    """A kind with an exporter (the embeddings' ONNX graph) gets it in the stored folder with
    its sha256 in the labels; a version stored before there was an exporter is replaced."""
    from botmodels import registry
    from runners.onnx_encoder import graph_path

    folder = tmp_path / "model"
    folder.mkdir()
    build_tiny(folder)
    spec = ModelSpec(
        runner="embeddings",
        profile="test",
        name="embeddings-export-test",
        source="local",
        quantization="none",
        path=str(folder),
    )
    without = import_spec(spec, {}, lambda _: None)
    assert "export_sha256" not in without.info.labels
    messages: list[str] = []
    stored = import_spec(spec, {}, messages.append, registry.exporters())
    assert any("stored without its exported files" in m for m in messages)
    assert stored.tag == without.tag  # the same version: the model's own files are the same
    assert graph_path(Path(stored.path)).is_file()
    assert stored.info.labels["export_sha256"] == tree_sha256(
        Path(stored.path), [Path(stored.path) / "onnx"]
    )
    assert stored.info.labels["sha256"] == tree_sha256(folder)
    again = import_spec(spec, {}, messages.append, registry.exporters())
    assert "already stored" in messages[-1]
    assert again.info.labels["export_sha256"] == stored.info.labels["export_sha256"]
    runner = EmbeddingsRunner(Path(again.path), quantization="none", device="cpu")
    runner.load()
    assert runner.engine == "onnx"


def test_hub_import_records_the_resolved_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline_store: None
) -> None:
    """The hub path, fed local files: what snapshot_download returns is what gets stored."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "snapshots" / commit
    snapshot.mkdir(parents=True)
    build_tiny(snapshot)
    calls: list[dict[str, Any]] = []

    def fake_snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        return str(snapshot)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    spec = ModelSpec(
        runner="embeddings",
        profile="cpu",
        name="embeddings-hub-test",
        source="hub",
        quantization="int8",
        repo="org/model",
        revision="main",
    )
    stored = import_spec(spec, {}, lambda _: None)
    assert calls[0]["repo_id"] == "org/model"
    assert calls[0]["revision"] == "main"
    assert stored.info.labels["source"] == f"hub:org/model@{commit}"
    assert stored.info.labels["revision"] == commit
    assert stored.info.labels["quantization"] == "int8"
    runner = EmbeddingsRunner(Path(stored.path), quantization="none", device="cpu")
    runner.load()
    assert runner.embed(["hello"]).vectors.shape == (1, 64)


def test_tiny_build_is_deterministic(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    build_tiny(tmp_path / "a")
    build_tiny(tmp_path / "b")
    assert tree_sha256(tmp_path / "a") == tree_sha256(tmp_path / "b")


def test_offline_store_has_real_and_synthetic_models(offline_store: None) -> None:
    real = find_stored("embeddings-all-minilm-l6-v2:latest")
    tiny = find_stored("embeddings-tiny-bert:latest")
    assert real is not None
    assert tiny is not None
    assert real.info.labels["synthetic"] == "false"
    assert tiny.info.labels["synthetic"] == "true"
    assert tiny.info.labels["source"] == "tiny:embeddings"
