"""Built-in PII detectors over text: ipv4, ipv6, email, phone, card (the `detect:` selector of a rules file).

Each detector is a cheap candidate regex (anchored where possible on a literal such as ".", ":", "@" or "+", so the
regex engine skips most of the text) followed by a validity check in Python on the few candidates. `Detector` compiles
a set of detectors once; it is immutable and safe to share between threads.

Rules (each one has tests in tests/rules/test_detectors.py and cases in tests/rules/corpus/detectors.jsonl):

ipv4
  Four decimal octets 0-255 without leading zeros ("0" itself is fine, "01" is not: zero-padded forms are more often
  dates, counters or versions than addresses). Boundaries: the character before must not be a letter, digit or ".";
  the character after must not be a letter or digit, nor a "." followed by a digit. So "1.2.3.4.5" and "v1.2.3.4"
  are not addresses, while "from 10.0.0.1." (end of sentence), "10.0.0.1:8080", "[10.0.0.1]" and "10.0.0.0/8" (the
  finding is the address, "/8" stays) are. Product tokens are versions, not addresses: a dotted quad right after
  "<word>/" where the word starts the text or follows whitespace, "(", ";", ",", '"' or "[" ("Chrome/124.0.0.0" in a
  User-Agent; anything right after "Chrome/" too) is not reported; URL paths ("//10.0.0.1", "/geo/8.8.8.8") are.
ipv6
  Every textual form that `ipaddress.IPv6Address` accepts (full, "::"-compressed, IPv4-mapped and -embedded,
  uppercase), with an optional zone ("fe80::1%eth0", included in the finding). Brackets and a port around it
  ("[2001:db8::1]:443") stay outside the finding; an unbracketed "2001:db8::1:443" is itself a valid address and is
  reported whole. A single trailing ":" is punctuation ("from 2001:db8::1: timeout"). Not reported, for precision:
  bare "::"; forms without any decimal digit ("a::b", "dead::beef", C++/Rust paths); a "::" form with one written
  group other than "::1" ("::2" in a Python slice, "1::"), and "X::" / "X::Y" unless X has four hex digits
  ("fe80::1", "2001::" are reported, "ab::1" is not); eight groups of exactly two hex digits with no "::" (an EUI-64
  or Fibre Channel WWN such as "50:06:01:60:3b:a0:1a:2f"); anything glued to a letter, digit, "_" or "." on the left
  or to a letter, digit or "_" on the right. MAC addresses (six groups) and times ("12:34:56") are never valid.
email
  A dot-atom local part from [A-Za-z0-9_%+~'-] (a pragmatic subset of RFC 5322 atext: "=", "/", "&", "?", "*", "|",
  quotes and braces are treated as delimiters, so "user=jo@example.com&" gives "jo@example.com"; a leading "'" is
  dropped; a percent-encoded delimiter such as "%3A" or "%3C" ends the prefix) of at most 64 characters, "@", and a
  domain of LDH labels with a final all-letter TLD of 2-63 letters (at most 253 characters). "foo@bar", "@handle"
  and "a@b.c1" are not addresses, nor image names such as "logo@2x.png"; a trailing sentence "." is excluded. The
  password of URL userinfo ("https://admin:pw@host.example") is not reported as an address, nor an address in the
  reserved .invalid TLD (RFC 2606; Tokenbunker's own email-format tokens). ASCII only.
phone
  International: "+", a country code that exists, and 8-15 digits grouped by single spaces, "-", "." or a
  parenthesised group ("+1 (415) 555-2671", "+44 (0)20 7946 0958", "(+44) 20 7946 0958", "+4915112345678");
  valid if phonenumbers says the number is possible (IS_POSSIBLE, not "local only"). National, for
  `default_country` only: the country's trunk prefix ("0" for GB/FR/DE..., "8" for RU) then digits, valid if
  `is_valid_number`, or if the number is possible and written exactly in the library's national grouping (so
  "07700 900123", an Ofcom drama number, is found though phonenumbers does not call it valid). NANP countries (US,
  CA...) also accept "(415) 555-2671", "415-555-2671", "415.555.2671" with an optional leading "1". Countries
  without a trunk prefix (IT, ES...) get no national form.
  A candidate that runs into more space-separated digit groups ("020 7946 0958 24 hours") loses up to three trailing
  groups until it is valid. Never preceded by a letter, digit, "_", "+", ".", "/", "-", "@" or "#".
card
  13-19 digits, contiguous or grouped by one repeated single space or "-" as 4-4-4-4, 4-4-4-4-3, 4-6-5 or 4-6-4;
  Luhn-valid; a known IIN range with a length it issues (Visa 4; Mastercard 51-55, 2221-2720; Amex 34, 37; Discover
  6011, 644-649, 65; JCB 3528-3589; Diners 300-305, 3095, 36, 38-39; UnionPay 62; Maestro 50, 56-69); not part of a
  longer number: not glued to a letter, digit, "_", "+" or "-", nor to a decimal point ("1.4111...", "4111....5"); a
  grouped number must not continue with another group ("4111 1111 1111 1111 12", "DE89 3704 0044 0532 0130 00").
  Commas are CSV separators here ("jo,4111111111111111,12/25"): no thousands group has 13+ digits.

When findings of different detectors overlap, the longer one wins, then the one earlier in DETECTORS.
Offsets are indexes into the str (code points). Letters and digits in the rules above are ASCII.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

__all__ = ["DETECTORS", "KIND_OF", "Detector", "Finding"]

DETECTORS: tuple[str, ...] = ("ipv4", "ipv6", "email", "phone", "card")
KIND_OF: dict[str, str] = {"ipv4": "ip", "ipv6": "ip", "email": "email", "phone": "phone", "card": "card"}
_ORDER = {name: i for i, name in enumerate(DETECTORS)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected value: text[start:end] is it, `kind` its PII kind, `detector` the detector that found it."""

    start: int
    end: int
    kind: str
    detector: str


