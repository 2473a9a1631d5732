"""Import a profile's models into the BentoML model store.

    python scripts/import_models.py offline           # no hub needed
    python scripts/import_models.py cpu --runners embeddings
    python scripts/import_models.py tiny              # random weights, for tests

Idempotent: a model whose files are already stored (same sha256) is skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from botmodels import registry
from botmodels.config import KNOWN_RUNNERS, get_settings
from botmodels.store import ManifestError, import_spec, load_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("profile", help="offline, cpu, gpu or tiny")
    parser.add_argument(
        "--runners",
        default=",".join(KNOWN_RUNNERS),
        help="comma-separated runner kinds (default: all)",
    )
    parser.add_argument("--manifest", type=Path, default=get_settings().manifest)
    args = parser.parse_args(argv)

    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kinds = [k.strip() for k in args.runners.split(",") if k.strip()]
    failures = 0
    settings = get_settings()
    for i, kind in enumerate(kinds, 1):
        entry = settings.manifest_entry(kind, args.profile)  # BOTMODELS_MODEL_VARIANTS
        spec = manifest.get(kind, {}).get(entry)
        if spec is None:
            print(f"[{i}/{len(kinds)}] {kind}: no model for profile {entry!r}; skipped")
            continue
        print(f"[{i}/{len(kinds)}] {kind}: {spec.name} from {spec.source}", flush=True)
        started = time.perf_counter()
        try:
            stored = import_spec(
                spec,
                registry.tiny_builders(),
                lambda msg: print(msg, flush=True),
                registry.exporters(),
            )
        except Exception as exc:  # noqa: BLE001 - report each model's failure, go on
            failures += 1
            print(f"  FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            continue
        print(f"  done in {time.perf_counter() - started:.1f} s: {stored.tag}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
