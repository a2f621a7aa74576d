"""Token formats: what a token looks like to the legacy app that stores it.

Tokens are random (never derived from the value), so a token alone tells nothing; deterministic tokens are made
random once and found again through a keyed-hash lookup.
"""

from __future__ import annotations

import os
import re
import secrets
import uuid
from collections.abc import Iterator

from vault.errors import BadInput

FORMATS = ("opaque", "uuid", "email", "digits", "keep-last4")
PREFIX = "tbk_"
EMAIL_DOMAIN = "token.invalid"  # RFC 2606: never a real mailbox, still a syntactically valid address

# Formats a scanner can recognise anywhere in a body (`any: tokens`); digits-like ones look like ordinary data.
RECOGNISABLE = ("opaque", "email", "uuid")
TOKEN_PATTERN = re.compile(
    r"\btbk_[a-z2-7]{20}@token\.invalid\b"
    r"|\btbk_[a-z2-7]{26}\b"
    r"|\b[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\b"
)

MIN_DIGITS = {"digits": 6, "keep-last4": 10}
_ASCII_DIGITS = re.compile(r"[0-9]")  # what str.isascii() and str.isdigit() both accept
MAX_DIGITS_VALUE = 64


# Each random byte picks one of 32 letters: 256 is a multiple of 32, so every letter is equally likely (5 bits).
_B32_TABLE = bytes(b"abcdefghijklmnopqrstuvwxyz234567"[i % 32] for i in range(256))


def _b32(chars: int) -> str:
    return os.urandom(chars).translate(_B32_TABLE).decode("ascii")


# A random byte below 250 picks one of 10 digits, each equally likely (250 is a multiple of 10); bytes 250-255 are
# drawn again. One os.urandom call serves a whole token (secrets.randbelow per digit cost more than the rest).
_DIGIT = [str(b % 10) for b in range(250)]


def _random_bytes(count: int) -> Iterator[int]:
    while True:
        for b in os.urandom(count + 8):
            if b < 250:
                yield b


def _random_digits(value: str, keep_last: int) -> str:
    """Replace every digit but the last `keep_last` with a random one; separators stay where they were."""
    digit_positions = [i for i, ch in enumerate(value) if ch.isascii() and ch.isdigit()]
    out = list(value)
    randomised = digit_positions[: len(digit_positions) - keep_last] if keep_last else digit_positions
    draws = _random_bytes(len(randomised))
    for n, pos in enumerate(randomised):
        # A leading zero could be lost by an app that stores the field as a number.
        if n == 0 and value[pos] != "0":
            out[pos] = str(secrets.randbelow(9) + 1)
        else:
            out[pos] = _DIGIT[next(draws)]
    if keep_last and luhn_valid(value) and randomised:
        # Keep a card-like token Luhn-valid when the value was, so the app's own check still passes. The fifth
        # digit from the right is never doubled by Luhn, so shifting it moves the sum by exactly its own change.
        pos = randomised[-1]
        total = _luhn_sum("".join(out))
        out[pos] = str((int(out[pos]) + (10 - total % 10)) % 10)
    return "".join(out)


def _luhn_sum(text: str) -> int:
    total = 0
    for i, ch in enumerate(reversed([c for c in text if c.isascii() and c.isdigit()])):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total


def luhn_valid(text: str) -> bool:
    digits = [c for c in text if c.isascii() and c.isdigit()]
    return len(digits) >= 2 and _luhn_sum(text) % 10 == 0


def check_value_for_format(fmt: str, value: str) -> None:
    """Refuse values a format cannot stand for, before anything is written."""
    if fmt in MIN_DIGITS:
        if len(value) > MAX_DIGITS_VALUE:
            raise BadInput(f"format {fmt}: values are limited to {MAX_DIGITS_VALUE} characters")
        ndigits = len(_ASCII_DIGITS.findall(value))
        if ndigits < MIN_DIGITS[fmt]:
            raise BadInput(f"format {fmt}: the value needs at least {MIN_DIGITS[fmt]} digits")


def make_token(fmt: str, value: str) -> str:
    if fmt == "opaque":
        return PREFIX + _b32(26)
    if fmt == "uuid":
        return str(uuid.uuid4())
    if fmt == "email":
        return f"{PREFIX}{_b32(20)}@{EMAIL_DOMAIN}"
    if fmt in ("digits", "keep-last4"):
        keep = 4 if fmt == "keep-last4" else 0
        for _ in range(16):
            token = _random_digits(value, keep)
            if token != value:
                return token
        raise BadInput(f"format {fmt}: cannot make a token that differs from the value")
    raise BadInput(f"unknown token format '{fmt[:32]}': use one of {', '.join(FORMATS)}")
