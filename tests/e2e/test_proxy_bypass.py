"""Differential tests: real apps behind a real `tokenbunker proxy`, and every spelling of a protected request.

Two apps (tests/e2e/apps/), each in its own process behind its own sidecar in reverse mode (vault in-process, SQLite):
Flask under waitress and Starlette under uvicorn (python-multipart for forms). Both route every path and record,
for every request, the path they routed on, the raw bytes they received and what they parsed (JSON, form fields,
files, query, headers).

The property checked everywhere: a planted personal value (`pii-<hex>@example.com`, `+44 7700 900<nnn>`, a
16-digit card number, a name) never appears, in any spelling, in what the app parsed or in the bytes it received
(decompressed, and read as UTF-16/32 too). The sidecar may instead refuse the request (a 4xx with its JSON error
body, which never names a file or a rule's line). One explicit test per finding of the review, then Hypothesis
variants of paths, JSON bodies, form and multipart framing, and compressed bodies against both apps.

Each generated property runs all its examples (about 150 per app) without stopping at the first leak, then fails
with the number of variants that leaked and the first few of them; the counts are printed and written to
<basetemp>/bypass-examples.json.
"""

from __future__ import annotations

import base64
import codecs
import gzip
import json
import random
import secrets
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli
import pytest
from backports import zstd
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.e2e.bypasshelpers import SERVER_DETAIL, AppProcess, Outcome, Planted, describe, exchange
from tests.e2e.helpers import cli_env, new_master_key
from tests.e2e.proxyhelpers import (
    ANY_TOKEN,
    EMAIL_TOKEN,
    OPAQUE_TOKEN,
    ProxyProcess,
    tokenbunker_proxy,
    write_proxy_config,
)
from vault.core import Vault

RULES = r"""
version: 1
routes:
  - name: signup
    match: {path: "/api/users*", methods: [POST, PUT, PATCH]}
    subject: {json: "$.email", index: email}
    request:
      - {json: "$.email", action: tokenize, kind: email, format: email, deterministic: true}
      - {json: "$.phone", action: tokenize, kind: phone}
      - {json: "$.name", action: tokenize, kind: name}
  - name: upload
    match: {path: "/forms/*", methods: [POST]}
    request:
      - {form: "email", action: tokenize, kind: email}
      - {form: "card", action: tokenize, kind: card}
  - name: notes
    match: {path: "/notes", methods: [POST]}
    request:
      - {detect: [email, phone], action: tokenize}
"""

APP_KINDS = ("flask", "starlette")
MAX_EXAMPLES = 150
# Wall-clock budget of one generated property on one app (they take a few seconds each): past it, the remaining
# examples are not sent and the test fails for running too few.
PROPERTY_BUDGET = 120.0
JSON_CT = [("Content-Type", "application/json")]


@dataclass
class Stack:
    kind: str
    app: AppProcess
    proxy: ProxyProcess
    database_url: str
    key: str
    workdir: Path
    _vault: Vault | None = None

    def exchange(self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes,
                 values: Sequence[str], *, chunk: bool = False) -> Outcome:
        return exchange(self.proxy.port, self.app.seen, method, target, headers, body, values, chunk=chunk)

    def vault(self) -> Vault:
        if self._vault is None:
            self._vault = Vault.open(self.database_url, bytes.fromhex(self.key))
        return self._vault


