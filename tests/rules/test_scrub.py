"""The log scrubber's engine (rules/scrub.py): every log selector and action over whole lines, with the real vault.

Contract: shared/contracts/rules.md (logs), the issue's scrubber requirements. One line out for each line in, in order;
deterministic tokens are the same within their ttl and stop resolving after it; a value seen before costs no vault
round trip, new values go to the vault in one call per batch.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.compiler import compile_text
from rules.model import Rule
from rules.scrub import COMBINED_FIELDS, LogScrubber, TokenCache, truncate_ip
from vault.core import Vault
from vault.tokens import TokenRequest

TOKEN = re.compile(r"tbk_[a-z2-7]{26}")

# One value of each detector (IPv6 in its written forms), and the kind the vault must record for it.
SAMPLES: dict[str, tuple[str, str]] = {
    "ipv4": ("203.0.113.7", "ip"),
    "ipv6-full": ("2001:0db8:0000:0000:0000:ff00:0042:8329", "ip"),
    "ipv6-compressed": ("2001:db8:85a3::8a2e:370:7334", "ip"),
    "ipv6-loopback": ("::1", "ip"),
    "ipv6-zone": ("fe80::1ff:fe23:4567:890a%eth0", "ip"),
    "ipv6-mapped": ("::ffff:192.0.2.1", "ip"),
    "ipv6-upper": ("2001:DB8:AC10::FE01", "ip"),
    "email": ("jo.smith+logs@example.com", "email"),
    "phone": ("+44 20 7946 0958", "phone"),
    "card": ("4111 1111 1111 1111", "card"),
}
ALL_DETECTORS = "[ipv4, ipv6, email, phone, card]"

COMBINED_LINE = ('203.0.113.9 - bob [10/Oct/2000:13:55:36 -0700] "GET /a.gif?from=198.51.100.4 HTTP/1.0" 200 2326 '
                 '"http://ref.example/" "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0.0.0 jo@example.com"')


def log_rules(*items: str) -> list[Rule]:
    """Compile `logs:` items written as YAML flow mappings."""
    text = "version: 1\nlogs:\n" + "".join(f"  - {item}\n" for item in items)
    routes, logs = compile_text(text, "test.yaml")
    assert not routes and len(logs) == len(items)
    return logs


class Recorder:
    """Wraps vault.tokenize: counts the calls and keeps every batch it was given."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.batches: list[list[TokenRequest]] = []

    def __call__(self, reqs: Sequence[TokenRequest]) -> list[tuple[str, int | None]]:
        self.batches.append(list(reqs))
        return self.vault.tokenize_with_expiry(reqs)


def scrubber(vault: Vault, clock, *items: str, cache_size: int = 100_000) -> LogScrubber:  # type: ignore[no-untyped-def]
    return LogScrubber(log_rules(*items), vault.tokenize_with_expiry, cache_size=cache_size, clock=clock)


# The scrubber has a fast path for a rule set of one `detect:` rule, and the general path for anything else: the
# cache and batching tests run on both (a second rule that never matches sends them down the general one).
PATHS = {"one-detect-rule": (), "general": ('{text: "NEVER-MATCHES-ANYTHING", action: redact}',)}


def no_vault(reqs: Sequence[TokenRequest]) -> list[tuple[str, int | None]]:
    raise AssertionError(f"the vault was called for an action that stores nothing: {reqs!r}")


def local(*items: str) -> LogScrubber:
    """A scrubber for rules that never tokenize: any vault call fails the test."""
    return LogScrubber(log_rules(*items), no_vault)


def reveal(vault: Vault, token: str) -> str | None:
    return vault.detokenize([token])[0]


def only_token(text: str) -> str:
    found = TOKEN.findall(text)
    assert len(found) == 1, text
    return found[0]


# -- detectors x actions ---------------------------------------------------------------------------------------------


