"""Property: whatever the shape of a JSON body, a value the rules select never reaches the upstream, and the body
stays valid JSON of the same shape. SQLite only (a vault of its own in a temporary directory)."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_addons.tokenize import Tokenbunker
from tests.proxy_addons.conftest import Proxy, json_flow, make_flow, set_response, taddons, write_config

RULES = r"""
version: 1
routes:
  - name: prop
    match: {path: "/prop"}
    request:
      - {json: "$..email", action: tokenize, kind: email, format: email}
      - {json: "$..phone", action: tokenize, kind: phone, format: digits}
      - {json: "$..ssn", action: redact}
      - {json: "$..card", action: tokenize, kind: card, format: keep-last4}
      - {detect: [email], action: tokenize}
  - name: roundtrip
    match: {path: "/roundtrip"}
    request:
      - {json: "$..email", action: tokenize, kind: email, format: email}
      - {json: "$..phone", action: tokenize, kind: phone, format: digits}
      - {json: "$..ssn", action: redact}
      - {json: "$..card", action: tokenize, kind: card, format: keep-last4}
    response:
      - {json: "$..email", action: detokenize}
      - {json: "$..phone", action: detokenize}
      - {json: "$..card", action: detokenize}
"""

PLANTED_KEYS = ("email", "phone", "ssn", "card")
NOTE_KEY = "note"  # free text with an email inside, for the detect rule

KEYS = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8).filter(
    lambda k: k not in (*PLANTED_KEYS, NOTE_KEY))
SCALARS = (st.none() | st.booleans() | st.integers(-(10**9), 10**9)
           | st.floats(allow_nan=False, allow_infinity=False, width=32)
           | st.text(st.characters(exclude_categories=("Cs",)), max_size=16))
DOCS = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                    max_leaves=25)


def _luhn_complete(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits + "0")):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return digits + str((10 - total % 10) % 10)


EMAILS = st.builds(lambda local, domain: f"{local}@{domain}",
                   st.text(string.ascii_lowercase + string.digits, min_size=3, max_size=10),
                   st.sampled_from(["example.com", "mail.example.org", "corp.example.co.uk"]))
PHONES = st.from_regex(r"07[0-9]{9}", fullmatch=True) | st.integers(7_000_000_000, 7_999_999_999)
SSNS = st.from_regex(r"[0-9]{3}-[0-9]{2}-[0-9]{4}", fullmatch=True)
CARDS = st.builds(_luhn_complete, st.from_regex(r"4[0-9]{14}", fullmatch=True)).flatmap(
    lambda card: st.sampled_from([card, " ".join(card[i:i + 4] for i in range(0, 16, 4)), int(card)]))
PLANTS = st.one_of(
    st.tuples(st.just("email"), EMAILS),
    st.tuples(st.just("phone"), PHONES),
    st.tuples(st.just("ssn"), SSNS),
    st.tuples(st.just("card"), CARDS),
    st.tuples(st.just(NOTE_KEY), EMAILS.map(lambda e: f"write to {e} soon")),
)


def _containers(node: Any, out: list[Any]) -> list[Any]:
    if isinstance(node, dict | list):
        out.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            _containers(child, out)
    return out


@st.composite
def planted_documents(draw: st.DrawFn) -> tuple[Any, list[tuple[str, Any]]]:
    doc = draw(DOCS)
    if not isinstance(doc, dict | list):
        doc = {"data": doc}
    plants = draw(st.lists(PLANTS, min_size=1, max_size=8))
    for key, value in plants:
        containers = _containers(doc, [])
        target = containers[draw(st.integers(0, len(containers) - 1))]
        if isinstance(target, dict):
            target[key] = value
        else:
            target.insert(draw(st.integers(0, len(target))), {key: value})
    # What is really there (a later plant can overwrite an earlier one in the same object).
    present: list[tuple[str, Any]] = []
    for container in _containers(doc, []):
        if isinstance(container, dict):
            present.extend((k, v) for k, v in container.items() if k in (*PLANTED_KEYS, NOTE_KEY))
    return doc, present


def shape(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: shape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [shape(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    return type(node).__name__


def secret_of(key: str, value: Any) -> str:
    if key == NOTE_KEY:
        return str(value).split()[2]  # the email inside the note
    return str(value)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    directory = tmp_path_factory.mktemp("property")
    database_url = f"sqlite:///{directory / 'vault.db'}"
    master_key = secrets.token_bytes(32)
    config = write_config(directory, database_url, RULES)
    addon = Tokenbunker()
    with pytest.MonkeyPatch.context() as mp, taddons.context(addon) as tctx:
        mp.setenv("TOKENBUNKER_MASTER_KEY", master_key.hex())
        mp.chdir(directory)
        tctx.configure(addon, tokenbunker_config=str(config), tokenbunker_reload=False)
        assert addon.problem is None
        proxy = Proxy(addon, tctx, database_url, master_key)
        yield proxy
        proxy.close()


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted_documents())
def test_no_selected_value_reaches_upstream(proxy: Proxy, planted: tuple[Any, list[tuple[str, Any]]]) -> None:
    doc, present = planted
    flow = proxy.request(json_flow("http://app.internal/prop", doc))
    assert flow.response is None, flow.response and flow.response.text
    counts = flow.metadata["tokenbunker"]["request"]
    assert counts["tokenized"] + counts["redacted"] >= len(present)
    raw = flow.request.raw_content or b""
    for key, value in present:
        assert secret_of(key, value).encode() not in raw, (key, value)
    out = json.loads(raw)
    assert shape(out) == shape(doc)


def _expected_after_roundtrip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: "[redacted]" if k == "ssn" else _expected_after_roundtrip(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_expected_after_roundtrip(v) for v in node]
    return node


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted_documents())
def test_what_is_tokenized_on_the_way_in_is_revealed_on_the_way_out(
    proxy: Proxy, planted: tuple[Any, list[tuple[str, Any]]]
) -> None:
    doc, _present = planted
    flow = proxy.request(json_flow("http://app.internal/roundtrip", doc))
    assert flow.response is None
    stored = flow.request.raw_content or b""  # what the legacy app stores, and later sends back
    back = make_flow("GET", "http://app.internal/roundtrip")
    set_response(back, stored, {"Content-Type": "application/json"})
    proxy.response(back)
    assert back.response is not None and back.response.status_code == 200, back.response.text
    assert json.loads(back.response.content or b"") == _expected_after_roundtrip(doc)