# A frozen dataclass __init__ goes through object.__setattr__ four times; the slot descriptors are twice as fast and
# build an identical instance. Findings are created per log line, so this matters.
_new = object.__new__
_set_start, _set_end = Finding.start.__set__, Finding.end.__set__  # type: ignore[attr-defined]
_set_kind, _set_detector = Finding.kind.__set__, Finding.detector.__set__  # type: ignore[attr-defined]


def _finding(start: int, end: int, kind: str, detector: str) -> Finding:
    f = _new(Finding)
    _set_start(f, start)
    _set_end(f, end)
    _set_kind(f, kind)
    _set_detector(f, detector)
    return f


_anchors: ModuleType | None
try:  # the C anchor scan, built with the package where a compiler is (pyproject.toml); else the regexes alone
    from rules import _ipanchors

    _anchors = _ipanchors
except ImportError:  # pragma: no cover (the pure-Python path is tested by forcing it)
    _anchors = None

_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"
_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WORD = _ALNUM | {"_"}
_DIGIT_SET = frozenset(_DIGITS)
_A = re.ASCII

# ---------------------------------------------------------------------------------------------------------------- ipv4
# Anchored on the first "." (a literal: the engine jumps from dot to dot). A cheap look-ahead rejects most dots, then
# fixed-width look-behinds find and validate the first octet (captured: its group gives the start of the address).
_V4_CAND_SRC = r"\.(?=[0-9]{1,3}+\.[0-9]{1,3}+\.[0-9]{1,3}+(?![0-9A-Za-z]|\.[0-9]))(?<=[0-9]\.)"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4_NB = r"(?<![0-9A-Za-z.])"
_NOT_CHROME = r"(?<!Chrome/)"  # the most common product token, rejected in the regex; the others below
_V4 = re.compile(
    _V4_CAND_SRC
    + rf"(?:(?<={_V4_NB}{_NOT_CHROME}(25[0-5]|2[0-4][0-9]|1[0-9][0-9])\.)|(?<={_V4_NB}{_NOT_CHROME}([1-9][0-9])\.)"
    + rf"|(?<={_V4_NB}([0-9])\.))"
    + rf"{_OCTET}\.{_OCTET}\.{_OCTET}(?![0-9A-Za-z]|\.[0-9])",
    _A,
)
_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
_BEFORE_PRODUCT = frozenset(" \t\r\n\f\v(;,\"[")


