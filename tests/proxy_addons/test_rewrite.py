"""Every selector, action and token format, driven through the addon's hooks against a real vault."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http

from tests.proxy_addons.conftest import (
    MakeProxy,
    Proxy,
    body,
    error_of,
    json_flow,
    make_flow,
    set_json_response,
    set_response,
)
from vault.formats import luhn_valid
from vault.identity import mask
from vault.tokens import TokenRequest

OPAQUE = re.compile(r"tbk_[a-z2-7]{26}")
EMAIL_TOKEN = re.compile(r"tbk_[a-z2-7]{20}@token\.invalid")
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
UNKNOWN = "tbk_" + "a" * 26
APP = "http://app.internal"

RULES = r"""
version: 1
routes:
  - name: json-nested
    match: {path: "/json/nested"}
    request:
      - {json: "$.user.email", action: tokenize, kind: email, format: email}
      - {json: "$.user.name", action: tokenize, kind: name}
      - {json: "$.user.ssn", action: redact}
      - {json: "$.user.note", action: redact, placeholder: "<gone>"}
      - {json: "$.user.secret", action: drop}
  - name: json-array
    match: {path: "/json/array"}
    request:
      - {json: "$.contacts[*].phone", action: tokenize, kind: phone, format: digits}
  - name: json-top
    match: {path: "/json/top"}
    request:
      - {json: "$[*].email", action: tokenize, kind: email, format: uuid}
  - name: json-recursive
    match: {path: "/json/recursive"}
    request:
      - {json: "$..email", action: tokenize, kind: email, format: email, deterministic: true}
      - {json: "$..card", action: tokenize, kind: card, format: keep-last4}
      - {json: "$..password", action: drop}
  - name: form
    match: {path: "/form"}
    request:
      - {form: card_number, action: tokenize, kind: card, format: keep-last4}
      - {form: email, action: tokenize, kind: email, format: email}
      - {form: address, action: tokenize, kind: address}
      - {form: ssn, action: redact}
      - {form: password, action: drop}
  - name: query
    match: {path: "/query"}
    request:
      - {query: ssn, action: tokenize, kind: ssn}
      - {query: email, action: redact, placeholder: "x"}
      - {query: debug, action: drop}
  - name: headers
    match: {path: "/headers"}
    request:
      - {header: X-Forwarded-For, action: tokenize, kind: ip, deterministic: true, ttl: 30d}
      - {header: X-Email, action: redact}
      - {header: X-Debug, action: drop}
    response:
      - {header: X-Owner, action: detokenize}
      - {header: X-Owner-Phone, action: detokenize, reveal: masked}
  - name: cookies
    match: {path: "/cookies"}
    request:
      - {cookie: email, action: tokenize, kind: email, format: email}
      - {cookie: tracking, action: drop}
      - {cookie: ssn, action: redact}
    response:
      - {cookie: email, action: detokenize}
      - {cookie: ssn, action: redact, placeholder: hidden}
      - {cookie: tracking, action: drop}
  - name: text
    match: {path: "/text"}
    request:
      - {text: "\\b\\d{3}-\\d{2}-\\d{4}\\b", action: tokenize, kind: ssn}
      - {text: "user=(\\S+)", action: tokenize, kind: login}
      - {text: "pin=(\\d+)", action: redact}
      - {text: "secret: *\\S+ ", action: drop}
  - name: detect
    match: {path: "/detect"}
    request:
      - {detect: [email, ipv4, ipv6], action: tokenize}
      - {detect: [card], action: tokenize, format: keep-last4}
      - {detect: [phone], action: redact}
  - name: detect-after-json
    match: {path: "/detect-after-json"}
    request:
      - {json: "$.email", action: tokenize, kind: email, format: email}
      - {json: "$.card", action: tokenize, kind: card, format: keep-last4}
      - {detect: [email, card], action: tokenize}
  - name: echo
    match: {path: "/echo"}
    response:
      - {json: "$.email", action: detokenize}
      - {json: "$.phone", action: detokenize, reveal: masked}
      - {json: "$.number", action: detokenize}
      - {json: "$.card", action: detokenize, reveal: masked}
  - name: echo-pass
    match: {path: "/echo-pass"}
    on_error: pass
    response:
      - {json: "$.email", action: detokenize}
  - name: any
    match: {path: "/any"}
    response:
      - {any: tokens, action: detokenize}
  - name: any-masked
    match: {path: "/any-masked"}
    response:
      - {any: tokens, action: detokenize, reveal: masked}
  - name: formats
    match: {path: "/formats"}
    request:
      - {json: "$.opaque", action: tokenize}
      - {json: "$.uuid", action: tokenize, format: uuid}
      - {json: "$.email", action: tokenize, kind: email, format: email}
      - {json: "$.digits", action: tokenize, kind: phone, format: digits}
      - {json: "$.digits_text", action: tokenize, kind: phone, format: digits}
      - {json: "$.card", action: tokenize, kind: card, format: keep-last4}
      - {json: "$.card_number", action: tokenize, kind: card, format: keep-last4}
      - {json: "$.det", action: tokenize, kind: login, deterministic: true}
      - {json: "$.random", action: tokenize, kind: login}
      - {json: "$.ttl", action: tokenize, kind: ip, ttl: 12h}
  - name: scoped
    match: {hosts: ["app.internal", "*.example.com"], path: "/scoped/*", methods: [POST]}
    request:
      - {json: "$.email", action: redact}
      - {header: X-Email, action: redact}
