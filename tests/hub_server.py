"""A local stand-in for the Hugging Face hub: the part of its HTTP API that
`huggingface_hub.snapshot_download` uses, over folders registered as repos, each at one fake
commit.

    GET  /api/models/{repo}[/revision/{revision}]   repo info: `sha` (the commit), `siblings`
    GET  /api/models/{repo}/tree/{revision}[/{path}] the file listing (`recursive=true`)
    HEAD /{repo}/resolve/{revision}/{path}           file metadata: `X-Repo-Commit`, `ETag`,
    GET  /{repo}/resolve/{revision}/{path}           `Content-Length`; weights as the hub serves
    GET  /cdn/{sha256}  (a second origin)            LFS files: `resolve` redirects there, with
                                                     `X-Linked-Etag` / `X-Linked-Size`

A revision is `main` or the repo's commit; anything else is the hub's 404 `RevisionNotFound`,
an unknown repo its 404 `RepoNotFound`. Every request path is recorded in `requests`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# Files the hub keeps in LFS (and serves from its CDN through a redirect): weights and blobs.
LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".h5", ".msgpack", ".ot", ".ckpt", ".pth", ".pt")


@dataclass(frozen=True)
class HubFile:
    path: str  # relative, with "/"
    size: int
    git_sha1: str  # the blob id git gives the file
    sha256: str
    lfs: bool


@dataclass
class HubRepo:
    repo_id: str
    folder: Path
    commit: str
    files: dict[str, HubFile] = field(default_factory=dict)


def fake_commit(repo_id: str) -> str:
    """A stable 40-hex commit id for a test repo (a real hub commit id has the same shape)."""
    return hashlib.sha1(f"botmodels-test-hub:{repo_id}".encode()).hexdigest()  # noqa: S324


def _describe(folder: Path) -> dict[str, HubFile]:
    files: dict[str, HubFile] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        relative = path.relative_to(folder).as_posix()
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324
        files[relative] = HubFile(
            path=relative,
            size=len(data),
            git_sha1=git_sha1,
            sha256=hashlib.sha256(data).hexdigest(),
            lfs=relative.endswith(LFS_SUFFIXES),
        )
    return files


class LocalHub:
    """`with LocalHub() as hub: hub.add("org/name", folder)`; `hub.url` is the HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        # Two origins, as the hub and its CDN: huggingface_hub follows a redirect within one
        # origin while it reads file metadata, and stops at another one (the blob's).
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(self)) for _ in range(2)]
        for server in self._servers:
            server.daemon_threads = True
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)

    def add(self, repo_id: str, folder: Path, commit: str | None = None) -> str:
        """Serve `folder` as `repo_id` at `commit` (default: `fake_commit(repo_id)`); the
        folder is read now. Returns the commit."""
        repo = HubRepo(repo_id, folder, commit or fake_commit(repo_id), _describe(folder))
        with self._lock:
            self.repos[repo_id] = repo
        return repo.commit

    def served(self, repo_id: str) -> list[str]:
        """The files of `repo_id` whose bytes were sent (a GET of the file or its blob)."""
        repo = self.repos[repo_id]
        by_sha = {f.sha256: f.path for f in repo.files.values()}
        out: list[str] = []
        prefix = f"/{repo_id}/resolve/"
        with self._lock:
            requests = list(self.requests)
        for request in requests:
            method, _, path = request.partition(" ")
            if method != "GET":
                continue
            if path.startswith(prefix):
                out.append(path[len(prefix) :].split("/", 1)[1])
            elif path.startswith("/cdn/") and path[5:] in by_sha:
                out.append(by_sha[path[5:]])
        return sorted(set(out))

    def __enter__(self) -> LocalHub:
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


