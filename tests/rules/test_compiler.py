"""Rules files: the contract's own example compiles; every mistake is reported as FILE:LINE with what was expected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rules.compiler import RulesError, compile_text, load_rules
from rules.model import AnyTokensSelector, DetectSelector, FieldSelector, JsonSelector, TextSelector

HERE = Path(__file__).parent


def test_the_contract_example_compiles() -> None:
    ruleset = load_rules([HERE / "contract_example.yaml"])
    signup, sms = ruleset.routes
    assert signup.name == "signup" and signup.on_error == "block"
    assert signup.subject is not None and signup.subject.index == "email"
    kinds = [type(r.selector) for r in signup.request]
    assert kinds == [JsonSelector, JsonSelector, FieldSelector, FieldSelector, FieldSelector, FieldSelector,
                     TextSelector, DetectSelector]
    assert signup.request[4].ttl == 30 * 86400 and signup.request[0].deterministic
    assert isinstance(signup.response[2].selector, AnyTokensSelector)
    assert signup.response[1].reveal == "masked"
    assert sms.request[0].require_consent == "sms" and sms.request[0].on_consent_missing == "block"
    assert [r.action for r in ruleset.logs] == ["tokenize", "redact", "tokenize"]
    assert signup.request[7].kind_for("ip") == "ip" and signup.request[0].kind_for() == "email"


def test_the_shipped_example_compiles() -> None:
    load_rules([HERE.parents[1] / "rules" / "example.yaml"])


def test_route_matching() -> None:
    routes, _ = compile_text(
        """
version: 1
routes:
  - name: users
    match: {hosts: ["app.internal", "*.example.com"], path: "/api/users/*", methods: [post, PUT]}
  - name: numbered
    match: {path: "re:^/api/items/\\\\d+$"}
  - name: anything
