"""`tokenbunker proxy` in reverse mode with the vault in-process, on SQLite and PostgreSQL (--db): real processes.

One proxy per backend (module scope) in front of a recording upstream. Every test sends personal values through it
with `requests` (or curl for HTTP/2) and checks what the upstream really received, byte for byte, what the client
got back, and that the tokens resolve in the vault to what was sent.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.helpers import cli_env, new_master_key
from tests.e2e.proxyhelpers import (
    EMAIL_TOKEN,
    OPAQUE_TOKEN,
    UNKNOWN_TOKEN,
    Fixed,
    PiiValues,
    ProxyProcess,
    Recorded,
    RecordingUpstream,
    assert_framing,
    client_addresses,
    encode_body,
    leaks,
    multipart_parts,
    pg_schema_url,
    tokenbunker_proxy,
    write_proxy_config,
)
from vault.core import Vault

RULES = r"""
version: 1
routes:
  - name: users
    match: {path: "/users", methods: [POST, PUT]}
    subject: {json: "$.email", index: email}
    request:
      - {json: "$.email", action: tokenize, kind: email, format: email, deterministic: true}
      - {json: "$.name", action: tokenize, kind: name}
      - {json: "$.contacts[*].phone", action: tokenize, kind: phone, format: digits}
      - {query: "ssn", action: tokenize, kind: ssn}
      - {header: "X-Forwarded-For", action: tokenize, kind: ip}
      - {cookie: "email", action: tokenize, kind: email}
    response:
      - {json: "$.email", action: detokenize}
      - {json: "$.contacts[*].phone", action: detokenize, reveal: masked}
  - name: import
    match: {path: "/import", methods: [POST]}
    request:
      - {json: "$[*].email", action: tokenize, kind: email, format: email, deterministic: true}
      - {json: "$[*].name", action: tokenize, kind: name}
  - name: forms
    match: {path: "/forms", methods: [POST]}
    request:
      - {form: "card_number", action: tokenize, kind: card, format: keep-last4}
      - {form: "full_name", action: tokenize, kind: name}
  - name: notes
    match: {path: "/notes", methods: [POST]}
    request:
      - {text: "\\b\\d{3}-\\d{2}-\\d{4}\\b", action: tokenize, kind: ssn}
  - name: ingest
    match: {path: "/ingest", methods: [POST]}
    request:
      - {detect: [ipv4, email], action: tokenize}
  - name: reveal
    match: {path: "/reveal", methods: [POST]}
    response:
      - {any: tokens, action: detokenize}
  - name: otp
    match: {path: "/otp", methods: [POST]}
    request:
      - {json: "$.code", action: tokenize, kind: otp, ttl: 2s}
