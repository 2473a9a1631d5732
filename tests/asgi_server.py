"""A real uvicorn server in a thread, for tests of what only a server does (keep-alive,
protocol-level answers), and a client that says which connection a response came on."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import httpx

from scripts.serverproc import free_port


@contextmanager
def uvicorn_server(app: Any, http: Literal["httptools", "h11"] = "httptools") -> Iterator[str]:
    """Serve `app` on a free local port with uvicorn's `http` protocol; yields its URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=http, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn exited"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def connection(response: httpx.Response) -> tuple[str, int]:
    """The client's end of the connection a response came on: equal for two responses only if
    the second reused the first's connection (httpx opens a new one if the server closed it)."""
    address: tuple[str, int] = response.extensions["network_stream"].get_extra_info("client_addr")
    return address


def raw_exchange(url: str, request: bytes) -> tuple[bytes, bool]:
    """Send raw bytes; return everything the server answered and whether it then closed."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return received, False
            if not chunk:
                return received, True
            received += chunk


def until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took (raises
    TimeoutError if it never closes)."""
    started = time.monotonic()
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def read_response(sock: socket.socket) -> bytes:
    """One whole response (content-length framed) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.I)[1])  # type: ignore[index]
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body