def test_tokenize_each_detector(vault: Vault, clock) -> None:  # type: ignore[no-untyped-def]
    s = scrubber(vault, clock, f"{{detect: {ALL_DETECTORS}, action: tokenize}}")
    names = list(SAMPLES)
    out = s.scrub("".join(f"user {SAMPLES[name][0]} did something\n" for name in names)).splitlines()
    assert len(out) == len(names)
    for name, line in zip(names, out, strict=True):
        value, kind = SAMPLES[name]
        token = only_token(line)
        assert line == f"user {token} did something", name
        assert reveal(vault, token) == value, name
        assert vault.token_info(token).kind == kind, name
    assert s.stats.replaced == len(names) and s.stats.lines == len(names) and s.stats.vault_calls == 1


@pytest.mark.parametrize("name", SAMPLES)
def test_redact_each_detector(name: str) -> None:
    value, _kind = SAMPLES[name]
    s = local(f"{{detect: {ALL_DETECTORS}, action: redact}}")
    assert s.scrub(f"user {value} did something\n") == "user [redacted] did something\n"
    s = local(f"{{detect: {ALL_DETECTORS}, action: redact, placeholder: '<pii>'}}")
    assert s.scrub(f"user {value} did something\n") == "user <pii> did something\n"


@pytest.mark.parametrize("name", SAMPLES)
def test_drop_each_detector(name: str) -> None:
    value, _kind = SAMPLES[name]
    s = local(f"{{detect: {ALL_DETECTORS}, action: drop}}")
    assert s.scrub(f"user {value} did something\n") == "user  did something\n"


MASKED = {
    "ipv4": "203.0.113.*",
    "ipv6-full": "2001:db8:0:*",
    "ipv6-compressed": "2001:db8:85a3:*",
    "ipv6-loopback": "0:0:0:*",
    "ipv6-upper": "2001:db8:ac10:*",
    "email": "j***@example.com",
    "phone": "+** ** **** 0958",
    "card": "**** **** **** 1111",
}


@pytest.mark.parametrize("name", SAMPLES)
def test_mask_each_detector(name: str) -> None:
    value, _kind = SAMPLES[name]
    s = local(f"{{detect: {ALL_DETECTORS}, action: mask}}")
    out = s.scrub(f"user {value} did something\n")
    assert out.startswith("user ") and out.endswith(" did something\n")
    masked = out[len("user "):-len(" did something\n")]
    assert "*" in masked and value not in out
    if name in MASKED:
        assert masked == MASKED[name]
    if name == "ipv6-zone":
        # The address part is masked like any IPv6 address; the interface name is not an identifier.
        assert masked.startswith("fe80:0:0:")


TRUNCATED = {
    "ipv4": "203.0.113.0",
    "ipv6-full": "2001:db8::",
    "ipv6-compressed": "2001:db8:85a3::",
    "ipv6-loopback": "::",
    "ipv6-zone": "fe80::",
    "ipv6-mapped": "::",
    "ipv6-upper": "2001:db8:ac10::",
}


@pytest.mark.parametrize("name", SAMPLES)
def test_truncate_each_detector(name: str) -> None:
    value, _kind = SAMPLES[name]
    s = local(f"{{detect: {ALL_DETECTORS}, action: truncate}}")
    # IPv4 to its /24, IPv6 to its /48; anything that is not an address becomes the placeholder.
    assert s.scrub(f"user {value} did something\n") == f"user {TRUNCATED.get(name, '[redacted]')} did something\n"
    s = local(f"{{detect: {ALL_DETECTORS}, action: truncate, placeholder: X}}")
    assert s.scrub(f"user {value} did something\n") == f"user {TRUNCATED.get(name, 'X')} did something\n"