"""


@dataclass
class Stack:
    backend: str
    database_url: str
    upstream: RecordingUpstream
    proxy: ProxyProcess
    vault: Vault
    pii: PiiValues
    confdir: Path

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.proxy.url + path, timeout=30, **kwargs)

    def resolve(self, tokens: list[str], reveal: str = "plain") -> list[str | None]:
        return self.vault.detokenize(tokens, reveal)

    def sent_last(self, mark: int) -> Recorded:
        """The one request the upstream received since `mark`."""
        got = self.upstream.since(mark)
        assert len(got) == 1, [r.raw[:200] for r in got]
        assert_framing(got[0])
        assert not leaks(got[0].searchable(), self.pii.sent), (leaks(got[0].searchable(), self.pii.sent),
                                                                got[0].raw[:600])
        return got[0]


@pytest.fixture(scope="module")
def stack(backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp(f"reverse-{backend}")
    database_url = f"sqlite:///{work / 'vault.db'}" if backend == "sqlite" else pg_schema_url(request)
    key = new_master_key()
    rules = work / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    config = write_proxy_config(work / "config.yaml", database_url, [rules])
    upstream = RecordingUpstream().start()
    confdir = work / "mitmproxy"
    # -v: mitmproxy's most talkative log (an option that passes through), so the log checks below have lines to
    # look at; confdir: where mitmproxy writes its CA, which curl trusts for the HTTP/2 (TLS) test.
    proxy = tokenbunker_proxy(config, cli_env(TOKENBUNKER_MASTER_KEY=key), work, "proxy",
                              f"reverse:{upstream.url}", "-v", "--set", f"confdir={confdir}")
    vault: Vault | None = None
    try:
        proxy.start()
        vault = Vault.open(database_url, bytes.fromhex(key))
        yield Stack(backend, database_url, upstream, proxy, vault, PiiValues(), confdir)
    finally:
        proxy.stop()
        upstream.stop()
        if vault is not None:
            vault.close()


def person(pii: PiiValues) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    return {
        "email": pii(f"zoe.nunez.{tag}@example.org"),
        "name": pii(f"Zoë Ñúñez 🦄 {tag}"),
        "contacts": [
            {"type": "home", "phone": pii(f"+44 7700 9{secrets.randbelow(10**5):05d}")},
            {"type": "work", "phone": pii(f"+44 7700 9{secrets.randbelow(10**5):05d}"), "note": "after 6pm"},
        ],
        "plan": "pro",
        "tags": ["vip", "ünïcode ✓"],
    }


def same_digit_shape(token: str, value: str) -> bool:
    return len(token) == len(value) and [c.isdigit() for c in token] == [c.isdigit() for c in value] and all(
        t == v for t, v in zip(token, value, strict=True) if not v.isdigit())


def masked_phone(value: str) -> str:
    total = sum(c.isdigit() for c in value)
    seen, out = 0, []
    for c in value:
        if c.isdigit():
            seen += 1
            out.append(c if seen > total - 4 else "*")
        else:
            out.append(c)
    return "".join(out)


# -- JSON, query, header and cookie in one request -----------------------------------------------------------------


def test_json_query_header_cookie_are_tokenized_and_response_revealed(stack: Stack) -> None:
    pii = stack.pii
    doc = person(pii)
    ssn = pii(f"{secrets.randbelow(900) + 100}-{secrets.randbelow(90) + 10}-{secrets.randbelow(9000) + 1000}")
    ip = pii(f"203.0.113.{secrets.randbelow(250) + 1}")
    cookie_email = pii(f"cookie.{secrets.token_hex(3)}@example.net")
    mark = stack.upstream.count()
    resp = stack.post(f"/users?ssn={urllib.parse.quote(ssn)}&page=2", json=doc,
                      headers={"X-Forwarded-For": ip, "Cookie": f"email={cookie_email}; theme=dark"})
    got = stack.sent_last(mark)

    # What went upstream: every selected value is a token of its format, everything else as it was.
    sent = got.json()
    assert EMAIL_TOKEN.match(sent["email"]), sent
    assert OPAQUE_TOKEN.match(sent["name"]), sent
    phones = [c["phone"] for c in sent["contacts"]]
    for token, contact in zip(phones, doc["contacts"], strict=True):
        assert token != contact["phone"] and same_digit_shape(token, contact["phone"]), (token, contact)
    assert [c["type"] for c in sent["contacts"]] == ["home", "work"]
    assert sent["contacts"][1]["note"] == "after 6pm"
    assert sent["plan"] == "pro" and sent["tags"] == doc["tags"]
    assert got.query["page"] == ["2"]
    [ssn_token] = got.query["ssn"]
    [ip_token] = got.header_all("X-Forwarded-For")
    cookies = dict(kv.strip().split("=", 1) for kv in (got.header("Cookie") or "").split(";"))
    assert cookies["theme"] == "dark"
    for token in (ssn_token, ip_token, cookies["email"]):
        assert OPAQUE_TOKEN.match(token), token

    # The tokens are the vault's: each resolves to exactly what the client sent.
    tokens = [sent["email"], sent["name"], *phones, ssn_token, ip_token, cookies["email"]]
    originals = [doc["email"], doc["name"], *[c["phone"] for c in doc["contacts"]], ssn, ip, cookie_email]
    assert stack.resolve(tokens) == originals

    # The client's answer (the upstream echoes what it got): email revealed, phones masked, the rest as tokens.
    assert resp.status_code == 200, resp.text[:300]
    assert int(resp.headers["Content-Length"]) == len(resp.content)
    answer = resp.json()
    assert answer["email"] == doc["email"]
    assert [c["phone"] for c in answer["contacts"]] == [masked_phone(c["phone"]) for c in doc["contacts"]]
    assert answer["name"] == sent["name"]  # no response rule reveals it
    assert answer["tags"] == doc["tags"] and answer["contacts"][1]["note"] == "after 6pm"


def test_deterministic_email_gets_the_same_token(stack: Stack) -> None:
    doc = person(stack.pii)
    seen = []
    for _ in range(2):
        mark = stack.upstream.count()
        assert stack.post("/users", json=doc).status_code == 200
        seen.append(stack.sent_last(mark).json())
    assert seen[0]["email"] == seen[1]["email"], "deterministic: the same email, the same token"
    assert seen[0]["name"] != seen[1]["name"], "not deterministic: a fresh token each time"
    assert stack.resolve([seen[0]["name"], seen[1]["name"]]) == [doc["name"], doc["name"]]


def test_top_level_array(stack: Stack) -> None:
    pii = stack.pii
    tag = secrets.token_hex(3)
    people = [{"email": pii(f"a.{tag}@example.org"), "name": pii(f"Åsa Öberg {tag}")},
              {"email": pii(f"b.{tag}@example.org"), "name": pii(f"李小龍 {tag}"), "id": 7}]
    mark = stack.upstream.count()
    resp = stack.post("/import", json=people)
    assert resp.status_code == 200, resp.text[:300]
    sent = stack.sent_last(mark).json()
    assert isinstance(sent, list) and len(sent) == 2 and sent[1]["id"] == 7
    assert all(EMAIL_TOKEN.match(p["email"]) and OPAQUE_TOKEN.match(p["name"]) for p in sent), sent
    tokens = [v for p in sent for v in (p["email"], p["name"])]
    assert stack.resolve(tokens) == [v for p in people for v in (p["email"], p["name"])]


# -- forms ---------------------------------------------------------------------------------------------------------


def test_urlencoded_form(stack: Stack) -> None:
    pii = stack.pii
    card = pii(f"4000 05{secrets.randbelow(100):02d} {secrets.randbelow(10**4):04d} {secrets.randbelow(10**4):04d}")
    name = pii(f"Zoë Ñúñez {secrets.token_hex(3)}")
    mark = stack.upstream.count()
    resp = stack.post("/forms", data={"card_number": card, "full_name": name, "plan": "pro & more"})
    assert resp.status_code == 200, resp.text[:300]
    got = stack.sent_last(mark)
    assert (got.header("Content-Type") or "").startswith("application/x-www-form-urlencoded")
    form = urllib.parse.parse_qs(got.decoded.decode(), keep_blank_values=True)
    assert form["plan"] == ["pro & more"]
    [card_token], [name_token] = form["card_number"], form["full_name"]
    assert card_token[-4:] == card[-4:] and card_token != card and same_digit_shape(card_token, card)
    assert OPAQUE_TOKEN.match(name_token)
    assert stack.resolve([card_token, name_token]) == [card, name]


def test_multipart_form_with_a_file(stack: Stack) -> None:
    name = stack.pii(f"Zoë Ñúñez {secrets.token_hex(3)}")
    document = b"line one\r\nline two\nline three\x00\xff\xfe binary tail\r\n"
    mark = stack.upstream.count()
    resp = stack.post("/forms", files={"full_name": (None, name.encode()), "plan": (None, b"pro"),
                                       "cv": ("cv.txt", document, "application/octet-stream")})
    assert resp.status_code == 200, resp.text[:300]
    got = stack.sent_last(mark)
    parts = {
        _disposition_param(headers["content-disposition"], "name"): (headers, content)
        for headers, content in multipart_parts(got.header("Content-Type") or "", got.body)
    }
    assert set(parts) == {"full_name", "plan", "cv"}, parts
    # Every part must reach the app as it was sent (the file: name, type and every byte), but the tokenized field.
    cv_headers, cv_content = parts["cv"]
    problems = []
    token = parts["full_name"][1].decode()
    if not OPAQUE_TOKEN.match(token):
        problems.append(f"full_name is {token!r}, not exactly a token")
    if parts["plan"][1] != b"pro":
        problems.append(f"plan is {parts['plan'][1]!r}, not b'pro'")
    if _disposition_param(cv_headers["content-disposition"], "filename") != "cv.txt":
        problems.append(f"the file's name is lost: {cv_headers['content-disposition']!r}")
    if cv_headers.get("content-type") != "application/octet-stream":
        problems.append(f"the file's type changed to {cv_headers.get('content-type')!r}")
    if cv_content != document:
        problems.append(f"the file's bytes changed: {cv_content!r} instead of {document!r}")
    assert not problems, problems
    assert stack.resolve([token]) == [name]


def _disposition_param(value: str, name: str) -> str | None:
    for piece in value.split(";")[1:]:
        key, _, val = piece.strip().partition("=")
        if key == name:
            return val.strip('"')
    return None


# -- compressed bodies -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_compressed_request_and_response(stack: Stack, encoding: str) -> None:
    doc = person(stack.pii)
    raw = json.dumps(doc).encode()
    mark = stack.upstream.count()
    resp = stack.post("/users", data=encode_body(raw, encoding),
                      headers={"Content-Type": "application/json", "Content-Encoding": encoding,
                               "X-Test-Response-Encoding": encoding})
    got = stack.sent_last(mark)  # also: no value in the decompressed body, Content-Length = body received
    assert got.header("Content-Encoding") == encoding, got.headers
    sent = got.json()  # decompressed with `encoding`: the body is still encoded as it says
    assert EMAIL_TOKEN.match(sent["email"]) and OPAQUE_TOKEN.match(sent["name"]), sent
    assert stack.resolve([sent["email"], sent["name"]]) == [doc["email"], doc["name"]]
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers.get("Content-Encoding") == encoding
    answer = resp.json()  # requests decodes it
    assert answer["email"] == doc["email"] and answer["name"] == sent["name"]
    assert [c["phone"] for c in answer["contacts"]] == [masked_phone(c["phone"]) for c in doc["contacts"]]


def test_compressed_form(stack: Stack) -> None:
    name = stack.pii(f"Zoë Ñúñez {secrets.token_hex(3)}")
    raw = urllib.parse.urlencode({"full_name": name, "plan": "pro"}).encode()
    mark = stack.upstream.count()
    resp = stack.post("/forms", data=encode_body(raw, "gzip"),
                      headers={"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"})
    assert resp.status_code == 200, resp.text[:300]
    got = stack.sent_last(mark)
    assert got.header("Content-Encoding") == "gzip"
    form = urllib.parse.parse_qs(got.decoded.decode())
    assert form["plan"] == ["pro"] and stack.resolve(form["full_name"]) == [name]


def test_chunked_request_body(stack: Stack) -> None:
    """A body sent with Transfer-Encoding: chunked (a generator) is rewritten whole and framed right."""
    doc = person(stack.pii)
    raw = json.dumps(doc).encode()
    mark = stack.upstream.count()
    resp = stack.post("/users", data=(raw[i:i + 40] for i in range(0, len(raw), 40)),
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text[:300]
    sent = stack.sent_last(mark).json()
    assert stack.resolve([sent["email"], sent["name"]]) == [doc["email"], doc["name"]]
    assert resp.json()["email"] == doc["email"]


def test_keep_alive_sequence(stack: Stack) -> None:
    """Rewritten bodies of varied sizes over one client connection: a wrong length would garble the next request."""
    docs = [person(stack.pii) for _ in range(4)]
    docs[1]["contacts"] = []
    docs[2]["name"] = stack.pii("N" * 300 + secrets.token_hex(3))
    mark = stack.upstream.count()
    with requests.Session() as session:
        for i, doc in enumerate(docs):
            encoding = ["", "gzip", "", "br"][i]
            headers = {"Content-Type": "application/json"} | ({"Content-Encoding": encoding} if encoding else {})
            resp = session.post(stack.proxy.url + f"/users?n={i}", data=encode_body(json.dumps(doc).encode(), encoding),
                                headers=headers, timeout=30)
            assert resp.status_code == 200, resp.text[:300]
            assert resp.json()["email"] == doc["email"]
    got = stack.upstream.since(mark)
    assert [r.query["n"] for r in got] == [["0"], ["1"], ["2"], ["3"]]
    for record, doc in zip(got, docs, strict=True):
        assert_framing(record)
        sent = record.json()
        assert stack.resolve([sent["email"], sent["name"]]) == [doc["email"], doc["name"]]
    assert not leaks(b"".join(r.searchable() for r in got), stack.pii.sent)


# -- text bodies -----------------------------------------------------------------------------------------------------


def test_text_regex_rule(stack: Stack) -> None:
    ssns = [stack.pii(f"{secrets.randbelow(900) + 100}-{secrets.randbelow(90) + 10}-{secrets.randbelow(9000) + 1000}")
            for _ in range(2)]
    text = f"Ticket ✓: customer {ssns[0]} called; spouse {ssns[1]}. Ref 12-345."
    mark = stack.upstream.count()
    resp = stack.post("/notes", data=text.encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
    assert resp.status_code == 200, resp.text[:300]
    body = stack.sent_last(mark).decoded.decode()
    found = re.findall(r"tbk_[a-z2-7]{26}", body)
    assert len(found) == 2, body
    assert body == f"Ticket ✓: customer {found[0]} called; spouse {found[1]}. Ref 12-345."
    assert stack.resolve(found) == ssns


def test_detect_rule(stack: Stack) -> None:
    ip = stack.pii(f"198.51.100.{secrets.randbelow(250) + 1}")
    email = stack.pii(f"ops.{secrets.token_hex(3)}@example.net")
    text = f"login ok from {ip} by {email} at 12:00 (build 1.2.3)\n"
    mark = stack.upstream.count()
    resp = stack.post("/ingest", data=text.encode(), headers={"Content-Type": "text/plain"})
    assert resp.status_code == 200, resp.text[:300]
    body = stack.sent_last(mark).decoded.decode()
    assert body.startswith("login ok from ") and body.endswith(" at 12:00 (build 1.2.3)\n"), body
    middle = body.removeprefix("login ok from ").removesuffix(" at 12:00 (build 1.2.3)\n")
    ip_token, by, email_token = middle.split(" ")
    assert by == "by"
    assert stack.resolve([ip_token, email_token]) == [ip, email]


def test_any_tokens_response_rule(stack: Stack) -> None:
    doc = person(stack.pii)
    mark = stack.upstream.count()
    assert stack.post("/users", json=doc).status_code == 200
    sent = stack.sent_last(mark).json()
    digits_token = sent["contacts"][0]["phone"]
    text = f"mail {sent['email']} name {sent['name']} phone {digits_token} unknown {UNKNOWN_TOKEN} end"
    # The app answers with tokens it stored: recognisable ones are revealed; a digits token looks like data and
    # stays; an unknown token stays.
    stack.upstream.fixed["/reveal"] = Fixed(200, text.encode(), "text/plain; charset=utf-8")
    try:
        resp = stack.post("/reveal", data=b"show me", headers={"Content-Type": "text/plain; charset=utf-8"})
        assert resp.status_code == 200, resp.text[:300]
        assert resp.text == f"mail {doc['email']} name {doc['name']} phone {digits_token} unknown {UNKNOWN_TOKEN} end"
        assert int(resp.headers["Content-Length"]) == len(resp.content)
        # Tokens the client sends in itself are never revealed back (an echoing app is no detokenization oracle).
        mark = stack.upstream.count()
        resp = stack.post("/reveal", data=text.encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
        assert stack.sent_last(mark).decoded.decode() == text  # no request rule: the tokens go as they are
        assert resp.status_code == 200 and resp.text == text
    finally:
        del stack.upstream.fixed["/reveal"]


# -- HTTP/2 ----------------------------------------------------------------------------------------------------------


def test_http2_over_tls(stack: Stack) -> None:
    """curl (built with nghttp2) speaks HTTP/2 to the proxy over TLS, trusting the proxy's CA from confdir."""
    doc = person(stack.pii)
    ca = stack.confdir / "mitmproxy-ca-cert.pem"
    assert ca.exists(), "mitmproxy did not write its CA into confdir"
    mark = stack.upstream.count()
    done = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(ca), "-H", "Content-Type: application/json",
         "--data-binary", json.dumps(doc), "-w", "\n%{http_version} %{http_code}",
         f"https://127.0.0.1:{stack.proxy.port}/users"],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    assert status == "2 200", (status, body[:300], done.stderr)
    sent = stack.sent_last(mark).json()
    assert EMAIL_TOKEN.match(sent["email"]), sent
    assert stack.resolve([sent["email"]]) == [doc["email"]]
    answer = json.loads(body)
    assert answer["email"] == doc["email"] and answer["name"] == sent["name"]


