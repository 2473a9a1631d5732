"""The one way botmodels reads an input named by URL or path (`*_url`, `image_path` fields).

botmodels runs next to private services, so a URL a caller names is a request botmodels makes on
its behalf (server-side request forgery). The rules, all enforced here:

* URLs: http and https only (`file://`, `ftp://`… are refused), and only where
  `BOTMODELS_FETCH_ALLOW` allows: a host name (`media.example.com`, `*.example.com`), a URL
  prefix (`https://cdn.example.com/bots/`), or a CIDR (`10.0.0.0/8`). Empty (the default)
  refuses every URL, with a 400 naming the setting.
* The host is resolved once, the resolved address is checked, and the connection goes to that
  address (the original name travels as the Host header and TLS SNI, and the certificate is
  checked against it): a name that resolves to an allowed address at check time and a private
  one at connect time (DNS rebinding) cannot work.
* An address that is loopback, private, link-local (cloud metadata: 169.254.169.254,
  fd00:ec2::254), multicast, reserved or unspecified is refused, whatever the name, unless a
  CIDR entry of the setting covers it: naming a host allows its public addresses only.
* Redirects are followed by hand, at most `BOTMODELS_FETCH_MAX_REDIRECTS`, each hop checked
  like the first.
* The body is read up to `BOTMODELS_MAX_UPLOAD_BYTES` (413 past it, reading stops there), and
  the whole fetch, name resolution and a server that drips bytes included, ends within
  `BOTMODELS_FETCH_TIMEOUT_S` (504).
* Local paths (botserver's SCAN BARCODE sends one): absolute, and only under a directory of
  `BOTMODELS_FETCH_ROOTS` once symlinks and `..` are resolved. Empty (the default) refuses
  every path.

What the bytes are is the caller's business: it sniffs them as it sniffs an upload.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from botmodels.config import Settings
from botmodels.errors import BotModelsError, InvalidInput, PayloadTooLarge

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses it resolves to (strings, in the resolver's order)
Resolver = Callable[[str, int], Awaitable[list[str]]]

ALLOW = "BOTMODELS_FETCH_ALLOW"
ROOTS = "BOTMODELS_FETCH_ROOTS"
_CHUNK = 64 * 1024


class FetchTimeout(BotModelsError):
    """The source did not deliver within BOTMODELS_FETCH_TIMEOUT_S."""

    status = 504
    code = "fetch_timeout"


class FetchRefused(InvalidInput):
    """The source is not one botmodels may read (400): the message names the setting."""

    code = "fetch_refused"


class FetchFailed(InvalidInput):
    """The source could not be read: unreachable, not found, an error status (400)."""

    code = "fetch_failed"


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class _Prefix:
    scheme: str
    host: str
    port: int
    path: str

    def matches(self, scheme: str, host: str, port: int, path: str) -> bool:
        if (scheme, host, port) != (self.scheme, self.host, self.port):
            return False
        if self.path in ("", "/") or self.path.endswith("/"):
            return path.startswith(self.path or "/")
        return path == self.path or path.startswith(self.path + "/")


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


@dataclass(frozen=True)
class AllowList:
    """`BOTMODELS_FETCH_ALLOW`, parsed: host names, URL prefixes and networks."""

    hosts: frozenset[str]
    wildcards: tuple[str, ...]  # "*.example.com" kept as ".example.com"
    prefixes: tuple[_Prefix, ...]
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, entries: list[str]) -> AllowList:
        hosts: set[str] = set()
        wildcards: list[str] = []
        prefixes: list[_Prefix] = []
        networks: list[Network] = []
        for entry in entries:
            if "://" in entry:
                parts = urlsplit(entry)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ValueError(f"{ALLOW}: {entry!r} is not an http(s) URL prefix")
                prefixes.append(
                    _Prefix(
                        parts.scheme,
                        parts.hostname.lower(),
                        parts.port or _default_port(parts.scheme),
                        parts.path,
                    )
                )
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            if name.startswith("*."):
                wildcards.append(name[1:])
            elif name and all(c.isalnum() or c in "-." for c in name):
                hosts.add(name)
            else:
                raise ValueError(
                    f"{ALLOW}: {entry!r} is neither a host name, a CIDR nor an http(s) URL prefix"
                )
        return cls(frozenset(hosts), tuple(wildcards), tuple(prefixes), tuple(networks))

    @property
    def empty(self) -> bool:
        return not (self.hosts or self.wildcards or self.prefixes or self.networks)

    def names(self, scheme: str, host: str, port: int, path: str) -> bool:
        """The URL is allowed by name (a host or prefix entry): its public addresses only."""
        return (
            host in self.hosts
            or host.endswith(self.wildcards)
            or any(p.matches(scheme, host, port, path) for p in self.prefixes)
        )

    def covers(self, address: Address) -> bool:
        """A CIDR entry holds `address`: allowed whatever kind of address it is."""
        return any(address.version == n.version and address in n for n in self.networks)


def _public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _public(address.ipv4_mapped)
    return address.is_global and not address.is_multicast


def _kind(address: Address) -> str:
    if address in (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")):
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    return "not a public address"


def parse_path_map(entries: list[str]) -> list[tuple[str, Path]]:
    """`prefix=directory` pairs (BOTMODELS_FETCH_PATH_MAP): an absolute URL-path prefix ending
    in `/`, and an absolute directory. A ValueError names a malformed entry."""
    pairs: list[tuple[str, Path]] = []
    for entry in entries:
        prefix, sep, directory = entry.partition("=")
        prefix, directory = prefix.strip(), directory.strip()
        if not sep or not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError(
                f"BOTMODELS_FETCH_PATH_MAP entry {entry!r}: write `/prefix/=/directory` (the "
                "prefix starts and ends with `/`)"
            )
        if not os.path.isabs(directory):
            raise ValueError(
                f"BOTMODELS_FETCH_PATH_MAP entry {entry!r}: the directory must be absolute"
            )
        pairs.append((prefix, Path(directory)))
    return pairs


class Fetcher:
    """Reads a URL or a local path under the rules above. One per service."""

    def __init__(self, settings: Settings, resolver: Resolver = system_resolver) -> None:
        self.allow = AllowList.parse(settings.fetch_allow)
        self.path_map = parse_path_map(settings.fetch_path_map)
        mapped = [directory for _, directory in self.path_map]
        self.roots = [Path(os.path.realpath(root)) for root in [*settings.fetch_roots, *mapped]]
        self.max_bytes = settings.max_upload_bytes
        self.timeout_s = settings.fetch_timeout_s
        self.max_redirects = settings.fetch_max_redirects
        self.resolver = resolver

    async def fetch(self, source: str, *, param: str) -> bytes:
        """The bytes at `source` (a URL, or a local path), or the error that says why not.
        `param` is the request field that named it (the errors name it)."""
        if not isinstance(source, str) or not source.strip():
            raise InvalidInput(f"`{param}` is required: a URL or a path", param=param)
        source = source.strip()
        scheme = urlsplit(source).scheme.lower()
        if not scheme:
            return await self._read_path(source, param)
        if scheme not in ("http", "https"):
            raise FetchRefused(
                f"`{param}`: only http and https URLs are fetched, not {scheme}://", param=param
            )
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._get(source, param)
        except TimeoutError:
            raise FetchTimeout(
                f"`{param}`: {_safe(source)} did not answer in full within {self.timeout_s:g} s "
                f"(BOTMODELS_FETCH_TIMEOUT_S)",
                param=param,
            ) from None

    # --- URLs ----------------------------------------------------------------------------------
    async def _address(self, url: str, param: str) -> tuple[httpx.URL, str]:
        """`url` checked; (the URL to connect to: the checked address, the original host)."""
        if self.allow.empty:
            raise FetchRefused(
                f"`{param}`: this botmodels fetches no URL; allow hosts, URL prefixes or CIDRs "
                f"with {ALLOW}",
                param=param,
            )
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InvalidInput(f"`{param}` is not a valid URL: {exc}", param=param) from None
        scheme, host = target.scheme, target.host.lower().rstrip(".")
        if scheme not in ("http", "https"):
            raise FetchRefused(
                f"`{param}`: only http and https URLs are fetched, not {scheme}://", param=param
            )
        if not host:
            raise InvalidInput(f"`{param}` is a URL with no host", param=param)
        port = target.port or _default_port(scheme)
        by_name = self.allow.names(scheme, host, port, target.path)
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if not by_name and not self.allow.networks:
            raise FetchRefused(f"`{param}`: {_safe(url)} is not allowed by {ALLOW}", param=param)
        if literal is not None:
            candidates = [literal]
        else:
            try:
                found = await self.resolver(host, port)
            except OSError as exc:
                raise FetchFailed(
                    f"`{param}`: the host {host!r} could not be resolved ({exc})", param=param
                ) from None
            candidates = [ipaddress.ip_address(a.split("%")[0]) for a in found]
        for address in candidates:
            if self.allow.covers(address) or (by_name and _public(address)):
                return target.copy_with(host=str(address)), host
        if not candidates:
            raise FetchFailed(f"`{param}`: the host {host!r} has no address", param=param)
        first = candidates[0]
        if by_name:
            raise FetchRefused(
                f"`{param}`: {host} resolves to {first}, {_kind(first)}; only a CIDR entry of "
                f"{ALLOW} allows such an address",
                param=param,
            )
        raise FetchRefused(
            f"`{param}`: {_safe(url)} ({first}) is not allowed by {ALLOW}", param=param
        )

    async def _get(self, url: str, param: str) -> bytes:
        timeout = httpx.Timeout(self.timeout_s)
        async with httpx.AsyncClient(
            trust_env=False,  # a proxy from the environment would connect to a name, not our IP
            follow_redirects=False,
            timeout=timeout,
        ) as client:
            for _ in range(self.max_redirects + 1):
                pinned, host = await self._address(url, param)
                original = httpx.URL(url)
                host_header = original.netloc.decode("ascii")
                try:
                    async with client.stream(
                        "GET",
                        pinned,
                        headers={"Host": host_header, "Accept": "*/*"},
                        extensions={"sni_hostname": host},
                    ) as response:
                        if response.is_redirect:
                            location = response.headers.get("location", "")
                            url = urljoin(url, location)
                            continue
                        if response.status_code != 200:
                            raise FetchFailed(
                                f"`{param}`: {_safe(url)} answered {response.status_code}",
                                param=param,
                            )
                        return await self._body(response, url, param)
                except httpx.TimeoutException:
                    raise TimeoutError from None
                except httpx.HTTPError as exc:
                    raise FetchFailed(
                        f"`{param}`: {_safe(url)} could not be fetched: {type(exc).__name__}",
                        param=param,
                    ) from None
        raise FetchFailed(
            f"`{param}`: more than {self.max_redirects} redirects (BOTMODELS_FETCH_MAX_REDIRECTS)",
            param=param,
        )

    async def _body(self, response: httpx.Response, url: str, param: str) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(url, param)
        data = bytearray()
        async for chunk in response.aiter_raw(_CHUNK):
            data += chunk
            if len(data) > self.max_bytes:
                raise self._too_large(url, param)
        return bytes(data)

    def _too_large(self, source: str, param: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"`{param}`: {_safe(source)} is larger than the upload limit of {self.max_bytes} "
            f"bytes (BOTMODELS_MAX_UPLOAD_BYTES)",
            param=param,
        )

    # --- local paths ---------------------------------------------------------------------------
    async def _read_path(self, source: str, param: str) -> bytes:
        if not self.roots:
            raise FetchRefused(
                f"`{param}`: this botmodels reads no local path; name the directories it may "
                f"read with {ROOTS}",
                param=param,
            )
        return await asyncio.to_thread(self._read_file, source, param)

    def _read_file(self, source: str, param: str) -> bytes:
        for prefix, directory in self.path_map:
            if source.startswith(prefix):  # another server's URL path: read its directory
                source = str(directory / source[len(prefix) :])
                break
        if "\0" in source or not os.path.isabs(source):
            raise InvalidInput(f"`{param}` must be an absolute path or a URL", param=param)
        real = Path(os.path.realpath(source))  # symlinks and `..` resolved
        if not any(real.is_relative_to(root) for root in self.roots):
            raise FetchRefused(
                f"`{param}`: {source} is not under a directory of {ROOTS}", param=param
            )
        try:
            if not real.is_file():  # a directory, a FIFO (opening one would block), a device
                if not real.exists():
                    raise FetchFailed(f"`{param}`: {source} does not exist", param=param)
                raise FetchFailed(f"`{param}`: {source} is not a regular file", param=param)
            with open(real, "rb") as handle:
                data = handle.read(self.max_bytes + 1)
        except OSError as exc:
            raise FetchFailed(
                f"`{param}`: {source} could not be read ({exc.strerror})", param=param
            ) from None
        if len(data) > self.max_bytes:
            raise self._too_large(source, param)
        return data


def _safe(url: str) -> str:
    """`url` for a message: no credentials, no query (they may carry secrets), bounded."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"[:200]