@pytest.fixture(scope="module", params=APP_KINDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    kind: str = request.param
    work = tmp_path_factory.mktemp(f"bypass-{kind}")
    rules = work / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    database_url = f"sqlite:///{work / 'vault.db'}"
    config = write_proxy_config(work / "config.yaml", database_url, [rules])
    key = new_master_key()
    app = AppProcess(kind, work)
    proxy: ProxyProcess | None = None
    result: Stack | None = None
    try:
        app.start()
        proxy = tokenbunker_proxy(config, cli_env(TOKENBUNKER_MASTER_KEY=key), work, f"proxy-{kind}",
                                  f"reverse:{app.url}")
        proxy.start()
        result = Stack(kind, app, proxy, database_url, key, work)
        yield result
    finally:
        if result is not None and result._vault is not None:
            result._vault.close()
        if proxy is not None:
            proxy.stop()
        app.stop()


# -- checks shared by the explicit tests ---------------------------------------------------------------------------


def assert_protected(outcome: Outcome, described: str) -> None:
    """Refused by the sidecar with a 4xx, or the app received and parsed no planted value. (`described` says
    which: `leaked` with where the plaintext was found, `refused-5xx` for a refusal with the wrong status, `error`
    for an answer that is neither the app's nor the sidecar's.)"""
    assert outcome.kind in ("refused", "reached"), described


def assert_json_tokenized(outcome: Outcome, described: str, fields: Sequence[str] = ("email",)) -> None:
    """Protected, and when it reached the app, the app parsed tokens where the values were."""
    assert_protected(outcome, described)
    if outcome.record is not None:
        doc = outcome.record["json"]
        assert isinstance(doc, dict), described
        for name in fields:
            token = doc.get(name)
            pattern = EMAIL_TOKEN if name == "email" else OPAQUE_TOKEN
            assert isinstance(token, str) and pattern.match(token), described


def person_json(p: Planted) -> bytes:
    return json.dumps({"email": p.email, "phone": p.phone, "name": p.name, "plan": "pro"}).encode()


def run(stack: Stack, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes,
        values: Sequence[str], *, chunk: bool = False) -> tuple[Outcome, str]:
    outcome = stack.exchange(method, target, headers, body, values, chunk=chunk)
    return outcome, f"[{stack.kind}] " + describe(outcome, method, target, headers, body)


# -- the harness itself: tokens are real, and a leak is seen -----------------------------------------------------


def test_baseline_json_is_tokenized_and_tokens_resolve(stack: Stack) -> None:
    p = Planted()
    outcome, described = run(stack, "POST", "/api/users", JSON_CT, person_json(p), p.values())
    assert outcome.kind == "reached", described
    doc = outcome.record["json"]  # type: ignore[index]
    assert EMAIL_TOKEN.match(doc["email"]) and OPAQUE_TOKEN.match(doc["phone"]) and OPAQUE_TOKEN.match(doc["name"])
    assert doc["plan"] == "pro"
    assert stack.vault().detokenize([doc["email"], doc["phone"], doc["name"]], "plain") == [p.email, p.phone, p.name]


def test_baseline_multipart_and_form_are_tokenized(stack: Stack) -> None:
    p = Planted()
    body = (b"--b0undary\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\n" + p.email.encode()
            + b"\r\n--b0undary\r\nContent-Disposition: form-data; name=\"card\"; filename=\"c.txt\"\r\n"
            + b"Content-Type: text/plain\r\n\r\n" + p.card.encode() + b"\r\n--b0undary--\r\n")
    outcome, described = run(stack, "POST", "/forms/x", [("Content-Type", "multipart/form-data; boundary=b0undary")],
                             body, p.values())
    assert outcome.kind == "reached", described
    form = dict(outcome.record["form"])  # type: ignore[index]
    files = {name: content for name, _filename, content in outcome.record["files"]}  # type: ignore[index]
    assert OPAQUE_TOKEN.match(form["email"]), described
    assert OPAQUE_TOKEN.match(base64.b64decode(files["card"]).decode()), described
    body = urllib.parse.urlencode({"email": p.email, "card": p.card, "other": "ok"}).encode()
    outcome, described = run(stack, "POST", "/forms/y", [("Content-Type", "application/x-www-form-urlencoded")],
                             body, p.values())
    assert outcome.kind == "reached", described
    form = dict(outcome.record["form"])  # type: ignore[index]
    assert OPAQUE_TOKEN.match(form["email"]) and OPAQUE_TOKEN.match(form["card"]) and form["other"] == "ok"


def test_baseline_notes_text_is_scanned(stack: Stack) -> None:
    p = Planted()
    for body, content_type in [(f"call {p.phone} or mail {p.email}".encode(), "text/plain"),
                               (json.dumps({"note": f"mail {p.email}"}).encode(), "application/json")]:
        outcome, described = run(stack, "POST", "/notes", [("Content-Type", content_type)], body,
                                 [p.email, p.phone])
        assert outcome.kind == "reached", described


def test_harness_sees_a_leak(stack: Stack) -> None:
    # No route protects /public: the plaintext reaches the app, and the harness must say so (a check that could
    # never fail would prove nothing).
    p = Planted()
    outcome, described = run(stack, "POST", "/public", JSON_CT, person_json(p), p.values())
    assert outcome.kind == "leaked" and set(outcome.leaked) == {p.email, p.phone, p.name}, described
    assert "json" in outcome.leaked[p.email] and "body" in outcome.leaked[p.email]
    gz = gzip.compress(person_json(p))
    outcome, described = run(stack, "POST", "/public", [*JSON_CT, ("Content-Encoding", "gzip")], gz, p.values())
    assert outcome.kind == "leaked" and outcome.leaked[p.email] == ["body"], described
    wide = person_json(p).decode().encode("utf-16-le")
    outcome, described = run(stack, "POST", "/public", JSON_CT, wide, p.values())
    assert outcome.kind == "leaked" and "json" in outcome.leaked[p.name], described


# -- findings: paths ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "/api/%75sers", "/%61pi/users", "/api%2fusers", "/api/./users", "/api/x/../users", "/API/USERS", "//api//users",
    "/api/users;x=1", "/api/%55SERS", "/api/users/", "/./api/users", "/api/users%3bx=1",
])
def test_path_spellings_of_the_signup_route(stack: Stack, target: str) -> None:
    p = Planted()
    outcome, described = run(stack, "POST", target, JSON_CT, person_json(p), p.values())
    assert_json_tokenized(outcome, described, ("email", "phone", "name"))


@pytest.mark.parametrize("target", ["/static/%2e%2e/forms/x", "/forms/x/%2e%2e/%2e%2e/forms/y",
                                    "/x/%2E%2E/forms/x", "/x/.%2e/forms/x"])
def test_path_dot_dot_escapes_to_the_upload_route(stack: Stack, target: str) -> None:
    p = Planted()
    body = urllib.parse.urlencode({"email": p.email, "card": p.card}).encode()
    outcome, described = run(stack, "POST", target, [("Content-Type", "application/x-www-form-urlencoded")], body,
                             p.values())
    assert_protected(outcome, described)