# -- ttl -------------------------------------------------------------------------------------------------------------


def test_ttl_token_stops_resolving(stack: Stack) -> None:
    code = stack.pii(f"otp-{secrets.token_hex(4)}")
    mark = stack.upstream.count()
    assert stack.post("/otp", json={"code": code}).status_code == 200
    made = time.monotonic()  # the token exists by now
    token = stack.sent_last(mark).json()["code"]
    assert OPAQUE_TOKEN.match(token)
    assert stack.resolve([token]) == [code]
    time.sleep(max(0.0, 3.0 - (time.monotonic() - made)))
    assert stack.resolve([token]) == [None], "a ttl: 2s token still resolves after 3 s"


# -- what the proxy and the upstream saw, over the whole module ---------------------------------------------------


def test_upstream_never_saw_a_value(stack: Stack) -> None:
    assert not leaks(stack.upstream.recorded_bytes(), stack.pii.sent)


def test_proxy_log_holds_no_personal_value(stack: Stack) -> None:
    log = stack.proxy.log()
    assert "client connect" in log, "with -v the proxy logs its connections; nothing was checked"
    assert not leaks(log.encode(), stack.pii.sent), leaks(log.encode(), stack.pii.sent)


def test_proxy_log_holds_no_client_address(stack: Stack) -> None:
    # One request from a socket whose source port is known, so its address is recognisable in the log.
    with socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=10) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(b"GET /health-of-nothing HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass
    time.sleep(0.3)
    log = stack.proxy.log()
    assert f"127.0.0.1:{client_port}" not in log, [
        line for line in log.splitlines() if f"127.0.0.1:{client_port}" in line][:3]
    connects = [line for line in log.splitlines() if "client connect" in line or "client disconnect" in line]
    assert connects
    assert not client_addresses("\n".join(connects), [stack.proxy.port, stack.upstream.port]), connects[:3]
