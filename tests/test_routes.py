"""The route table (botmodels/routes.py) against the routes the service really has: every route
of the built app (BentoML's own, the `@bentoml.api` ones, the mounted Starlette app's) has
exactly one entry, every entry is a real route, and the facts agree with the routes' methods."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from starlette.routing import BaseRoute, Mount, Route

from botmodels import routes


def _routes_of(app: Any) -> list[BaseRoute]:
    """The router's routes under the ASGI middleware stack."""
    while not hasattr(app, "routes"):
        app = app.app
    found: list[BaseRoute] = app.routes
    return found


def _served(app: Any) -> Iterator[tuple[str, frozenset[str]]]:
    """(path, methods) of every route; a mount at `/` is walked into, any other is one entry."""
    for route in _routes_of(app):
        if isinstance(route, Mount) and route.path == "":
            yield from _served(route.app)
        elif isinstance(route, Mount):
            yield route.path, frozenset()
        elif isinstance(route, Route):
            yield route.path, frozenset(route.methods or ())
        else:
            raise AssertionError(f"a route of an unexpected kind: {route!r}")


def _methods(app: Any) -> dict[str, frozenset[str]]:
    methods: dict[str, frozenset[str]] = {}
    for path, allowed in _served(app):
        methods[path] = methods.get(path, frozenset()) | allowed
    return methods


def test_each_path_has_one_entry() -> None:
    twice = [path for path, n in Counter(r.path for r in routes.ROUTES).items() if n > 1]
    assert twice == []


def test_every_route_of_the_app_has_an_entry_and_every_entry_is_a_route(client: Any) -> None:
    import service

    bento: Any = service.BotModels  # a bentoml.Service; its stubs do not say so
    served = _methods(client.app)
    table = {r.path for r in routes.ROUTES}
    assert sorted(set(served) - table) == [], "routes without an entry in botmodels/routes.py"
    missing = sorted(r.path for r in routes.ROUTES if not r.optional and r.path not in served)
    assert missing == [], "entries that are no route of the app"
    # The BentoML APIs and the mounted app's routes, by their own declarations too.
    apis = {api.route for api in bento.apis.values()}
    mounted = {route.path for route in service.status_app.routes if isinstance(route, Route)}
    assert apis | mounted <= table
    assert {r.path for r in routes.ROUTES if r.domain == "bentoml"}.isdisjoint(apis | mounted)


def test_the_facts_agree_with_the_routes(client: Any) -> None:
    served = _methods(client.app)
    for entry in routes.ROUTES:
        methods = served.get(entry.path)
        if methods is None:
            assert entry.optional
            continue
        if entry.json:
            assert "POST" in methods, entry
        if entry.probe is not None:
            assert "GET" in methods, entry
            assert entry.open, entry
        if entry.prefix is not None:
            assert entry.prefix.startswith(entry.path.split("{")[0].rstrip("/") + "/"), entry
    assert routes.is_open_path("/outputs/images/0123.png")
    assert not routes.is_open_path("/api/models")


def test_the_service_excludes_from_tracing_what_the_table_says() -> None:
    import service

    bento: Any = service.BotModels  # a bentoml.Service; its stubs do not say so
    assert bento.config["tracing"]["excluded_urls"] == routes.UNTRACED_PATHS
