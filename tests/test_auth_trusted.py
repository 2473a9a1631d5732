"""Trusted networks, trusted proxies and short keys: the auth middleware against fake scopes."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from botmodels.auth import Authenticator, AuthMiddleware, TrustedNetworks, log_trusted_networks
from botmodels.config import Settings
from botmodels.keys import KeyConfigError, load_api_keys

KEY = b"k" * 20


def nets(*cidrs: str) -> list[Any]:
    return [ipaddress.ip_network(c) for c in cidrs]


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def call(
    trusted: TrustedNetworks,
    peer: str | None,
    headers: dict[str, str] | None = None,
    xff: list[str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request through the middleware from TCP peer `peer`; (status, JSON body)."""
    middleware = AuthMiddleware(_ok, Authenticator([KEY]), max_body_bytes=1000, trusted=trusted)
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw += [(b"x-forwarded-for", value.encode()) for value in xff or []]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/vision/qrcode",
        "query_string": b"",
        "headers": raw,
        "client": (peer, 50000) if peer is not None else None,
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


LOCAL = TrustedNetworks(nets("127.0.0.1/32", "::1/128"))


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_a_request_without_credentials_from_a_trusted_network_passes(peer: str) -> None:
    assert call(LOCAL, peer)[0] == 200


@pytest.mark.parametrize("peer", ["127.0.0.2", "10.0.0.1", "::2", "fe80::1", "testclient", None])
def test_a_request_without_credentials_from_elsewhere_is_401_naming_the_setting(
    peer: str | None,
) -> None:
    status, body = call(LOCAL, peer)
    assert status == 401
    assert "BOTMODELS_TRUSTED_NETWORKS" in body["error"]["message"]
    assert body["error"]["code"] == "invalid_api_key"


def test_a_browsers_request_is_never_trusted() -> None:
    # a web page open on the trusted host posts a multipart upload: it carries Origin
    assert call(LOCAL, "127.0.0.1", {"Origin": "https://evil.example"})[0] == 401
    assert call(LOCAL, "127.0.0.1", {"Origin": "null"})[0] == 401


def test_v4_and_v6_ranges() -> None:
    trusted = TrustedNetworks(nets("10.0.0.0/8", "fd00::/8"))
    assert call(trusted, "10.200.3.4")[0] == 200
    assert call(trusted, "fd12:3456::1")[0] == 200
    assert call(trusted, "11.0.0.1")[0] == 401
    assert call(trusted, "fe00::1")[0] == 401


def test_no_trusted_network_means_every_request_needs_a_key() -> None:
    assert call(TrustedNetworks(()), "127.0.0.1")[0] == 401
    assert call(TrustedNetworks(()), "127.0.0.1", {"X-API-Key": KEY.decode()})[0] == 200


def test_a_presented_credential_is_checked_even_from_a_trusted_network() -> None:
    assert call(LOCAL, "127.0.0.1", {"X-API-Key": "starter"})[0] == 401
    assert call(LOCAL, "127.0.0.1", {"Authorization": "Bearer wrong-key-wrong-key"})[0] == 401
    assert call(LOCAL, "127.0.0.1", {"X-API-Key": KEY.decode()})[0] == 200
    # half a signature is a presented credential too
    assert call(LOCAL, "127.0.0.1", {"X-BotModels-Signature": "v1=00"})[0] == 401
    assert call(LOCAL, "127.0.0.1", {"X-BotModels-Timestamp": "1"})[0] == 401


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    trusted = TrustedNetworks(nets("127.0.0.1/32"))  # no trusted proxy
    assert call(trusted, "203.0.113.9", xff=["127.0.0.1"])[0] == 401
    # nor does it take trust away from a trusted peer
    assert call(trusted, "127.0.0.1", xff=["203.0.113.9"])[0] == 200


def test_x_forwarded_for_from_a_trusted_proxy_names_the_client() -> None:
    trusted = TrustedNetworks(nets("192.168.1.0/24"), proxies=nets("10.0.0.2/32"))
    assert call(trusted, "10.0.0.2", xff=["192.168.1.7"])[0] == 200
    assert call(trusted, "10.0.0.2", xff=["203.0.113.9"])[0] == 401
    # the proxy itself is not a trusted network: without a header, it is the client
    assert call(trusted, "10.0.0.2")[0] == 401
    # a chain of trusted proxies is walked from the right
    two = TrustedNetworks(nets("192.168.1.0/24"), proxies=nets("10.0.0.0/24"))
    assert call(two, "10.0.0.2", xff=["192.168.1.7, 10.0.0.3"])[0] == 200
    assert call(two, "10.0.0.2", xff=["192.168.1.7", "10.0.0.3"])[0] == 200  # two headers
    assert call(two, "10.0.0.2", xff=["[::ffff:192.168.1.7]:4000"])[0] == 200


def test_a_spoofed_x_forwarded_for_chain_is_not_believed() -> None:
    trusted = TrustedNetworks(nets("127.0.0.1/32"), proxies=nets("10.0.0.2/32"))
    # The client wrote "127.0.0.1"; the proxy appended the address it really saw.
    status, body = call(trusted, "10.0.0.2", xff=["127.0.0.1, 203.0.113.9"])
    assert status == 401
    assert "203.0.113.9" in body["error"]["message"]
    # garbage where the proxy's entry should be trusts nothing
    assert call(trusted, "10.0.0.2", xff=["127.0.0.1, unknown"])[0] == 401


def test_bad_cidrs_refuse_to_start_naming_the_setting_and_value() -> None:
    with pytest.raises(
        ValidationError, match=r"BOTMODELS_TRUSTED_NETWORKS=.*'10\.0\.0\.0/33' is not"
    ):
        Settings(trusted_networks="127.0.0.1/32,10.0.0.0/33")
    with pytest.raises(ValidationError, match="BOTMODELS_TRUSTED_PROXIES='nginx'"):
        Settings(trusted_proxies="nginx")
    with pytest.raises(ValidationError, match="host bits set"):
        Settings(trusted_networks="10.0.0.5/8")
    parsed = Settings(trusted_networks=" 127.0.0.1/32 , ::1/128,10.1.2.3", trusted_proxies="")
    assert parsed.trusted_networks == nets("127.0.0.1/32", "::1/128", "10.1.2.3/32")
    assert parsed.trusted_proxies == []


def test_the_start_up_log_names_the_trusted_networks(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="botmodels.auth"):
        log_trusted_networks(LOCAL)
    assert "BOTMODELS_TRUSTED_NETWORKS=127.0.0.1/32,::1/128" in caplog.text


def test_short_keys_need_the_setting_and_a_loopback_bind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(KeyConfigError, match="BOTMODELS_ALLOW_SHORT_KEYS=true"):
        load_api_keys(Settings(api_keys="starter", home=tmp_path))
    for host in ("127.0.0.1", "::1", "localhost", "127.1.2.3"):
        with caplog.at_level(logging.WARNING, logger="botmodels.auth"):
            keys = load_api_keys(
                Settings(api_keys="starter", allow_short_keys=True, host=host, home=tmp_path)
            )
        assert keys == [b"starter"]
        assert "BOTMODELS_ALLOW_SHORT_KEYS" in caplog.text
    for host in ("0.0.0.0", "::", "192.168.1.5", "botmodels.example"):
        with pytest.raises(KeyConfigError, match="loopback"):
            load_api_keys(
                Settings(api_keys="starter", allow_short_keys=True, host=host, home=tmp_path)
            )
    # long keys are untouched by the setting, on any bind
    assert load_api_keys(Settings(api_keys="k" * 16, host="0.0.0.0", home=tmp_path)) == [b"k" * 16]
