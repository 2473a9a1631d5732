"""Fuzz every route of botmodels with Schemathesis, from the service's own `/docs.json`.

    .venv/bin/python scripts/fuzz.py                          # a tiny-profile server of its own
    .venv/bin/python scripts/fuzz.py --examples 500 --seed 7  # longer; a seed repeats a run
    .venv/bin/python scripts/fuzz.py --url http://127.0.0.1:8089   # a server already running

It runs the gate of `make test` (tests/test_schemathesis.py: every operation of the document,
positive and negative data, Schemathesis' coverage and fuzzing phases) with more examples per
operation, then prints a summary: per operation the statuses answered, and every failure with
the request that caused it. The checks are the gate's: no 5xx (`not_a_server_error`), and every
response documented (status code, content type, body schema).

With `--url`, the key is BOTMODELS_API_KEYS' first key, or the key file (as the server reads
it). Point it only at a server you may fill with junk: it submits generation jobs and writes
files under /outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botmodels.config import KNOWN_RUNNERS

ROOT = Path(__file__).resolve().parent.parent

GATE = "tests/test_schemathesis.py"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
# The server a fuzz run starts: tiny random models, and bounds small enough that any request
# the document allows runs in well under a second on a CPU (the document follows the settings,
# so Schemathesis generates within them). Generation defaults must lie inside those bounds, or
# a request that omits them would be refused.
SERVER_ENV = {
    "BOTMODELS_PROFILE": "tiny",
    "BOTMODELS_THREADS": "1",
    "BOTMODELS_REQUEST_TIMEOUT_S": "60",
    "BOTMODELS_EMBEDDINGS_MAX_INPUTS": "16",
    "BOTMODELS_EMBEDDINGS_MAX_CHARS": "2000",
    "BOTMODELS_IMAGE_MIN_SIZE": "32",
    "BOTMODELS_IMAGE_MAX_SIZE": "64",
    "BOTMODELS_IMAGE_MAX_STEPS": "2",
    "BOTMODELS_IMAGE_DEFAULT_STEPS": "1",
    "BOTMODELS_IMAGE_MAX_N": "2",
    "BOTMODELS_VIDEO_MIN_SIZE": "32",
    "BOTMODELS_VIDEO_MAX_SIZE": "64",
    "BOTMODELS_VIDEO_MAX_STEPS": "2",
    "BOTMODELS_VIDEO_DEFAULT_STEPS": "1",
    "BOTMODELS_VIDEO_MAX_FRAMES": "2",
    "BOTMODELS_VIDEO_DEFAULT_FRAMES": "2",
    "BOTMODELS_VISION_MAX_VIDEO_FRAMES": "2",
    "BOTMODELS_VISION_DEFAULT_VIDEO_FRAMES": "2",
    "BOTMODELS_TTS_MAX_CHARS": "200",
    "BOTMODELS_STT_MAX_AUDIO_S": "30",
    "BOTMODELS_DETECT_MAX_ROWS": "50",
    "BOTMODELS_RERANK_MAX_DOCUMENTS": "16",
    # Every runner, the opt-in language model too: a disabled runner's 503 is not what this
    # fuzzes. A short context keeps each generated answer short.
    "BOTMODELS_RUNNERS": ",".join(KNOWN_RUNNERS),
    "BOTMODELS_LLM_CONTEXT": "96",
    "BOTMODELS_RERANK_MAX_CHARS": "2000",
}
# Runner routes whose items can ask for unbounded work (one call holds the one pipeline for as
# long as the numbers say, or allocates as much as they say): fuzzed only once the document
# bounds every one of these fields. tests/test_schemathesis.py fails while one is unbounded.
HEAVY_FIELDS: dict[str, tuple[str, ...]] = {
    "/runners/image/generate": ("width", "height", "steps"),
    "/runners/video/generate": ("width", "height", "steps", "num_frames"),
    "/runners/tts/synthesize": ("text", "speed"),
}

# Environment the gate reads (set by main(); `make test` sets none of them).
ENV_URL = "BOTMODELS_FUZZ_URL"  # fuzz this server instead of starting one
ENV_KEY = "BOTMODELS_FUZZ_KEY"  # its key (tests/conftest.py replaces BOTMODELS_API_KEYS)
ENV_EXAMPLES = "BOTMODELS_FUZZ_EXAMPLES"
ENV_SEED = "BOTMODELS_FUZZ_SEED"
ENV_REPORT = "BOTMODELS_FUZZ_REPORT"  # write the tally here as JSON


def config(key: str, *, examples: int, seed: int | None, skip: Iterable[str] = ()) -> Any:
    """Schemathesis' configuration for a run: the key, the gate's checks, no example database
    (nothing written into the working tree), and the paths `skip` left out."""
    import schemathesis

    checks: dict[str, Any] = {"enabled": False}
    checks.update({name: {"enabled": True} for name in CHECKS})
    settings: dict[str, Any] = {
        "headers": {"X-API-Key": key},
        "checks": checks,
        "generation": {
            "max-examples": examples,
            "database": "none",
            "with-security-parameters": False,
        },
        "request-timeout": 90,
        # Hypothesis times its own data generation: on a busy CI machine that says nothing
        # about the API, so it may not fail the run.
        "suppress-health-check": ["too_slow"],
    }
    if seed is not None:
        settings["seed"] = seed
    if skip:
        settings["operations"] = [{"include-path": list(skip), "enabled": False}]
    return schemathesis.Config.from_dict(settings)


def register_media() -> None:
    """A raw audio body (`audio/*`) goes on the wire as the bytes generated, as octet-stream
    does (Schemathesis has samples for `image/*`, but no serializer for audio)."""
    import schemathesis

    schemathesis.serializer.alias("audio/wav", "application/octet-stream")


def unbounded(document: dict[str, Any]) -> dict[str, list[str]]:
    """HEAVY_FIELDS the document leaves unbounded: route -> fields."""
    found: dict[str, list[str]] = {}
    schemas = document["components"]["schemas"]
    for route, fields in HEAVY_FIELDS.items():
        body = document["paths"][route]["post"]["requestBody"]["content"]["application/json"]
        items = next(iter(body["schema"]["properties"].values()))["items"]
        if "$ref" in items:
            items = schemas[items["$ref"].rsplit("/", 1)[1]]
        for name in fields:
            declared = items["properties"].get(name, {})
            # `x | None` puts the bounds in one branch of anyOf
            prop = {k: v for branch in declared.get("anyOf", [declared]) for k, v in branch.items()}
            types = [branch.get("type") for branch in declared.get("anyOf", [declared])]
            if "string" in types:
                bounded = "maxLength" in prop
            else:  # both ends: a tiny speed is as much work as a huge one
                low = "minimum" in prop or "exclusiveMinimum" in prop
                bounded = low and ("maximum" in prop or "exclusiveMaximum" in prop)
            if not bounded:
                found.setdefault(route, []).append(name)
    return found


@dataclass
class Tally:
    """What a run saw: statuses per operation and each distinct failure."""

    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    failures: dict[str, str] = field(default_factory=dict)  # first line + status -> report

    def record(self, operation: str, status: int) -> None:
        self.statuses[operation][status] += 1

    def fail(self, operation: str, status: int, report: str) -> None:
        title = next((line for line in report.splitlines() if line.startswith("- ")), "")
        self.failures.setdefault(f"{operation} -> {status} {title[2:]}", report)

    def dump(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "statuses": {op: dict(c) for op, c in self.statuses.items()},
                    "failures": self.failures,
                },
                indent=1,
            )
        )


TALLY = Tally()


def summary(report: dict[str, Any]) -> str:
    lines = ["operation".ljust(48) + " requests  statuses"]
    for operation, counts in sorted(report["statuses"].items()):
        total = sum(counts.values())
        shown = ", ".join(f"{s}: {n}" for s, n in sorted(counts.items(), key=lambda x: int(x[0])))
        lines.append(f"{operation:48s} {total:8d}  {shown}")
    failures = report["failures"]
    lines.append(f"\n{len(failures)} distinct failure(s)")
    for title, detail in failures.items():
        lines.append(f"\n=== {title}\n{detail.strip()}")
    return "\n".join(lines)


def _server_key() -> str:
    """The key a server on this machine reads (BOTMODELS_API_KEYS, else the key file)."""
    from botmodels.config import get_settings
    from botmodels.keys import load_api_keys

    return load_api_keys(get_settings())[0].decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="fuzz this server (default: start a tiny-profile one)")
    parser.add_argument("--examples", type=int, default=200, help="fuzzing examples per op")
    parser.add_argument("--seed", type=int, help="Schemathesis' seed (default: a random one)")
    parser.add_argument("--report", type=Path, help="also write the tally here (JSON)")
    args = parser.parse_args(argv)

    import pytest

    report = args.report or Path(tempfile.mkstemp(prefix="botmodels-fuzz-", suffix=".json")[1])
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    os.environ[ENV_EXAMPLES] = str(args.examples)
    os.environ[ENV_REPORT] = str(report)
    os.environ[ENV_SEED] = str(seed)
    if args.url:
        os.environ[ENV_URL] = args.url.rstrip("/")
        os.environ[ENV_KEY] = _server_key()
    code = pytest.main(
        [str(ROOT / GATE), "-m", "serve", "-q", "-p", "no:cacheprovider", "--timeout=0"]
    )
    if report.stat().st_size:
        print(summary(json.loads(report.read_text())))
    print(f"\nseed {seed} (--seed {seed} generates this run's requests again)")
    if not args.report:
        report.unlink(missing_ok=True)
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
