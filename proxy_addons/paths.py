"""The path a request will be routed on by the app behind the sidecar, worked out before any route is chosen.

Servers decode the request path once (WSGI's PATH_INFO, ASGI's `path`) and frameworks then resolve or refuse dot
segments, merge slashes, and some drop `;params` or a trailing slash or ignore case. A route matched on the raw path
is skipped by `/api/%75sers` or `/api/x/../users`, which the app routes as `/api/users`. So the sidecar:

- decodes the path once (percent escapes, then strict UTF-8: overlong forms and surrogates are refused);
- refuses what servers read differently: an encoded `/`, `\\`, `.` or NUL, a raw backslash, a bad escape, control
  characters;
- resolves `.` and `..` and merges repeated slashes (RFC 3986 section 5.2.4);
- forwards exactly that canonical path, re-encoded, so the app routes on the path the rules were matched against;
- matches routes on it, and also on it without `;params` and without a trailing slash (`match_candidates`).
"""

from __future__ import annotations

import re
import urllib.parse

_HEX = frozenset(b"0123456789abcdefABCDEF")
# Escapes whose meaning differs between servers: %2f splits a segment for some and not others, %5c is a separator
# on Windows stacks, %2e builds dot segments after normalisation, %00 truncates in C.
_AMBIGUOUS = frozenset({b"2f", b"5c", b"2e", b"00"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters left as they are when the canonical path is written back: RFC 3986 pchar without percent.
_SAFE = "/:@!$&'()*+,;=-._~"


class PathRefused(Exception):
    """The path cannot be read one way only; answered with 400. The message holds no part of the path."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def canonical(raw: bytes) -> str:
    """The decoded, normalised path of a request target's path part (no query). `*` and empty stay as they are."""
    if raw in (b"", b"*"):
        return raw.decode("ascii")
    if b"\\" in raw:
        raise PathRefused("the path holds a backslash")
    i = raw.find(b"%")
    while i >= 0:
        code = raw[i + 1 : i + 3]
        if len(code) != 2 or not (code[0] in _HEX and code[1] in _HEX):
            raise PathRefused("the path holds a malformed percent escape")
        if code.lower() in _AMBIGUOUS:
            raise PathRefused("the path holds an encoded '/', '\\', '.' or NUL, which servers read differently")
        i = raw.find(b"%", i + 3)
    try:
        decoded = urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise PathRefused("the path is not valid UTF-8 once decoded") from None
    if _CONTROL.search(decoded):
        raise PathRefused("the path holds control characters")
    if not decoded.startswith("/"):
        raise PathRefused("the path does not start with '/'")
    return _remove_dot_segments(decoded)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")[1:]
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment not in (".", ""):
            out.append(segment)
    trailing = segments[-1] in ("", ".", "..") and len(out) > 0
    return "/" + "/".join(out) + ("/" if trailing else "")


def encode(path: str) -> str:
    """The canonical path as it goes upstream: decoded by the app once, it is `path` again."""
    return urllib.parse.quote(path, safe=_SAFE)


def match_candidates(path: str) -> tuple[str, ...]:
    """The spellings a route may match: the path, without `;params` in its segments (Spring, Tomcat and Jetty
    route on that), and either without its trailing slash (Express, Django with APPEND_SLASH, ...)."""
    found = [path]
    if ";" in path:
        found.append("/".join(segment.split(";", 1)[0] for segment in path.split("/")))
    for candidate in list(found):
        if len(candidate) > 1 and candidate.endswith("/"):
            found.append(candidate.rstrip("/") or "/")
    return tuple(dict.fromkeys(found))