def test_truncate_ip_function() -> None:
    assert truncate_ip("192.168.17.250") == "192.168.17.0"
    assert truncate_ip("2001:db8:1234:5678::1") == "2001:db8:1234::"
    assert truncate_ip("fe80::1%eth0") == "fe80::"
    assert truncate_ip("not an ip") is None
    assert truncate_ip("jo@example.com") is None
    for value in ("10.20.30.40", "2001:db8:ffff:1:2:3:4:5"):
        net = ipaddress.ip_network(f"{truncate_ip(value)}/{24 if '.' in value else 48}")
        assert ipaddress.ip_address(value) in net


def test_detectors_choose_only_what_the_rule_names() -> None:
    s = local("{detect: [email], action: redact}")
    line = "from 10.0.0.1 jo@example.com +44 20 7946 0958 4111111111111111\n"
    assert s.scrub(line) == "from 10.0.0.1 [redacted] +44 20 7946 0958 4111111111111111\n"


def test_kind_option_overrides_the_detected_kind(vault: Vault, clock) -> None:  # type: ignore[no-untyped-def]
    s = scrubber(vault, clock, "{detect: [ipv4], action: tokenize, kind: client-ip}")
    token = only_token(s.scrub("conn 10.1.1.1\n"))
    assert vault.token_info(token).kind == "client-ip"
    assert reveal(vault, token) == "10.1.1.1"


def test_email_format_tokens(vault: Vault, clock) -> None:  # type: ignore[no-untyped-def]
    s = scrubber(vault, clock, "{detect: [email], action: tokenize, format: email, deterministic: true}")
    out = s.scrub("to jo@example.com\nto jo@example.com\n")
    first, second = out.splitlines()
    assert first == second and first.startswith("to tbk_") and first.endswith("@token.invalid")
    assert reveal(vault, first[3:]) == "jo@example.com"


def test_versions_and_times_are_left_alone() -> None:
    s = local(f"{{detect: {ALL_DETECTORS}, action: redact}}")
    line = '12:34:56 "Mozilla/5.0 Chrome/124.0.0.0 Safari/537.36" took 1.5s v1.2.3.4\n'
    assert s.scrub(line) == line
    assert s.stats.vault_calls == 0


# -- text selector -----------------------------------------------------------------------------------------------


def test_text_regex_with_group_replaces_the_group(vault: Vault, clock) -> None:  # type: ignore[no-untyped-def]
    s = scrubber(vault, clock, r'{text: "user=(\\S+)", action: tokenize, kind: login}')
    out = s.scrub("login ok user=alice session=9\nlogin ok user=bob session=10\n")
    lines = out.splitlines()
    assert len(lines) == 2
    tokens = [only_token(line) for line in lines]
    assert lines[0] == f"login ok user={tokens[0]} session=9"
    assert lines[1] == f"login ok user={tokens[1]} session=10"
    assert [reveal(vault, t) for t in tokens] == ["alice", "bob"]
    assert vault.token_info(tokens[0]).kind == "login"
    assert s.stats.vault_calls == 1


def test_text_regex_without_group_replaces_the_match() -> None:
    s = local(r'{text: "SSN-\\d{3}-\\d{2}-\\d{4}", action: redact}')
    assert s.scrub("a SSN-123-45-6789 b\nnothing\n") == "a [redacted] b\nnothing\n"
    s = local(r'{text: "SSN-\\d{3}-\\d{2}-\\d{4}", action: drop}')
    assert s.scrub("a SSN-123-45-6789 b\n") == "a  b\n"


def test_text_regex_applies_line_by_line_anchors() -> None:
    """Log rules apply line by line (rules.md): `^` is the start of each line, whatever the batch holds."""
    s = local(r'{text: "^(\\S+) ", action: redact}')
    assert s.scrub("alice logged in\nbob logged in\n") == "[redacted] logged in\n[redacted] logged in\n"


def test_text_regex_never_lets_a_value_through_at_a_line_end() -> None:
    """A group that would run on past the end of its line must still be replaced within the line, not skipped."""
    s = local(r'{text: "password=([^&]*)", action: redact}')
    out = s.scrub("GET /login?user=jo&password=hunter2\nGET /health\n")
    assert "hunter2" not in out
    assert out == "GET /login?user=jo&password=[redacted]\nGET /health\n"


