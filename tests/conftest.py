"""Test setup: an empty BentoML store and botmodels home per session, known keys, and helpers.

The environment is set here, before any test module imports bentoml or service.py, because
both read it once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="botmodels-tests-"))
KEY = "test-key-0123456789abcdef"
OLD_KEY = "old-key-0123456789abcdef"

os.environ["BENTOML_HOME"] = str(_SESSION_DIR / "bentoml")
os.environ["BOTMODELS_HOME"] = str(_SESSION_DIR / "home")
os.environ["BOTMODELS_API_KEYS"] = f"{KEY},{OLD_KEY}"
os.environ["BOTMODELS_PROFILE"] = "offline"
os.environ.pop("BOTMODELS_EMBEDDINGS_URL", None)
os.environ.pop("BOTMODELS_RUNNERS", None)
# Every runner loaded before /readyz: the domain tests use them at once. Lazy loading and the
# memory budget are tested on their own (tests/test_pool.py, tests/test_residency_serve.py).
os.environ["BOTMODELS_PRELOAD"] = "all"
for _name in ("BOTMODELS_MEMORY_BUDGET", "BOTMODELS_GPU_MEMORY_BUDGET", "BOTMODELS_IDLE_UNLOAD_S"):
    os.environ.pop(_name, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def offline_store() -> None:
    """The offline profile (real all-MiniLM-L6-v2) and the tiny profile in the session store."""
    from scripts.import_models import main

    assert main(["offline"]) == 0
    assert main(["tiny"]) == 0


@pytest.fixture(scope="session")
def app(offline_store: None) -> Iterator[Any]:
    """The real ASGI app (middleware and all), started, with its models loaded.

    BentoML can build it once per process. TestClient does not batch: batching is proven
    against `bentoml serve` in tests/test_embeddings_serve.py.
    """
    from starlette.testclient import TestClient

    import service

    bento: Any = service.BotModels  # a bentoml.Service; its stubs do not say so
    with TestClient(bento.to_asgi(), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "models did not load"
            time.sleep(0.2)
        yield client


@pytest.fixture
def client(app: Any) -> Any:
    return app


@pytest.fixture(scope="session")
def tiny_runner(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """`tiny_runner(kind, **options)`: a new, loaded CPU runner of `kind` (botmodels/registry.py)
    over the folder the store would hold for its `tiny` profile (random weights, plus the files
    the manifest adds and the import step's export), staged once per session and shared
    read-only. Unquantized unless
    `quantization=` says otherwise; other options go to the runner's constructor."""
    from botmodels import registry
    from botmodels.config import get_settings
    from botmodels.store import load_manifest, spec_for, stage

    folders: dict[str, Path] = {}

    def make(kind: str, *, quantization: str = "none", load: bool = True, **options: Any) -> Any:
        if kind not in folders:
            spec = spec_for(load_manifest(get_settings().manifest), kind, "tiny")
            staging = tmp_path_factory.mktemp(f"tiny-{kind}")
            folders[kind], _, _ = stage(spec, staging, registry.tiny_builders())
            export = registry.KINDS[kind].export
            if export is not None:
                export(folders[kind])
        runner = registry.KINDS[kind].runner_class()(
            folders[kind], quantization=quantization, device="cpu", **options
        )
        if load:
            runner.load()
        return runner

    return make


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="session")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(a directory, the base URL on 127.0.0.1 that serves it): the media that a route names by
    URL or path (`*_url`, `image_path`)."""
    root = tmp_path_factory.mktemp("served")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietFiles, directory=str(root)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def fetching(client: Any, file_server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The app with BOTMODELS_FETCH_ALLOW=127.0.0.1/32 and BOTMODELS_FETCH_ROOTS=<file_server's
    directory>, for the length of a test."""
    import service
    from botmodels.config import Settings
    from botmodels.fetch import Fetcher

    instance = service._instance
    assert instance is not None
    fetcher = Fetcher(Settings(fetch_allow=["127.0.0.1/32"], fetch_roots=[file_server[0]]))
    monkeypatch.setattr(instance, "fetcher", fetcher)
    monkeypatch.setattr(instance.editor, "fetcher", fetcher)
    return client


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server (Debian's `postgresql`, which `make test` installs), started in
    a temporary data directory for the session: `.url` (holds a password), `.stop()`,
    `.start()` (same port and data). A test that stops it starts it again."""
    from scripts.pgserver import PostgresServer, bin_dir

    if bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (`make test` installs Debian's postgresql)")
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


def auth(key: str = KEY) -> dict[str, str]:
    return {"X-API-Key": key}


def bentoml_cli(*args: str, home: Path | None = None) -> str:
    """Run the `bentoml` CLI from the repository root (the session store unless `home`)."""
    env = {**os.environ, **({"BENTOML_HOME": str(home)} if home else {})}
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


BENTO_VERSION = "0.1.0"


@pytest.fixture(scope="session")
def built_bento(offline_store: None) -> str:
    """`bentoml build` of bentofile.yaml (the offline profile) once per session: its tag.

    Shared by the export/serve test and the image test, so a session builds it only once.
    """
    bentoml_cli("build", "--version", BENTO_VERSION)
    return f"botmodels:{BENTO_VERSION}"


from scripts.serverproc import Server, free_port  # noqa: E402 - after the environment is set

__all__ = ["KEY", "OLD_KEY", "ROOT", "Server", "auth", "bentoml_cli", "free_port"]
