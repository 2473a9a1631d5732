"""The runner pool: a failed or missing runner is reported, the others load; torch threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from botmodels.config import Settings
from botmodels.pool import RunnerPool


def _pool_settings(tmp_path: Path, manifest: str, **kwargs: Any) -> Settings:
    path = tmp_path / "models.toml"
    path.write_text(manifest)
    return Settings.model_construct(
        **{
            **Settings().model_dump(),
            "manifest": path,
            "runners": ["good", "bad"],
            "preload": ["all"],
            **kwargs,
        }
    )


class GoodRunner:
    dtype = "float32"

    def __init__(self, path: Path, quantization: Any, device: Any) -> None:
        self.path = path

    def load(self) -> None:
        pass


class BrokenRunner(GoodRunner):
    def load(self) -> None:
        raise OSError("weights are corrupt")


def test_pool_reports_a_failed_runner_and_keeps_the_others(
    tmp_path: Path, offline_store: None
) -> None:
    manifest = (
        '[good.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
        '[bad.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
    )
    pool = RunnerPool(_pool_settings(tmp_path, manifest), {"good": GoodRunner, "bad": BrokenRunner})
    assert not pool.settled
    pool.load_all()
    assert pool.settled
    assert pool.slots["good"].state == "ready"
    assert isinstance(pool.local("good"), GoodRunner)
    assert pool.slots["bad"].state == "failed"
    assert pool.slots["bad"].error == "OSError: weights are corrupt"
    from botmodels.errors import RunnerUnavailable

    with pytest.raises(RunnerUnavailable, match="failed to load: OSError"):
        pool.local("bad")
    with pytest.raises(RunnerUnavailable, match="not enabled"):
        pool.local("other")
    described = {d["runner"]: d for d in (s.describe() for s in pool.slots.values())}
    assert described["bad"]["error"] == "OSError: weights are corrupt"
    assert described["good"]["synthetic"] is True


def test_pool_missing_model_says_how_to_import(tmp_path: Path, offline_store: None) -> None:
    manifest = (
        '[good.offline]\nname = "not-imported"\nsource = "tiny"\nquantization = "none"\n'
        '[bad.offline]\nname = "not-imported"\nsource = "tiny"\nquantization = "none"\n'
    )
    pool = RunnerPool(_pool_settings(tmp_path, manifest), {"good": GoodRunner, "bad": GoodRunner})
    pool.load_all()
    error = pool.slots["good"].error or ""
    assert "not in the BentoML store" in error
    assert "scripts/import_models.py offline" in error


def test_settings_reject_unknown_runner() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown runner"):
        Settings(runners="embeddings,telepathy")
    assert Settings(runners="embeddings, embeddings").runners == ["embeddings"]


class OneThreadRunner(GoodRunner):
    def load(self) -> None:
        import torch

        torch.set_num_threads(1)  # what `import silero_vad` does, process-wide


def test_pool_restores_torch_threads_a_runner_import_changed(
    tmp_path: Path, offline_store: None
) -> None:
    import torch

    manifest = (
        '[good.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
        '[bad.offline]\nname = "embeddings-tiny-bert"\nsource = "tiny"\nquantization = "none"\n'
    )
    before = torch.get_num_threads()
    settings = _pool_settings(tmp_path, manifest, threads=2)
    pool = RunnerPool(settings, {"good": OneThreadRunner, "bad": GoodRunner})
    try:
        pool.load_all()
        assert pool.slots["good"].state == "ready"
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_importing_silero_vad_really_sets_one_thread() -> None:
    # The reason for keep_threads: if silero-vad stops doing this, the guard can go.
    import silero_vad

    source = (Path(silero_vad.__file__).parent / "model.py").read_text()
    assert "torch.set_num_threads(1)" in source
