"""The runner registry (botmodels/registry.py): the one list of kinds, each with a factory, a
tiny builder where the manifest asks for one, and a model reference on the service; importing
it (and the settings) loads no runner."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from botmodels import registry
from botmodels.config import KNOWN_RUNNERS, get_settings
from botmodels.store import load_manifest
from runners.base import Runner

ROOT = Path(__file__).resolve().parent.parent


def test_the_kind_list_is_the_registry() -> None:
    assert tuple(registry.KINDS) == KNOWN_RUNNERS
    assert set(registry.factories()) == set(KNOWN_RUNNERS)


def test_every_kind_in_the_manifest_is_registered_with_the_builders_it_needs() -> None:
    manifest = load_manifest(get_settings().manifest)
    assert set(manifest) <= set(registry.KINDS)
    builders = registry.tiny_builders()
    for kind, profiles in manifest.items():
        for spec in profiles.values():
            if spec.source == "tiny":
                assert kind in builders, f"{kind}: the manifest builds a tiny model, no builder"


def test_the_service_has_one_model_reference_per_kind() -> None:
    import service

    bento: Any = service.BotModels  # a bentoml.Service; its stubs do not say so
    for kind in registry.KINDS.values():
        assert hasattr(bento.inner, kind.model_attr), kind.name


def test_importing_the_registry_and_settings_loads_no_runner() -> None:
    code = (
        "import sys; import botmodels.config, botmodels.registry; "
        "print(sorted(m for m in sys.modules if m.startswith(('runners.', 'torch', 'numpy'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['runners.base']"


def test_vision_and_vqa_share_one_runner_for_one_stored_model(tmp_path: Path) -> None:
    vision: Any = registry.KINDS["vision"].factory(tmp_path, "none", "cpu")
    vqa: Any = registry.KINDS["vqa"].factory(tmp_path, "none", "cpu")
    assert vision is vqa
    other: Any = registry.KINDS["vqa"].factory(tmp_path / "other", "none", "cpu")
    assert other is not vision


@pytest.mark.parametrize(
    "kind", [name for name, kind in registry.KINDS.items() if kind.build_tiny is not None]
)
def test_every_runner_keeps_the_written_contract(
    kind: str, tiny_runner: Callable[..., Any]
) -> None:
    """runners/base.py: what `/api/models` reports, readable once the tiny model is loaded."""
    runner = tiny_runner(kind)
    assert isinstance(runner, Runner)
    assert runner.kind == registry.KINDS[kind].runner.split(":")[0]  # vqa runs the vision class
    assert (runner.device, runner.quantization) == ("cpu", "none")
    assert isinstance(runner.dtype, str)
    assert runner.dtype
