"""Built-in detectors (rules/detectors.py): API, one table per precision rule, overlaps, sub, the labelled corpus
(precision/recall per detector; `-s` prints the table) and property tests.

The corpus tests/rules/corpus/detectors.jsonl has one case a line: {"text", "expect": [{"detector", "value"}],
optional "country" (default GB) and "note"}. Every detector runs on every line, so each expectation also says what
the other detectors must not report.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.detectors import DETECTORS, KIND_OF, Detector, Finding, _resolve

CORPUS = Path(__file__).parent / "corpus" / "detectors.jsonl"
ALL = Detector(DETECTORS)


def found(text: str, det: Detector = ALL) -> list[tuple[str, str]]:
    return [(f.detector, text[f.start : f.end]) for f in det.find(text)]


def values(text: str, name: str, country: str = "GB") -> list[str]:
    return [text[f.start : f.end] for f in Detector([name], default_country=country).find(text)]


# ------------------------------------------------------------------------------------------------------------ API
def test_constants() -> None:
    assert DETECTORS == ("ipv4", "ipv6", "email", "phone", "card")
    assert KIND_OF == {"ipv4": "ip", "ipv6": "ip", "email": "email", "phone": "phone", "card": "card"}


def test_unknown_detector_is_a_value_error_naming_the_choices() -> None:
    with pytest.raises(ValueError) as e:
        Detector(["ipv4", "x"])
    assert str(e.value) == "unknown detector 'x': use one of ipv4, ipv6, email, phone, card"


def test_unknown_country_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown default_country 'XX'"):
        Detector(["phone"], default_country="XX")


def test_names_are_deduplicated_in_detectors_order_and_a_str_is_one_name() -> None:
    assert Detector(["email", "ipv4", "email"]).names == ("ipv4", "email")
    assert Detector("ipv6").names == ("ipv6",)
    assert Detector(["phone"], default_country="us").default_country == "US"
    assert Detector([]).find("10.0.0.1 jo@example.com") == []
    assert not Detector([]).has_candidate("10.0.0.1")


def test_detector_is_immutable() -> None:
    d = Detector(["ipv4"])
    with pytest.raises(AttributeError):
        d._names = ("ipv6",)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        d.extra = 1  # type: ignore[attr-defined]


def test_finding_is_a_frozen_value() -> None:
    (f,) = Detector(["ipv4"]).find("from 10.0.0.1 ok")
    assert f == Finding(5, 13, "ip", "ipv4")
    assert hash(f) == hash(Finding(5, 13, "ip", "ipv4"))
    with pytest.raises(AttributeError):
        f.start = 0  # type: ignore[misc]


def test_find_returns_kinds_offsets_and_detectors() -> None:
    text = "jo@example.com from 10.0.0.1 / 2001:db8::1, +44 20 7946 0958, 4111 1111 1111 1111"
    got = ALL.find(text)
    assert [(f.detector, f.kind, text[f.start : f.end]) for f in got] == [
        ("email", "email", "jo@example.com"),
        ("ipv4", "ip", "10.0.0.1"),
        ("ipv6", "ip", "2001:db8::1"),
        ("phone", "phone", "+44 20 7946 0958"),
        ("card", "card", "4111 1111 1111 1111"),
    ]


def test_only_the_chosen_detectors_run() -> None:
    text = "jo@example.com from 10.0.0.1 / 2001:db8::1"
    assert found(text, Detector(["ipv6"])) == [("ipv6", "2001:db8::1")]
    assert found(text, Detector(["ipv4", "email"])) == [("email", "jo@example.com"), ("ipv4", "10.0.0.1")]


# ------------------------------------------------------------------------------------------------------------ ipv4
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from 10.0.0.1 port 22", ["10.0.0.1"]),
        ("Blocked request from 10.0.0.1.", ["10.0.0.1"]),  # sentence end
        ("timeout talking to 10.0.0.1...", ["10.0.0.1"]),
        ("10.0.0.1:8080", ["10.0.0.1"]),  # port
        ("allow 10.0.0.0/8;", ["10.0.0.0"]),  # CIDR: the /8 stays
        ("[10.0.0.1] (10.0.0.2) =10.0.0.3 \"10.0.0.4\" ,10.0.0.5\t10.0.0.6",
         ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]),
        ("0.0.0.0 255.255.255.255", ["0.0.0.0", "255.255.255.255"]),
        ("http://10.0.0.1/x and GET /geo/8.8.8.8 HTTP/1.1", ["10.0.0.1", "8.8.8.8"]),  # URL paths are not products
        ("ssh root@192.0.2.10", ["192.0.2.10"]),
        ("range 10.0.0.1-10.0.0.254", ["10.0.0.1", "10.0.0.254"]),
        ("at the start: 1.2.3.4", ["1.2.3.4"]),
        ("1.2.3.4", ["1.2.3.4"]),
        ("::ffff:1.2.3.4", ["1.2.3.4"]),  # alone, ipv4 finds the embedded address (ipv6 would win, see overlaps)
    ],
)
def test_ipv4_found(text: str, expected: list[str]) -> None:
    assert values(text, "ipv4") == expected


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3.4.5",  # longer dotted run (version)
        "v1.2.3.4",  # glued to a letter
        "x1.2.3.4 1.2.3.4a 1.2.3.4x",
        "app.1.2.3.4.js",  # preceded by a dot
        "01.2.3.4 1.02.3.4 1.2.3.04 010.001.002.003 192.168.001.001",  # leading zeros are rejected
        "2024.01.02.03",  # a date/time: leading zeros (and a 4-digit "octet")
        "256.1.1.1 1.1.1.256 300.300.300.300 1234.1.2.3",
        "1.2.3 and 12.34.56.78.90",
        "SNMP 1.3.6.1.4.1.2021.10.1.3.1",
        "Chrome/124.0.0.0 Safari/537.36",  # product tokens are versions
        "(KHTML, like Gecko) HeadlessChrome/124.0.0.0 OPR/109.0.0.0 YaBrowser/24.1.0.0",
        "1.2.3.4.5.6.7.8",
    ],
)
def test_ipv4_not_found(text: str) -> None:
    assert values(text, "ipv4") == []


# ------------------------------------------------------------------------------------------------------------ ipv6
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2001:0db8:0000:0000:0000:ff00:0042:8329", ["2001:0db8:0000:0000:0000:ff00:0042:8329"]),  # full
        ("peer 2001:db8:85a3::8a2e:370:7334 up", ["2001:db8:85a3::8a2e:370:7334"]),  # compressed
        ("redis on ::1", ["::1"]),
        ("ping6 fe80::1%eth0", ["fe80::1%eth0"]),  # zone included
        ("zone fe80::1%eth0.100.", ["fe80::1%eth0.100"]),  # sentence dot excluded
        ("mapped ::ffff:192.0.2.1", ["::ffff:192.0.2.1"]),
        ("nat64 64:ff9b::192.0.2.33", ["64:ff9b::192.0.2.33"]),
        ("[2001:db8::1]:443", ["2001:db8::1"]),  # brackets and port excluded
        ("http://[fe80::1%25eth0]:8080/", ["fe80::1%25eth0"]),
        ("2001:DB8:0:0:8:800:200C:417A", ["2001:DB8:0:0:8:800:200C:417A"]),  # uppercase
        ("fe80::/10 and 2001:db8::/32", ["fe80::", "2001:db8::"]),
        ("host:2001:db8::7", ["2001:db8::7"]),  # a "key:" before the address
        ("reset from 2001:db8::9: connection reset", ["2001:db8::9"]),  # trailing ":" is punctuation
        ("1:2:3:4:5:6:7:8 and 1:2:3:4:5:6:1.2.3.4", ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:1.2.3.4"]),
        ("ff02::1, ff02::2", ["ff02::1", "ff02::2"]),
        ("2001:db8::1:443", ["2001:db8::1:443"]),  # unbracketed: itself a valid address, reported whole
    ],
)
def test_ipv6_found(text: str, expected: list[str]) -> None:
    assert values(text, "ipv6") == expected


@pytest.mark.parametrize(
    "text",
    [
        "00:1a:2b:3c:4d:5e AA:BB:CC:DD:EE:FF",  # MAC: six groups, no "::"
        "12:34:56 23:59:59.999 [10/Oct/2024:13:55:36 +0000]",  # times
        "listen [::]:80",  # bare "::"
        "std::vector<int> std::chrono::seconds Foo::Bar::baz() a::b",  # code
        "dead::beef abc::def",  # no decimal digit
        "arr[::2] arr[::-1] 1:: 1::2 ab::1",  # a single written group other than ::1 / a short first group
        "50:06:01:60:3b:a0:1a:2f 02:42:ac:ff:fe:11:00:02",  # WWN / EUI-64
        "xfe80::1 fe80::1g 2001:db8::1_x 2001:db8::1.5",  # glued to a word / a version-like tail
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "550e8400-e29b-41d4-a716-446655440000",
        "1:2:3:4:5:6:7:8:9 12345::1",
    ],
)
def test_ipv6_not_found(text: str) -> None:
    assert values(text, "ipv6") == []


# ----------------------------------------------------------------------------------------------------------- email
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mailto:jo@example.com", ["jo@example.com"]),
        ("<jo@example.com>", ["jo@example.com"]),
        ('"jo@example.com"', ["jo@example.com"]),
        ("user=jo@example.com&list=x", ["jo@example.com"]),
        ("email='jo@example.com'", ["jo@example.com"]),
        ("Contact: jo@example.com.", ["jo@example.com"]),  # sentence dot excluded
        ("jo.smith+tag@mail.example.co.uk", ["jo.smith+tag@mail.example.co.uk"]),
        ("o'brien@example.ie x-y_z%1@a-b.example.museum", ["o'brien@example.ie", "x-y_z%1@a-b.example.museum"]),
        ("redirect=mailto%3Ajo@example.com", ["jo@example.com"]),  # percent-encoded delimiter
        ("jo@xn--r8jz45g.jp", ["jo@xn--r8jz45g.jp"]),
    ],
)
def test_email_found(text: str, expected: list[str]) -> None:
    assert values(text, "email") == expected


@pytest.mark.parametrize(
    "text",
    [
        "foo@bar",  # no dot
        "@handle and @example.com",  # no local part
        "a@b.c1 a@b.c",  # TLD must be 2+ letters
        "jo@.example.com jo@example..com jo.@example.com",
        "jo@localhost user@10.0.0.1",
        "https://admin:hunter2@db.example.com/",  # URL userinfo password
        "logo@2x.png icon@1.5x.webp",  # image density suffixes
        "react@18.2.0 @babel/core",
        "jo@example.com-x jo@example.com_x",  # glued to the domain
    ],
)
def test_email_not_found(text: str) -> None:
    assert values(text, "email") == []


# ----------------------------------------------------------------------------------------------------------- phone
@pytest.mark.parametrize(
    ("text", "country", "expected"),
    [
        ("call +44 20 7946 0958", "GB", ["+44 20 7946 0958"]),
        ("+1 (415) 555-2671", "GB", ["+1 (415) 555-2671"]),
        ("+33 1 23 45 67 89", "GB", ["+33 1 23 45 67 89"]),
        ("+4915112345678", "GB", ["+4915112345678"]),
        ("+44 (0)20 7946 0958 and (+44) 20 7946 0958", "GB", ["+44 (0)20 7946 0958", "(+44) 20 7946 0958"]),
        ("07700 900123", "GB", ["07700 900123"]),  # a drama number: possible, in the national grouping
        ("020 7946 0958.", "GB", ["020 7946 0958"]),
        ("(020) 7946 0958", "GB", ["(020) 7946 0958"]),
        ("07911123456", "GB", ["07911123456"]),  # contiguous: exactly a valid national number
        ("call 020 7946 0958 24 hours a day", "GB", ["020 7946 0958"]),
        ("(415) 555-2671 and 415.555.2671", "US", ["(415) 555-2671", "415.555.2671"]),
        ("01 23 45 67 89", "FR", ["01 23 45 67 89"]),
        ("8 (495) 123-45-67", "RU", ["8 (495) 123-45-67"]),
    ],
)
def test_phone_found(text: str, country: str, expected: list[str]) -> None:
    assert values(text, "phone", country) == expected


@pytest.mark.parametrize(
    ("text", "country"),
    [
        ("2024-01-02 12:30:45 02/01/2024 01.02.2024 01 02 2024", "GB"),  # dates and times
        ("[10/Oct/2024:13:55:36 +0000] +0530 +1000", "GB"),  # time zones
        ("10.0.0.1 192.168.1.1", "GB"),  # IPs
        ("v1.2.3 0.12.3 build 0.0.1-20240102", "GB"),  # versions
        ("4111 1111 1111 1111 4111111111111111", "GB"),  # cards
        ("order 1234567890123 GET /orders/01234567890123 id=0123456789012345", "GB"),  # long ids
        ("550e8400-e29b-41d4-a716-446655440000", "GB"),
        ("+99912345678 +1 day +12345678 1+2345678 x+447700900123", "GB"),
        ("07700 900123", "US"),  # national forms only for the default country
        ("(415) 555-2671 123-456-7890", "GB"),
        ("123-456-7890 4155552671", "US"),  # invalid area code / contiguous NANP
        ("06 1234 5678", "IT"),  # no trunk prefix: no national form
        ("020-7946-0958-12", "GB"),  # continues with another group
    ],
)
def test_phone_not_found(text: str, country: str) -> None:
    assert values(text, "phone", country) == []


# ------------------------------------------------------------------------------------------------------------ card
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4111 1111 1111 1111", ["4111 1111 1111 1111"]),
        ("4111-1111-1111-1111.", ["4111-1111-1111-1111"]),
        ("pan=4111111111111111&cvv=1", ["4111111111111111"]),
        ("3782 822463 10005, 371449635398431", ["3782 822463 10005", "371449635398431"]),  # Amex 4-6-5
        ("3056 930902 5904", ["3056 930902 5904"]),  # Diners 4-6-4
        ("5500 0000 0000 0004; 2223003122003222", ["5500 0000 0000 0004", "2223003122003222"]),  # Mastercard
        ("6011111111111117 3530111333300000 6200000000000005",
         ["6011111111111117", "3530111333300000", "6200000000000005"]),
        ("4222222222222", ["4222222222222"]),  # Visa 13
        ("jo,4111111111111111,12/25", ["4111111111111111"]),  # CSV
    ],
)
def test_card_found(text: str, expected: list[str]) -> None:
    assert values(text, "card") == expected


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112 5500 0000 0000 0005",  # Luhn
        "1234567890123456 9999 9999 9999 9995 0000 0000 0000 0000",  # no IIN
        "41111111111111111111 411111111111",  # too long / too short
        "5555555555554444555",  # Mastercard is 16 digits only
        "+4111111111111111 -4111111111111111 1.4111111111111111 4111111111111111.25 x4111111111111111",
        "4111 1111 1111 1111 12 and 1 4111 1111 1111 1111",  # more groups around
        "DE89 3704 0044 0532 0130 00",  # IBAN
        "4111 1111-1111 1111 4111 1111 1111 111",  # mixed separators / wrong grouping
    ],
)
def test_card_not_found(text: str) -> None:
    assert values(text, "card") == []


# -------------------------------------------------------------------------------------------------------- overlaps
def test_the_longer_finding_wins_across_detectors() -> None:
    assert found("client ::ffff:10.0.0.5 via") == [("ipv6", "::ffff:10.0.0.5")]
    assert found("::ffff:10.0.0.5", Detector(["ipv4"])) == [("ipv4", "10.0.0.5")]


def test_resolve_keeps_the_longer_then_the_earlier_detector() -> None:
    a = Finding(0, 10, "phone", "phone")
    b = Finding(5, 20, "card", "card")  # longer: wins over a
    c = Finding(20, 30, "email", "email")
    d = Finding(20, 30, "ip", "ipv4")  # same span as c: ipv4 comes first in DETECTORS
    e = Finding(31, 33, "card", "card")
    assert _resolve([e, c, a, d, b]) == [b, d, e]
    assert _resolve([]) == []


# ------------------------------------------------------------------------------------------------ has_candidate, sub
@pytest.mark.parametrize("text", ["", "nothing here", "GET /index.html HTTP/1.1 200", "at 13:55:36", "a.b.c"])
def test_has_candidate_false_on_plain_text(text: str) -> None:
    d = Detector(["ipv4", "ipv6"])
    assert not d.has_candidate(text)
    assert d.find(text) == []


def test_has_candidate_true_when_something_may_be_there() -> None:
    d = Detector(DETECTORS)
    for text in ["10.0.0.1", "fe80::1", "jo@example.com", "+44 20 7946 0958", "020 7946 0958", "4111111111111111"]:
        assert d.has_candidate(text), text
    assert Detector(["ipv4", "ipv6"]).has_candidate("1.2.3.4.5")  # a candidate, not a finding


def test_sub_replaces_every_finding() -> None:
    d = Detector(["ipv4", "ipv6", "email"])
    seen: list[tuple[str, str]] = []

    def replace(f: Finding, value: str) -> str:
        seen.append((f.detector, value))
        return f"<{f.kind}>"

    text = "jo@example.com from 10.0.0.1 and [2001:db8::1]:443."
    assert d.sub(text, replace) == "<email> from <ip> and [<ip>]:443."
    assert seen == [("email", "jo@example.com"), ("ipv4", "10.0.0.1"), ("ipv6", "2001:db8::1")]
    plain = "nothing to see"
    assert d.sub(plain, replace) is plain


def test_a_detector_is_shared_between_threads() -> None:
    d = Detector(DETECTORS)
    texts = [f"from 10.0.{i}.1 jo{i}@example.com +44 20 7946 09{i:02d} 2001:db8::{i:x}" for i in range(50)]
    expected = [d.find(t) for t in texts]
    errors: list[str] = []

    def work() -> None:
        for _ in range(20):
            for t, e in zip(texts, expected, strict=True):
                if d.find(t) != e:
                    errors.append(t)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------------------------------------------------- corpus
def _load_corpus() -> list[dict]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_corpus_precision_and_recall() -> None:
    rows = _load_corpus()
    assert len(rows) >= 300
    detectors: dict[str, Detector] = {}
    counts = {name: Counter() for name in DETECTORS}
    misses: list[str] = []
    for n, row in enumerate(rows, 1):
        country = row.get("country", "GB")
        det = detectors.setdefault(country, Detector(DETECTORS, default_country=country))
        text = row["text"]
        got = Counter((f.detector, text[f.start : f.end]) for f in det.find(text))
        want = Counter((e["detector"], e["value"]) for e in row["expect"])
        for (name, _), k in (got & want).items():
            counts[name]["tp"] += k
        for (name, value), k in (got - want).items():
            counts[name]["fp"] += k
            misses.append(f"line {n}: false positive {name} {value!r} in {text!r}")
        for (name, value), k in (want - got).items():
            counts[name]["fn"] += k
            misses.append(f"line {n}: missed {name} {value!r} in {text!r}")
    table = [f"\n{'detector':8} {'tp':>5} {'fp':>4} {'fn':>4} {'precision':>10} {'recall':>8}"]
    scores = {}
    for name, c in counts.items():
        p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 1.0
        r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 1.0
        scores[name] = (p, r)
        table.append(f"{name:8} {c['tp']:5} {c['fp']:4} {c['fn']:4} {p:10.3f} {r:8.3f}")
    report = "\n".join(table + [f"({len(rows)} lines)"] + misses)
    print(report)
    for name, (p, r) in scores.items():
        assert counts[name]["tp"] >= 40, f"too few {name} cases in the corpus"
        floor = 1.0 if name in ("ipv4", "ipv6") else 0.95
        assert p >= floor and r >= floor, f"{name}: precision {p:.3f}, recall {r:.3f}{report}"


# ------------------------------------------------------------------------------------------------------- properties
FRAGMENTS = [
    "(415) 555-2671", "1-415-555-2671", "8 (495) 123-45-67", "06 1 234 5678",
    "10.0.0.1", "255.255.255.255", "1.2.3.4.5", "01.2.3.4", "Chrome/124.0.0.0", "::", "::1", "fe80::1%eth0",
    "2001:db8::1", "::ffff:192.0.2.1", "[2001:db8::1]:443", "00:1a:2b:3c:4d:5e", "12:34:56", "std::vector",
    "jo@example.com", "a@b.c1", "mailto:", "%3A", "+44 20 7946 0958", "07700 900123", "(020) 7946 0958", "(+44)",
    "4111 1111 1111 1111", "378282246310005", "2024-01-02", "0", "00", "+", "(", ")", "-", ".", ":", "@", "%", "/",
    " ", "\n", "é", "𝟘", "٣", "\x00",
]
texty = st.one_of(
    st.text(alphabet=st.sampled_from(list("0123456789abcdefABCDEFxyz:.%@+-()[]/,'_ \n")), max_size=80),
    st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=10).map("".join),
    st.text(max_size=40),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texty)
def test_find_is_well_formed_on_any_text(text: str) -> None:
    findings = ALL.find(text)
    prev_end = 0
    for f in findings:
        assert 0 <= f.start < f.end <= len(text)
        assert f.start >= prev_end  # sorted, non-overlapping
        assert f.kind == KIND_OF[f.detector]
        prev_end = f.end
    seen: list[tuple[Finding, str]] = []

    def replace(f: Finding, value: str) -> str:
        seen.append((f, value))
        return "#"

    out = ALL.sub(text, replace)
    assert [f for f, _ in seen] == findings
    assert all(text[f.start : f.end] == value for f, value in seen)
    assert len(out) == len(text) - sum(f.end - f.start for f in findings) + len(findings)
    if not ALL.has_candidate(text):
        assert findings == []


SUBSETS = {(names, country): Detector(names, default_country=country)
           for names in [("ipv4", "ipv6"), ("email",), ("phone",), ("card",), ("ipv6", "phone", "card")]
           for country in ["GB", "US", "RU", "HU", "IT"]}  # trunk prefix 0, NANP, 8, 06, none


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texty, st.sampled_from(sorted(SUBSETS)))
def test_subsets_are_well_formed_and_agree_with_has_candidate(text: str, key: tuple[tuple[str, ...], str]) -> None:
    d = SUBSETS[key]
    findings = d.find(text)
    assert {f.detector for f in findings} <= set(key[0])
    assert all(a.end <= b.start for a, b in zip(findings, findings[1:], strict=False))
    assert all(0 <= f.start < f.end <= len(text) for f in findings)
    if not d.has_candidate(text):
        assert findings == []