def _is_product_version(text: str, slash: int) -> bool:
    """Whether text[slash] == "/" ends a User-Agent style product token: "Chrome/" in "... Chrome/124.0.0.0"."""
    lo = slash - 64 if slash > 64 else 0
    pre = text[lo:slash]
    rest = pre.rstrip(_TOKEN_CHARS)
    token = pre[len(rest) :]
    if not token or token[0] not in _ALPHA:
        return False
    if rest:
        return rest[-1] in _BEFORE_PRODUCT
    return lo == 0


# Scanners return (start, end, detector) tuples, sorted by start; Finding objects are made only by Detector.find.
Span = tuple[int, int, str]


def _scan_ipv4(text: str) -> list[Span]:
    if _anchors is not None:
        return _anchors.v4_spans(text, "ipv4")  # the loop below, in C (rules/_ipanchors.c)
    out: list[Span] = []
    append = out.append
    for m in _V4.finditer(text):
        s = m.start(m.lastindex)  # type: ignore[arg-type]
        if s and text[s - 1] == "/" and _is_product_version(text, s - 1):
            continue  # "Chrome/124.0.0.0"
        append((s, m.end(), "ipv4"))
    return out


# ---------------------------------------------------------------------------------------------------------------- ipv6
# Anchored on the first ":" of the address, which must be followed by ":" (compressed) or by at least five more
# "group:" (full form); times such as "13:55:36" fail here, inside the regex. The first group is found by looking back.
_V6_ANCHOR = r":(?=:|(?:[0-9A-Fa-f]{1,4}+:){5}|(?:[0-9A-Fa-f]{1,4}+:)*+:)"
_V6_CAND = re.compile(_V6_ANCHOR + r"[0-9A-Fa-f:]*+(?:\.[0-9]{1,3}+){0,3}+(?:%[0-9A-Za-z_.\-]+)?", _A)
_V6_BAD_BEFORE = _WORD | {":", ".", "%"}


@lru_cache(maxsize=16384)
def _v6_ok(addr: str) -> bool:
    """Whether `addr` (no zone) is an IPv6 address we report; cached: logs repeat their addresses."""
    if addr == "::" or not any(c in _DIGIT_SET for c in addr):
        return False
    try:
        ipaddress.IPv6Address(addr)
    except ValueError:
        return False
    if "::" in addr:
        if "." in addr:
            return True  # "::ffff:192.0.2.1", "64:ff9b::192.0.2.1"
        head, _, tail = addr.partition("::")
        head_groups = head.split(":") if head else []
        groups = len(head_groups) + (len(tail.split(":")) if tail else 0)
        if not head_groups:
            return groups >= 2 or tail == "1"  # "::1" yes, "::2" (a slice) no
        if groups <= 2:
            return len(head_groups[0]) == 4  # "fe80::1", "2001::" yes; "1::", "ab::1" no
        return True
    groups = addr.split(":")
    return not (len(groups) == 8 and all(len(g) == 2 for g in groups))  # EUI-64 / WWN


def _v6_end(text: str, j: int, e: int, after_colon: bool) -> int:
    """The end of the address at text[j:e] (regex candidate, maybe with a zone), or -1."""
    if j and not after_colon and text[j - 1] in _V6_BAD_BEFORE:
        return -1
    cand = text[j:e]
    pct = cand.find("%")
    if pct >= 0:
        addr = cand[:pct]
        zone = cand[pct + 1 :].rstrip(".-")
        end = j + pct + 1 + len(zone) if zone else j + pct
    else:
        addr = cand
        end = e
        if addr[-1] == ":" and addr[-2:] != "::":
            addr = addr[:-1]  # "from 2001:db8::1: timeout"
            end -= 1
    if end < len(text):
        c = text[end]
        if c in _WORD or (c == "." and text[end + 1 : end + 2] in _DIGIT_SET):
            return -1
    return end if _v6_ok(addr) else -1


