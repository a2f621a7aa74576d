"""The sidecar's own access log, written already scrubbed: a real `tokenbunker proxy` in front of a recording
upstream, with proxy.access_log set; the client address and an email in the query never reach the file, and the
IP's token resolves in the vault to the address that was seen."""

from __future__ import annotations

import re
import time
from pathlib import Path

import requests

from tests.e2e.helpers import cli_env, new_master_key
from tests.e2e.proxyhelpers import RecordingUpstream, tokenbunker_proxy, write_proxy_config
from vault.core import Vault

RULES = r"""
version: 1
routes:
  - name: users
    match: {path: "/users"}
    request:
      - {query: "email", action: tokenize, kind: email, format: email, deterministic: true}
logs:
  - {detect: [ipv4, ipv6], action: tokenize, kind: ip, deterministic: true, ttl: 1d}
  - {detect: [email], action: redact}
"""


def _wait_lines(path: Path, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"the access log has {len(lines)} of {count} lines")


def test_the_access_log_is_written_scrubbed(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    database_url = f"sqlite:///{tmp_path / 'vault.db'}"
    config = write_proxy_config(tmp_path / "config.yaml", database_url, [rules])
    access_log = tmp_path / "access.log"
    config.write_text(config.read_text() + f"  access_log: {access_log}\n")
    key = new_master_key()
    upstream = RecordingUpstream().start()
    proxy = tokenbunker_proxy(config, cli_env(TOKENBUNKER_MASTER_KEY=key), tmp_path, "proxy",
                              f"reverse:{upstream.url}").start()
    try:
        with requests.Session() as http:
            for i in range(3):
                answer = http.get(f"{proxy.url}/users?email=jo{i}%40example.com&n={i}",
                                  headers={"User-Agent": "test agent"}, timeout=10)
                assert answer.status_code == 200
            http.get(f"{proxy.url}/other?note=ann%40example.com", timeout=10)
        lines = _wait_lines(access_log, 4)
    finally:
        assert proxy.stop() == 0
        upstream.stop()
    raw = access_log.read_text()
    assert "127.0.0.1" not in raw and "example.com" not in raw and "jo0" not in raw, raw
    first = lines[0].split(" ", 1)[0]
    assert {line.split(" ", 1)[0] for line in lines} == {first}  # one visitor, one token
    assert re.search(r'"GET /users\?email=tbk_\w+@token\.invalid&n=0 HTTP/1\.1" 200 \d+ "-" "test agent"$', lines[0])
    assert '"GET /other?note=[redacted] HTTP/1.1"' in lines[3]
    vault = Vault.open(database_url, bytes.fromhex(key))
    try:
        assert vault.detokenize([first]) == ["127.0.0.1"]
    finally:
        vault.close()