"""


@pytest.fixture
def proxy(make_proxy: MakeProxy) -> Proxy:
    return make_proxy(RULES)


def reveal(proxy: Proxy, *tokens: str) -> list[str | None]:
    return proxy.vault.detokenize(list(tokens))


def assert_length_right(message: http.Message) -> None:
    assert message.headers["content-length"] == str(len(message.raw_content or b""))


# -- json -------------------------------------------------------------------------------------------------------


def test_json_nested_fields_every_action(proxy: Proxy) -> None:
    doc = {"user": {"email": "jo@example.com", "name": "Jo Bloggs", "ssn": "123-45-6789", "note": "private",
                    "secret": "hunter2", "id": 7}, "other": "kept@example.com"}
    flow = proxy.request(json_flow(f"{APP}/json/nested", doc))
    assert flow.response is None
    out = body(flow.request)
    user = out["user"]
    assert EMAIL_TOKEN.fullmatch(user["email"]) and OPAQUE.fullmatch(user["name"])
    assert user["ssn"] == "[redacted]" and user["note"] == "<gone>" and "secret" not in user and user["id"] == 7
    assert out["other"] == "kept@example.com"  # not selected
    assert reveal(proxy, user["email"], user["name"]) == ["jo@example.com", "Jo Bloggs"]
    assert_length_right(flow.request)
    assert flow.metadata["tokenbunker"] == {
        "route": "json-nested", "request": {"tokenized": 2, "revealed": 0, "redacted": 2, "dropped": 1}}


def test_json_array_digits_keep_layout_and_numbers_stay_numbers(proxy: Proxy) -> None:
    doc = {"contacts": [{"phone": "07700 900123"}, {"phone": 4155552671}, {"name": "no phone"}, {"phone": None}]}
    flow = proxy.request(json_flow(f"{APP}/json/array", doc))
    contacts = body(flow.request)["contacts"]
    text_token, number_token = contacts[0]["phone"], contacts[1]["phone"]
    assert isinstance(text_token, str) and re.fullmatch(r"\d{5} \d{6}", text_token) and text_token != "07700 900123"
    assert isinstance(number_token, int) and not isinstance(number_token, bool)
    assert len(str(number_token)) == 10 and number_token != 4155552671
    assert contacts[2] == {"name": "no phone"} and contacts[3] == {"phone": None}
    assert reveal(proxy, text_token, str(number_token)) == ["07700 900123", "4155552671"]


def test_json_top_level_array_uuid_format(proxy: Proxy) -> None:
    flow = proxy.request(json_flow(f"{APP}/json/top", [{"email": "a@example.com"}, {"email": "b@example.com"}, 3]))
    out = body(flow.request)
    assert UUID4.fullmatch(out[0]["email"]) and UUID4.fullmatch(out[1]["email"]) and out[2] == 3
    assert uuid.UUID(out[0]["email"]).version == 4
    assert reveal(proxy, out[0]["email"], out[1]["email"]) == ["a@example.com", "b@example.com"]


def test_json_recursive_descent_deterministic_keep_last4_and_drop(proxy: Proxy) -> None:
    doc = {"email": "a@example.com", "password": "pw1",
           "friends": [{"email": "b@example.com", "profile": {"email": "a@example.com", "password": "pw2"}}],
           "billing": {"card": "4111 1111 1111 1111"}}
    flow = proxy.request(json_flow(f"{APP}/json/recursive", doc))
    out = body(flow.request)
    top, friend, nested = out["email"], out["friends"][0]["email"], out["friends"][0]["profile"]["email"]
    assert all(EMAIL_TOKEN.fullmatch(t) for t in (top, friend, nested))
    assert top == nested != friend  # deterministic: the same value, the same token
    card = out["billing"]["card"]
    assert re.fullmatch(r"\d{4} \d{4} \d{4} 1111", card) and card != doc["billing"]["card"] and luhn_valid(card)
    assert "password" not in out and "password" not in out["friends"][0]["profile"]
    assert reveal(proxy, top, friend, card) == ["a@example.com", "b@example.com", "4111 1111 1111 1111"]
    assert b"pw1" not in flow.request.raw_content and b"pw2" not in flow.request.raw_content


def test_json_selector_matching_nothing_leaves_the_body_alone(proxy: Proxy) -> None:
    raw = b'{ "unrelated" : "jo@example.com" }'
    flow = proxy.request(make_flow("POST", f"{APP}/json/nested", raw, {"Content-Type": "application/json"}))
    assert flow.response is None and flow.request.raw_content == raw


# -- form, multipart, query, header, cookie --------------------------------------------------------------------------


def test_form_urlencoded_fields(proxy: Proxy) -> None:
    raw = "card_number=4111111111111111&email=jo%40example.com&ssn=123-45-6789&password=pw&keep=yes"
    flow = proxy.request(make_flow("POST", f"{APP}/form", raw,
                                   {"Content-Type": "application/x-www-form-urlencoded"}))
    assert flow.response is None
    form = flow.request.urlencoded_form
    card, email = form["card_number"], form["email"]
    assert re.fullmatch(r"\d{12}1111", card) and card != "4111111111111111" and luhn_valid(card)
    assert EMAIL_TOKEN.fullmatch(email)
    assert form["ssn"] == "[redacted]" and "password" not in form and form["keep"] == "yes"
    assert flow.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert_length_right(flow.request)
    assert reveal(proxy, card, email) == ["4111111111111111", "jo@example.com"]


def _multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"tbBOUNDARY") -> bytes:
    out = b""
    for head, value in parts:
        out += b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def test_multipart_fields(proxy: Proxy) -> None:
    raw = _multipart([
        (b'Content-Disposition: form-data; name="email"', b"jo@example.com"),
        (b'Content-Disposition: form-data; name="ssn"', b"123-45-6789"),
        (b'Content-Disposition: form-data; name="comment"', b"hello"),
    ])
    flow = proxy.request(make_flow("POST", f"{APP}/form", raw,
                                   {"Content-Type": "multipart/form-data; boundary=tbBOUNDARY"}))
    assert flow.response is None
    form = flow.request.multipart_form
    [email] = form.get_all(b"email")
    assert EMAIL_TOKEN.fullmatch(email.decode()) and form.get_all(b"ssn") == [b"[redacted]"]
    assert form.get_all(b"comment") == [b"hello"]
    assert b"jo@example.com" not in flow.request.raw_content and b"123-45-6789" not in flow.request.raw_content
    assert_length_right(flow.request)
    assert reveal(proxy, email.decode()) == ["jo@example.com"]


def test_multipart_other_parts_survive_byte_for_byte(proxy: Proxy) -> None:
    """Rewriting one field must not corrupt the others: a file part keeps its filename, its Content-Type and its
    bytes (line breaks included), and a multi-line field keeps its line breaks."""
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01\r\n\x02"
    file_part = (b'Content-Disposition: form-data; name="avatar"; filename="me.png"\r\nContent-Type: image/png', png)
    text_part = (b'Content-Disposition: form-data; name="bio"', b"line one\r\nline two")
    raw = _multipart([(b'Content-Disposition: form-data; name="email"', b"jo@example.com"), file_part, text_part])
    flow = proxy.request(make_flow("POST", f"{APP}/form", raw,
                                   {"Content-Type": "multipart/form-data; boundary=tbBOUNDARY"}))
    assert flow.response is None
    content = flow.request.raw_content or b""
    assert b"jo@example.com" not in content
    assert _multipart([file_part])[:-len(b"--tbBOUNDARY--\r\n")] in content, "the file part was altered"
    assert _multipart([text_part])[:-len(b"--tbBOUNDARY--\r\n")] in content, "the multi-line field was altered"


def test_multipart_multiline_value_tokenized_exactly(proxy: Proxy) -> None:
    address = "1 High Street\r\nLondon\r\nSW1A 1AA"
    raw = _multipart([(b'Content-Disposition: form-data; name="address"', address.encode())])
    flow = proxy.request(make_flow("POST", f"{APP}/form", raw,
                                   {"Content-Type": "multipart/form-data; boundary=tbBOUNDARY"}))
    assert flow.response is None
    [token] = flow.request.multipart_form.get_all(b"address")
    assert OPAQUE.fullmatch(token.decode())
    assert reveal(proxy, token.decode()) == [address]


def test_query_parameters(proxy: Proxy) -> None:
    url = f"{APP}/query?ssn=123-45-6789&page=2&ssn=987-65-4321&email=jo%40example.com&debug=1"
    flow = proxy.request(make_flow("GET", url))
    assert flow.response is None
    query = flow.request.query
    first, second = query.get_all("ssn")
    assert OPAQUE.fullmatch(first) and OPAQUE.fullmatch(second) and first != second
    assert query["email"] == "x" and "debug" not in query and query["page"] == "2"
    assert "123-45-6789" not in flow.request.url and "jo%40example.com" not in flow.request.url
    assert reveal(proxy, first, second) == ["123-45-6789", "987-65-4321"]
    assert flow.request.path.startswith("/query?")


def test_headers_multi_valued_deterministic_with_ttl(proxy: Proxy) -> None:
    headers = http.Headers([(b"X-Forwarded-For", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2"),
                            (b"X-Email", b"jo@example.com"), (b"X-Debug", b"1"), (b"X-Debug", b"2"),
                            (b"Accept", b"*/*")])
    flow = proxy.request(make_flow("GET", f"{APP}/headers", b"", headers))
    assert flow.response is None
    first, second = flow.request.headers.get_all("X-Forwarded-For")
    assert OPAQUE.fullmatch(first) and OPAQUE.fullmatch(second) and first != second
    assert flow.request.headers.get_all("X-Email") == ["[redacted]"]
    assert "X-Debug" not in flow.request.headers and flow.request.headers["Accept"] == "*/*"
    assert reveal(proxy, first, second) == ["10.0.0.1", "10.0.0.2"]
    info = proxy.vault.token_info(first)
    assert info.kind == "ip" and info.expires is not None and info.expires - info.created == 30 * 86400
    again = proxy.request(make_flow("GET", f"{APP}/headers", b"", {"X-Forwarded-For": "10.0.0.1"}))
    assert again.request.headers["X-Forwarded-For"] == first


def test_response_headers_detokenize_plain_and_masked(proxy: Proxy) -> None:
    email, phone = proxy.vault.tokenize([TokenRequest("jo@example.com", kind="email"),
                                         TokenRequest("+44 7700 900123", kind="phone")])
    flow = proxy.request(make_flow("GET", f"{APP}/headers"))
    set_response(flow, b"", {"X-Owner": email, "X-Owner-Phone": phone, "X-Other": email})
    proxy.response(flow)
    assert flow.response is not None and flow.response.status_code == 200
    assert flow.response.headers["X-Owner"] == "jo@example.com"
    assert flow.response.headers["X-Owner-Phone"] == mask("phone", "+44 7700 900123")
    assert flow.response.headers["X-Other"] == email  # not selected
    assert flow.metadata["tokenbunker"]["response"]["revealed"] == 2


def test_request_cookies(proxy: Proxy) -> None:
    flow = proxy.request(make_flow("GET", f"{APP}/cookies", b"",
                                   {"Cookie": "email=jo@example.com; tracking=abc; ssn=123-45-6789; session=s1"}))
    assert flow.response is None
    cookies = flow.request.cookies
    assert EMAIL_TOKEN.fullmatch(cookies["email"]) and "tracking" not in cookies
    assert cookies["ssn"] == "[redacted]" and cookies["session"] == "s1"
    assert "jo@example.com" not in flow.request.headers["cookie"]
    assert reveal(proxy, cookies["email"]) == ["jo@example.com"]


def test_response_set_cookie_keeps_attributes(proxy: Proxy) -> None:
    [token] = proxy.vault.tokenize([TokenRequest("jo@example.com", kind="email", format="email")])
    flow = proxy.request(make_flow("GET", f"{APP}/cookies"))
    flow.response = http.Response.make(200, b"", http.Headers([
        (b"Set-Cookie", f"email={token}; Path=/; HttpOnly; Max-Age=3600".encode()),
        (b"Set-Cookie", b"ssn=123-45-6789; Secure; SameSite=Strict"),
        (b"Set-Cookie", b"tracking=t1; Path=/"),
        (b"Set-Cookie", b"session=s1; Path=/app"),
    ]))
    proxy.response(flow)
    assert flow.response.status_code == 200
    jar = flow.response.cookies
    [(email, email_attrs)] = jar.get_all("email")
    assert email == "jo@example.com"
    assert email_attrs.get("Path") == "/" and "HttpOnly" in email_attrs and email_attrs.get("Max-Age") == "3600"
    [(ssn, ssn_attrs)] = jar.get_all("ssn")
    assert ssn == "hidden" and "Secure" in ssn_attrs and ssn_attrs.get("SameSite") == "Strict"
    assert "tracking" not in jar
    [(session, session_attrs)] = jar.get_all("session")
    assert session == "s1" and session_attrs.get("Path") == "/app"
    assert len(flow.response.headers.get_all("Set-Cookie")) == 3


# -- text, detect, any: tokens ------------------------------------------------------------------------------------


def test_text_regex_with_and_without_group(proxy: Proxy) -> None:
    text = "ssn 123-45-6789 then user=jdoe pin=1234 secret: hunter2 end"
    flow = proxy.request(make_flow("POST", f"{APP}/text", text, {"Content-Type": "text/plain"}))
    assert flow.response is None
    out = flow.request.get_text()
    m = re.fullmatch(r"ssn (\S+) then user=(\S+) pin=\[redacted\] end", out or "")
    assert m is not None, out
    assert OPAQUE.fullmatch(m[1]) and OPAQUE.fullmatch(m[2])
    assert reveal(proxy, m[1], m[2]) == ["123-45-6789", "jdoe"]
    assert proxy.vault.token_info(m[1]).kind == "ssn" and proxy.vault.token_info(m[2]).kind == "login"
    assert_length_right(flow.request)
    assert flow.metadata["tokenbunker"]["request"] == {"tokenized": 2, "revealed": 0, "redacted": 1, "dropped": 1}


def test_detect_over_a_text_body_uses_the_detectors_kinds(proxy: Proxy) -> None:
    text = "mail jo@example.com from 10.1.2.3 and 2001:db8::1, card 4111 1111 1111 1111, call +44 7700 900123."
    flow = proxy.request(make_flow("POST", f"{APP}/detect", text, {"Content-Type": "text/plain; charset=utf-8"}))
    assert flow.response is None
    out = flow.request.get_text() or ""
    m = re.fullmatch(r"mail (\S+) from (\S+) and (\S+), card (\d{4} \d{4} \d{4} 1111), call \[redacted\]\.", out)
    assert m is not None, out
    assert [proxy.vault.token_info(m[i]).kind for i in (1, 2, 3, 4)] == ["email", "ip", "ip", "card"]
    assert reveal(proxy, m[1], m[2], m[3], m[4]) == ["jo@example.com", "10.1.2.3", "2001:db8::1",
                                                     "4111 1111 1111 1111"]


def test_detect_over_json_strings_and_form_fields(proxy: Proxy) -> None:
    doc = {"msg": "from jo@example.com", "n": 5, "nested": [{"ip": "10.1.2.3"}], "jo@example.com": "key kept"}
    flow = proxy.request(json_flow(f"{APP}/detect", doc))
    out = body(flow.request)
    assert out["n"] == 5 and out["jo@example.com"] == "key kept"  # keys are not values
    assert re.fullmatch(r"from \S+", out["msg"]) and "jo@example.com" not in out["msg"]
    assert reveal(proxy, out["msg"][5:], out["nested"][0]["ip"]) == ["jo@example.com", "10.1.2.3"]

    form = proxy.request(make_flow("POST", f"{APP}/detect", "comment=mail+jo%40example.com+now&n=1",
                                   {"Content-Type": "application/x-www-form-urlencoded"}))
    fields = form.request.urlencoded_form
    assert fields["n"] == "1" and re.fullmatch(r"mail \S+ now", fields["comment"])
    assert reveal(proxy, fields["comment"].split()[1]) == ["jo@example.com"]


def test_detect_does_not_tokenize_tokens_made_by_structured_rules(proxy: Proxy) -> None:
    """Text-like rules run over "what is left": a field a json rule has just tokenized must keep a token that
    reveals the original value, not a token of that token."""
    doc = {"email": "jo@example.com", "card": "4111111111111111", "note": "cc kim@example.com"}
    flow = proxy.request(json_flow(f"{APP}/detect-after-json", doc))
    out = body(flow.request)
    assert "kim@example.com" not in out["note"]
    assert reveal(proxy, out["email"], out["card"]) == ["jo@example.com", "4111111111111111"]


def test_detokenize_json_plain_masked_and_numbers(proxy: Proxy) -> None:
    email, phone, number, card = proxy.vault.tokenize([
        TokenRequest("jo@example.com", kind="email", format="email"),
        TokenRequest("+44 7700 900123", kind="phone"),
        TokenRequest("4155552671", kind="phone", format="digits"),
        TokenRequest("4111111111111111", kind="card", format="keep-last4"),
    ])
    flow = proxy.request(make_flow("GET", f"{APP}/echo"))
    set_json_response(flow, {"email": email, "phone": phone, "number": int(number), "card": card, "other": email})
    proxy.response(flow)
    assert flow.response is not None and flow.response.status_code == 200
    out = body(flow.response)
    assert out["email"] == "jo@example.com" and out["phone"] == mask("phone", "+44 7700 900123")
    assert out["number"] == 4155552671  # a number stays a number
    assert out["card"] == mask("card", "4111111111111111") and out["card"].endswith("1111")
    assert out["other"] == email
    assert_length_right(flow.response)


def test_detokenize_unknown_token_in_a_named_field_blocks(proxy: Proxy) -> None:
    flow = proxy.request(make_flow("GET", f"{APP}/echo"))
    set_json_response(flow, {"email": UNKNOWN})
    proxy.response(flow)
    status, answer = error_of(flow)
    assert status == 502 and answer["route"] == "echo" and "no known token" in answer["message"]
    assert UNKNOWN not in json.dumps(answer)


def test_detokenize_unknown_token_with_on_error_pass_is_left_unchanged(proxy: Proxy) -> None:
    flow = proxy.request(make_flow("GET", f"{APP}/echo-pass"))
    raw = json.dumps({"email": UNKNOWN, "n": 1})
    set_response(flow, raw, {"Content-Type": "application/json"})
    proxy.response(flow)
    assert flow.response is not None and flow.response.status_code == 200 and flow.response.text == raw


def test_any_tokens_reveals_recognisable_tokens_and_leaves_others(proxy: Proxy) -> None:
    opaque, email, uid, digits = proxy.vault.tokenize([
        TokenRequest("Jo Bloggs", kind="name"),
        TokenRequest("jo@example.com", kind="email", format="email"),
        TokenRequest("10.1.2.3", kind="ip", format="uuid"),
        TokenRequest("4155552671", kind="phone", format="digits"),
    ])
    html = f"<p>Hi <b>{opaque}</b>, mail {email}, ip {uid}; phone {digits}; stale {UNKNOWN}.</p>"
    flow = proxy.request(make_flow("GET", f"{APP}/any"))
    set_response(flow, html, {"Content-Type": "text/html; charset=utf-8"})
    proxy.response(flow)
    assert flow.response is not None and flow.response.status_code == 200
    assert flow.response.text == (f"<p>Hi <b>Jo Bloggs</b>, mail jo@example.com, ip 10.1.2.3; phone {digits}; "
                                  f"stale {UNKNOWN}.</p>")
    assert_length_right(flow.response)

    flow = proxy.request(make_flow("GET", f"{APP}/any"))
    set_json_response(flow, {"a": opaque, "list": [f"to: {email}", UNKNOWN], "n": 4})
    proxy.response(flow)
    assert body(flow.response) == {"a": "Jo Bloggs", "list": ["to: jo@example.com", UNKNOWN], "n": 4}


def test_any_tokens_masked(proxy: Proxy) -> None:
    [email] = proxy.vault.tokenize([TokenRequest("jo@example.com", kind="email", format="email")])
    flow = proxy.request(make_flow("GET", f"{APP}/any-masked"))
    set_response(flow, f"contact: {email}", {"Content-Type": "text/plain"})
    proxy.response(flow)
    assert flow.response is not None and flow.response.text == f"contact: {mask('email', 'jo@example.com')}"


# -- formats, determinism, ttl ----------------------------------------------------------------------------------------


def test_every_format(proxy: Proxy) -> None:
    doc = {"opaque": "Jo Bloggs", "uuid": "jo-bloggs-1", "email": "jo@example.com", "digits": 4155552671,
           "digits_text": "0415-555-2671", "card": 4111111111111111, "card_number": "5500-0000-0000-0004"}
    flow = proxy.request(json_flow(f"{APP}/formats", doc))
    assert flow.response is None
    out = body(flow.request)
    assert OPAQUE.fullmatch(out["opaque"]) and UUID4.fullmatch(out["uuid"]) and EMAIL_TOKEN.fullmatch(out["email"])
    assert isinstance(out["digits"], int) and len(str(out["digits"])) == 10 and out["digits"] != doc["digits"]
    assert re.fullmatch(r"\d{4}-\d{3}-\d{4}", out["digits_text"]) and out["digits_text"] != doc["digits_text"]
    assert isinstance(out["card"], int) and str(out["card"]).endswith("1111") and len(str(out["card"])) == 16
    assert luhn_valid(str(out["card"])) and out["card"] != doc["card"]
    assert re.fullmatch(r"\d{4}-\d{4}-\d{4}-0004", out["card_number"]) and luhn_valid(out["card_number"])
    tokens = [out[k] if isinstance(out[k], str) else str(out[k]) for k in doc]
    assert reveal(proxy, *tokens) == [v if isinstance(v, str) else str(v) for v in doc.values()]
    assert [proxy.vault.token_info(t).format for t in tokens] == [
        "opaque", "uuid", "email", "digits", "digits", "keep-last4", "keep-last4"]


def test_deterministic_and_random_tokens(proxy: Proxy) -> None:
    first = body(proxy.request(json_flow(f"{APP}/formats", {"det": "jdoe", "random": "jdoe"})).request)
    second = body(proxy.request(json_flow(f"{APP}/formats", {"det": "jdoe", "random": "jdoe"})).request)
    assert first["det"] == second["det"]
    assert first["random"] != second["random"] and first["random"] != first["det"]


def test_ttl_sets_the_expiry(proxy: Proxy) -> None:
    out = body(proxy.request(json_flow(f"{APP}/formats", {"ttl": "10.1.2.3", "opaque": "x"})).request)
    info = proxy.vault.token_info(out["ttl"])
    assert info.expires is not None and info.expires - info.created == 12 * 3600
    assert proxy.vault.token_info(out["opaque"]).expires is None


# -- routing ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "url"), [
    ("POST", "http://other.internal/scoped/x"),     # host
    ("GET", "http://app.internal/scoped/x"),        # method
    ("POST", "http://app.internal/unscoped/x"),     # path
    ("POST", "http://app.internal/scopedx"),        # glob is not a prefix
])
def test_routes_not_matching_leave_the_flow_alone(proxy: Proxy, method: str, url: str) -> None:
    raw = json.dumps({"email": "jo@example.com"})
    flow = proxy.request(make_flow(method, url, raw, {"Content-Type": "application/json", "X-Email": "jo@x.io"}))
    assert flow.response is None and flow.request.text == raw and flow.request.headers["X-Email"] == "jo@x.io"
    assert "tokenbunker" not in flow.metadata
    set_json_response(flow, {"email": UNKNOWN})
    proxy.response(flow)
    assert body(flow.response) == {"email": UNKNOWN}


@pytest.mark.parametrize("url", ["http://app.internal/scoped/x", "http://api.example.com/scoped/y?q=1"])
def test_routes_matching_by_host_glob(proxy: Proxy, url: str) -> None:
    flow = proxy.request(json_flow(url, {"email": "jo@example.com"}))
    assert body(flow.request) == {"email": "[redacted]"}
    assert flow.metadata["tokenbunker"]["route"] == "scoped"


# -- plain JSONPaths ($.a.b) are found and written without jsonpath_ng: the same answers as jsonpath_ng --------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(doc=_json_values, path=st.lists(st.sampled_from(["a", "b", "c", "*"]), min_size=1, max_size=3))
def test_plain_paths_find_and_write_what_jsonpath_ng_does(doc: object, path: list[str]) -> None:
    import copy

    from jsonpath_ng.ext import parse

    from proxy_addons.rewrite import WILD, _plain_find, _plain_keys
    from rules.model import JsonSelector

    text = "$" + "".join("[*]" if p == "*" else "." + p for p in path)
    selector = JsonSelector(text, parse(text))
    keys = _plain_keys(selector)
    assert keys == tuple(WILD if p == "*" else p for p in path)
    expected = [m.value for m in selector.expr.find(doc)]
    found = list(_plain_find(keys, doc))
    assert [value for value, _parent, _key in found] == expected
    if found:
        theirs = copy.deepcopy(doc)
        for match in selector.expr.find(theirs):
            theirs = match.full_path.update(theirs, "tok")
        for _value, parent, key in found:
            parent[key] = "tok"
        assert doc == theirs


def test_paths_that_are_not_plain_keep_jsonpath_ng() -> None:
    from jsonpath_ng.ext import parse

    from proxy_addons.rewrite import _plain_keys
    from rules.model import JsonSelector

    for text in ("$", "$..email", "$.a[0]", "$.a,b", "$[?(@.x == 1)]", "$.a[1:2]"):
        assert _plain_keys(JsonSelector(text, parse(text))) is None, text