# _v6_end(text, j, e, False) by its context: it reads only text[j - 1 : e + 2] (the character before the candidate,
# the candidate, the two after it), and logs repeat their addresses in the same surroundings. Bounded: cleared when
# full. Value: the address's length, or -1.
_V6_SEEN: dict[tuple[str, int], int] = {}
_V6_SEEN_MAX = 65536


def _v6_candidates(text: str) -> Iterator[re.Match[str]]:
    """_V6_CAND.finditer(text), with the pattern tried only where its look-ahead holds (rules/_ipanchors.c)."""
    if _anchors is None:
        yield from _V6_CAND.finditer(text)
        return
    last = 0
    match = _V6_CAND.match
    for p in _anchors.v6(text):
        if p >= last:
            m = match(text, p)
            if m is not None:
                last = m.end()
                yield m


def _scan_ipv6(text: str) -> list[Span]:
    out: list[Span] = []
    floor = 0  # the first group never reaches back into the previous candidate ("::1%0000::")
    seen = _V6_SEEN
    for m in _v6_candidates(text):
        s, e = m.span()
        pre = text[s - 5 if s - 5 > floor else floor : s]
        n = len(pre) - len(pre.rstrip(_HEX))
        floor = e
        if n < 5:
            j = s - n
            key = (text[j - 1 : e + 2], e - j) if j else (text[: e + 2], j - e)  # j == 0 has no character before
            length = seen.get(key)
            if length is None:
                end = _v6_end(text, j, e, False)
                if len(seen) >= _V6_SEEN_MAX:
                    seen.clear()
                seen[key] = end - j if end >= 0 else -1
            else:
                end = j + length if length >= 0 else -1
        else:
            end = -1
        if end >= 0:
            out.append((s - n, end, "ipv6"))
        elif e - s > 2 and text[s + 1] in _HEX and (n == 5 or (s - n > 0 and text[s - n - 1] in _WORD)):
            # "host:2001:db8::1", "id:fe80::1": the colon ends a word, and the address starts after it.
            end = _v6_end(text, s + 1, e, True)
            if end >= 0:
                out.append((s + 1, end, "ipv6"))
    return out


# --------------------------------------------------------------------------------------------------------------- email
_LOCAL_CH = r"A-Za-z0-9_%+~'\-"
_EMAIL_CAND_SRC = rf"@(?<=[{_LOCAL_CH}]@)(?=[A-Za-z0-9])"
_EMAIL_CAND = re.compile(
    _EMAIL_CAND_SRC
    + r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9_\-]|\.[A-Za-z0-9])",
    _A,
)
_EMAIL_LOCAL = re.compile(rf"[{_LOCAL_CH}]+(?:\.[{_LOCAL_CH}]+)*\Z", _A)
_LOCAL_SET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_%+~'-.")
_PCT_DELIM = re.compile(r"%(?:2[0278C]|3[A-E]|5B)", re.ASCII | re.IGNORECASE)  # space " ' ( , : ; < = > [
_URL_USERINFO = re.compile(r"//[^\s/?#@:]*\Z")
_IMAGE_DENSITY = re.compile(r"@[1-9](?:\.[0-9])?x\.[A-Za-z]{2,5}\Z", _A)  # "logo@2x.png", "icon@1.5x.webp"


