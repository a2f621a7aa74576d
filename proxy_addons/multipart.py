"""multipart/form-data read and rewritten byte for byte.

mitmproxy's own multipart view re-encodes the whole body when a field is set: file parts lose their filename and
Content-Type, and line breaks inside values are lost. The sidecar must change one field's value and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?[;\s]name="((?:[^"\\]|\\.)*)"')


@dataclass
class Part:
    name: str | None
    start: int  # where the part's value begins in the body
    end: int  # where it ends (before the CRLF that precedes the next boundary)


def boundary_of(content_type: str) -> bytes | None:
    m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
    return None if m is None else (m.group(1) or m.group(2)).encode("latin-1")


def parts(body: bytes, boundary: bytes) -> list[Part]:
    """The parts of a multipart body, with where each value lies; a malformed body gives ValueError."""
    delimiter = b"--" + boundary
    found: list[Part] = []
    pos = body.find(delimiter)
    if pos < 0:
        raise ValueError("multipart boundary not found")
    while True:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            return found
        header_end = body.find(b"\r\n\r\n", pos)
        if header_end < 0:
            raise ValueError("multipart part without a blank line after its headers")
        headers = body[pos:header_end]
        start = header_end + 4
        following = body.find(b"\r\n" + delimiter, start)
        if following < 0:
            raise ValueError("multipart body without its closing boundary")
        m = _NAME.search(headers)
        name = m.group(1).replace(b'\\"', b'"').decode("utf-8", "replace") if m else None
        found.append(Part(name, start, following))
        pos = following + 2


def values(body: bytes, boundary: bytes, name: str) -> list[str]:
    return [body[p.start : p.end].decode("utf-8", "surrogateescape") for p in parts(body, boundary) if p.name == name]


def replace_values(body: bytes, boundary: bytes, name: str, new: list[str | None]) -> bytes:
    """The body with the values of `name`'s parts replaced in order; None removes that whole part."""
    chunks, last, i = [], 0, 0
    all_parts = parts(body, boundary)
    delimiter = b"--" + boundary
    for part in all_parts:
        if part.name != name:
            continue
        value = new[i]
        i += 1
        if value is None:
            # From this part's delimiter to the next one's: the part is gone, the others untouched.
            part_start = body.rfind(delimiter, 0, part.start)
            chunks.append(body[last:part_start])
            last = part.end + 2
        else:
            chunks += [body[last : part.start], value.encode("utf-8", "surrogateescape")]
            last = part.end
    chunks.append(body[last:])
    return b"".join(chunks)
