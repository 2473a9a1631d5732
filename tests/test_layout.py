"""The layout's one hard rule: runners import nothing from the platform (botmodels/, service.py),
so any runner can run on its own. Every import counts, inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PLATFORM = ("botmodels", "service")


def _platform_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside runners/ by construction
                continue
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PLATFORM}
    return found


def test_runners_import_nothing_from_the_platform() -> None:
    runners = sorted((ROOT / "runners").rglob("*.py"))
    assert runners
    found = {path.name: _platform_imports(path) for path in runners}
    assert {name: imports for name, imports in found.items() if imports} == {}


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import numpy\n"
        "def f():\n"
        "    from botmodels.errors import InvalidInput\n"
        "    import service\n"
        "    from runners.base import InvalidItem\n",
        encoding="utf-8",
    )
    assert _platform_imports(sample) == {"botmodels.errors", "service"}