# -- JSON lines ----------------------------------------------------------------------------------------------------


def test_json_lines_selector(vault: Vault, clock) -> None:  # type: ignore[no-untyped-def]
    s = scrubber(vault, clock, '{json: "$.client.ip", action: tokenize, kind: ip, deterministic: true}')
    lines = [
        '{"ts": 1, "client": {"ip": "198.51.100.23", "port": 4431}, "msg": "ok"}',
        "plain text line from 198.51.100.23",
        '{"ts": 2, "client": {"ip": "198.51.100.23"}}',
        '{"ts": 3, "client": {"ip": "198.51.100.24"',  # invalid JSON: left alone
        '["not", "an", "object", "198.51.100.23"]',
        '{"ts": 4, "other": {"ip": "198.51.100.25"}}',
        "",
    ]
    out = s.scrub("\n".join(lines) + "\n").split("\n")
    assert len(out) == len(lines) + 1
    first, second = json.loads(out[0]), json.loads(out[2])
    assert TOKEN.fullmatch(first["client"]["ip"]) and first["client"]["ip"] == second["client"]["ip"]
    assert first["client"]["port"] == 4431 and first["msg"] == "ok" and first["ts"] == 1
    assert reveal(vault, first["client"]["ip"]) == "198.51.100.23"
    # Lines the rule does not select are left byte for byte as they were.
    assert out[1] == lines[1] and out[3] == lines[3] and out[4] == lines[4] and out[6] == ""
    assert json.loads(out[5]) == json.loads(lines[5])
    assert s.stats.vault_calls == 1


def test_json_lines_nested_and_arrays(vault: Vault, clock) -> None:  # type: ignore[no-untyped-def]
    s = scrubber(vault, clock,
                 '{json: "$.request.headers[\'x-forwarded-for\']", action: truncate}',
                 '{json: "$.hops[*].ip", action: redact}',
                 '{json: "$..email", action: tokenize, kind: email}',
                 '{json: "$.account", action: mask}')
    doc = {"request": {"headers": {"x-forwarded-for": "203.0.113.77"}},
           "hops": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"name": "x"}],
           "user": {"profile": {"email": "ann@example.org"}},
           "account": 4111111111111111, "flag": True, "none": None}
    out = json.loads(s.scrub(json.dumps(doc) + "\n"))
    assert out["request"]["headers"]["x-forwarded-for"] == "203.0.113.0"
    assert out["hops"] == [{"ip": "[redacted]"}, {"ip": "[redacted]"}, {"name": "x"}]
    assert reveal(vault, out["user"]["profile"]["email"]) == "ann@example.org"
    assert "*" in out["account"] and "4111111111111111" not in out["account"]
    assert out["flag"] is True and out["none"] is None


def test_json_lines_and_text_rules_together() -> None:
    s = local('{json: "$.user", action: redact}', "{detect: [ipv4], action: truncate}")
    out = s.scrub('{"user": "jo", "msg": "from 10.9.8.7"}\nplain 10.9.8.7\n')
    first, second = out.splitlines()
    assert json.loads(first) == {"user": "[redacted]", "msg": "from 10.9.8.0"}
    assert second == "plain 10.9.8.0"


def test_json_drop_removes_the_field() -> None:
    """rules.md: `drop` removes the field (as the proxy does for JSON bodies), rather than leaving it empty."""
    s = local('{json: "$.client.ip", action: drop}')
    out = s.scrub('{"client": {"ip": "1.2.3.4", "port": 1}, "msg": "x"}\n')
    assert json.loads(out) == {"client": {"port": 1}, "msg": "x"}


