"""The layout's one hard rule: runners import nothing from the platform (botmodels/, service.py),
so any runner can run on its own. The two speech runners still take their item types and input
error from botmodels/ (listed below); the list may only shrink."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

STILL_IMPORTING = {
    "stt.py": {"botmodels.errors", "botmodels.speech.schemas"},
    "tts.py": {"botmodels.errors", "botmodels.speech.schemas"},
}


def _platform_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in ("botmodels", "service")}
    return found


def test_runners_import_nothing_from_the_platform() -> None:
    for path in sorted((ROOT / "runners").glob("*.py")):
        allowed = STILL_IMPORTING.get(path.name, set())
        assert _platform_imports(path) <= allowed, (path.name, _platform_imports(path) - allowed)


def test_the_list_of_exceptions_is_not_stale() -> None:
    for name, allowed in STILL_IMPORTING.items():
        assert _platform_imports(ROOT / "runners" / name) == allowed, name
