"""The addon as a whole: people and consent, encodings and charsets, failures (fail closed), limits, metadata."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import tracemalloc
import zlib
from pathlib import Path

import brotli
import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from proxy_addons.tokenize import Tokenbunker
from proxy_addons.vaultclient import InProcessVault
from tests.proxy_addons.conftest import (
    MakeProxy,
    Proxy,
    body,
    error_of,
    json_flow,
    make_flow,
    set_json_response,
    set_raw,
    set_response,
    write_config,
)
from vault.tokens import TokenRequest

try:
    from compression import zstd  # Python 3.14
except ImportError:  # pragma: no cover - depends on the interpreter
    from backports import zstd  # type: ignore[no-redef]

APP = "http://app.internal"
SMS = "http://api.sms.example"
EMAIL_TOKEN = re.compile(r"tbk_[a-z2-7]{20}@token\.invalid")
OPAQUE = re.compile(r"tbk_[a-z2-7]{26}")

RULES = r"""
version: 1
routes:
  - name: signup
    match: {hosts: ["app.internal"], path: "/signup"}
    subject: {json: "$.email", index: email}
    request:
      - {json: "$.email", action: tokenize, kind: email, format: email, deterministic: true}
      - {json: "$.phone", action: tokenize, kind: phone}
    response:
      - {json: "$.email", action: detokenize}
      - {json: "$.made", action: tokenize, kind: note}
  - name: update
    match: {hosts: ["app.internal"], path: "/update"}
    subject: {json: "$.email", index: email}
    request:
      - {json: "$.phone", action: tokenize, kind: phone}
  - name: header-subject
    match: {hosts: ["app.internal"], path: "/by-header"}
    subject: {header: X-User, index: login}
    request:
      - {header: X-User, action: tokenize, kind: login}
      - {query: q, action: tokenize}
  - name: sms
    match: {hosts: ["api.sms.example"], path: "/send"}
    request:
      - {json: "$.to", action: detokenize, require_consent: sms}
  - name: sms-pass
    match: {hosts: ["api.sms.example"], path: "/send-pass"}
    on_error: pass
    request:
      - {json: "$.to", action: detokenize, require_consent: sms}
  - name: sms-redact
    match: {hosts: ["api.sms.example"], path: "/send-redact"}
    request:
      - {json: "$.to", action: detokenize, require_consent: sms, on_consent_missing: redact}
  - name: profile
    match: {hosts: ["app.internal"], path: "/profile"}
    response:
      - {json: "$.phone", action: detokenize, require_consent: marketing, on_consent_missing: redact}
      - {json: "$.email", action: detokenize}
  - name: json
    match: {hosts: ["app.internal"], path: "/json"}
    request:
      - {json: "$.email", action: tokenize, kind: email}
    response:
      - {json: "$.email", action: detokenize}
  - name: json-pass
    match: {hosts: ["app.internal"], path: "/json-pass"}
    on_error: pass
    request:
      - {json: "$.email", action: tokenize, kind: email}
  - name: text
    match: {hosts: ["app.internal"], path: "/text"}
    request:
      - {detect: [email], action: tokenize}
    response:
      - {any: tokens, action: detokenize}
  - name: headers-only
    match: {hosts: ["app.internal"], path: "/headers-only"}
    request:
      - {header: X-Email, action: tokenize, kind: email}