def test_json_line_with_escaped_newline_stays_one_line(vault: Vault, clock) -> None:  # type: ignore[no-untyped-def]
    s = scrubber(vault, clock, '{json: "$.msg", action: tokenize}')
    out = s.scrub('{"msg": "two\\nlines", "n": 1}\n{"n": 2}\n')
    assert out.count("\n") == 2
    assert reveal(vault, json.loads(out.splitlines()[0])["msg"]) == "two\nlines"


# -- field selector on combined lines -------------------------------------------------------------------------------


def test_combined_fields_are_the_nginx_names() -> None:
    for name in ("remote_addr", "remote_user", "time_local", "request", "status", "body_bytes_sent",
                 "http_referer", "http_user_agent"):
        assert name in COMBINED_FIELDS


def test_field_selectors_on_combined_lines(vault: Vault, clock) -> None:  # type: ignore[no-untyped-def]
    s = scrubber(vault, clock,
                 "{field: remote_addr, action: truncate}",
                 "{field: remote_user, action: tokenize, kind: login}",
                 "{field: http_user_agent, action: redact}")
    anonymous = '2001:db8:aa:bb::1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 304 0 "-" "curl/8.5.0"'
    short = '192.0.2.44 - - [10/Oct/2000:13:55:37 -0700] "GET /x HTTP/1.1" 404 12'  # common format, no UA
    other = "2000/10/10 13:55:36 [error] 12#12: *1 open() failed, client: 192.0.2.44"
    out = s.scrub("\n".join([COMBINED_LINE, anonymous, short, other]) + "\n").splitlines()
    user = re.search(r" - (\S+) \[", out[0])
    assert user is not None and reveal(vault, user.group(1)) == "bob"
    assert out[0] == (f'203.0.113.0 - {user.group(1)} [10/Oct/2000:13:55:36 -0700] "GET /a.gif?from=198.51.100.4 '
                      'HTTP/1.0" 200 2326 "http://ref.example/" "[redacted]"')
    assert out[1] == '2001:db8:aa:: - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 304 0 "-" "[redacted]"'
    assert out[2] == '192.0.2.0 - - [10/Oct/2000:13:55:37 -0700] "GET /x HTTP/1.1" 404 12'
    assert out[3] == other  # not a combined line: field selectors do not apply


def test_field_rule_and_detector_rule_together(vault: Vault, clock) -> None:  # type: ignore[no-untyped-def]
    """The earlier rule wins where two select the same text: remote_addr truncated, other IPs tokenized."""
    s = scrubber(vault, clock, "{field: remote_addr, action: truncate}", "{detect: [ipv4], action: tokenize}")
    out = s.scrub(COMBINED_LINE + "\n")
    assert out.startswith("203.0.113.0 - bob ")
    token = only_token(out)
    assert reveal(vault, token) == "198.51.100.4"
    assert "198.51.100.4" not in out and "203.0.113.9" not in out


def test_field_selector_never_skips_a_line_after_a_malformed_one() -> None:
    """A line cut short (an unclosed `[` or `"`) must not swallow the next line's fields."""
    s = local("{field: remote_addr, action: redact}")
    good = '198.51.100.200 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "ua"'
    for broken in ("10.0.0.1 - - [10/Oct/2000:13:5", '10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /tru'):
        out = s.scrub(f"{broken}\n{good}\n")
        assert "198.51.100.200" not in out, out
        assert out.splitlines()[1] == '[redacted] - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "ua"'


# -- line count and order ------------------------------------------------------------------------------------------

