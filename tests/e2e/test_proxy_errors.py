"""Bodies the sidecar cannot protect are refused with a JSON error, and nothing of them goes upstream."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.e2e.helpers import cli_env, new_master_key
from tests.e2e.proxyhelpers import (
    EMAIL_TOKEN,
    ProxyProcess,
    RecordingUpstream,
    assert_framing,
    assert_refused,
    encode_body,
    tokenbunker_proxy,
    write_proxy_config,
)

LIMIT = 2048
RULES = """
version: 1
routes:
  - name: users
    match: {path: "/users"}
    request:
      - {json: "$.email", action: tokenize, kind: email, format: email}
"""


@dataclass
class Limited:
    upstream: RecordingUpstream
    proxy: ProxyProcess

    def post(self, body: bytes, **headers: str) -> requests.Response:
        return requests.post(self.proxy.url + "/users", data=body,
                             headers={"Content-Type": "application/json", **headers}, timeout=30)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    work = tmp_path_factory.mktemp("errors")
    rules = work / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    config = write_proxy_config(work / "config.yaml", f"sqlite:///{work / 'vault.db'}", [rules],
                                max_body_bytes=LIMIT)
    upstream = RecordingUpstream().start()
    proxy = tokenbunker_proxy(config, cli_env(TOKENBUNKER_MASTER_KEY=new_master_key()), work, "proxy",
                              f"reverse:{upstream.url}")
    try:
        yield Limited(upstream, proxy.start())
    finally:
        proxy.stop()
        upstream.stop()


def email() -> str:
    return f"err.{secrets.token_hex(4)}@example.org"


def test_a_small_body_is_tokenized(limited: Limited) -> None:
    """The control: the same route with a body under the limit works."""
    value = email()
    resp = limited.post(json.dumps({"email": value, "pad": "x" * 1000}).encode())
    assert resp.status_code == 200, resp.text[:300]
    got = limited.upstream.last()
    assert_framing(got)
    assert EMAIL_TOKEN.match(got.json()["email"]) and value.encode() not in got.raw


def test_unparseable_json_is_400(limited: Limited) -> None:
    before = limited.upstream.count()
    value = email()
    resp = limited.post(b'{not json, "email": "' + value.encode() + b'"')
    body = assert_refused(resp, 400, "users")
    assert "JSON" in body["message"] and value not in resp.text
    assert limited.upstream.count() == before


def test_over_limit_body_is_413(limited: Limited) -> None:
    before = limited.upstream.count()
    value = email()
    raw = json.dumps({"email": value, "pad": "x" * 5000}).encode()
    assert len(raw) > 5000
    resp = limited.post(raw)
    body = assert_refused(resp, 413, "users")
    assert str(LIMIT) in body["message"] and value not in resp.text
    assert limited.upstream.count() == before


def test_compressed_body_over_limit_once_decoded_is_413(limited: Limited) -> None:
    """The limit bounds what the proxy decodes and rewrites: 200 kB of JSON gzipped to a few hundred bytes is
    still a body over the limit (else any limit is bypassed by compressing, a decompression bomb included)."""
    before = limited.upstream.count()
    raw = json.dumps({"email": email(), "pad": "x" * 200_000}).encode()
    packed = encode_body(raw, "gzip")
    assert len(packed) < LIMIT < len(raw)
    resp = limited.post(packed, **{"Content-Encoding": "gzip"})
    assert_refused(resp, 413, "users")
    assert limited.upstream.count() == before