"""


@pytest.fixture
def proxy(make_proxy: MakeProxy) -> Proxy:
    return make_proxy(RULES)


def assert_length_right(message) -> None:  # type: ignore[no-untyped-def]
    assert message.headers["content-length"] == str(len(message.raw_content or b""))


# -- people: subject ------------------------------------------------------------------------------------------------


def test_subject_creates_the_person_who_owns_every_token_of_the_flow(proxy: Proxy) -> None:
    flow = proxy.request(json_flow(f"{APP}/signup", {"email": "Jo@Example.com", "phone": "+44 7700 900123"}))
    assert flow.response is None
    sent = body(flow.request)
    person, _profile = proxy.vault.get_person("email", "jo@example.com")
    assert proxy.vault.token_info(sent["email"]).subject == person
    assert proxy.vault.token_info(sent["phone"]).subject == person
    # The response of the same flow: revealed, and what it tokenizes belongs to the same person.
    set_json_response(flow, {"email": sent["email"], "made": "a note"})
    proxy.response(flow)
    out = body(flow.response)
    assert out["email"] == "Jo@Example.com" and OPAQUE.fullmatch(out["made"])
    assert proxy.vault.token_info(out["made"]).subject == person
    # The same person again: found, not created twice; the deterministic email token is the same.
    again = body(proxy.request(json_flow(f"{APP}/signup", {"email": "jo@example.com", "phone": "1"})).request)
    assert proxy.vault.token_info(again["phone"]).subject == person


def test_subject_given_as_a_token_of_a_known_person(proxy: Proxy) -> None:
    first = body(proxy.request(json_flow(f"{APP}/signup", {"email": "jo@example.com"})).request)
    person, _profile = proxy.vault.get_person("email", "jo@example.com")
    # The legacy app stored the token and sends it back as the subject of a later flow.
    flow = proxy.request(json_flow(f"{APP}/update", {"email": first["email"], "phone": "+44 7700 900456"}))
    assert flow.response is None
    later = body(flow.request)
    assert later["email"] == first["email"]
    assert proxy.vault.token_info(later["phone"]).subject == person


def test_subject_from_a_header(proxy: Proxy) -> None:
    flow = proxy.request(make_flow("GET", f"{APP}/by-header?q=secret", b"", {"X-User": "jdoe"}))
    assert flow.response is None
    person, _profile = proxy.vault.get_person("login", "jdoe")
    assert proxy.vault.token_info(flow.request.headers["X-User"]).subject == person
    assert proxy.vault.token_info(flow.request.query["q"]).subject == person


def test_a_malformed_subject_is_refused_without_echoing_it(proxy: Proxy) -> None:
    flow = proxy.request(json_flow(f"{APP}/signup", {"email": "not-an-email", "phone": "+44 7700 900123"}))
    status, answer = error_of(flow)
    assert status == 502 and answer["route"] == "signup" and "subject" in answer["message"]
    assert "not-an-email" not in flow.response.text and "900123" not in flow.response.text
    assert flow.metadata["tokenbunker"]["refused"] is True


def test_tokens_without_subject_belong_to_nobody(proxy: Proxy) -> None:
    out = body(proxy.request(json_flow(f"{APP}/json", {"email": "jo@example.com"})).request)
    assert proxy.vault.token_info(out["email"]).subject is None


# -- consent ------------------------------------------------------------------------------------------------------


def _phone_token_of_jo(proxy: Proxy) -> str:
    sent = body(proxy.request(json_flow(f"{APP}/signup", {"email": "jo@example.com",
                                                          "phone": "+44 7700 900123"})).request)
    return str(sent["phone"])


def test_require_consent_blocks_with_403_until_consent_is_given(proxy: Proxy) -> None:
    phone = _phone_token_of_jo(proxy)
    raw = json.dumps({"to": phone, "text": "hello"})
    flow = proxy.request(make_flow("POST", f"{SMS}/send", raw, {"Content-Type": "application/json"}))
    status, answer = error_of(flow)
    assert status == 403 and flow.response.status_code == 403
    assert answer["route"] == "sms" and "consent 'sms'" in answer["message"]
    assert flow.request.text == raw  # nothing revealed, and the addon answered: nothing goes upstream
    assert "900123" not in flow.response.text

    proxy.vault.give_consent("sms", "email", "jo@example.com")
    flow = proxy.request(make_flow("POST", f"{SMS}/send", raw, {"Content-Type": "application/json"}))
    assert flow.response is None and body(flow.request) == {"to": "+44 7700 900123", "text": "hello"}

    proxy.vault.withdraw_consent("sms", "email", "jo@example.com")
    flow = proxy.request(make_flow("POST", f"{SMS}/send", raw, {"Content-Type": "application/json"}))
    assert error_of(flow)[0] == 403


def test_the_sidecar_audits_what_it_tokenized_and_revealed_by_route(proxy: Proxy) -> None:
    from sqlalchemy import select

    from vault.models import audit_table

    phone = _phone_token_of_jo(proxy)
    person, _profile = proxy.vault.get_person("email", "jo@example.com")
    raw = json.dumps({"to": phone, "text": "hello"})
    headers = {"Content-Type": "application/json"}
    assert error_of(proxy.request(make_flow("POST", f"{SMS}/send", raw, headers)))[0] == 403
    proxy.vault.give_consent("sms", "email", "jo@example.com")
    assert proxy.request(make_flow("POST", f"{SMS}/send", raw, headers)).response is None
    proxy.addon.client.flush_audit()  # reveals' rows are written by the writer within AuditBuffer's window
    with proxy.vault.engine.connect() as conn:
        rows = [r for r in conn.execute(select(audit_table).order_by(audit_table.c.seq)) if r.actor == "sidecar"]
    assert [(r.action, r.route, r.status, r.person_id) for r in rows] == [
        ("tokenize", "signup", "ok", person), ("reveal", "sms", "refused", person), ("reveal", "sms", "ok", person),
    ]
    assert all(b"900123" not in (r.detail or b"") for r in rows)


def test_missing_consent_blocks_even_when_on_error_is_pass(proxy: Proxy) -> None:
    phone = _phone_token_of_jo(proxy)
    flow = proxy.request(json_flow(f"{SMS}/send-pass", {"to": phone}))
    assert error_of(flow)[0] == 403


def test_missing_consent_redacts_when_the_rule_says_so(proxy: Proxy) -> None:
    phone = _phone_token_of_jo(proxy)
    flow = proxy.request(json_flow(f"{SMS}/send-redact", {"to": phone}))
    assert flow.response is None and body(flow.request) == {"to": "[redacted]"}
    assert flow.metadata["tokenbunker"]["request"]["redacted"] == 1
    proxy.vault.give_consent("sms", "email", "jo@example.com")
    flow = proxy.request(json_flow(f"{SMS}/send-redact", {"to": phone}))
    assert body(flow.request) == {"to": "+44 7700 900123"}


def test_consent_on_a_response_field(proxy: Proxy) -> None:
    phone = _phone_token_of_jo(proxy)
    email = body(proxy.request(json_flow(f"{APP}/signup", {"email": "jo@example.com"})).request)["email"]
    flow = proxy.request(make_flow("GET", f"{APP}/profile"))
    set_json_response(flow, {"phone": phone, "email": email})
    proxy.response(flow)
    assert body(flow.response) == {"phone": "[redacted]", "email": "jo@example.com"}
    proxy.vault.give_consent("marketing", "email", "jo@example.com")
    flow = proxy.request(make_flow("GET", f"{APP}/profile"))
    set_json_response(flow, {"phone": phone, "email": email})
    proxy.response(flow)
    assert body(flow.response) == {"phone": "+44 7700 900123", "email": "jo@example.com"}


# -- encodings and charsets ------------------------------------------------------------------------------------------

ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
}


@pytest.mark.parametrize("encoding", list(ENCODERS))
def test_encoded_request_bodies_are_decoded_rewritten_and_encoded_again(proxy: Proxy, encoding: str) -> None:
    flow = make_flow("POST", f"{APP}/json", b"", {"Content-Type": "application/json", "Content-Encoding": encoding})
    set_raw(flow.request, ENCODERS[encoding](json.dumps({"email": "jo@example.com", "n": 1}).encode()))
    proxy.request(flow)
    assert flow.response is None
    assert flow.request.headers["content-encoding"] == encoding
    assert b"jo@example.com" not in flow.request.raw_content
    out = body(flow.request)  # decodes with the declared encoding
    assert OPAQUE.fullmatch(out["email"]) and out["n"] == 1
    assert_length_right(flow.request)
    assert proxy.vault.detokenize([out["email"]]) == ["jo@example.com"]


@pytest.mark.parametrize("encoding", list(ENCODERS))
def test_encoded_response_bodies_are_revealed_and_encoded_again(proxy: Proxy, encoding: str) -> None:
    [token] = proxy.vault.tokenize([TokenRequest("jo@example.com", kind="email", format="email")])
    flow = proxy.request(make_flow("GET", f"{APP}/text"))
    set_response(flow, b"", {"Content-Type": "text/plain", "Content-Encoding": encoding})
    set_raw(flow.response, ENCODERS[encoding](f"mail {token}\n".encode()))
    proxy.response(flow)
    assert flow.response.status_code == 200 and flow.response.headers["content-encoding"] == encoding
    assert flow.response.get_content(strict=True) == b"mail jo@example.com\n"
    assert_length_right(flow.response)


def test_a_body_whose_encoding_cannot_be_decoded_is_refused(proxy: Proxy) -> None:
    flow = make_flow("POST", f"{APP}/json", b"", {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    set_raw(flow.request, b'{"email": "jo@example.com"}')
    proxy.request(flow)
    status, answer = error_of(flow)
    assert status == 400 and "gzip" in answer["message"]


def test_latin1_text_body_keeps_its_charset(proxy: Proxy) -> None:
    text = "Café José, mail jo@example.com, merci"
    flow = proxy.request(make_flow("POST", f"{APP}/text", text.encode("latin-1"),
                                   {"Content-Type": "text/plain; charset=latin-1"}))
    assert flow.response is None
    raw = flow.request.raw_content
    assert raw.startswith("Café José, mail ".encode("latin-1")) and raw.endswith(b", merci")
    token = raw.decode("latin-1").split()[3].rstrip(",")
    assert OPAQUE.fullmatch(token) and proxy.vault.detokenize([token]) == ["jo@example.com"]
    assert_length_right(flow.request)


# -- bodies that cannot be protected -------------------------------------------------------------------------------


def test_unparseable_json_with_a_json_content_type_is_refused(proxy: Proxy) -> None:
    flow = proxy.request(make_flow("POST", f"{APP}/json", b'{"email": "jo@example.com"',
                                   {"Content-Type": "application/json; charset=utf-8"}))
    status, answer = error_of(flow)
    assert status == 400 and answer["route"] == "json" and "not valid JSON" in answer["message"]
    assert "jo@example.com" not in flow.response.text


def test_unparseable_json_with_on_error_pass_goes_on_unchanged(proxy: Proxy) -> None:
    raw = b'{"email": "jo@example.com"'
    flow = proxy.request(make_flow("POST", f"{APP}/json-pass", raw, {"Content-Type": "application/vnd.api+json"}))
    assert flow.response is None and flow.request.raw_content == raw
    assert proxy.addon.counts["json-pass.passed"] == 1


def test_unparseable_json_response_is_refused(proxy: Proxy) -> None:
    flow = proxy.request(make_flow("GET", f"{APP}/json"))
    set_response(flow, b"{oops", {"Content-Type": "application/json"})
    proxy.response(flow)
    assert error_of(flow)[0] == 502


def test_a_json_selector_matching_an_object_is_an_error(proxy: Proxy) -> None:
    flow = proxy.request(json_flow(f"{APP}/json", {"email": {"home": "jo@example.com"}}))
    status, answer = error_of(flow)
    assert status == 400 and "object or array" in answer["message"]
    assert "jo@example.com" not in flow.response.text


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", ""])
def test_empty_bodies_go_through(proxy: Proxy, content_type: str) -> None:
    for path in ("/json", "/text"):
        flow = proxy.request(make_flow("POST", f"{APP}{path}", b"", {"Content-Type": content_type}))
        assert flow.response is None and flow.request.raw_content == b""
        set_response(flow, b"", {"Content-Type": content_type})
        proxy.response(flow)
        assert flow.response.status_code == 200 and flow.response.raw_content == b""


def test_a_binary_request_body_is_refused_by_text_rules(proxy: Proxy) -> None:
    # The app may read any request body as text whatever its Content-Type: one that is not text is refused.
    png = b"\x89PNG\r\n\x1a\n\x00\x00 jo@example.com \xff\xfe tbk_" + b"a" * 26
    flow = proxy.request(make_flow("POST", f"{APP}/text", png, {"Content-Type": "image/png"}))
    assert error_of(flow)[0] == 415


def test_text_labelled_binary_is_still_scanned(proxy: Proxy) -> None:
    flow = proxy.request(make_flow("POST", f"{APP}/text", b"mail jo@example.com", {"Content-Type": "image/png"}))
    assert flow.response is None and b"jo@example.com" not in flow.request.raw_content


def test_a_binary_response_body_is_not_touched_by_text_rules(proxy: Proxy) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00 jo@example.com \xff\xfe tbk_" + b"a" * 26
    flow = proxy.request(make_flow("GET", f"{APP}/text"))
    set_response(flow, png, {"Content-Type": "image/png"})
    proxy.response(flow)
    assert flow.response.status_code == 200 and flow.response.raw_content == png


def test_undecodable_text_is_refused_not_passed(proxy: Proxy) -> None:
    flow = proxy.request(make_flow("POST", f"{APP}/text", b"mail jo@example.com \xff\xfe",
                                   {"Content-Type": "text/plain; charset=utf-8"}))
    assert error_of(flow)[0] == 415


# -- metadata, counters -------------------------------------------------------------------------------------------


def test_metadata_has_counts_and_route_never_a_value(proxy: Proxy) -> None:
    flow = proxy.request(json_flow(f"{APP}/signup", {"email": "jo@example.com", "phone": "+44 7700 900123"}))
    sent = body(flow.request)
    set_json_response(flow, {"email": sent["email"], "made": "a private note"})
    proxy.response(flow)
    meta = flow.metadata["tokenbunker"]
    assert meta == {"route": "signup",
                    "request": {"tokenized": 2, "revealed": 0, "redacted": 0, "dropped": 0},
                    "response": {"tokenized": 1, "revealed": 1, "redacted": 0, "dropped": 0}}
    dumped = json.dumps(flow.metadata, default=str)
    for secret in ("jo@example.com", "900123", "a private note", sent["email"], sent["phone"]):
        assert secret not in dumped
    assert proxy.addon.counts["signup.ok"] == 2


# -- fail closed: not configured, limits, vault away ---------------------------------------------------------------


def test_an_unconfigured_addon_refuses_every_flow_with_503() -> None:
    addon = Tokenbunker()
    with taddons.context(addon):
        assert addon.problem is not None
        for flow in (make_flow("GET", f"{APP}/anything"), json_flow(f"{APP}/json", {"email": "jo@example.com"})):
            asyncio.run(addon.request(flow))
            status, answer = error_of(flow)
            assert status == 503 and "not ready" in answer["message"] and answer["route"] is None
            assert flow.metadata["tokenbunker"]["refused"] is True
            asyncio.run(addon.response(flow))  # the refusal stays as it is
            assert flow.response.status_code == 503


def test_an_addon_whose_rules_fail_to_load_stays_refusing(tmp_path: Path, database_url: str, master_key: bytes,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENBUNKER_MASTER_KEY", master_key.hex())
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, database_url, """
        version: 1
        routes:
          - name: typo
            request:
              - {jsn: "$.email", action: tokenize}
    """)
    # mitmproxy rolls a failed option change back and configures again with the old (empty) value, which means
    # $TOKENBUNKER_CONFIG: the same broken file here, never the project's config.yaml.
    monkeypatch.setenv("TOKENBUNKER_CONFIG", str(config))
    addon = Tokenbunker()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="jsn"):
            tctx.configure(addon, tokenbunker_config=str(config), tokenbunker_reload=False)
        flow = make_flow("GET", f"{APP}/x")
        asyncio.run(addon.request(flow))
        assert error_of(flow)[0] == 503
        addon.done()


def test_a_body_over_the_limit_is_refused_with_413(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(RULES, tokenbunker_max_body=64)
    small = proxy.request(json_flow(f"{APP}/json", {"email": "jo@example.com"}))
    assert small.response is None
    big = proxy.request(json_flow(f"{APP}/json", {"email": "jo@example.com", "pad": "x" * 100}))
    status, answer = error_of(big)
    assert status == 413 and "64 bytes" in answer["message"]
    # Rules that need no body do not care how large it is.
    headers = proxy.request(make_flow("POST", f"{APP}/headers-only", "x" * 1000, {"X-Email": "jo@example.com"}))
    assert headers.response is None and OPAQUE.fullmatch(headers.request.headers["X-Email"])


def test_a_compressed_body_over_the_limit_once_decoded_is_refused(make_proxy: MakeProxy) -> None:
    """The limit is on the body that is rewritten: a small gzip body that inflates past it must not be decoded and
    held in memory whole (a decompression bomb)."""
    proxy = make_proxy(RULES, tokenbunker_max_body=4096)
    doc = json.dumps({"email": "jo@example.com", "pad": " " * 1_000_000}).encode()
    compressed = gzip.compress(doc)
    assert len(compressed) < 4096
    flow = make_flow("POST", f"{APP}/json", b"", {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    set_raw(flow.request, compressed)
    proxy.request(flow)
    assert error_of(flow)[0] == 413


def test_a_decompression_bomb_is_refused_without_being_inflated_whole(make_proxy: MakeProxy) -> None:
    """A 2 KB zstd body that inflates to 64 MB: refused with 413 while decoding, not after holding all 64 MB (the
    limit is there so that one request cannot exhaust the proxy's memory)."""
    proxy = make_proxy(RULES, tokenbunker_max_body=4096)
    payload = b'{"email": "jo@example.com", "pad": "' + b" " * (64 << 20) + b'"}'
    compressed = zstd.compress(payload)
    del payload
    assert len(compressed) < 4096
    flow = make_flow("POST", f"{APP}/json", b"", {"Content-Type": "application/json", "Content-Encoding": "zstd"})
    set_raw(flow.request, compressed)
    tracemalloc.start()
    try:
        proxy.request(flow)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error_of(flow)[0] == 413
    assert peak < 16 << 20, f"{peak >> 20} MB held to refuse a body limited to 4096 bytes"


def test_a_response_body_over_the_limit_is_refused(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(RULES, tokenbunker_max_body=64)
    flow = proxy.request(make_flow("GET", f"{APP}/json"))
    set_json_response(flow, {"email": "tbk_" + "a" * 26, "pad": "x" * 100})
    proxy.response(flow)
    assert error_of(flow)[0] == 413


def test_streaming_is_turned_off_for_routes_that_need_the_body(proxy: Proxy) -> None:
    flow = json_flow(f"{APP}/json", {"email": "jo@example.com"})
    flow.request.stream = True
    proxy.addon.requestheaders(flow)
    assert flow.request.stream is False
    other = make_flow("POST", f"{APP}/headers-only", b"x")
    other.request.stream = True
    proxy.addon.requestheaders(other)
    assert other.request.stream is True


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_vault_blocks_with_503_or_passes(make_proxy: MakeProxy, monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setenv("TOKENBUNKER_PROXY_VAULT_TOKEN", "a-token-for-a-vault-that-is-not-there")
    proxy = make_proxy(RULES, extra_proxy={"vault_url": f"http://127.0.0.1:{_closed_port()}"})
    flow = proxy.request(json_flow(f"{APP}/json", {"email": "jo@example.com"}))
    status, answer = error_of(flow)
    assert status == 503 and "unavailable" in answer["message"]
    raw = json.dumps({"email": "jo@example.com"})
    passed = proxy.request(make_flow("POST", f"{APP}/json-pass", raw, {"Content-Type": "application/json"}))
    assert passed.response is None and passed.request.text == raw


def test_done_closes_the_database_connections(proxy: Proxy) -> None:
    """The Vault the addon opened for itself is closed with it (on shutdown, and when a new config replaces it):
    its pooled database connections must not stay open."""
    client = proxy.addon.client
    assert isinstance(client, InProcessVault)
    engine = client.vault.engine
    proxy.request(json_flow(f"{APP}/json", {"email": "jo@example.com"}))
    # Idle connections kept in the pool, or held by the vault's writer thread between its transactions.
    assert engine.pool.checkedin() + engine.pool.checkedout() > 0
    try:
        proxy.addon.done()
        assert engine.pool.checkedin() == 0, "the addon's vault connections were left open"
        assert engine.pool.checkedout() == 0, "the writer's or a reader's connection was left open"
    finally:
        client.vault.close()
