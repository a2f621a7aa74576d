"""`tokenbunker proxy` calling a separate `tokenbunker serve` (proxy.vault_url): it works, and when the vault goes away
it fails closed (503 JSON naming the route, nothing upstream), except on a route that says `on_error: pass`."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Callable
from pathlib import Path

import requests

from tests.e2e.helpers import Server, cli_env, new_master_key, write_config
from tests.e2e.proxyhelpers import (
    EMAIL_TOKEN,
    OPAQUE_TOKEN,
    PiiValues,
    RecordingUpstream,
    assert_framing,
    assert_refused,
    leaks,
    tokenbunker_proxy,
    write_proxy_config,
)

StartServer = Callable[[Path, dict[str, str], str], Server]

RULES = """
version: 1
routes:
  - name: users
    match: {path: "/users"}
    subject: {json: "$.email", index: email}
    request:
      - {json: "$.email", action: tokenize, kind: email, format: email, deterministic: true}
      - {json: "$.name", action: tokenize, kind: name}
    response:
      - {json: "$.email", action: detokenize}
  - name: lenient
    match: {path: "/lenient"}
    on_error: pass
    request:
      - {json: "$.email", action: tokenize, kind: email}
"""


def test_remote_vault_then_fail_closed(tmp_path: Path, start_server: StartServer) -> None:
    pii = PiiValues()
    root = secrets.token_urlsafe(24)  # 32 characters
    database_url = f"sqlite:///{tmp_path / 'vault.db'}"
    server = start_server(write_config(tmp_path / "serve.yaml", database_url),
                          cli_env(TOKENBUNKER_MASTER_KEY=new_master_key(), TOKENBUNKER_ROOT_TOKEN=root), "serve")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    # The proxy gets no master key and no database: only the vault's URL and a token for it.
    config = write_proxy_config(tmp_path / "proxy.yaml", "sqlite:////nonexistent/never-opened.db", [rules],
                                vault_url=server.url)
    upstream = RecordingUpstream().start()
    # The sidecar runs with a token scoped to what its rules need: tokenize, and reveal emails and names only.
    scoped = server.call("POST", "/v1/xtoken", root, {"name": "sidecar", "scopes": ["tokenize",
                                                                                     "detokenize:email,name"]})
    assert scoped.status_code == 200, scoped.text
    sidecar_token = scoped.json()["xtoken"]
    assert server.call("POST", "/v1/user", sidecar_token, {"email": "x@example.com"}).status_code == 403
    proxy = tokenbunker_proxy(config, cli_env(TOKENBUNKER_PROXY_VAULT_TOKEN=sidecar_token), tmp_path, "proxy",
                              f"reverse:{upstream.url}")
    try:
        proxy.start()

        # While the vault is up: tokenized upstream, the token resolves through the API, the answer is revealed.
        email, name = pii(f"ann.{pii.tag}@example.org"), pii(f"Ann Ödegård {pii.tag}")
        resp = requests.post(proxy.url + "/users", json={"email": email, "name": name}, timeout=30)
        assert resp.status_code == 200, resp.text[:300]
        assert resp.json()["email"] == email
        sent = upstream.last()
        assert_framing(sent)
        assert not leaks(sent.searchable(), pii.sent)
        doc = sent.json()
        assert EMAIL_TOKEN.match(doc["email"])
        answer = server.call("POST", "/v1/detokenize", root, {"tokens": [doc["email"], doc["name"]]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["values"] == [email, name]
        resp = requests.post(proxy.url + "/lenient", json={"email": pii(f"len.{pii.tag}@example.org")}, timeout=30)
        assert resp.status_code == 200 and OPAQUE_TOKEN.match(upstream.last().json()["email"])

        # The vault goes away.
        assert server.stop(signal.SIGTERM) == 0, server.output()
        before = upstream.count()
        for i in range(3):
            value = pii(f"later{i}.{pii.tag}@example.org")
            resp = requests.post(proxy.url + "/users", json={"email": value, "name": "x"}, timeout=30)
            body = assert_refused(resp, 503, "users")
            assert value not in body["message"]
        assert upstream.count() == before, "a request went upstream unprotected while the vault was down"

        # on_error: pass is the route's documented choice: the request goes on unchanged.
        lenient = f"lenient.{pii.tag}@example.org"  # not in pii.sent: this one is meant to pass in clear
        resp = requests.post(proxy.url + "/lenient", json={"email": lenient}, timeout=30)
        assert resp.status_code == 200, resp.text[:300]
        assert upstream.count() == before + 1
        passed = upstream.last()
        assert_framing(passed)
        assert passed.json() == {"email": lenient}

        assert not leaks(upstream.recorded_bytes(), pii.sent)
        log = proxy.log()
        assert "lenient" in log and "passed on" in log, proxy.output()  # the failure is logged...
        assert not leaks(log.encode(), pii.sent | {lenient}), proxy.output()  # ...without the value
    finally:
        proxy.stop()
        upstream.stop()
