"""Forward (regular) mode, HTTPS to a local TLS upstream: an outbound call reveals a token only with consent.

The app holds a phone token made through the vault API; it sends `{"to": token}` to an "SMS gateway" (a local TLS
server) through the sidecar, which puts the real number back only while the person's consent `sms` is given.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.e2e.helpers import Server, cli_env, new_master_key, write_config
from tests.e2e.proxyhelpers import (
    OPAQUE_TOKEN,
    ProxyProcess,
    RecordingUpstream,
    assert_framing,
    assert_refused,
    client_addresses,
    make_self_signed_cert,
    tokenbunker_proxy,
    write_proxy_config,
)

StartServer = Callable[[Path, dict[str, str], str], Server]
PHONE = "+447700900123"
RULES = """
version: 1
routes:
  - name: sms
    match: {hosts: ["127.0.0.1"], path: "/send"}
    request:
      - {json: "$.to", action: detokenize, require_consent: sms}
  - name: sms-redact
    match: {hosts: ["127.0.0.1"], path: "/send-or-redact"}
    request:
      - {json: "$.to", action: detokenize, require_consent: sms, on_consent_missing: redact}
"""


@dataclass
class Outbound:
    server: Server
    root: str
    upstream: RecordingUpstream
    proxy: ProxyProcess
    ca: Path
    token: str

    def send(self, path: str, to: str) -> requests.Response:
        return requests.post(f"{self.upstream.url}{path}", json={"to": to, "text": "Your code is 1234"},
                             proxies={"https": self.proxy.url}, verify=str(self.ca), timeout=30)


@pytest.fixture(scope="module")
def outbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outbound]:
    work = tmp_path_factory.mktemp("forward")
    key, root = new_master_key(), secrets.token_urlsafe(24)
    database_url = f"sqlite:///{work / 'vault.db'}"
    server = Server(write_config(work / "serve.yaml", database_url),
                    cli_env(TOKENBUNKER_MASTER_KEY=key, TOKENBUNKER_ROOT_TOKEN=root), work, "serve")
    rules = work / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    # The proxy opens the same database in-process: the API's consent changes are what it reads.
    config = write_proxy_config(work / "proxy.yaml", database_url, [rules])
    upstream = RecordingUpstream(tls=make_self_signed_cert(work)).start()
    for path in ("/send", "/send-or-redact"):
        upstream.set_fixed(path, {"status": "queued"})
    confdir = work / "mitmproxy"
    # ssl_insecure only concerns the proxy -> test-upstream hop, whose certificate is self-signed and made by this
    # test; the client -> proxy hop is verified against mitmproxy's own CA (written into confdir).
    proxy = tokenbunker_proxy(config, cli_env(TOKENBUNKER_MASTER_KEY=key), work, "proxy", "regular",
                              "--set", f"confdir={confdir}", "--set", "ssl_insecure=true")
    try:
        server.start()
        made = server.call("POST", "/v1/tokenize", root, {
            "items": [{"value": PHONE, "kind": "phone"}], "subject": {"index": "phone", "value": PHONE}})
        assert made.status_code == 200, made.text
        [token] = made.json()["tokens"]
        assert OPAQUE_TOKEN.match(token)
        proxy.start()
        yield Outbound(server, root, upstream, proxy, confdir / "mitmproxy-ca-cert.pem", token)
    finally:
        proxy.stop()
        server.kill()
        upstream.stop()


def test_reveal_follows_consent(outbound: Outbound) -> None:
    agreement = f"/v1/agreement/sms/phone/{PHONE}"

    # No consent yet: 403 JSON, and the gateway hears nothing.
    before = outbound.upstream.count()
    assert_refused(outbound.send("/send", outbound.token), 403, "sms")
    assert outbound.upstream.count() == before

    # Consent given through the API: the gateway receives the real number.
    assert outbound.server.call("POST", agreement, outbound.root).status_code == 200
    resp = outbound.send("/send", outbound.token)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json() == {"status": "queued"}
    got = outbound.upstream.last()
    assert outbound.upstream.count() == before + 1
    assert_framing(got)
    assert got.json() == {"to": PHONE, "text": "Your code is 1234"}

    # Consent withdrawn: refused again, nothing more upstream.
    assert outbound.server.call("DELETE", agreement, outbound.root).status_code == 200
    assert_refused(outbound.send("/send", outbound.token), 403, "sms")
    assert outbound.upstream.count() == before + 1

    # A route that redacts instead of blocking: the gateway gets the placeholder, never the number.
    resp = outbound.send("/send-or-redact", outbound.token)
    assert resp.status_code == 200, resp.text[:300]
    got = outbound.upstream.last()
    assert got.path == "/send-or-redact"
    assert got.json()["to"] == "[redacted]"
    assert PHONE.encode() not in got.searchable()


def test_unknown_token_on_a_consent_route_is_refused(outbound: Outbound) -> None:
    """A `to` that holds no known token cannot be revealed; on_error block: refused, nothing upstream."""
    before = outbound.upstream.count()
    resp = outbound.send("/send", "tbk_" + "a" * 26)
    assert_refused(resp, 502, "sms")
    assert outbound.upstream.count() == before


def test_failed_client_tls_handshake_log_names_no_client(outbound: Outbound) -> None:
    """A client that does not trust the proxy's CA: mitmproxy logs a warning about it (at the sidecar's default
    verbosity), and that line must not carry the client's address."""
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(f"{outbound.upstream.url}/send", json={"to": outbound.token},
                      proxies={"https": outbound.proxy.url}, timeout=30)  # verify: the system CAs only
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "handshake" not in outbound.proxy.log().lower():
        time.sleep(0.05)
    log = outbound.proxy.log()
    assert "handshake" in log.lower(), outbound.proxy.output()
    assert PHONE not in log
    found = client_addresses(log, [outbound.proxy.port, outbound.upstream.port, outbound.server.port])
    assert not found, found
