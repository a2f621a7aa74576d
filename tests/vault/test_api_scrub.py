"""POST /v1/scrub: log lines in, the same lines scrubbed out, through the same rules and token space."""

from __future__ import annotations

from flask.testing import FlaskClient

from rules.compiler import compile_text
from rules.scrub import LogScrubber
from vault.api import create_app
from vault.core import Vault

ROOT = "root-token-for-tests-0123456789"
RULES = """
version: 1
logs:
  - {detect: [ipv4, ipv6], action: tokenize, kind: ip, deterministic: true, ttl: 30d}
  - {detect: [email], action: redact}
"""


def _client(vault: Vault, with_rules: bool = True) -> FlaskClient:
    scrubber = LogScrubber(compile_text(RULES, "r.yaml")[1], vault.tokenize_with_expiry) if with_rules else None
    return create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT), scrubber=scrubber).test_client()


def test_text_ndjson_and_json_bodies(vault: Vault) -> None:
    client = _client(vault)
    h = {"X-Bunker-Token": ROOT}
    raw = b"10.0.0.1 GET / jo@example.com\n\xff 10.0.0.1\n"
    text = client.post("/v1/scrub", data=raw, content_type="text/plain", headers=h)
    assert text.status_code == 200 and text.mimetype == "text/plain"
    lines = text.data.split(b"\n")
    assert len(lines) == 3 and b"10.0.0.1" not in text.data and b"jo@example.com" not in text.data
    assert lines[1].startswith(b"\xff ")
    token = lines[0].split(b" ")[0].decode()
    assert lines[1] == b"\xff " + token.encode()  # one token space: the same IP, the same token
    assert vault.detokenize([token]) == ["10.0.0.1"]
    nd = client.post("/v1/scrub", data='{"ip": "10.0.0.1"}\n', content_type="application/x-ndjson", headers=h)
    assert nd.mimetype == "application/x-ndjson" and nd.data == f'{{"ip": "{token}"}}\n'.encode()
    js = client.post("/v1/scrub", json={"lines": ["from 10.0.0.1", "nothing here"]}, headers=h)
    assert js.json == {"status": "ok", "lines": [f"from {token}", "nothing here"]}


def test_errors(vault: Vault) -> None:
    h = {"X-Bunker-Token": ROOT}
    assert _client(vault).post("/v1/scrub", data="x", content_type="text/plain").status_code == 401
    bad = _client(vault).post("/v1/scrub", json={"lines": ["a\nb"]}, headers=h)
    assert bad.status_code == 400 and "newline" in bad.json["message"]
    none = _client(vault, with_rules=False).post("/v1/scrub", data="x", content_type="text/plain", headers=h)
    assert none.status_code == 503 and "no log rules" in none.json["message"]