# Filler never holds a digit or the characters a planted value is made of, and is always separated from one by a
# space, so the detectors see every planted value whole.
FILLER = st.text(alphabet=st.sampled_from(list("abcXYZ éü日本 \t\r-_/[]\"=,;()!?#")), max_size=20)
IPV4 = st.tuples(*[st.integers(1, 254)] * 4).map(lambda t: ".".join(map(str, t)))
# Written forms the ipv6 detector reports (it leaves out short ones such as "1::" on purpose, for precision).
IPV6 = st.one_of(
    st.lists(st.integers(1, 0xFFFF), min_size=6, max_size=6).map(
        lambda g: str(ipaddress.IPv6Address(":".join(["2001", "db8", *(f"{x:x}" for x in g)])))),
    st.lists(st.integers(1, 0xFFFF), min_size=1, max_size=5).map(
        lambda g: "2001:db8::" + ":".join(f"{x:x}" for x in g)),
)
EMAIL = st.tuples(st.sampled_from(["ann", "bob.x", "c_d", "e+f"]), st.sampled_from(["example.com", "mail.example.org"]),
                  st.integers(0, 99)).map(lambda t: f"{t[0]}{t[2]}@{t[1]}")
PLANTED = st.one_of(IPV4, IPV6, EMAIL)
LINE = st.lists(st.tuples(FILLER, st.one_of(st.none(), PLANTED)), max_size=5)


RANDOM_RULES = {
    "two-rules": ("{detect: [ipv4, ipv6], action: tokenize, kind: ip, deterministic: true, ttl: 1h}",
                  "{detect: [email], action: tokenize, kind: email}"),
    "one-rule": ("{detect: [ipv4, ipv6, email], action: tokenize, deterministic: true, ttl: 1h}",),
}


@pytest.mark.parametrize("rules", RANDOM_RULES)
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(LINE, min_size=1, max_size=12), trailing_newline=st.booleans())
def test_random_lines_one_out_for_one_in(vault: Vault, clock, rules: str, lines,  # type: ignore[no-untyped-def]
                                         trailing_newline: bool) -> None:
    s = scrubber(vault, clock, *RANDOM_RULES[rules])
    planted: list[str] = []
    texts = []
    for line in lines:
        parts = []
        for filler, value in line:
            parts.append(filler)
            if value is not None:
                parts.append(f" {value} ")
                planted.append(value)
        texts.append("".join(parts))
    text = "\n".join(texts) + ("\n" if trailing_newline else "")
    out = s.scrub(text)
    assert out.count("\n") == text.count("\n")
    assert out.endswith("\n") == text.endswith("\n")
    for value in planted:
        assert value not in out
    # Put the values back: the very lines that went in, in order.
    found = TOKEN.findall(out)
    values = dict(zip(found, vault.detokenize(found), strict=True)) if found else {}
    assert TOKEN.sub(lambda m: values[m.group(0)], out) == text
    assert len(found) == len(planted)


def test_lines_without_candidates_are_untouched(vault: Vault, clock) -> None:  # type: ignore[no-untyped-def]
    s = scrubber(vault, clock, f"{{detect: {ALL_DETECTORS}, action: tokenize}}")
    text = "\n\nno pii here\n  \r\n\tjust text\n"
    assert s.scrub(text) == text
    assert s.scrub("") == ""
    assert s.stats.vault_calls == 0


# -- cache, batching, ttl ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_new_values_go_to_the_vault_in_one_batch(vault: Vault, clock, path: str) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder(vault)
    s = LogScrubber(log_rules("{detect: [ipv4], action: tokenize, kind: ip, deterministic: true, ttl: 1h}",
                              *PATHS[path]), recorder, clock=clock)
    ips = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(300)]
    text = "".join(f"hit from {ip} and again {ip}\n" for ip in ips)
    out = s.scrub(text)
    assert len(recorder.batches) == 1 and s.stats.vault_calls == 1
    assert sorted(r.value for r in recorder.batches[0]) == sorted(ips)  # each value once, however often it appears
    assert all(r.deterministic and r.ttl == 3600 and r.kind == "ip" for r in recorder.batches[0])
    for line in out.splitlines():
        first, second = TOKEN.findall(line)
        assert first == second


