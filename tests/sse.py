"""Reading an OpenAI stream the way botserver does: one socket read at a time.

botserver (`botserver/crates/botllm/src/lib.rs:560-600`, generalbots/generalbots) takes each
chunk its HTTP client hands over, splits it into lines and parses every `data: ` line as JSON,
with no buffer across chunks: an event split over two reads is lost. `raw_stream` reads a
response from a plain socket, undoes the chunked transfer coding of each read on its own (and
fails if a read ends inside a chunk: the server split one write) and returns the body of each
read; `botserver_read` then reads them as botserver does.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit


def raw_stream(
    url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, list[bytes]]:
    """POST `body`; (status, the body bytes of each socket read, in order)."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Accept: */*",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
    reads: list[bytes] = []
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            assert data, "closed before the response head"
            received += data
        raw_head, rest = received.split(b"\r\n\r\n", 1)
        status = int(raw_head.split(b" ", 2)[1])
        assert b"transfer-encoding: chunked" in raw_head.lower(), raw_head
        pending = [rest] if rest else []
        while True:
            data = pending.pop() if pending else sock.recv(65536)
            if not data:
                break
            body_bytes, last = _dechunk_one_read(data)
            if body_bytes:
                reads.append(body_bytes)
            if last:
                break
    return status, reads


def _dechunk_one_read(data: bytes) -> tuple[bytes, bool]:
    """The chunks in one read, which must all be whole; (their data, saw the last chunk)."""
    out = b""
    while data:
        size_line, sep, data = data.partition(b"\r\n")
        assert sep, f"a read ended inside a chunk-size line: {size_line!r}"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out, True
        assert len(data) >= size + 2, "a read ended inside a chunk: one event took two writes"
        out += data[:size]
        assert data[size : size + 2] == b"\r\n"
        data = data[size + 2 :]
    return out, False


def botserver_read(reads: list[bytes]) -> tuple[str, list[str], int]:
    """botserver's stream loop: (content it forwards, tool-call argument pieces, lines lost).
    It forwards `delta.content`, else `delta.reasoning` / `reasoning_content`, and each
    `delta.tool_calls[].function.arguments`."""
    content, arguments, lost = "", [], 0
    for read in reads:
        for line in read.decode("utf-8", "replace").splitlines():
            if not line.startswith("data: ") or "[DONE]" in line:
                continue
            try:
                data = json.loads(line[6:])
            except ValueError:
                lost += 1
                continue
            delta = (data.get("choices") or [{}])[0].get("delta", {})
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            text = delta.get("content")
            if reasoning and not text:
                content += reasoning
            if text:
                content += text
            for call in delta.get("tool_calls") or []:
                if isinstance(call.get("function", {}).get("arguments"), str):
                    arguments.append(call["function"]["arguments"])
    return content, arguments, lost


def events(text: str) -> list[Any]:
    """The `data:` payloads of a whole SSE body: JSON objects, and "[DONE]"."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out