def _scan_email(text: str) -> list[Span]:
    out: list[Span] = []
    floor = 0  # a local part never reaches back into the previous address ("a@b.cc@d.ee")
    for m in _EMAIL_CAND.finditer(text):
        s, e = m.span()
        if e - s - 1 > 253 or _IMAGE_DENSITY.match(text, s, e):
            continue
        lo = s - 65 if s - 65 > floor else floor
        lm = _EMAIL_LOCAL.search(text, lo, s)
        if lm is None:
            continue
        start = lm.start()
        if start == lo and lo and text[lo - 1] in _LOCAL_SET:
            continue  # local part longer than 64
        local = text[start:s]
        if "%" in local:
            cuts = [c.end() for c in _PCT_DELIM.finditer(local)]
            if cuts:
                start += cuts[-1]
                local = text[start:s]
        stripped = local.lstrip("'")
        start += len(local) - len(stripped)
        if not stripped or stripped[0] == "." or s - start > 64:
            continue
        if start and text[start - 1] == ":" and _URL_USERINFO.search(text, max(0, start - 257), start - 1):
            continue  # "https://admin:secret@db.example.com": a password, not an address
        if e - s > 8 and text[e - 8 : e].lower() == ".invalid":
            continue  # RFC 2606 reserves .invalid: never a mailbox, and where Tokenbunker's email tokens live
        out.append((start, e, "email"))
        floor = e
    return out


# --------------------------------------------------------------------------------------------------------------- phone
# Digits, single separators (" ", "-", ".") and parenthesised groups; always ends on a digit.
_PHONE_BODY = r"(?:[0-9]|[ .\-]?\([0-9]{1,5}\)(?=[ .\-]?[0-9])|[ .\-](?=[0-9]|\([0-9]))*+"
_PHONE_INTL_SRC = (
    r"(?:\((?<![0-9A-Za-z_+]\()\+[1-9][0-9]{0,3}\)[ .\-]?(?=[0-9])"  # "(+44) 20 7946 0958"
    r"|\+(?<![0-9A-Za-z_+]\+)[1-9](?=(?:[ .\-()]{0,2}[0-9]){7}))"
)
# Patterns start with one character (class) and check what precedes it in a look-behind: the engine then skips to
# the characters that can start a number instead of trying every position.
_NOT_BEFORE = r"[0-9A-Za-z_+./\-@#]"
_NANP_SRC = (  # [1] (NXX) NXX-XXXX, [1-]NXX-NXX-XXXX, NXX.NXX.XXXX
    rf"[(1-9](?<!{_NOT_BEFORE}[(1-9])"
    r"(?:(?<=1)[ .\-]?(?:\([2-9][0-9]{2}\)[ ]?|[2-9][0-9]{2}[ .\-])"
    r"|(?<=\()[2-9][0-9]{2}\)[ ]?|(?<=[2-9])[0-9]{2}[ .\-])"
    r"[2-9][0-9]{2}[ .\-][0-9]{4}(?![0-9A-Za-z_]|[.\-/:][0-9])"
)
_PHONE_INTL = re.compile(_PHONE_INTL_SRC + _PHONE_BODY, _A)
_DIGIT_RUN = re.compile(r"[0-9]+")


def _national_src(prefix: str) -> str:
    p = re.escape(prefix)
    return (
        rf"(?:\((?<!{_NOT_BEFORE}\(){p}[0-9]{{0,4}}\)(?=[ .\-]?[0-9])|{p}(?<!{_NOT_BEFORE}{p}))"
        r"(?=(?:[ .\-()]{0,2}[0-9]){6})"
    )


@lru_cache(maxsize=8192)
def _phone_ok(cand: str, region: str | None) -> bool:
    """`region` None: an international "+" form; else a national form for that region."""
    import phonenumbers  # imported by the phone detector only (~40 ms): an IP-only scrubber starts without it

    possible = phonenumbers.ValidationResult.IS_POSSIBLE
    groups = _DIGIT_RUN.findall(cand)
    digits = sum(map(len, groups))
    if not (8 if region is None else 7) <= digits <= 15 or len(groups) > 8:
        return False
    try:
        number = phonenumbers.parse(cand, region)
    except phonenumbers.NumberParseException:
        return False
    if region is None:
        return (
            phonenumbers.region_code_for_country_code(number.country_code) != "ZZ"
            and phonenumbers.is_possible_number_with_reason(number) == possible
        )
    if phonenumbers.is_valid_number(number):
        return True
    # Not a valid allocation, but possible and written exactly in the national grouping: "07700 900123".
    if len(groups) < 2 or phonenumbers.is_possible_number_with_reason(number) != possible:
        return False
    written = [len(g) for g in groups]
    national = phonenumbers.PhoneNumberFormat.NATIONAL
    expected = [len(g) for g in _DIGIT_RUN.findall(phonenumbers.format_number(number, national))]
    return written == expected


