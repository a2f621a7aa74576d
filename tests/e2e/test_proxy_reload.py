"""Rule files are reloaded while the proxy runs: a new rule applies within seconds; a broken file is refused, logged,
and the rules in force stay in force."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import requests

from tests.e2e.helpers import cli_env, new_master_key
from tests.e2e.proxyhelpers import (
    EMAIL_TOKEN,
    OPAQUE_TOKEN,
    RecordingUpstream,
    leaks,
    tokenbunker_proxy,
    write_proxy_config,
)

V1 = """version: 1
routes:
  - name: users
    match: {path: "/users"}
    request:
      - {json: "$.email", action: tokenize, kind: email, format: email}
"""
V2 = V1 + """  - name: notes
    match: {path: "/notes"}
    request:
      - {json: "$.secret", action: tokenize, kind: secret}
"""
BROKEN = V2 + """      - {json: "$.other", action: tokenize, kindd: secret}
"""
BROKEN_LINE = 11


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    stamp = time.time() + 1  # a new mtime even on a coarse-grained file system
    os.utime(path, (stamp, stamp))


def test_rules_reload(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    write(rules, V1)
    config = write_proxy_config(tmp_path / "config.yaml", f"sqlite:///{tmp_path / 'vault.db'}", [rules])
    upstream = RecordingUpstream().start()
    proxy = tokenbunker_proxy(config, cli_env(TOKENBUNKER_MASTER_KEY=new_master_key()), tmp_path, "proxy",
                              f"reverse:{upstream.url}")

    def post(path: str, doc: dict[str, str]) -> dict[str, str]:
        resp = requests.post(proxy.url + path, json=doc, timeout=30)
        assert resp.status_code == 200, resp.text[:300]
        got: dict[str, str] = upstream.last().json()
        return got

    try:
        proxy.start()
        assert post("/notes", {"secret": "not yet a rule"}) == {"secret": "not yet a rule"}

        # A new route: applies within 3 s.
        write(rules, V2)
        deadline = time.monotonic() + 3.0
        while True:
            secret = f"s-{secrets.token_hex(4)}"
            if post("/notes", {"secret": secret})["secret"] != secret:
                break
            assert time.monotonic() < deadline, f"the new rule did not apply within 3 s\n{proxy.output()}"
            time.sleep(0.1)
        took = 3.0 - (deadline - time.monotonic())
        secret = f"s-{secrets.token_hex(4)}"
        assert OPAQUE_TOKEN.match(post("/notes", {"secret": secret})["secret"]), took

        # A broken file: refused and logged; both routes still tokenize.
        write(rules, BROKEN)
        assert proxy.wait_for_log(f"{rules}:{BROKEN_LINE}:", timeout=5), proxy.output()
        line = next(ln for ln in proxy.log().splitlines() if f"{rules}:{BROKEN_LINE}:" in ln)
        assert "kindd" in line, line
        kept = [f"k-{secrets.token_hex(4)}", f"kept.{secrets.token_hex(4)}@example.org"]
        assert OPAQUE_TOKEN.match(post("/notes", {"secret": kept[0]})["secret"])
        assert EMAIL_TOKEN.match(post("/users", {"email": kept[1]})["email"])
        assert not leaks(upstream.recorded_bytes(), [secret, *kept])
        assert "Traceback" not in proxy.log(), proxy.output()
    finally:
        proxy.stop()
        upstream.stop()