def test_unanchored_glob_does_not_take_other_paths(stack: Stack) -> None:
    # Not the signup route: it must reach the app exactly as sent, untokenized (no PII planted here).
    tag = secrets.token_hex(4)
    sent = {"email": f"not-pii-{tag}@example.com", "name": f"Not Pii {tag}"}
    body = json.dumps(sent).encode()
    outcome, described = run(stack, "POST", "/v2/internal/api/users", JSON_CT, body, [])
    assert outcome.kind == "reached", described
    record = outcome.record
    assert record is not None and record["path"] == "/v2/internal/api/users", described
    assert record["json"] == sent, described
    raw = base64.b64decode(record["body"])
    assert raw == body and not ANY_TOKEN.search(raw.decode()), described


# -- findings: JSON the sidecar might not recognise ---------------------------------------------------------------

WIDE_ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
ODD_CONTENT_TYPES = [None, "application/vnd.api+json", "text/plain", "application/x-www-form-urlencoded"]


def test_json_after_a_utf8_bom_as_text_plain(stack: Stack) -> None:
    p = Planted()
    outcome, described = run(stack, "POST", "/api/users", [("Content-Type", "text/plain")],
                             codecs.BOM_UTF8 + person_json(p), p.values())
    assert_json_tokenized(outcome, described)


@pytest.mark.parametrize("content_type", ODD_CONTENT_TYPES, ids=lambda c: str(c))
@pytest.mark.parametrize("encoding", WIDE_ENCODINGS)
def test_json_in_utf16_or_utf32(stack: Stack, encoding: str, content_type: str | None) -> None:
    p = Planted()
    body = person_json(p).decode().encode(encoding)  # "utf-16"/"utf-32": with a BOM; -le/-be: without
    headers = [("Content-Type", content_type)] if content_type else []
    outcome, described = run(stack, "POST", "/api/users", headers, body, p.values())
    assert_json_tokenized(outcome, described)


@pytest.mark.parametrize("order", ["values-first", "values-last"])
def test_json_duplicate_keys(stack: Stack, order: str) -> None:
    p = Planted()
    if order == "values-first":  # the brief's {"email": "x@y", "name": "N", "email": null, "name": null}
        body = f'{{"email": "{p.email}", "name": "{p.name}", "email": null, "name": null}}'
    else:
        body = f'{{"email": "decoy@example.net", "name": null, "email": "{p.email}", "name": "{p.name}"}}'
    outcome, described = run(stack, "POST", "/api/users", JSON_CT, body.encode(), p.values())
    assert_protected(outcome, described)


def test_form_body_sent_to_the_json_route(stack: Stack) -> None:
    p = Planted()
    body = urllib.parse.urlencode({"email": p.email, "phone": p.phone}).encode()
    outcome, described = run(stack, "POST", "/api/users", [("Content-Type", "application/x-www-form-urlencoded")],
                             body, p.values())
    assert_protected(outcome, described)


def test_a_route_with_a_subject_refuses_a_body_without_it(stack: Stack) -> None:
    p = Planted()
    body = json.dumps({"name": p.name}).encode()
    outcome, described = run(stack, "POST", "/api/users", JSON_CT, body, p.values())
    assert outcome.kind == "refused", described  # the sidecar's JSON error with a 4xx, and the app saw nothing
    assert outcome.answer is not None and json.loads(outcome.answer.body)["route"] == "signup", described


def test_refusals_name_no_file_or_rule_line(stack: Stack) -> None:
    # Refusals of several kinds (one of them about a rule, whose FILE:LINE the sidecar knows): the client is told
    # the route and the reason, never a path or a rule's line. exchange() checks every refusal body the same way
    # (an Outcome of kind `refusal-tells-too-much`); this test makes sure some are checked.
    p = Planted()
    cases = [
        ("/api/users", json.dumps({"email": p.email, "name": {"first": p.name}}).encode()),  # an object for $.name
        ("/api/users", f'{{"email": "{p.email}", "email": null}}'.encode()),
        ("/api/users", json.dumps({"name": p.name}).encode()),
        ("/api%2fusers", person_json(p)),
    ]
    for target, body in cases:
        outcome, described = run(stack, "POST", target, JSON_CT, body, p.values())
        # Every one of these is the client's doing: a 4xx.
        assert outcome.kind == "refused" and outcome.answer is not None, described
        text = outcome.answer.body.decode()
        assert not SERVER_DETAIL.search(text) and "rules.yaml" not in text and str(stack.workdir) not in text, text


# -- findings: multipart field names and framing -------------------------------------------------------------------

# Content-Disposition values that a real parser reads as the field `email` (Werkzeug, python-multipart, or RFC 7578 /
# RFC 2231 as written): the sidecar must tokenize that field or refuse the body.
DISPOSITIONS = {
    "unquoted": 'form-data; name=email',
    "rfc2231": "form-data; name*=UTF-8''email",
    "two-names": 'form-data; name="x"; name="email"',
    "quoted-pair": 'form-data; name="em\\ail"',
    "spaces-around-equals": 'form-data; name = "email"',
    "filename-holding-name": 'form-data; filename="a name="; name="email"',
    "upper-case": 'FORM-DATA; NAME="email"',
}