class _PhoneScanner:
    """International forms, then the national forms of one region (separate regexes: each keeps a first-character
    set the engine can skip with, which one alternation of both would lose)."""

    __slots__ = ("region", "national", "prefilter")

    def __init__(self, region: str) -> None:
        self.region = region
        from phonenumbers import PhoneMetadata

        meta = PhoneMetadata.metadata_for_region(region)
        prefix = meta.national_prefix if meta is not None else None
        pre = [r"\+[1-9]"]
        national = None
        if meta is not None and meta.country_code == 1:
            national = re.compile(_NANP_SRC, _A)
            pre.append(r"[2-9][0-9]{2}[ .\-)]")
        elif prefix:
            national = re.compile(_national_src(prefix) + _PHONE_BODY, _A)
            pre.append(_national_src(prefix))
        self.national = national
        self.prefilter = "|".join(pre)

    def __call__(self, text: str) -> list[Span]:
        out: list[Span] = []
        for m in _PHONE_INTL.finditer(text):
            s, e = m.span()
            end = _phone_end(text, s, e, None)
            if end >= 0:
                out.append((s, end, "phone"))
        if self.national is not None:
            more = False
            for m in self.national.finditer(text):
                s, e = m.span()
                end = _phone_end(text, s, e, self.region)
                if end >= 0:
                    out.append((s, end, "phone"))
                    more = True
            if more:
                out = _resolve_spans(out)  # "+44 020 7946 0958": the national part inside loses to the whole
        return out


def _phone_end(text: str, s: int, e: int, region: str | None) -> int:
    cand = text[s:e].rstrip(" .-(")
    for _ in range(4):
        end = s + len(cand)
        c = text[end : end + 1]
        if c and (c in _WORD or (c in ".,:/" and text[end + 1 : end + 2] in _DIGIT_SET)):
            return -1
        if _phone_ok(cand, region):
            return end
        k = cand.rfind(" ")  # "020 7946 0958 24 hours": drop a trailing space-separated group
        if k <= 0 or not cand[k + 1 :].isdigit():
            return -1
        cand = cand[:k].rstrip(" .-(")
    return -1


# ---------------------------------------------------------------------------------------------------------------- card
_CARD_CAND = re.compile(
    r"""[2-6](?<![0-9A-Za-z_+.\-][2-6])
    (?:
        [0-9]{12,18}+(?![0-9A-Za-z_]|\.[0-9])
      | (?<![0-9][ \-][2-6])[0-9]{3}
        (?:([ \-])[0-9]{4}\1[0-9]{4}\1[0-9]{4}(?:\1[0-9]{3})?
          |([ \-])[0-9]{6}\2[0-9]{4,5})
        (?![0-9A-Za-z_]|\.[0-9]|[ \-][0-9])
    )""",
    re.ASCII | re.VERBOSE,
)
_CARD_PREFILTER = r"[2-6][0-9]{3}[ \-]?[0-9]{4}"
_R16_19 = frozenset(range(16, 20))
_R14_19 = frozenset(range(14, 20))
_R13_19 = frozenset(range(13, 20))
# (prefix length, low, high, lengths issued)
_IIN: tuple[tuple[int, int, int, frozenset[int]], ...] = (
    (1, 4, 4, frozenset({13, 16, 19})),  # Visa
    (2, 51, 55, frozenset({16})),  # Mastercard
    (4, 2221, 2720, frozenset({16})),  # Mastercard 2-series
    (2, 34, 34, frozenset({15})),  # Amex
    (2, 37, 37, frozenset({15})),  # Amex
    (4, 6011, 6011, _R16_19),  # Discover
    (3, 644, 649, _R16_19),  # Discover
    (2, 65, 65, _R16_19),  # Discover
    (4, 3528, 3589, _R16_19),  # JCB
    (3, 300, 305, _R14_19),  # Diners
    (4, 3095, 3095, _R14_19),  # Diners
    (2, 36, 36, _R14_19),  # Diners
    (2, 38, 39, _R14_19),  # Diners
    (2, 62, 62, _R16_19),  # UnionPay
    (2, 50, 50, _R13_19),  # Maestro
    (2, 56, 69, _R13_19),  # Maestro (loosely)
)
_LUHN_DOUBLE = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _luhn_ok(digits: str) -> bool:
    total = sum(map(int, digits[-1::-2])) + sum(_LUHN_DOUBLE[int(c)] for c in digits[-2::-2])
    return total % 10 == 0


