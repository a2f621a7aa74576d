"""The addon loaded the plain mitmproxy way: `mitmdump -s proxy_addons/tokenize.py --set tokenbunker_config=...`."""

from __future__ import annotations

import secrets
from pathlib import Path

import requests

from tests.e2e.helpers import cli_env, new_master_key
from tests.e2e.proxyhelpers import (
    EMAIL_TOKEN,
    OPAQUE_TOKEN,
    RecordingUpstream,
    assert_framing,
    leaks,
    mitmdump_proxy,
    write_proxy_config,
)
from vault.core import Vault

RULES = """
version: 1
routes:
  - name: signup
    match: {path: "/api/users*", methods: [POST]}
    subject: {json: "$.email", index: email}
    request:
      - {json: "$.email", action: tokenize, kind: email, format: email, deterministic: true}
      - {json: "$.name", action: tokenize, kind: name}
    response:
      - {json: "$.email", action: detokenize}
"""


def test_mitmdump_script_tokenizes_and_reveals(tmp_path: Path) -> None:
    key = new_master_key()
    database_url = f"sqlite:///{tmp_path / 'vault.db'}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    config = write_proxy_config(tmp_path / "config.yaml", database_url, [rules])
    upstream = RecordingUpstream().start()
    proxy = mitmdump_proxy(config, cli_env(TOKENBUNKER_MASTER_KEY=key), tmp_path, "mitmdump",
                           f"reverse:{upstream.url}")
    tag = secrets.token_hex(3)
    email, name = f"mia.{tag}@example.org", f"Mía Ñandú {tag}"
    try:
        proxy.start()
        resp = requests.post(proxy.url + "/api/users", json={"email": email, "name": name, "age": 41}, timeout=30)
        got = upstream.last()
    finally:
        proxy.stop()
        upstream.stop()
    assert_framing(got)
    assert not leaks(got.searchable(), [email, name]), got.raw
    sent = got.json()
    assert EMAIL_TOKEN.match(sent["email"]) and OPAQUE_TOKEN.match(sent["name"]) and sent["age"] == 41
    vault = Vault.open(database_url, bytes.fromhex(key))
    try:
        assert vault.detokenize([sent["email"], sent["name"]]) == [email, name]
    finally:
        vault.close()
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json() == {"email": email, "name": sent["name"], "age": 41}
    # mitmdump prints its flow log by default; the addon turns it off, so no value reaches the terminal.
    assert not leaks(proxy.log().encode(), [email, name]), proxy.output()