def multipart(parts: Sequence[tuple[str, bytes]], boundary: str, newline: bytes = b"\r\n") -> bytes:
    out = b""
    for disposition, value in parts:
        out += (b"--" + boundary.encode() + newline + b"Content-Disposition: " + disposition.encode() + newline
                + newline + value + newline)
    return out + b"--" + boundary.encode() + b"--" + newline


@pytest.mark.parametrize("spelling", list(DISPOSITIONS))
def test_multipart_field_name_spellings(stack: Stack, spelling: str) -> None:
    p = Planted()
    body = multipart([('form-data; name="note"', b"hello"), (DISPOSITIONS[spelling], p.email.encode())], "xyz")
    outcome, described = run(stack, "POST", "/forms/x", [("Content-Type", "multipart/form-data; boundary=xyz")],
                             body, p.values())
    assert_protected(outcome, described)


def test_multipart_bare_lf(stack: Stack) -> None:
    p = Planted()
    body = multipart([('form-data; name="email"', p.email.encode()), ('form-data; name="card"', p.card.encode())],
                     "xyz", b"\n")
    outcome, described = run(stack, "POST", "/forms/x", [("Content-Type", "multipart/form-data; boundary=xyz")],
                             body, p.values())
    assert_protected(outcome, described)


def decoy_framed(boundary: str, decoy: str, parts: Sequence[tuple[str, bytes]]) -> bytes:
    """A body that is one harmless part under `decoy` and the real parts under `boundary`: the first real part's
    value opens the decoy framing, and the epilogue closes it."""
    opening = (f"--{decoy}\r\nContent-Disposition: form-data; name=\"decoy\"\r\n\r\nx").encode()
    body = multipart([('form-data; name="note"', opening), *parts], boundary)
    return body + f"\r\n--{decoy}--\r\n".encode()


@pytest.mark.parametrize("content_type", [
    "multipart/form-data; xboundary=a; boundary=b",
    "multipart/form-data; boundary=a; boundary=b",
])
def test_multipart_decoy_boundary_parameter(stack: Stack, content_type: str) -> None:
    p = Planted()
    for body in (multipart([('form-data; name="email"', p.email.encode())], "b"),
                 decoy_framed("b", "a", [('form-data; name="email"', p.email.encode()),
                                         ('form-data; name="card"', p.card.encode())])):
        outcome, described = run(stack, "POST", "/forms/x", [("Content-Type", content_type)], body, p.values())
        assert_protected(outcome, described)


# -- generated variants ----------------------------------------------------------------------------------------

SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate], print_blob=False,
                    suppress_health_check=list(HealthCheck))


@dataclass
class Variant:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    values: list[str]
    chunk: bool = False
    label: str = ""


@dataclass
class Tally:
    name: str
    kind: str
    outcomes: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)  # leaked variants by label
    reasons: Counter[str] = field(default_factory=Counter)  # the sidecar's refusals by status and message
    failures: list[str] = field(default_factory=list)
    skipped: int = 0  # not sent: past the property's time budget

    @property
    def examples(self) -> int:
        return sum(v for k, v in self.outcomes.items() if not k.startswith("leaked-"))

    def line(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items()))
        labels = f"; leaked by label: {dict(self.labels.most_common(8))}" if self.labels else ""
        skipped = f", {self.skipped} not sent (over the time budget)" if self.skipped else ""
        return f"[bypass] {self.name} on {self.kind}: {self.examples} generated variants ({parts}){skipped}{labels}"

    def refusals(self) -> list[str]:
        return [f"    {count:4d} x {reason}" for reason, count in self.reasons.most_common(6)]


def _report(request: pytest.FixtureRequest, tally: Tally) -> None:
    request.node.user_properties.append(("generated_examples", tally.examples))
    path = request.config._tmp_path_factory.getbasetemp() / "bypass-examples.json"  # type: ignore[attr-defined]
    data = json.loads(path.read_text()) if path.exists() else {}
    data[f"{tally.name}[{tally.kind}]"] = {"examples": tally.examples, **dict(tally.outcomes)}
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(tally.line())
            for line in tally.refusals():
                reporter.write_line(line)


BAD = ("leaked", "error", "refused-5xx", "refusal-tells-too-much")


