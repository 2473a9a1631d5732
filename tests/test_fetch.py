"""botmodels/fetch.py: what a URL or path input may read, against a real local HTTP server.

The server listens on 127.0.0.1, which only a CIDR entry allows; names are mapped to addresses
by a test resolver (the fetcher resolves through it, once per hop)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from botmodels.config import Settings
from botmodels.errors import BotModelsError, InvalidInput, PayloadTooLarge
from botmodels.fetch import Fetcher, FetchFailed, FetchRefused, FetchTimeout

LIMIT = 4096
PAYLOAD = b"\x89PNG\r\n\x1a\n" + b"x" * 100
STOP = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    hosts: ClassVar[list[str]] = []

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        _Handler.hosts.append(self.headers.get("Host", ""))
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == "/ok":
            self._send(200, PAYLOAD)
        elif parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts.path == "/declared-big":
            self.send_response(200)
            self.send_header("Content-Length", str(LIMIT * 10))
            self.end_headers()
            self.wfile.write(b"x" * LIMIT * 10)
        elif parts.path == "/endless":  # no length: stops only when the client hangs up
            self.send_response(200)
            self.end_headers()
            try:
                while not STOP.is_set():
                    self.wfile.write(b"x" * 1024)
            except OSError:
                pass
        elif parts.path == "/drip":  # a byte at a time, never finishing while the test runs
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                while not STOP.wait(0.2):
                    self.wfile.write(b"x")
                    self.wfile.flush()
            except OSError:
                pass
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        STOP.set()
        httpd.shutdown()
        httpd.server_close()


class _Resolver:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        return self.table[host]


def _fetcher(
    allow: list[str], *, roots: list[Path] | None = None, resolver: Any = None, **extra: Any
) -> Fetcher:
    settings = Settings(
        fetch_allow=allow,
        fetch_roots=roots or [],
        max_upload_bytes=LIMIT,
        fetch_timeout_s=extra.pop("timeout", 5.0),
        **extra,
    )
    return Fetcher(settings, resolver or _Resolver({}))


def _fetch(fetcher: Fetcher, source: str) -> bytes:
    return asyncio.run(fetcher.fetch(source, param="image_path"))


def _refused(fetcher: Fetcher, source: str, kind: type[BotModelsError] = FetchRefused) -> str:
    with pytest.raises(kind) as caught:
        _fetch(fetcher, source)
    assert caught.value.param == "image_path"
    return caught.value.message


# --- URLs ----------------------------------------------------------------------------------
def test_an_allowed_url_is_fetched(server: str) -> None:
    assert _fetch(_fetcher(["127.0.0.1/32"]), f"http://{server}/ok") == PAYLOAD


def test_urls_are_refused_until_the_setting_allows_them(server: str) -> None:
    message = _refused(_fetcher([]), f"http://{server}/ok")
    assert "BOTMODELS_FETCH_ALLOW" in message
    assert _refused(_fetcher(["10.0.0.0/8"]), f"http://{server}/ok").count("FETCH_ALLOW") == 1


def test_a_host_name_allows_only_public_addresses(server: str) -> None:
    """Naming a host is not enough for a loopback, private or metadata address: a name that
    resolves to one (e.g. a DNS record pointing at 169.254.169.254) is refused."""
    port = server.split(":")[1]
    for address in ("169.254.169.254", "127.0.0.1", "10.1.2.3", "fd00:ec2::254", "::1"):
        resolver = _Resolver({"media.test": [address]})
        message = _refused(
            _fetcher(["media.test"], resolver=resolver), f"http://media.test:{port}/ok"
        )
        assert address in message
        assert "CIDR" in message
    metadata = _fetcher(["media.test"], resolver=_Resolver({"media.test": ["169.254.169.254"]}))
    assert "metadata" in _refused(metadata, "http://media.test/latest/meta-data/")
    # the literal addresses, without a name
    for url in ("http://169.254.169.254/latest/", "http://[fd00:ec2::254]/", "http://[::1]/"):
        _refused(_fetcher(["media.test"]), url)


def test_the_checked_address_is_the_one_connected_to(server: str) -> None:
    """Resolved once per hop; the request goes to that address with the original Host header
    (a second resolution could answer differently: DNS rebinding)."""
    port = server.split(":")[1]
    resolver = _Resolver({"media.test": ["127.0.0.1"]})
    fetcher = _fetcher(["127.0.0.1/32"], resolver=resolver)
    _Handler.hosts.clear()
    assert _fetch(fetcher, f"http://media.test:{port}/ok") == PAYLOAD
    assert resolver.calls == ["media.test"]
    assert _Handler.hosts == [f"media.test:{port}"]


def test_redirects_are_checked_at_every_hop(server: str) -> None:
    port = server.split(":")[1]
    resolver = _Resolver(
        {
            "inside.test": ["127.0.0.1"],
            "meta.test": ["169.254.169.254"],
            "outside.test": ["8.8.8.8"],
        }
    )
    fetcher = _fetcher(["127.0.0.1/32", "inside.test"], resolver=resolver)
    # inside the allow list: followed
    inside = f"http://{server}/redirect?to=http://127.0.0.1:{port}/ok"
    assert _fetch(fetcher, inside) == PAYLOAD
    # out of it: refused, by address and by name
    for target in ("http://10.0.0.1/x", "http://outside.test/x", "http://meta.test/x"):
        _refused(fetcher, f"http://{server}/redirect?to={target}")
    # not http
    _refused(fetcher, f"http://{server}/redirect?to=file:///etc/passwd")


def test_too_many_redirects(server: str) -> None:
    fetcher = _fetcher(["127.0.0.1/32"], fetch_max_redirects=1)
    url = f"http://{server}/ok"
    for _ in range(2):
        url = f"http://{server}/redirect?to={url.replace('?', '%3F').replace('=', '%3D')}"
    assert "redirects" in _refused(fetcher, url, FetchFailed)


def test_only_http_and_https(server: str) -> None:
    fetcher = _fetcher(["127.0.0.1/32", "example.com"])
    for url in ("file:///etc/passwd", "ftp://example.com/a.png", "gopher://127.0.0.1/"):
        assert "only http and https" in _refused(fetcher, url)


def test_unreachable_and_error_statuses_are_400(server: str) -> None:
    fetcher = _fetcher(["127.0.0.1/32"], resolver=_Resolver({}))
    assert "404" in _refused(fetcher, f"http://{server}/missing", FetchFailed)
    _refused(_fetcher(["nowhere.test"]), "http://nowhere.test/a.png", FetchFailed)


def test_oversize_is_413_declared_or_not(server: str) -> None:
    fetcher = _fetcher(["127.0.0.1/32"])
    for path in ("/declared-big", "/endless"):
        message = _refused(fetcher, f"http://{server}{path}", PayloadTooLarge)
        assert "BOTMODELS_MAX_UPLOAD_BYTES" in message


def test_a_slow_server_is_a_timeout_not_a_hang(server: str) -> None:
    """The server drips a byte at a time for as long as the test runs: only the fetcher's
    total timeout ends the fetch."""
    fetcher = _fetcher(["127.0.0.1/32"], timeout=1.0)
    started = time.monotonic()
    message = _refused(fetcher, f"http://{server}/drip", FetchTimeout)
    assert "BOTMODELS_FETCH_TIMEOUT_S" in message
    assert FetchTimeout.status == 504
    assert time.monotonic() - started < 60  # it returned: the drip would go on until teardown


def test_bad_allow_entries_refuse_to_start() -> None:
    with pytest.raises(ValueError, match="FETCH_ALLOW"):
        Settings(fetch_allow=["ftp://example.com/"])
    with pytest.raises(ValueError, match="FETCH_ALLOW"):
        Settings(fetch_allow=["not a host"])
    assert Settings(fetch_allow="a.test, 10.0.0.0/8,https://b.test/x/").fetch_allow == [
        "a.test",
        "10.0.0.0/8",
        "https://b.test/x/",
    ]


def test_url_prefix_entries(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefix allows its URLs by name (their public addresses): the test server's loopback
    address counts as public here, so the fetch inside the prefix can reach it."""
    import botmodels.fetch

    monkeypatch.setattr(botmodels.fetch, "_public", lambda _: True)
    port = server.split(":")[1]
    resolver = _Resolver({"cdn.test": ["127.0.0.1"]})
    fetcher = _fetcher([f"http://cdn.test:{port}/ok"], resolver=resolver)
    assert _fetch(fetcher, f"http://cdn.test:{port}/ok") == PAYLOAD
    for url in (f"http://cdn.test:{port}/okx", f"http://cdn.test:{port}/", "http://cdn.test/ok"):
        _refused(fetcher, url)
    assert resolver.calls == ["cdn.test"]  # refused before resolving


