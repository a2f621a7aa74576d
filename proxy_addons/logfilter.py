"""Keeps client addresses (and any other IP or email) out of the proxy's own log lines.

mitmproxy names the client in its connection and error messages; those lines are personal data. Each record is
rewritten before any handler prints it: addresses dropped, or replaced by a keyed hash that stays the same for the
same address (so a run of errors from one client can still be told apart) but cannot be reversed.
"""

from __future__ import annotations

import hmac
import logging
from hashlib import sha256

from rules.detectors import Detector, Finding

CHOICES = ("drop", "hash", "keep")
_ADDRESSES = Detector(["ipv4", "ipv6", "email"])


class AddressFilter(logging.Filter):
    def __init__(self, mode: str = "drop", key: bytes = b"") -> None:
        super().__init__()
        if mode not in CHOICES:
            raise ValueError(f"unknown client address log mode '{mode}': use one of {', '.join(CHOICES)}")
        self.mode = mode
        self.key = key

    def _replace(self, _finding: Finding | None, value: str) -> str:
        if self.mode == "drop":
            return "[address]"
        return "addr-" + hmac.digest(self.key, value.encode(), sha256).hex()[:12]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.mode == "keep":
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: say nothing rather than something
            message = record.msg if isinstance(record.msg, str) else ""
        # "[2001:db8::1]:443" becomes "[address]:443", not "[[address]]:443".
        message = _ADDRESSES.sub(message, self._replace).replace("[[address]]", "[address]")
        client = getattr(record, "client", None)
        if client:
            # mitmproxy's formatter prints the client's (host, port) before the message: say which, not who.
            host = client[0] if isinstance(client, tuple | list) and client else str(client)
            who = "address" if self.mode == "drop" else self._replace(None, str(host))  # type: ignore[arg-type]
            message = f"[{who}] {message}"
            record.client = None
        record.msg = message
        record.args = ()
        return True


def install(filter_: AddressFilter) -> None:
    """On every handler of the root logger (mitmproxy's terminal log is one of them)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, AddressFilter) for f in handler.filters):
            handler.addFilter(filter_)