def _card_ok(digits: str) -> bool:
    n = len(digits)
    for plen, lo, hi, lengths in _IIN:
        if n in lengths and lo <= int(digits[:plen]) <= hi:
            return _luhn_ok(digits)
    return False


def _scan_card(text: str) -> list[Span]:
    out: list[Span] = []
    for m in _CARD_CAND.finditer(text):
        digits = m.group()
        if not digits.isdigit():
            digits = digits.replace(" ", "").replace("-", "")
        if _card_ok(digits):
            out.append((m.start(), m.end(), "card"))
    return out


# ------------------------------------------------------------------------------------------------------------ resolve


def _resolve(found: list[Finding]) -> list[Finding]:
    """Non-overlapping, sorted by start; of overlapping findings the longer wins, then the earlier detector."""
    by_span = {(f.start, f.end, f.detector): f for f in found}
    return [by_span[span] for span in _resolve_spans(list(by_span))]


def _resolve_spans(found: list[Span]) -> list[Span]:
    """_resolve on (start, end, detector) tuples; sorts `found` in place. Linear but for the groups of mutually
    overlapping spans, a few spans each ("::ffff:10.0.0.5" holds an ipv4 finding)."""
    found.sort()  # by start; ties (overlaps) by end and name, which the clusters below do not depend on
    prev_end = -1
    for s, e, _ in found:
        if s < prev_end:
            break
        prev_end = e
    else:
        return found
    # Spans that overlap, directly or through others, form a cluster; clusters never overlap one another, so the
    # choice (by rank, greedily) within each is independent of the rest.
    out: list[Span] = []
    first = 0  # the current cluster is found[first:i]
    end = -1
    for i, (s, e, _) in enumerate(found):
        if s < end:
            if e > end:
                end = e
            continue
        if i - first > 1:
            out += _choose(found[first:i])
        elif i:
            out.append(found[first])
        first, end = i, e
    if len(found) - first > 1:
        out += _choose(found[first:])
    else:
        out.append(found[first])
    return out


def _choose(cluster: list[Span]) -> list[Span]:
    ranked = sorted(cluster, key=lambda f: (f[0] - f[1], _ORDER[f[2]], f[0]))
    starts: list[int] = []
    chosen: list[Span] = []
    for f in ranked:
        i = bisect_right(starts, f[0])
        if i and chosen[i - 1][1] > f[0]:
            continue
        if i < len(chosen) and chosen[i][0] < f[1]:
            continue
        starts.insert(i, f[0])
        chosen.insert(i, f)
    return chosen


_PREFILTER_OF = {
    "ipv4": _V4_CAND_SRC,
    "ipv6": _V6_ANCHOR,
    "email": _EMAIL_CAND_SRC,
    "card": _CARD_PREFILTER,
}


def _supported_regions(country: object) -> frozenset[str] | set[str]:
    """phonenumbers' regions; the default country needs no look-up (nor the ~40 ms import of phonenumbers)."""
    if country == "GB":
        return frozenset({"GB"})
    import phonenumbers

    return phonenumbers.SUPPORTED_REGIONS