def _handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        # --- routing -----------------------------------------------------------------------
        def _answer(self, *, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            with hub._lock:
                hub.requests.append(f"{self.command} {path}")
            if path.startswith("/api/models/"):
                self._api(path[len("/api/models/") :])
            elif path.startswith("/cdn/"):
                self._blob(path[len("/cdn/") :], body=body)
            else:
                self._resolve(path.lstrip("/"), body=body)

        def _repo(self, rest: str) -> tuple[HubRepo, str] | None:
            """The repo named by the first two segments of `rest`, and what follows."""
            parts = rest.split("/", 2)
            repo = hub.repos.get("/".join(parts[:2]))
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            return repo, parts[2] if len(parts) > 2 else ""

        def _revision_ok(self, repo: HubRepo, revision: str) -> bool:
            if revision in ("main", repo.commit):
                return True
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return False

        # --- /api/models/... ----------------------------------------------------------------
        def _api(self, rest: str) -> None:
            found = self._repo(rest)
            if found is None:
                return
            repo, tail = found
            if tail == "" or tail.startswith("revision/"):
                revision = tail[len("revision/") :] if tail else "main"
                if self._revision_ok(repo, revision):
                    self._json(
                        {
                            "_id": repo.commit[:24],
                            "id": repo.repo_id,
                            "modelId": repo.repo_id,
                            "sha": repo.commit,
                            "private": False,
                            "gated": False,
                            "disabled": False,
                            "siblings": [{"rfilename": name} for name in repo.files],
                        }
                    )
                return
            if tail.startswith("tree/"):
                revision, _, under = tail[len("tree/") :].partition("/")
                if self._revision_ok(repo, revision):
                    self._json(self._tree(repo, under.strip("/")))
                return
            self._error(404, "EntryNotFound", f"no API route {tail!r}")

        def _tree(self, repo: HubRepo, under: str) -> list[dict[str, Any]]:
            prefix = f"{under}/" if under else ""
            folders: set[str] = set()
            entries: list[dict[str, Any]] = []
            for file in repo.files.values():
                if not file.path.startswith(prefix):
                    continue
                parents = file.path.split("/")[:-1]
                for depth in range(1, len(parents) + 1):
                    folder = "/".join(parents[:depth])
                    if folder.startswith(prefix) and folder not in folders:
                        folders.add(folder)
                        entries.append({"type": "directory", "path": folder, "oid": "0" * 40})
                entry: dict[str, Any] = {
                    "type": "file",
                    "path": file.path,
                    "size": file.size,
                    "oid": file.git_sha1,
                }
                if file.lfs:
                    entry["lfs"] = {"oid": file.sha256, "size": file.size, "pointerSize": 134}
                entries.append(entry)
            return entries

        # --- /{repo}/resolve/{revision}/{path} and the CDN ---------------------------------
        def _resolve(self, rest: str, *, body: bool) -> None:
            found = self._repo(rest)
            if found is None:
                return
            repo, tail = found
            kind, _, tail = tail.partition("/")
            revision, _, name = tail.partition("/")
            if kind != "resolve" or not self._revision_ok(repo, revision):
                if kind != "resolve":
                    self._error(404, "EntryNotFound", f"no route {kind!r}")
                return
            file = repo.files.get(name)
            if file is None:
                self._error(404, "EntryNotFound", f"{name} does not exist on {revision}")
                return
            headers = {"X-Repo-Commit": repo.commit}
            if file.lfs:
                # As the hub: LFS files answer a redirect to their blob, with the linked
                # file's etag (its sha256) and size.
                headers |= {
                    "Location": f"{hub.cdn_url}/cdn/{file.sha256}",
                    "X-Linked-Etag": f'"{file.sha256}"',
                    "X-Linked-Size": str(file.size),
                    "ETag": f'"{file.git_sha1}"',
                    "Content-Length": "0",
                }
                self._send(302, headers, b"")
                return
            headers["ETag"] = f'"{file.git_sha1}"'
            self._file(repo.folder / name, file, headers, body=body)

        def _blob(self, sha256: str, *, body: bool) -> None:
            for repo in list(hub.repos.values()):
                for file in repo.files.values():
                    if file.sha256 == sha256:
                        self._file(
                            repo.folder / file.path, file, {"ETag": f'"{sha256}"'}, body=body
                        )
                        return
            self._error(404, "EntryNotFound", "no such blob")

        def _file(self, path: Path, file: HubFile, headers: dict[str, str], *, body: bool) -> None:
            data = path.read_bytes()
            start = 0
            status = 200
            wanted = self.headers.get("Range", "")
            if body and wanted.startswith("bytes=") and wanted.endswith("-"):
                start = int(wanted[len("bytes=") : -1])  # a resumed download
                status = 206
                headers["Content-Range"] = f"bytes {start}-{file.size - 1}/{file.size}"
            headers["Content-Length"] = str(file.size - start)
            headers["Content-Type"] = "application/octet-stream"
            self._send(status, headers, data[start:] if body else b"", length_set=True)

        # --- answers ------------------------------------------------------------------------
        def _json(self, payload: object) -> None:
            data = json.dumps(payload).encode()
            self._send(200, {"Content-Type": "application/json"}, data)

        def _error(self, status: int, code: str, message: str) -> None:
            data = json.dumps({"error": message}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Code": code}
            headers["X-Error-Message"] = message
            self._send(status, headers, data if self.command != "HEAD" else b"")

        def _send(
            self, status: int, headers: dict[str, str], data: bytes, *, length_set: bool = False
        ) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if not length_set and "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

    return Handler
