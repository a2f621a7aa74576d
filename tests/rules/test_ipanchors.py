"""rules/_ipanchors.c: the C scan changes how fast IPs are found, never what is found. The pure-Python path of
rules/detectors.py (the regexes alone) is the reference; the C one must find exactly the same spans."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import detectors
from rules.detectors import Detector

CORPUS = Path(__file__).parent / "corpus" / "detectors.jsonl"
IP = Detector(["ipv4", "ipv6"])


def test_the_c_scan_is_built() -> None:
    """`make venv` (pip install -e .) compiles it; without a C compiler the install goes on without it."""
    assert detectors._anchors is not None, "rules/_ipanchors.c was not built: install gcc and the Python headers"


@pytest.fixture
def pure() -> Iterator[None]:
    """The regexes alone, as on an install without the C module."""
    saved = detectors._anchors
    detectors._anchors = None
    detectors._V6_SEEN.clear()
    yield
    detectors._anchors = saved
    detectors._V6_SEEN.clear()


def both(text: str) -> tuple[list[tuple[int, int, str]], list[tuple[int, int, str]]]:
    fast = IP.spans(text)
    saved, detectors._anchors = detectors._anchors, None
    try:
        slow = IP.spans(text)
    finally:
        detectors._anchors = saved
    return fast, slow


def test_the_corpus_is_found_alike() -> None:
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"]
        fast, slow = both(text)
        assert fast == slow, text


# Text made of the pieces IP detection turns on: digits, dots, colons, hex, letters, product tokens, zones, wide chars
PIECES = st.sampled_from(["1", "25", "255", "256", "0", "01", "192.168.0.1", ".", "..", ":", "::", "ffff", "a", "Z",
                          "fe80", "%eth0", "Chrome/", "Edg/", "/", " ", "\n", "-", "_", "€", "𝄞", "1.2.3.4.5",
                          "::ffff:10.0.0.1", "2001:db8::1", "10.0.0", "1:2:3:4:5:6:7:8", "[", "]", "x:",
                          # what decides a User-Agent product version ("Edg/1.2.3.4") from an address after a "/"
                          "Mozilla", "(", ";", ",", '"', "\t", "9x", "Chrome", "x" * 40, "http://", "/ip/"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(PIECES, max_size=40).map("".join))
def test_random_text_is_found_alike(text: str) -> None:
    fast, slow = both(text)
    assert fast == slow


def test_wide_strings_are_scanned_too() -> None:
    for wide in ("€", "𝄞"):  # 2- and 4-byte str kinds
        text = f"{wide} from 203.0.113.5 and 2001:db8::7 via Chrome/124.0.0.0 {wide}"
        fast, slow = both(text)
        assert fast == slow and [text[s:e] for s, e, _ in fast] == ["203.0.113.5", "2001:db8::7"]


def test_without_the_c_scan_the_same_findings(pure: None) -> None:
    assert detectors._anchors is None
    text = "a 10.1.2.3 b fe80::1%eth0 c Chrome/124.0.0.0 d ::ffff:192.0.2.1"
    assert [text[s:e] for s, e, _ in IP.spans(text)] == ["10.1.2.3", "fe80::1%eth0", "::ffff:192.0.2.1"]