@pytest.mark.parametrize("path", PATHS)
def test_values_seen_before_cost_no_vault_call(vault: Vault, clock, path: str) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder(vault)
    s = LogScrubber(log_rules("{detect: [ipv4, ipv6], action: tokenize, kind: ip, deterministic: true, ttl: 1h}",
                              *PATHS[path]), recorder, clock=clock)
    batch = "a 10.0.0.1\nb 10.0.0.2\nc 2001:db8::7\n"
    first = s.scrub(batch)
    assert s.stats.vault_calls == 1 and s.stats.cache_hits == 0
    clock.advance(60)
    second = s.scrub(batch)
    assert second == first
    assert s.stats.vault_calls == 1 and len(recorder.batches) == 1
    assert s.stats.cache_hits == 3
    # A new value among known ones: only it goes to the vault.
    third = s.scrub("a 10.0.0.1\nd 10.0.0.99\n")
    assert s.stats.vault_calls == 2 and [r.value for r in recorder.batches[1]] == ["10.0.0.99"]
    assert third.splitlines()[0] == first.splitlines()[0]


@pytest.mark.parametrize("path", PATHS)
def test_non_deterministic_tokens_are_fresh_and_not_cached(vault: Vault, clock, path: str) -> None:  # type: ignore[no-untyped-def]
    s = scrubber(vault, clock, "{detect: [ipv4], action: tokenize}", *PATHS[path])
    a, b = (only_token(line) for line in s.scrub("x 10.0.0.1\ny 10.0.0.1\n").splitlines())
    assert a != b and reveal(vault, a) == reveal(vault, b) == "10.0.0.1"
    assert s.stats.cache_hits == 0


@pytest.mark.parametrize("path", PATHS)
def test_cache_capacity_is_respected(vault: Vault, clock, path: str) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder(vault)
    s = LogScrubber(log_rules("{detect: [ipv4], action: tokenize, kind: ip, deterministic: true}", *PATHS[path]),
                    recorder, cache_size=3, clock=clock)
    ips = [f"10.1.1.{i}" for i in range(1, 11)]
    tokens = [only_token(s.scrub(f"from {ip}\n")) for ip in ips]
    assert s.stats.vault_calls == 10
    assert len(s.cache._items) <= 3
    # The most recent value is still cached, the first one was evicted and costs a round trip (same token, though).
    assert only_token(s.scrub(f"from {ips[-1]}\n")) == tokens[-1]
    assert s.stats.vault_calls == 10 and s.stats.cache_hits == 1
    assert only_token(s.scrub(f"from {ips[0]}\n")) == tokens[0]
    assert s.stats.vault_calls == 11
    assert len(s.cache._items) <= 3
    s0 = LogScrubber(log_rules("{detect: [ipv4], action: tokenize, kind: ip, deterministic: true}"),
                     vault.tokenize_with_expiry, cache_size=0, clock=clock)
    s0.scrub("from 10.1.1.1\n")
    s0.scrub("from 10.1.1.1\n")
    assert s0.stats.vault_calls == 2 and s0.stats.cache_hits == 0 and not s0.cache._items


def test_token_cache_entries_expire_before_the_ttl(clock) -> None:  # type: ignore[no-untyped-def]
    cache = TokenCache(10, clock)
    key = ("ip", "opaque", "10.0.0.1")
    cache.put(key, "tbk_x", int(clock()) + 100)  # the vault's expiry of the token
    cache.put(("ip", "opaque", "forever"), "tbk_y", None)
    clock.advance(98)
    assert cache.get(key) == "tbk_x"
    clock.advance(1.5)
    assert cache.get(key) is None
    clock.advance(10**9)
    assert cache.get(("ip", "opaque", "forever")) == "tbk_y"