# --- local paths -------------------------------------------------------------------------------
def test_paths_are_refused_until_the_setting_allows_them(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PAYLOAD)
    assert "BOTMODELS_FETCH_ROOTS" in _refused(_fetcher([]), str(tmp_path / "a.png"))


def test_paths_under_the_roots_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(PAYLOAD)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    (root / "link.png").symlink_to(secret)
    (root / "dir-link").symlink_to(tmp_path)
    fetcher = _fetcher([], roots=[root])
    assert _fetch(fetcher, str(root / "sub" / "a.png")) == PAYLOAD
    assert _fetch(fetcher, f"{root}/sub/../sub/a.png") == PAYLOAD
    for escape in (f"{root}/../secret.png", str(root / "link.png"), f"{root}/dir-link/secret.png"):
        assert "BOTMODELS_FETCH_ROOTS" in _refused(fetcher, escape)
    _refused(fetcher, "sub/a.png", InvalidInput)  # relative
    _refused(fetcher, str(root / "missing.png"), FetchFailed)
    _refused(fetcher, str(root / "sub"), FetchFailed)
    (root / "big.png").write_bytes(b"x" * (LIMIT + 1))
    _refused(fetcher, str(root / "big.png"), PayloadTooLarge)


def test_another_servers_url_paths_map_to_its_directory(tmp_path: Path) -> None:
    """botserver's video editor names its TTS audio `/video/audio/<file>` (effects.rs:199), a
    file of its VIDEO_AUDIO_DIR: BOTMODELS_FETCH_PATH_MAP reads it from there, and only there."""
    audio_dir = tmp_path / "audio" / "video"
    audio_dir.mkdir(parents=True)
    (audio_dir / "tts_1.mp3").write_bytes(PAYLOAD)
    (tmp_path / "secret.txt").write_bytes(b"secret")
    fetcher = _fetcher([], fetch_path_map=[f"/video/audio/={audio_dir}"])
    assert _fetch(fetcher, "/video/audio/tts_1.mp3") == PAYLOAD
    assert "BOTMODELS_FETCH_ROOTS" in _refused(fetcher, "/video/audio/../../secret.txt")
    assert "BOTMODELS_FETCH_ROOTS" in _refused(fetcher, str(tmp_path / "secret.txt"))
    _refused(fetcher, "/video/audio/missing.mp3", FetchFailed)
    for bad in ("video/audio/=/x", "/video/audio=/x", "/video/audio/=relative"):
        with pytest.raises(ValueError, match="BOTMODELS_FETCH_PATH_MAP"):
            Settings(fetch_path_map=[bad])
