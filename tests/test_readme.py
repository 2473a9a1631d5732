"""The README is the user manual: its two first commands exist, every route it names (route
tables, inline `METHOD /path`, curl examples) is a real route with that method, and every route
of the service is in its tables. Read from service.py's objects; no server is started.
tests/test_embeddings_serve.py runs the first curl example against a real server."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.routing import Match

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# BentoML's own routes (not in service.py's objects): probes, metrics, the API docs and the UI.
BENTOML_ROUTES = {
    ("GET", path)
    for path in ("/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json", "/")
}
METHOD_PATH = re.compile(rf"^({'|'.join(METHODS)}) (/\S*)$")
PATH = re.compile(r"^/[^\s`]*$")


@pytest.fixture(scope="module")
def service() -> Any:
    import service

    return service


def _table_routes() -> list[tuple[str, str]]:
    """(method, path) from the first cell of every table row: `POST /a`, `/b` names two POST
    routes; a bare path takes the method named before it in the cell."""
    found = []
    for line in README.splitlines():
        if not line.startswith("| `"):
            continue
        method = None
        for token in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            if m := METHOD_PATH.match(token):
                method = m.group(1)
                found.append((method, m.group(2)))
            elif PATH.match(token) and method is not None:
                found.append((method, token))
    return found


def _inline_routes() -> list[tuple[str, str]]:
    """Every `METHOD /path` written anywhere in the README."""
    return [
        (m.group(1), m.group(2))
        for token in re.findall(r"`([^`\n]+)`", README)
        if (m := METHOD_PATH.match(token))
    ]


def _curl_routes() -> list[tuple[str, str]]:
    """(method, path) of every curl command in the README's shell examples."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for command in re.split(r"\n(?=\S)", block.replace("\\\n", " ")):
            if not command.startswith("curl"):
                continue
            url = re.search(r"(?:localhost|127\.0\.0\.1):8089(/[^\s'\"?]*)", command)
            assert url is not None, f"a curl example without a botmodels URL: {command}"
            explicit = re.search(r"\s-X\s*(\w+)", command)
            sends_body = re.search(r"\s(-d|-F|--data\S*|--form)\s", command)
            method = explicit.group(1) if explicit else ("POST" if sends_body else "GET")
            found.append((method, url.group(1)))
    return found


def _matches(route: Any, method: str, path: str) -> bool:
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    return bool(route.matches(scope)[0] == Match.FULL)


def _served(service: Any, method: str, path: str) -> bool:
    if (method, path) in BENTOML_ROUTES:
        return True
    if method == "POST" and any(api.route == path for api in service.BotModels.apis.values()):
        return True
    return any(_matches(route, method, path) for route in service.status_app.routes)


def test_the_first_commands_are_make_serve_and_make_test() -> None:
    first = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines()]
    assert commands == ["make serve", "make test"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("serve", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), target


def test_every_route_the_readme_names_is_served(service: Any) -> None:
    tables, inline, curls = _table_routes(), _inline_routes(), _curl_routes()
    # The extraction itself must keep finding the README's routes (a format change that hid
    # them would pass vacuously).
    assert len(tables) >= 40
    assert len(inline) >= 30
    assert len(curls) >= 8
    wrong = sorted({f"{m} {p}" for m, p in tables + inline + curls if not _served(service, m, p)})
    assert not wrong, f"the README names routes the service does not serve: {wrong}"


def test_every_route_of_the_service_is_in_a_readme_table(service: Any) -> None:
    tables = _table_routes()
    missing = [
        f"{method} {route.path}"
        for route in service.status_app.routes
        for method in sorted(route.methods - {"HEAD"})
        if not any(m == method and _matches(route, method, p) for m, p in tables)
    ]
    missing += [
        f"POST {api.route}"
        for api in service.BotModels.apis.values()
        if ("POST", api.route) not in tables
    ]
    missing += [f"{m} {p}" for m, p in sorted(BENTOML_ROUTES) if (m, p) not in tables]
    assert not missing, f"routes missing from the README's route tables: {missing}"


def test_the_readme_stays_a_short_manual() -> None:
    """The README is the user manual (design notes and measurements live in docs/)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md is {len(lines)} lines; move detail to docs/"


def test_the_botserver_page_names_real_replay_tests() -> None:
    """docs/botserver.md pairs each botserver call with its replay test: each file it names
    exists, and each `::test` is defined in one of its row's files."""
    page = (ROOT / "docs" / "botserver.md").read_text(encoding="utf-8")
    rows = [row for row in page.splitlines() if "`tests/test_" in row]
    assert len(rows) >= 10
    for row in rows:
        sources = [
            (ROOT / path).read_text(encoding="utf-8")
            for path in re.findall(r"`(tests/test_\w+\.py)", row)
        ]
        for name in re.findall(r"::(\w+)`", row):
            assert any(f"def {name}(" in source for source in sources), (name, row)