class Detector:
    """The detectors `names` (any of DETECTORS), compiled once. Immutable and thread-safe.

    `default_country` (ISO 3166 alpha-2) is the country whose national phone forms are recognised.
    """

    __slots__ = ("_names", "_country", "_scanners", "_prefilter", "_prefilter_first")

    def __init__(self, names: Iterable[str], default_country: str = "GB") -> None:
        if isinstance(names, str):
            names = (names,)
        wanted = set()
        for name in names:
            if name not in KIND_OF:
                raise ValueError(f"unknown detector {name!r}: use one of {', '.join(DETECTORS)}")
            wanted.add(name)
        country = default_country.upper() if isinstance(default_country, str) else default_country
        if country not in _supported_regions(country):
            raise ValueError(
                f"unknown default_country {default_country!r}: use an ISO 3166 alpha-2 code such as GB, US or FR"
            )
        ordered = tuple(d for d in DETECTORS if d in wanted)
        scanners: list[Callable[[str], list[Span]]] = []
        prefilters: list[str] = []
        for name in ordered:
            if name == "phone":
                phone = _PhoneScanner(country)
                scanners.append(phone)
                prefilters.append(phone.prefilter)
            else:
                scanners.append(_SCANNERS[name])
                prefilters.append(_PREFILTER_OF[name])
        prefilter = re.compile("|".join(prefilters) if prefilters else r"(?!)", _A)
        object.__setattr__(self, "_names", ordered)
        object.__setattr__(self, "_country", country)
        object.__setattr__(self, "_scanners", tuple(scanners))
        object.__setattr__(self, "_prefilter", prefilter)
        # IP scanners are as cheap as the pre-filter, and log lines nearly always hold an address: for an IP-only set
        # a pre-filter pass would cost more than it saves. Email, phone and card scans are dearer: filter first.
        object.__setattr__(self, "_prefilter_first", len(ordered) > 1 and not set(ordered) <= {"ipv4", "ipv6"})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Detector is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Detector is immutable")

    def __repr__(self) -> str:
        return f"Detector({list(self._names)!r}, default_country={self._country!r})"

    @property
    def names(self) -> tuple[str, ...]:
        """The detectors in use, in DETECTORS order."""
        return self._names

    @property
    def default_country(self) -> str:
        return self._country

    def has_candidate(self, text: str) -> bool:
        """A cheap pre-filter (one regex search): False means find(text) is surely empty."""
        return self._prefilter.search(text) is not None

    def find(self, text: str) -> list[Finding]:
        """Every finding, non-overlapping, sorted by start."""
        return [_finding(s, e, KIND_OF[name], name) for s, e, name in self.spans(text)]

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """find(text) as (start, end, detector) tuples: the same findings, cheaper (no Finding objects)."""
        scanners = self._scanners
        if len(scanners) == 1:
            return scanners[0](text)
        if self._prefilter_first and self._prefilter.search(text) is None:
            return []
        found: list[Span] = []
        lists = 0
        for scan in scanners:
            got = scan(text)
            if got:
                if not found:
                    found = got
                else:
                    found += got
                lists += 1
        return _resolve_spans(found) if lists > 1 else found

    def sub(self, text: str, replace: Callable[[Finding, str], str]) -> str:
        """`text` with every finding f replaced by replace(f, text[f.start:f.end])."""
        findings = self.find(text)
        if not findings:
            return text
        parts: list[str] = []
        pos = 0
        for f in findings:
            parts.append(text[pos : f.start])
            parts.append(replace(f, text[f.start : f.end]))
            pos = f.end
        parts.append(text[pos:])
        return "".join(parts)


_SCANNERS: dict[str, Callable[[str], list[Span]]] = {
    "ipv4": _scan_ipv4,
    "ipv6": _scan_ipv6,
    "email": _scan_email,
    "card": _scan_card,
}