def run_property(request: pytest.FixtureRequest, stack: Stack, name: str,
                 strategy: st.SearchStrategy[Variant]) -> None:
    """Every generated variant is sent; leaks and harness errors are collected, and the test fails after all of
    them ran, with the counts and the first few variants that leaked."""
    tally = Tally(name, stack.kind)
    deadline = time.monotonic() + PROPERTY_BUDGET

    @SETTINGS
    @given(strategy)
    def one(variant: Variant) -> None:
        if time.monotonic() > deadline:
            tally.skipped += 1
            return
        outcome = stack.exchange(variant.method, variant.target, variant.headers, variant.body, variant.values,
                                 chunk=variant.chunk)
        tally.outcomes[outcome.kind] += 1
        if outcome.kind.startswith("refused") and outcome.answer is not None:
            tally.reasons[f"{outcome.answer.status} {outcome.detail.removeprefix('tokenbunker: ')[:110]}"] += 1
        if outcome.kind == "leaked":
            # "parsed": the app's JSON, form, files or query held the value; "raw": only the bytes it received did.
            parsed = any(s in ("json", "form", "files", "query") for where in outcome.leaked.values() for s in where)
            tally.outcomes["leaked-and-parsed" if parsed else "leaked-raw-only"] += 1
        if outcome.kind in BAD:
            tally.labels[f"{outcome.kind}:{variant.label}"] += 1
            if len(tally.failures) < 6:
                tally.failures.append(f"[{variant.label}] " + describe(outcome, variant.method, variant.target,
                                                                       variant.headers, variant.body))

    one()
    _report(request, tally)
    # A 5xx from the sidecar leaks nothing, but a refusal of what the client sent is a 4xx: counted as a failure,
    # under its own name (refused-5xx), apart from the leaks.
    bad = sum(tally.outcomes[k] for k in BAD)
    assert tally.examples >= MAX_EXAMPLES // 2, tally.line()
    assert bad == 0, tally.line() + "\n\n" + "\n\n".join(tally.failures)


# -- strategies: paths -----------------------------------------------------------------------------------------


def rng(draw: st.DrawFn) -> random.Random:
    """Fine-grained choices (which character to encode, where to cut) come from a seeded PRNG drawn once: Hypothesis
    drives the seed and the coarse choices, and the rare flags keep the rates they are written with (Hypothesis's own
    small integers favour 0, which made a 1-in-20 option one in three)."""
    return random.Random(draw(st.integers(0, 2**64 - 1)))


def _pct(ch: str, rnd: random.Random) -> str:
    return "".join(f"%{b:02X}" if rnd.random() < 0.5 else f"%{b:02x}" for b in ch.encode())


@st.composite
def api_users_paths(draw: st.DrawFn) -> tuple[str, str]:
    """A spelling of /api/users (or below it) that an app routes as that path: random characters percent-encoded
    or in another case, dot segments (after a junk segment, so they resolve back), doubled slashes, trailing
    slash, `;params`. Returns (target, label)."""
    rnd = rng(draw)
    segments = ["api", "users"] + draw(st.sampled_from([[], ["42"], ["me", "profile"]]))
    p_pct = draw(st.sampled_from([0.0, 0.15, 0.4]))
    p_case = draw(st.sampled_from([0.0, 0.3, 1.0]))
    p_dots = draw(st.sampled_from([0.0, 0.3, 0.6]))
    p_double = draw(st.sampled_from([0.0, 0.3]))
    labels = set()

    def spell(segment: str) -> str:
        out = []
        for ch in segment:
            if ch.isalpha() and rnd.random() < p_case:
                ch = ch.swapcase()
                labels.add("case")
            if rnd.random() < p_pct:
                out.append(_pct(ch, rnd))
                labels.add("pct")
            else:
                out.append(ch)
        if rnd.random() < 0.1:
            out.append(rnd.choice([";x=1", ";jsessionid=ab", ";", "%3Bv=2"]))
            labels.add("params")
        return "".join(out)

    pieces: list[str] = []
    for i, segment in enumerate(segments):
        while rnd.random() < p_dots:
            # Encoded dots (%2e) are refused by the sidecar as they stand: a few of them, most dots plain.
            choice = rnd.choice([".", ".", "dotdot", "dotdot", "%2e"] if i else [".", "..", "dotdot"])
            if choice == "dotdot":
                pieces += [rnd.choice(["x", "users", "%C3%A9", "a;b=c", "API"]),
                           rnd.choice(["..", "..", "..", "%2e%2e", ".%2E"])]
            else:
                pieces.append(choice)
            labels.add("dots")
        while rnd.random() < p_double:
            pieces.append("")
            labels.add("double-slash")
        pieces.append(spell(segment))
    target = "/" + "/".join(pieces)
    if draw(st.booleans()):
        target += rnd.choice(["/", "//", "/.", "/./"])
        labels.add("trailing")
    if rnd.random() < 1 / 10:
        target = "/" + target
        labels.add("leading-double")
    if rnd.random() < 1 / 5:
        target += "?page=2&x=%2F"
    return target, "+".join(sorted(labels)) or "plain"


@st.composite
def path_variants(draw: st.DrawFn) -> Variant:
    target, label = draw(api_users_paths())
    p = Planted()
    method = draw(st.sampled_from(["POST", "PUT", "PATCH"]))
    return Variant(method, target, list(JSON_CT), person_json(p), p.values(), label=label)


def test_generated_paths(request: pytest.FixtureRequest, stack: Stack) -> None:
    run_property(request, stack, "paths", path_variants())


# -- strategies: JSON bodies -----------------------------------------------------------------------------------


