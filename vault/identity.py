"""How people are identified (Databunker's modes), and how values are masked for display.

Each index mode has one normalized form, so "John@Example.com " and "john@example.com" find the same person.
IdentityError messages go back to users and into logs, so they never contain the value that was refused.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Any

INDEX_MODES: tuple[str, ...] = ("login", "email", "phone", "custom")
MODES: tuple[str, ...] = ("token", *INDEX_MODES)
MASKED_DIGIT_KINDS = frozenset({"phone", "card", "ssn", "iban", "account"})

MAX_EMAIL_CHARS = 254  # RFC 5321 path limit
MAX_LOCAL_PART_CHARS = 64
MAX_PHONE_CHARS = 64
MAX_NAME_CHARS = 256

_TOKEN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.IGNORECASE)
_ATEXT = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# Applied to the lowercased address. Each repetition ends at a literal "." or "@", so matching is linear.
_EMAIL = re.compile(
    rf"(?P<local>{_ATEXT}+(?:\.{_ATEXT}+)*)@(?:{_LABEL}\.)+(?:[a-z]{{2,63}}|xn--[a-z0-9-]{{1,59}})",
    re.ASCII,
)
# Separators people type in phone numbers. Letters are refused rather than read as a vanity number or an
# extension, which phonenumbers does silently, so two different inputs would share one identity.
_PHONE_CHARS = re.compile(r"[0-9+\-(). ]+", re.ASCII)
# Control characters; surrogates too, since a lone one cannot be encoded to store or compare it.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs"})


class IdentityError(ValueError):
    """A value that cannot identify a person; the message never holds the value."""


def normalize(mode: str, value: object, default_country: str = "GB") -> str:
    """The canonical form of `value` as an identity in `mode`; IdentityError when it cannot be one."""
    if mode == "token":
        return _normalize_token(value)
    if mode == "email":
        return _normalize_email(value)
    if mode == "phone":
        return _normalize_phone(value, default_country)
    if mode in ("login", "custom"):
        return _normalize_name(mode, value)
    shown = repr(mode[:32]) if isinstance(mode, str) else "of this type"
    raise IdentityError(f"unknown mode {shown}: use one of {', '.join(MODES)}")


def index_values(profile: dict[str, Any], default_country: str = "GB") -> dict[str, str]:
    """Normalized values of the index modes at the top level of a profile; null or absent ones are skipped."""
    if not isinstance(profile, dict):
        raise IdentityError("a profile must be a JSON object")
    values: dict[str, str] = {}
    for mode in INDEX_MODES:
        value = profile.get(mode)
        if value is None:
            continue
        try:
            values[mode] = normalize(mode, value, default_country)
        except IdentityError as exc:
            raise IdentityError(f"field {mode!r}: {exc}") from None
    return values


def _normalize_token(value: object) -> str:
    if not isinstance(value, str):
        raise IdentityError("invalid person token")
    text = value.strip()
    if not _TOKEN.fullmatch(text):
        raise IdentityError("invalid person token")
    return text.lower()


def _normalize_email(value: object) -> str:
    if not isinstance(value, str):
        raise IdentityError("invalid email address")
    text = value.strip()
    # Checked before lower(), which folds some non-ASCII letters (the Kelvin sign) into ASCII ones; the length
    # check comes first so the regex only ever sees short input.
    if len(text) > MAX_EMAIL_CHARS or not text.isascii():
        raise IdentityError("invalid email address")
    text = text.lower()
    match = _EMAIL.fullmatch(text)
    if match is None or len(match["local"]) > MAX_LOCAL_PART_CHARS:
        raise IdentityError("invalid email address")
    return text


def _normalize_phone(value: object, default_country: str) -> str:
    # bool is an int, but True is no phone number.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise IdentityError("invalid phone number")
    text = value.strip()
    if not text or len(text) > MAX_PHONE_CHARS or not _PHONE_CHARS.fullmatch(text):
        raise IdentityError("invalid phone number")
    import phonenumbers  # here: ~40 ms to import, and only phone identities need it (not `tokenbunker scrub`)

    try:
        number = phonenumbers.parse(text, default_country)
    except phonenumbers.NumberParseException:
        raise IdentityError("invalid phone number") from None
    # is_possible_number checks length only, so reserved drama ranges (07700 900xxx) are accepted.
    if not phonenumbers.is_possible_number(number):
        raise IdentityError("invalid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _normalize_name(mode: str, value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    problem = f"{mode} must be a non-empty string of at most {MAX_NAME_CHARS} characters"
    if not isinstance(value, str):
        raise IdentityError(problem)
    text = value.strip()
    if not text or len(text) > MAX_NAME_CHARS:
        raise IdentityError(problem)
    if any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in text):
        raise IdentityError(f"{mode} must not contain control characters")
    return text


def mask(kind: str, value: str) -> str:
    """A masked form of `value` for display: enough to recognise it, not enough to recover it."""
    if kind == "email":
        local, at, domain = value.rpartition("@")
        if at and local and domain:
            return f"{local[0]}***@{domain}"
    elif kind in MASKED_DIGIT_KINDS:
        # With no digit to hide, keeping the other characters would show the whole value: fall through.
        if any(ch.isdigit() for ch in value):
            return _mask_digits(value)
    elif kind == "ip":
        masked = _mask_ip(value)
        if masked is not None:
            return masked
    return f"{value[0]}***" if value else ""


def _mask_digits(value: str) -> str:
    # isdigit() rather than ASCII only: masking a non-ASCII digit too is the safe mistake.
    total = sum(1 for ch in value if ch.isdigit())
    keep = 4 if total > 4 else 0
    out: list[str] = []
    seen = 0
    for ch in value:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen > total - keep else "*")
        else:
            out.append(ch)
    return "".join(out)


def _mask_ip(value: str) -> str | None:
    try:
        address = ipaddress.ip_address(value.strip().split("%", 1)[0])  # a zone (%eth0) says nothing
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return str(address).rsplit(".", 1)[0] + ".*"
    hextets = address.exploded.split(":")[:3]
    return ":".join(format(int(h, 16), "x") for h in hextets) + ":*"
