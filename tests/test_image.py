"""The container build context `make image` hands to buildah, generated without building an image.

`bentoml containerize` first writes the Dockerfile and the build context (the Bento with its
models copied in: `construct_containerfile`), then runs the builder; a machine with no container
registry stops at the Dockerfile's `FROM` (docs/deploy.md). Everything up to there is checked
here: base image, Python and system packages, user, entrypoint, models, port. The CPU context is
built from the session's Bento (tests/conftest.py `built_bento`, shared with tests/test_build.py);
the GPU Bento is built here from bentofile.gpu.yaml.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from botmodels.config import Settings
from tests.conftest import ROOT, bentoml_cli

pytestmark = pytest.mark.slow

DEPLOY = ROOT / "deploy" / "kubernetes"
# what `make system-deps` installs on a host: the OCR runner's engine and languages
TESSERACT = {"tesseract-ocr", "tesseract-ocr-eng", "tesseract-ocr-por", "tesseract-ocr-spa"}
Instruction = tuple[str, str]


def instructions(dockerfile: str) -> list[Instruction]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    found: list[Instruction] = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def args_of(steps: list[Instruction], word: str) -> list[str]:
    return [rest for instruction, rest in steps if instruction == word]


def env_of(steps: list[Instruction]) -> dict[str, str]:
    """ENV values, with `ENV X=$X` after `ARG X=v` resolved to v (how BentoML writes envs)."""
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    for instruction, rest in steps:
        name, _, value = rest.partition("=")
        if instruction == "ARG":
            args[name] = value
        elif instruction == "ENV" and "=" in rest:
            env[name] = args.get(name, value) if value == f"${name}" else value
    return env


def requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0].lower())
    return names


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s#;]+)\s*(#.*)?", line.strip())
        if match:
            found[match[1].lower()] = match[2]
    return found


def install_torch_version() -> str:
    """The torch version `make` installs (scripts/install_torch.sh's default)."""
    match = re.search(r"TORCH_VERSION:-([^}]+)\}", (ROOT / "scripts/install_torch.sh").read_text())
    assert match
    return match[1]


def bentofile(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return loaded


def bento_path(tag: str) -> Path:
    name, _, version = tag.partition(":")
    return Path(os.environ["BENTOML_HOME"], "bentos", name, version)


@pytest.fixture(scope="module")
def cpu_context(built_bento: str) -> Iterator[tuple[Path, list[Instruction]]]:
    """What `bentoml containerize --backend buildah` writes before it runs buildah."""
    import bentoml
    from bentoml._internal.container import construct_containerfile
    from bentoml._internal.container.buildah import ENV as BUILDAH_ENV

    # the buildah backend builds without BuildKit syntax (DOCKER_BUILDKIT=0)
    buildkit = bool(int(BUILDAH_ENV["DOCKER_BUILDKIT"]))
    with construct_containerfile(bentoml.bentos.get(built_bento), buildkit) as (context, file):
        yield Path(context), instructions(Path(file).read_text())


@pytest.fixture(scope="module")
def gpu_bento(offline_store: None) -> Path:
    """bentofile.gpu.yaml built as `make image BENTOFILE=bentofile.gpu.yaml` tags it.

    BentoML writes the Bento's `env/docker/Dockerfile` with the generator and options that
    containerize uses with buildah (no BuildKit); reading it spares a second copy of the models.
    """
    tag = "botmodels:0.1.0-gpu"
    bentoml_cli("build", "-f", "bentofile.gpu.yaml", "--version", tag.partition(":")[2])
    return bento_path(tag)


def assert_serves_the_bento(context: Path, steps: list[Instruction]) -> None:
    """Non-root, and the entrypoint starts `bentoml serve` on the Bento copied into the image."""
    env = env_of(steps)
    assert args_of(steps, "USER")[-1] == "bentoml"
    bento_dir = next(
        a.partition("=")[2] for a in args_of(steps, "ARG") if a.startswith("BENTO_PATH=")
    )
    assert env["BENTO_PATH"] == bento_dir
    assert args_of(steps, "WORKDIR") == ["$BENTO_PATH"]
    assert "--chown=bentoml:bentoml . ./" in args_of(steps, "COPY")  # the context, models too
    (entrypoint,) = args_of(steps, "ENTRYPOINT")
    assert entrypoint == f'[ "{bento_dir}/env/docker/entrypoint.sh" ]'
    assert not args_of(steps, "CMD")  # no arguments: the script's default branch below
    script = (context / "env/docker/entrypoint.sh").read_text()
    assert 'set -- bentoml serve "$@" "$BENTO_PATH"' in script
    uid = next(
        a.partition("=")[2] for a in args_of(steps, "ARG") if a.startswith("BENTO_USER_UID=")
    )
    assert int(uid) != 0
    assert_manifests_run_as(int(uid))
    assert_port_not_overridden(env)
    assert env["BOTMODELS_HOST"] == "0.0.0.0"  # reachable from the pod network


def assert_manifests_run_as(uid: int) -> None:
    """Every pod runs as the image's user: numeric, so `runAsNonRoot` can be verified."""
    checked: list[str] = []
    # the Deployments themselves (overlays only patch them; tests/test_deploy.py renders those)
    for path in [*(DEPLOY / "base").glob("*.yaml"), *(DEPLOY / "components").rglob("*.yaml")]:
        for obj in yaml.safe_load_all(path.read_text()):
            if obj and obj.get("kind") == "Deployment" and "selector" in obj["spec"]:
                context = obj["spec"]["template"]["spec"]["securityContext"]
                assert context["runAsNonRoot"] is True, path
                assert context["runAsUser"] == uid, path
                checked.append(obj["metadata"]["name"])
    assert {"botmodels", "botmodels-stt"} <= set(checked), checked


def assert_port_not_overridden(env: dict[str, str]) -> None:
    """The server listens on `BOTMODELS_PORT` (the service's `http.port`): `bentoml serve` takes
    `--port` from `BENTOML_PORT` and the entrypoint sets that from `PORT`, so neither may be set.
    The Dockerfile's `EXPOSE 3000` is BentoML's fixed template text (bento v2 has no option for
    it) and only metadata: the manifests' containerPort and probes use the served port."""
    assert "BENTOML_PORT" not in env
    assert "PORT" not in env


def test_cpu_image_context(cpu_context: tuple[Path, list[Instruction]], built_bento: str) -> None:
    context, steps = cpu_context
    options = bentofile("bentofile.yaml")
    assert (
        args_of(steps, "FROM")[0].split()[0] == f"python:{options['docker']['python_version']}-slim"
    )

    # Python packages: the runtime set, and torch pinned (as `make` installs it) from the CPU index
    requirements = (context / "env/python/requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements.splitlines()
    assert pins(requirements)["torch"] == install_torch_version()
    assert requirement_names((ROOT / "requirements.txt").read_text()) <= requirement_names(
        requirements
    )
    runs = args_of(steps, "RUN")
    assert any("pip install -r $BENTO_PATH/env/python/requirements.txt" in r for r in runs)

    # system packages: tesseract and its languages
    apt = [r for r in runs if "apt-get install" in r]
    assert any(set(r.split()) >= TESSERACT for r in apt), apt
    assert set(options["docker"]["system_packages"]) == TESSERACT

    # the models the Bento references are in the context, at the path the image serves them from
    bento_yaml = yaml.safe_load((context / "bento.yaml").read_text())
    tags = [m["tag"] for svc in bento_yaml["services"] for m in svc.get("models", [])]
    assert any(t.startswith("embeddings-all-minilm-l6-v2:") for t in tags), tags
    for tag in tags:
        name, _, version = tag.partition(":")
        assert (context / "models" / name / version / "model.yaml").is_file(), tag

    # the port the Bento records is the service's configured one, the manifests' containerPort
    (service,) = bento_yaml["services"]
    assert service["config"]["http"]["port"] == Settings.model_fields["port"].default
    assert_serves_the_bento(context, steps)


def test_gpu_image_dockerfile(gpu_bento: Path) -> None:
    options = bentofile("bentofile.gpu.yaml")
    steps = instructions((gpu_bento / "env/docker/Dockerfile").read_text())
    base = args_of(steps, "FROM")[0].split()[0]
    cuda = options["docker"]["cuda_version"]
    assert re.fullmatch(rf"nvidia/cuda:{re.escape(cuda)}\.\d+-cudnn-runtime-ubuntu[\d.]+", base)

    # PyPI's torch (the CUDA build): the same pin, no CPU index
    requirements = (gpu_bento / "env/python/requirements.txt").read_text()
    assert "download.pytorch.org/whl/cpu" not in requirements
    assert pins(requirements)["torch"] == install_torch_version()
    assert requirement_names((ROOT / "requirements.txt").read_text()) <= requirement_names(
        requirements
    )
    runs = args_of(steps, "RUN")
    assert any("env/python/install.sh" in r for r in runs)

    assert any(set(r.split()) >= TESSERACT for r in runs if "apt-get install" in r)
    assert env_of(steps)["BOTMODELS_PROFILE"] == "gpu"
    assert_serves_the_bento(gpu_bento, steps)