@pytest.mark.parametrize("path", PATHS)
def test_ttl_expiry_through_the_vault(vault: Vault, clock, path: str) -> None:  # type: ignore[no-untyped-def]
    s = scrubber(vault, clock, "{detect: [ipv4], action: tokenize, kind: ip, deterministic: true, ttl: 60s}",
                 *PATHS[path])
    old = only_token(s.scrub("from 192.0.2.10\n"))
    clock.advance(30)
    assert only_token(s.scrub("from 192.0.2.10\n")) == old
    assert reveal(vault, old) == "192.0.2.10"
    clock.advance(31)  # past the ttl
    assert reveal(vault, old) is None
    new = only_token(s.scrub("again 192.0.2.10\n"))
    assert new != old
    assert reveal(vault, new) == "192.0.2.10" and reveal(vault, old) is None
    assert vault.token_info(new).expires == int(clock()) + 60


@pytest.mark.parametrize("path", PATHS)
def test_every_emitted_token_resolves_when_emitted(vault: Vault, clock, path: str) -> None:  # type: ignore[no-untyped-def]
    """Deterministic tokens with a short ttl, scrubbed at times that are not whole seconds: the cache must never hand
    out a token the vault has already let go (the vault counts whole seconds)."""
    s = scrubber(vault, clock, "{detect: [ipv4], action: tokenize, kind: ip, deterministic: true, ttl: 4s}",
                 *PATHS[path])
    emitted: list[tuple[float, str]] = []
    for _step in range(40):
        token = only_token(s.scrub("from 198.51.100.1\n"))
        emitted.append((clock(), token))
        assert reveal(vault, token) == "198.51.100.1", f"token handed out at +{clock() - 1_800_000_000:.1f}s " \
                                                        f"no longer resolves"
        clock.advance(0.3)
    assert len({token for _t, token in emitted}) >= 3  # the ttl did pass, more than once


@pytest.mark.parametrize("path", PATHS)
def test_a_second_scrubber_never_caches_past_the_vaults_expiry(vault: Vault, clock, path: str) -> None:  # type: ignore[no-untyped-def]
    """A token made by another scrubber (or before a restart, or before an eviction) expires at its creation time +
    ttl; a cache filled later must not outlive it."""
    rules = log_rules("{detect: [ipv4], action: tokenize, kind: ip, deterministic: true, ttl: 100s}", *PATHS[path])
    first = LogScrubber(rules, vault.tokenize_with_expiry, clock=clock)
    token = only_token(first.scrub("from 203.0.113.50\n"))
    clock.advance(90)
    second = LogScrubber(rules, vault.tokenize_with_expiry, clock=clock)  # e.g. `tokenbunker scrub` restarted
    assert only_token(second.scrub("from 203.0.113.50\n")) == token
    clock.advance(20)  # the vault's token has expired
    assert reveal(vault, token) is None
    again = only_token(second.scrub("from 203.0.113.50\n"))
    assert again != token
    assert reveal(vault, again) == "203.0.113.50"


# -- text encodings --------------------------------------------------------------------------------------------------


def test_unicode_lines() -> None:
    s = local("{detect: [ipv4, email], action: redact}")
    text = "Zoë 日本語 from 10.0.0.1 → ünïcødé ✓ mail: zoë@example.com bob@example.com\n𝔘𝔫𝔦 2001 🎉\n"
    assert s.scrub(text) == ("Zoë 日本語 from [redacted] → ünïcødé ✓ mail: zoë@example.com [redacted]\n"
                             "𝔘𝔫𝔦 2001 🎉\n")


def test_latin1_decoded_bytes() -> None:
    s = local("{detect: [ipv4, ipv6, email], action: truncate}")
    raw = b"\xff\xfe bad \xc3\x28 bytes from 10.1.2.3 \x80\x81 2001:db8:1:2::3 \xe9t\xe9\n\x00\x01\x7f end\n"
    out = s.scrub(raw.decode("latin-1")).encode("latin-1")
    assert out == b"\xff\xfe bad \xc3\x28 bytes from 10.1.2.0 \x80\x81 2001:db8:1:: \xe9t\xe9\n\x00\x01\x7f end\n"