class Obj:
    """A JSON object as a list of pairs, so a key may appear twice."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def dump(value: Any, rnd: random.Random, p_escape: float) -> str:
    ws = rnd.choice(["", " ", "\n  ", "\t", "\r\n"]) if rnd.random() < 0.3 else ""
    if isinstance(value, Obj):
        items = [f"{ws}{dump(k, rnd, p_escape)}{ws}:{ws}{dump(v, rnd, p_escape)}" for k, v in value.pairs]
        return "{" + ",".join(items) + ws + "}"
    if isinstance(value, list):
        return "[" + ",".join(ws + dump(v, rnd, p_escape) for v in value) + ws + "]"
    if isinstance(value, str):
        out = []
        for ch in value:
            if rnd.random() < p_escape:
                if ord(ch) > 0xFFFF:
                    hi, lo = divmod(ord(ch) - 0x10000, 0x400)
                    out.append(f"\\u{0xD800 + hi:04x}\\u{0xDC00 + lo:04X}")
                else:
                    out.append(f"\\u{ord(ch):04x}" if rnd.random() < 0.5 else f"\\u{ord(ch):04X}")
            elif ch == "/" and rnd.random() < 0.5:
                out.append("\\/")
            else:
                out.append(json.dumps(ch, ensure_ascii=rnd.random() < 0.5)[1:-1])
        return '"' + "".join(out) + '"'
    if isinstance(value, float) and value != value:
        return "NaN"
    return json.dumps(value)


NOISE = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text("abcxyz é✓", max_size=6),
    # Objects with unique keys: a key twice is its own variant (below), counted under its label.
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["a", "b", "email", "phone", "name", "tags"]), children,
                      max_size=3).map(lambda d: Obj(list(d.items()))),
    max_leaves=8,
)
JSON_CONTENT_TYPES = [
    None, "application/json", "application/json; charset=utf-8", "application/json;charset=UTF-16",
    "application/json; charset=latin-1", "APPLICATION/JSON", "application/vnd.api+json",
    "application/problem+json; charset=utf-8", "text/json", "text/plain", "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded", "application/octet-stream", "multipart/form-data; boundary=zz",
    "application/jsonx", "application/merge-patch+json",
]
JSON_ENCODINGS = ["utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
                  "utf-32-be"]


@st.composite
def json_variants(draw: st.DrawFn) -> Variant:
    rnd = rng(draw)
    p = Planted()
    labels = []
    phone: Any = p.phone
    if rnd.random() < 1 / 6:
        phone = int("".join(c for c in p.phone if c.isdigit()))
        labels.append("phone-number")
    name = p.name if draw(st.booleans()) else f"Plain Name {p.tag}"
    values = [p.email, p.phone, name]
    pairs: list[tuple[str, Any]] = [("email", p.email)]
    if draw(st.booleans()):
        pairs.append(("phone", phone))
    if draw(st.booleans()):
        pairs.append(("name", name))
    pairs += list(draw(st.dictionaries(st.sampled_from(["meta", "plan", "tags", "n"]), NOISE, max_size=3)).items())
    rnd.shuffle(pairs)
    if rnd.random() < 1 / 4:
        key = rnd.choice([k for k, _ in pairs if k in ("email", "phone", "name")])
        decoy = draw(st.sampled_from([None, "decoy", "", 7, {"a": 1}]))
        where = rnd.randrange(len(pairs) + 1)
        pairs.insert(where, (key, Obj([("a", 1)]) if isinstance(decoy, dict) else decoy))
        labels.append("duplicate-key")
    if rnd.random() < 1 / 10:
        pairs.append(("nan", float("nan")))
    p_escape = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5]))
    if p_escape:
        labels.append("escapes")
    text = dump(Obj(pairs), rnd, p_escape)
    if rnd.random() < 1 / 5:
        text = rnd.choice([" ", "\r\n", "\t\n "]) + text + rnd.choice(["", "\n", "  "])
        labels.append("whitespace")
    if rnd.random() < 1 / 20:
        text += " trailing"
        labels.append("trailing-garbage")
    encoding = draw(st.sampled_from(JSON_ENCODINGS))
    labels.append(encoding)
    body = text.encode(encoding, "surrogatepass")
    content_type = draw(st.sampled_from(JSON_CONTENT_TYPES))
    labels.append(f"ct={content_type}")
    headers = [("Content-Type", content_type)] if content_type else []
    method = draw(st.sampled_from(["POST", "PUT", "PATCH"]))
    target = draw(st.sampled_from(["/api/users", "/api/users/7", "/api/users/"]))
    return Variant(method, target, headers, body, values, chunk=rnd.random() < 1 / 5, label=" ".join(labels))


def test_generated_json_bodies(request: pytest.FixtureRequest, stack: Stack) -> None:
    run_property(request, stack, "json", json_variants())


# -- strategies: form and multipart framing ------------------------------------------------------------------------

BCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?"


def name_disposition(name: str, style: str, rnd: random.Random) -> str:
    """A Content-Disposition whose field name a real parser reads as `name`."""
    if style == "unquoted":
        return f"form-data; name={name}"
    if style == "rfc2231":
        return f"form-data; name*=UTF-8''{name}"
    if style == "two-names":
        return f'form-data; name="other"; name="{name}"'
    if style == "quoted-pair":
        i = rnd.randrange(len(name))
        return f'form-data; name="{name[:i]}\\{name[i:]}"'
    if style == "spaces-around-equals":
        return f'form-data; name = "{name}"'
    if style == "filename-holding-name":
        return f'form-data; filename="a name="; name="{name}"'
    if style == "upper-case":
        return f'FORM-DATA; NAME="{name}"'
    if style == "filename-first":
        return f'form-data; filename="f.txt"; name="{name}"'
    if style == "tab":
        return f'form-data;\tname="{name}"'
    if style == "no-space":
        return f'form-data;name="{name}"'
    if style == "trailing-semicolon":
        return f'form-data; name="{name}";'
    if style == "extra-param":
        return f'form-data; x-note="y"; name="{name}"'
    return f'form-data; name="{name}"'


NAME_STYLES = ["plain", "plain", "plain", "unquoted", "rfc2231", "two-names", "quoted-pair", "spaces-around-equals",
               "filename-holding-name", "upper-case", "filename-first", "tab", "no-space", "trailing-semicolon",
               "extra-param"]
BOUNDARY_STYLES = ["plain", "plain", "quoted", "upper-param", "charset-first", "charset-last", "xboundary-decoy",
                   "duplicate-decoy", "spaces", "mixed-case-type"]


def boundary_content_type(boundary: str, style: str) -> str:
    quoted = f'"{boundary}"' if any(c in boundary for c in "'()+,/:=?") else boundary
    return {
        "plain": f"multipart/form-data; boundary={quoted}",
        "quoted": f'multipart/form-data; boundary="{boundary}"',
        "upper-param": f"multipart/form-data; BOUNDARY={quoted}",
        "charset-first": f"multipart/form-data; charset=utf-8; boundary={quoted}",
        "charset-last": f"multipart/form-data; boundary={quoted}; charset=utf-8",
        "xboundary-decoy": f"multipart/form-data; xboundary=decoy; boundary={quoted}",
        "duplicate-decoy": f"multipart/form-data; boundary=decoy; boundary={quoted}",
        "spaces": f"multipart/form-data ; boundary = {quoted}",
        "mixed-case-type": f"Multipart/Form-Data; boundary={quoted}",
    }[style]


@st.composite
def multipart_variants(draw: st.DrawFn) -> Variant:
    rnd = rng(draw)
    p = Planted()
    labels: list[str] = []
    boundary = draw(st.text(BCHARS, min_size=1, max_size=30).filter(lambda b: not b.endswith(" ")))
    if "decoy" in boundary:
        boundary = "b" + boundary.replace("decoy", "")
    b_style = draw(st.sampled_from(BOUNDARY_STYLES))
    labels.append(f"boundary:{b_style}")
    fields: list[tuple[str, str, bytes, bool]] = []  # (disposition, extra headers, value, is_pii)
    for name, value in (("email", p.email), ("card", p.card)):
        style = draw(st.sampled_from(NAME_STYLES))
        labels.append(f"{name}:{style}")
        disposition = name_disposition(name, style, rnd)
        if name == "card" and draw(st.booleans()):
            disposition += '; filename="card.txt"'
        extra = draw(st.sampled_from(["", "Content-Type: text/plain; charset=utf-8", "content-type: text/plain",
                                      "Content-Transfer-Encoding: 8bit"]))
        fields.append((disposition, extra, value.encode(), True))
    for i in range(draw(st.integers(0, 3))):
        fields.append((f'form-data; name="note{i}"', "", f"hello {i}".encode(), False))
    if rnd.random() < 1 / 6:
        # A second part for the field, a decoy before or after the real value: the app keeps both (getlist).
        fields.append(('form-data; name="email"', "", b"decoy@example.net", False))
        labels.append("repeated-field")
    if rnd.random() < 1 / 7:
        # Two Content-Disposition headers: a parser may take either.
        disposition, extra, value, pii = fields[0]
        fields[0] = ('form-data; name="decoy"', f"Content-Disposition: {disposition}", value, pii)
        labels.append("two-dispositions")
    rnd.shuffle(fields)
    newline_style = draw(st.sampled_from(["crlf"] * 6 + ["lf", "mixed"]))
    labels.append(f"newline:{newline_style}")

    def nl() -> bytes:
        if newline_style == "crlf":
            return b"\r\n"
        if newline_style == "lf":
            return b"\n"
        return rnd.choice([b"\r\n", b"\n"])

    delim = b"--" + boundary.encode()
    body = b""
    if rnd.random() < 1 / 8:
        body += b"preamble text" + nl()
        labels.append("preamble")
    for disposition, extra, value, _pii in fields:
        body += delim + nl() + b"Content-Disposition: " + disposition.encode() + nl()
        if extra:
            body += extra.encode() + nl()
        body += nl() + value + nl()
    body += delim + b"--" + nl()
    if b_style in ("xboundary-decoy", "duplicate-decoy") and draw(st.booleans()):
        # The body also framed by the decoy boundary as one harmless part (the sidecar may read that one).
        opening = b"--decoy\r\nContent-Disposition: form-data; name=\"decoy\"\r\n\r\nx"
        body = (delim + b"\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n" + opening + b"\r\n" + body
                + b"\r\n--decoy--\r\n")
        labels.append("decoy-framing")
    if rnd.random() < 1 / 8:
        body += b"epilogue" + nl()
        labels.append("epilogue")
    headers = [("Content-Type", boundary_content_type(boundary, b_style))]
    target = "/forms/" + draw(st.sampled_from(["x", "upload", "a/b"]))
    return Variant("POST", target, headers, body, [p.email, p.card], chunk=rnd.random() < 1 / 6,
                   label=" ".join(labels))


@st.composite
def urlencoded_variants(draw: st.DrawFn) -> Variant:
    rnd = rng(draw)
    p = Planted()
    labels = []
    p_key = draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]))
    if p_key:
        labels.append("encoded-keys")

    def key(name: str) -> str:
        return "".join(_pct(c, rnd) if rnd.random() < p_key else c for c in name)

    def value(text: str) -> str:
        how = rnd.choice(["plus", "quote", "all"])
        if how == "plus":
            return urllib.parse.quote_plus(text)
        if how == "quote":
            return urllib.parse.quote(text, safe="@")
        return "".join(_pct(c, rnd) for c in text)

    pairs = [f"{key('email')}={value(p.email)}", f"{key('card')}={value(p.card)}"]
    pairs += [f"note{i}={value('hi there')}" for i in range(draw(st.integers(0, 3)))]
    if rnd.random() < 1 / 5:
        pairs.append(f"email={value('decoy@example.net')}")
        labels.append("repeated-field")
    rnd.shuffle(pairs)
    sep = "&&" if rnd.random() < 1 / 10 else "&"
    body = sep.join(pairs)
    if rnd.random() < 1 / 10:
        body = "&" + body + "&"
    content_type = draw(st.sampled_from(["application/x-www-form-urlencoded",
                                         "application/x-www-form-urlencoded; charset=UTF-8",
                                         "Application/X-WWW-Form-Urlencoded", None]))
    labels.append(f"ct={content_type}")
    headers = [("Content-Type", content_type)] if content_type else []
    target = "/forms/" + draw(st.sampled_from(["x", "upload"]))
    return Variant("POST", target, headers, body.encode(), [p.email, p.card], chunk=rnd.random() < 1 / 6,
                   label="urlencoded " + " ".join(labels))


def test_generated_forms(request: pytest.FixtureRequest, stack: Stack) -> None:
    run_property(request, stack, "forms", st.one_of(multipart_variants(), multipart_variants(),
                                                    urlencoded_variants()))


# -- strategies: compressed bodies -------------------------------------------------------------------------------


def _split(data: bytes, rnd: random.Random, pieces: int) -> list[bytes]:
    cuts = sorted(rnd.randrange(len(data) + 1) for _ in range(pieces - 1))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


CODINGS: dict[str, Callable[[bytes, random.Random], tuple[str, bytes]]] = {
    "gzip": lambda d, r: ("gzip", gzip.compress(d)),
    "x-gzip": lambda d, r: ("x-gzip", gzip.compress(d)),
    "GZIP": lambda d, r: ("GZIP", gzip.compress(d)),
    "gzip-multi-member": lambda d, r: ("gzip", b"".join(gzip.compress(x) for x in _split(d, r, r.randint(2, 4)))),
    "gzip-with-empty-member": lambda d, r: ("gzip", gzip.compress(b"") + gzip.compress(d)),
    "gzip-holding-zlib": lambda d, r: ("gzip", zlib.compress(d)),
    "deflate-zlib": lambda d, r: ("deflate", zlib.compress(d)),
    "deflate-raw": lambda d, r: ("deflate", zlib.compress(d, wbits=-zlib.MAX_WBITS)),
    "br": lambda d, r: ("br", brotli.compress(d)),
    "zstd": lambda d, r: ("zstd", zstd.compress(d)),
    "zstd-multi-frame": lambda d, r: ("zstd", b"".join(zstd.compress(x) for x in _split(d, r, r.randint(2, 4)))),
    "zstd-skippable-frame": lambda d, r: ("zstd", b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip"
                                          + zstd.compress(d)),
    "identity": lambda d, r: ("identity", d),
    "gzip-identity": lambda d, r: ("gzip, identity", gzip.compress(d)),
    "stacked-deflate-gzip": lambda d, r: ("deflate, gzip", gzip.compress(zlib.compress(d))),
    "stacked-gzip-br": lambda d, r: ("gzip, br", brotli.compress(gzip.compress(d))),
}


@st.composite
def compressed_variants(draw: st.DrawFn) -> Variant:
    rnd = rng(draw)
    p = Planted()
    coding = draw(st.sampled_from(list(CODINGS)))
    doc = {"email": p.email, "phone": p.phone, "name": p.name, "pad": "x" * draw(st.integers(0, 3000))}
    data = json.dumps(doc).encode()
    if rnd.random() < 1 / 5:
        data = data.decode().encode("utf-16")
        coding_label = f"{coding} utf-16"
    else:
        coding_label = coding
    header, body = CODINGS[coding](data, rnd)
    headers = [("Content-Encoding", header)]
    content_type = draw(st.sampled_from(["application/json", None, "text/plain"]))
    if content_type:
        headers.insert(0, ("Content-Type", content_type))
    return Variant(draw(st.sampled_from(["POST", "PUT"])), "/api/users", headers, body, p.values()[:3],
                   chunk=rnd.random() < 1 / 4, label=coding_label)


def test_generated_compressed_bodies(request: pytest.FixtureRequest, stack: Stack) -> None:
    run_property(request, stack, "compressed", compressed_variants())