""",
        "r.yaml",
    )
    from rules.model import RuleSet

    rs = RuleSet(tuple(routes))
    assert rs.route_for("APP.internal", "/api/users/7", "POST").name == "users"  # type: ignore[union-attr]
    assert rs.route_for("www.example.com", "/api/users/a/b", "put").name == "users"  # type: ignore[union-attr]
    assert rs.route_for("example.com", "/api/users/7", "POST").name == "anything"  # type: ignore[union-attr]
    assert rs.route_for("x", "/api/items/12", "GET").name == "numbered"  # type: ignore[union-attr]
    assert rs.route_for("x", "/api/items/12x", "GET").name == "anything"  # type: ignore[union-attr]
    # A glob matches the whole path, without case; a host without its trailing dot.
    assert rs.route_for("app.internal", "/v2/api/users/7", "POST").name == "anything"  # type: ignore[union-attr]
    assert rs.route_for("App.Internal.", "/API/Users/7", "POST").name == "users"  # type: ignore[union-attr]
    assert rs.route_for("x", "/API/items/12", "GET").name == "numbered"  # type: ignore[union-attr]


def test_case_sensitive_paths() -> None:
    from rules.model import RuleSet

    routes, _ = compile_text("version: 1\nroutes:\n  - name: a\n    match: {path: '/Api/*', case_sensitive: true}\n"
                             "  - name: b\n    match: {path: 're:^/Items$', case_sensitive: true}\n", "r.yaml")
    rs = RuleSet(tuple(routes))
    assert rs.route_for("x", "/Api/x", "GET").name == "a"  # type: ignore[union-attr]
    assert rs.route_for("x", "/api/x", "GET") is None
    assert rs.route_for("x", "/Items", "GET").name == "b"  # type: ignore[union-attr]
    assert rs.route_for("x", "/items", "GET") is None


BAD = [
    ("version: 2\n", r"r\.yaml:1: version: expected 1, got 2"),
    ("", r"r\.yaml:1: the file is empty"),
    ("- a\n", r"r\.yaml:1: a rules file is a mapping"),
    ("version: 1\nroutez: []\n", r"r\.yaml:2: routez: unknown key \(expected one of version, defaults, routes, logs\)"),
    ("version: 1\nroutes:\n  - name: a\n    matchh: {}\n", r"r\.yaml:4: routes\[0\]\.matchh: unknown key"),
    ("version: 1\nroutes:\n  - name: a\n  - name: a\n", r"r\.yaml:4: routes\[1\]\.name: duplicate route name 'a'"),
    ("version: 1\nroutes:\n  - name: 'bad name'\n", r"r\.yaml:3: routes\[0\]\.name: expected a name"),
    ("version: 1\nroutes:\n  - name: a\n    request:\n      - {json: '$.email', acton: tokenize}\n",
     r"r\.yaml:5: routes\[0\]\.request\[0\]\.acton: unknown key"),
    ("version: 1\nroutes:\n  - name: a\n    request:\n      - {json: '$.[', action: tokenize}\n",
     r"r\.yaml:5: routes\[0\]\.request\[0\]\.json: invalid JSONPath"),
    ("version: 1\nroutes:\n  - name: a\n    request:\n      - {text: '(unclosed', action: tokenize}\n",
     r"r\.yaml:5: routes\[0\]\.request\[0\]\.text: invalid regex"),
    ("version: 1\nroutes:\n  - name: a\n    request:\n      - {json: '$.a', action: tokenize, format: base64}\n",
     r"r\.yaml:5: routes\[0\]\.request\[0\]\.format: expected one of opaque, uuid, email, digits, keep-last4"),
    ("version: 1\nroutes:\n  - name: a\n    request:\n      - {json: '$.a', action: encrypt}\n",
     r"r\.yaml:5: routes\[0\]\.request\[0\]\.action: expected one of tokenize, detokenize, redact, drop"),
    ("version: 1\nroutes:\n  - name: a\n    request:\n      - {json: '$.a', header: x, action: drop}\n",
     r"expected exactly one selector .* \(found json, header\)"),
    ("version: 1\nroutes:\n  - name: a\n    request:\n      - {action: drop}\n", r"\(found none\)"),
    ("version: 1\nroutes:\n  - name: a\n    request:\n      - {detect: [ipv5], action: tokenize}\n",
     r"r\.yaml:5: .*detect: unknown detector 'ipv5'"),
    ("version: 1\nroutes:\n  - name: a\n    request:\n      - {json: '$.a', action: tokenize, ttl: 3x}\n",
     r"r\.yaml:5: .*\.ttl: invalid duration"),
    ("version: 1\nroutes:\n  - name: a\n    request:\n      - {json: '$.a', action: redact, reveal: masked}\n",
     r"\.reveal: only used with action detokenize"),
    ("version: 1\nroutes:\n  - name: a\n    response:\n      - {any: tokens, action: redact}\n",
     r"'any: tokens' only works with action detokenize"),
    ("version: 1\nroutes:\n  - name: a\n    response:\n      - {any: everything, action: detokenize}\n",
     r"\.any: expected tokens"),
    ("version: 1\nroutes:\n  - name: a\n    match: {methods: [FETCH]}\n", r"unknown method 'FETCH'"),
    ("version: 1\nroutes:\n  - name: a\n    match: {path: 're:(('}\n",
     r"r\.yaml:4: routes\[0\]\.match\.path: invalid regex"),
    ("version: 1\nroutes:\n  - name: a\n    subject: {json: '$.email', index: nickname}\n",
     r"subject\.index: expected one of login, email, phone, custom"),
    ("version: 1\nroutes:\n  - name: a\n    subject: {text: 'x', index: email}\n",
     r"subject\.text: this selector cannot be used here"),
    ("version: 1\nroutes:\n  - name: a\n    on_error: ignore\n", r"routes\[0\]\.on_error: expected block or pass"),
    ("version: 1\ndefaults: {on_error: maybe}\n", r"r\.yaml:2: defaults\.on_error: expected block or pass"),
    ("version: 1\nlogs:\n  - {header: x, action: redact}\n", r"logs\[0\]\.header: this selector cannot be used here"),
    ("version: 1\nlogs:\n  - {json: '$.ip', action: detokenize}\n", r"logs are never detokenized"),
    ("version: 1\nroutes:\n  - name: a\n    request:\n"
     "      - {json: '$.a', action: detokenize, require_consent: SMS!}\n",
     r"require_consent: expected a consent purpose name"),
    ("version: 1\nversion: 1\n", r"r\.yaml:2: version: duplicate key"),
    ("version: 1\nroutes: [\n", r"r\.yaml:\d+: invalid YAML"),
    ("version: 1\nroutes:\n  - name: a\n    match: {path: 'api/users'}\n",
     r"r\.yaml:4: routes\[0\]\.match\.path: a glob matches the whole path, so it starts with / or \*"),
    ("version: 1\nroutes:\n  - name: a\n    match: {path: '/a', case_sensitive: yes please}\n",
     r"match\.case_sensitive: expected true or false"),
    ("version: 1\nroutes:\n  - name: a\n    on_unreadable_body: allow\n",
     r"r\.yaml:4: routes\[0\]\.on_unreadable_body: expected block or pass"),
    ("version: 1\nroutes:\n  - name: a\n    subject: {json: '$.email', index: email, optional: maybe}\n",
     r"subject\.optional: expected true or false"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_mistakes_name_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(RulesError) as info:
        compile_text(text, "r.yaml")
    assert any(re.search(expected, p) for p in info.value.problems), info.value.problems
    assert all(re.match(r"r\.yaml:\d+: ", p) for p in info.value.problems)


def test_every_problem_is_reported_at_once() -> None:
    text = "version: 1\nroutes:\n  - name: a\n    colour: red\n    request:\n      - {json: '$.a', action: nope}\n"
    with pytest.raises(RulesError) as info:
        compile_text(text, "r.yaml")
    assert len(info.value.problems) == 2


def test_duplicate_names_across_files_and_missing_files(tmp_path: Path) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text("version: 1\nroutes:\n  - name: same\n")
    two.write_text("version: 1\nroutes:\n  - {name: other}\n  - name: same\n")
    with pytest.raises(RulesError) as info:
        load_rules([one, two, tmp_path / "missing.yaml"])
    assert info.value.problems == [
        f"{two}:4: routes: duplicate route name 'same' (first at {one}:3)",
        f"{tmp_path / 'missing.yaml'}:1: file not found",
    ]
