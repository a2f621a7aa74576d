"""Expiry as the API takes it: a duration ("30s", "90m", "12h", "30d", "2w") or a bare number, an absolute unix
time (the API contract's convention; note Databunker's "m" means month, ours means minutes)."""

from __future__ import annotations

from vault.config import parse_duration
from vault.errors import BadInput

MAX_SECONDS = 100 * 366 * 86400


def parse_expiry(value: object, now: int, name: str = "ttl") -> int:
    """Seconds from now until expiry. `name` is how the caller's field is called, for the message."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # a form field: a bare number is a unix time there too
    if isinstance(value, bool):
        raise BadInput(f"{name} must be a duration such as 30d, or a unix time")
    if isinstance(value, int | float):
        seconds = int(value) - now
        if seconds <= 0:
            raise BadInput(f"{name}: that unix time is in the past")
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise BadInput(f"{name}: {exc}") from None
    else:
        raise BadInput(f"{name} must be a duration such as 30d, or a unix time")
    if seconds > MAX_SECONDS:
        raise BadInput(f"{name}: at most 100 years")
    return seconds
