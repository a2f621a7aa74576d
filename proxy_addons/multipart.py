"""multipart/form-data read as the app's parser reads it, and rewritten byte for byte.

mitmproxy's own multipart view re-encodes the whole body when a field is set: file parts lose their filename and
Content-Type, and line breaks inside values are lost. The sidecar must change one field's value and nothing else.

It must also read a body exactly as the app will: a part whose name one parser reads as `email` and another as
something else is a way past a `{form: email}` rule. So the grammar here is a strict subset of RFC 7578 that every
mainstream parser reads one way (CRLF line breaks only, no folding, no RFC 2231 `name*`, no backslash escapes, no
parameter twice, the boundary nowhere but where it delimits parts), anything outside it is refused with
MultipartError, and what is accepted is cross-checked against Werkzeug's and python-multipart's parsers (Flask's
and Starlette's): any difference is refused too. Every step is linear in the body's length: the only regexes are
single character classes (`[...]+`), used to skip a run of characters at C speed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from python_multipart import multipart as _pm
from werkzeug import http as _wz_http
from werkzeug.sansio import multipart as _wz

MAX_PARTS = 1000
MAX_HEADER_BYTES = 8192
# A Content-Disposition value longer than this is refused (a browser's is at most a few hundred bytes: a name and a
# filename of at most 255 characters). Werkzeug reads its quoted strings a character at a time (~0.1 µs each): the
# cap keeps the cross-check of any body under a quarter of a second.
MAX_DISPOSITION_CHARS = 2048
# Werkzeug's form parser reads the body in chunks of this size (MultiPartParser.buffer_size): read it as Flask does.
_WERKZEUG_CHUNK = 64 * 1024

# Runs of one character class each (one quantifier, nothing nested: linear).
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_TYPE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z/]+")
# Parameter names: letters, digits, - _ . only (no `*` of RFC 2231, no quote characters PHP would honour).
_PARAM_NAME = re.compile(r"[\-_.0-9A-Za-z]+")
# Unquoted parameter values: RFC 9110 tokens without `'` (PHP reads 'x' as a quoted x).
_TOKEN_VALUE = re.compile(r"[!#$%&*+\-.^_`|~0-9A-Za-z]+")
_OWS = re.compile(r"[ \t]*")
# In a quoted parameter value: no escapes, no control characters (CR, LF, NUL, ...).
_BAD_QUOTED = re.compile(r"[\x00-\x1f\x7f\\]")
# In a header line: control characters other than HT.
_BAD_HEADER_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 2046 bchars (a space is allowed, though not last).
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]+")
_TRANSFER_ENCODINGS = frozenset({"7bit", "8bit", "binary"})

# python-multipart logs a byte of the body on some errors: its parsers here log to nowhere.
_QUIET = logging.getLogger(__name__ + ".quiet")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False
_QUIET.setLevel(logging.CRITICAL + 1)


class MultipartError(ValueError):
    """The body (or its Content-Type) is malformed or could be read two ways. `message` is safe to send to the
    client: it never holds a value or a field name."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Part:
    name: str
    start: int  # where the part's value begins in the body
    end: int  # where it ends (before the CRLF that precedes the next boundary)
    filename: str | None = None  # None for a field, the filename (maybe "") for a file part
    head: int = 0  # where the part's delimiter line begins


# -- parameters (Content-Type, Content-Disposition) ------------------------------------------------------------------


def _parameters(text: str, what: str) -> tuple[str, list[tuple[str, str]]]:
    """`type; a=b; c="d"` as ("type", [("a", "b"), ("c", "d")]), names lowercased, read strictly: token values or
    quoted strings without backslashes or control characters, optional spaces/tabs after `;` only, no `*` parameter,
    no parameter twice, nothing left over. Linear: each character is looked at a bounded number of times."""
    n = len(text)
    m = _TYPE.match(text)
    if m is None:
        raise MultipartError(f"the {what} header is malformed")
    kind, i = m.group().lower(), m.end()
    params: list[tuple[str, str]] = []
    seen: set[str] = set()
    while i < n:
        if text[i] != ";":
            raise MultipartError(f"the {what} header is malformed")
        i = _OWS.match(text, i + 1).end()  # type: ignore[union-attr]
        m = _PARAM_NAME.match(text, i)
        j = m.end() if m else i
        if text.startswith("*", j):
            raise MultipartError(f"the {what} header has an RFC 2231 parameter")
        if j == i or not text.startswith("=", j):
            raise MultipartError(f"the {what} header is malformed")
        key = text[i:j].lower()
        if key in seen:
            raise MultipartError(f"the {what} header has a parameter twice")
        seen.add(key)
        i = j + 1
        if text.startswith('"', i):
            close = text.find('"', i + 1)
            if close < 0:
                raise MultipartError(f"the {what} header is malformed")
            value = text[i + 1 : close]
            if "\\" in value:
                raise MultipartError(f"the {what} header has a backslash escape")
            if _BAD_QUOTED.search(value):
                raise MultipartError(f"the {what} header is malformed")
            i = close + 1
        else:
            m = _TOKEN_VALUE.match(text, i)
            if m is None:
                raise MultipartError(f"the {what} header is malformed")
            value = m.group()
            i = m.end()
        params.append((key, value))
    return kind, params


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a multipart Content-Type; None if the type is not multipart or has no boundary. A header that
    parsers could read two ways, or a boundary RFC 2046 does not allow, raises MultipartError."""
    text = content_type.strip(" \t")
    if not text[:10].lower() == "multipart/":
        return None
    kind, params = _parameters(text, "Content-Type")
    boundary: str | None = None
    for key, value in params:
        if key == "boundary":
            boundary = value
        elif key == "charset" and value.lower() != "utf-8":
            # Starlette decodes names and values in it, Werkzeug in UTF-8.
            raise MultipartError("the Content-Type header names a charset other than UTF-8")
    if boundary is not None:
        if not 1 <= len(boundary) <= 70:
            raise MultipartError("the multipart boundary is empty or longer than 70 characters")
        if not _BOUNDARY.fullmatch(boundary) or boundary.endswith(" "):
            raise MultipartError("the multipart boundary has characters RFC 2046 does not allow")
    # Flask's and Starlette's readings of the header must agree with this one.
    werkzeug = _wz_http.parse_options_header(text)[1].get("boundary")
    starlette = _pm.parse_options_header(text)[1].get(b"boundary")
    if werkzeug != boundary or (starlette.decode("latin-1") if starlette is not None else None) != boundary:
        raise MultipartError("the Content-Type header is read differently by parsers")
    return None if boundary is None else boundary.encode("ascii")


# -- the body ----------------------------------------------------------------------------------------------------


def _disposition(value: str) -> tuple[str, str | None]:
    """The name and filename of a part's Content-Disposition value."""
    kind, params = _parameters(value, "Content-Disposition")
    if kind != "form-data":
        raise MultipartError("a part's Content-Disposition is not form-data")
    found = dict(params)
    for v in found.values():
        low = v.lower()
        # Werkzeug turns %22 into a quote; regex-based parsers (Rack's) find `; name=` inside a quoted value; Java's
        # ParameterParser decodes RFC 2047 words (=?utf-8?q?...?=).
        if "%22" in low or "%0d" in low or "%0a" in low or ";" in v or "=" in v:
            raise MultipartError("a part's Content-Disposition has a parameter that parsers read differently")
    name = found.get("name")
    if name is None:
        raise MultipartError("a part's Content-Disposition has no name")
    if name != name.strip(" \t"):
        # PHP drops leading spaces from a name.
        raise MultipartError("a part's name begins or ends with whitespace")
    return name, found.get("filename")


def _headers(block: bytes) -> tuple[str, str | None]:
    """A part's header block (CRLF-separated lines, no final CRLF): its name and filename."""
    disposition: str | None = None
    content_type: str | None = None
    seen: set[str] = set()
    if block.lower().count(b"content-disposition") != 1:
        # Once in its own header's name only: Rack finds it anywhere in the block.
        raise MultipartError("a part's Content-Disposition header is missing or repeated")
    for raw in block.split(b"\r\n"):
        if b"\r" in raw or b"\n" in raw:
            raise MultipartError("a part's headers have a bare CR or LF")
        colon = raw.find(b":")
        if colon <= 0 or not _HEADER_NAME.fullmatch(raw, 0, colon):
            # Also a folded line (leading whitespace), a space before the colon, a line without a colon.
            raise MultipartError("a part's header line is malformed")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MultipartError("a part's headers are not UTF-8") from None
        key = line[:colon].lower()
        value = line[colon + 1 :].lstrip(" \t")
        if (value != value.rstrip(" \t") or _BAD_HEADER_BYTES.search(raw)
                or "\x85" in value or "\u2028" in value or "\u2029" in value):
            raise MultipartError("a part's header line is malformed")
        if key in seen:
            raise MultipartError("a part has a header twice")
        seen.add(key)
        if key == "content-disposition":
            if len(value) > MAX_DISPOSITION_CHARS:
                raise MultipartError("a part's Content-Disposition is too long")
            disposition = value
        elif key == "content-type":
            if value[:10].lower() == "multipart/":
                # Commons FileUpload reads the parts inside it, others one value.
                raise MultipartError("a part is itself multipart")
            content_type = value
        elif key == "content-transfer-encoding" and value.lower() not in _TRANSFER_ENCODINGS:
            raise MultipartError("a part has a Content-Transfer-Encoding other than 7bit, 8bit or binary")
    if disposition is None:
        raise MultipartError("a part's Content-Disposition header is missing or repeated")
    name, filename = _disposition(disposition)
    if filename is None and content_type is not None:
        # Werkzeug decodes a field in the charset its Content-Type names (Latin-1 among them).
        _type, params = _parameters(content_type, "part Content-Type")
        charset = dict(params).get("charset")
        if charset is not None and charset.lower() != "utf-8":
            raise MultipartError("a field part names a charset other than UTF-8")
    return name, filename


def _parse(body: bytes, boundary: bytes, max_parts: int, max_header_bytes: int) -> list[Part]:
    delimiter = b"--" + boundary
    dlen = len(delimiter)
    size = len(body)
    if not body.startswith(delimiter):
        raise MultipartError("the body does not begin with the boundary")
    # Every occurrence of the delimiter must be one: at the start of the body or of a line (after CRLF). A
    # delimiter after a bare LF or CR, or in the middle of a line, is a part break to some parsers and not others.
    where: list[int] = []
    at = 0
    while at >= 0:
        if at and body[at - 2 : at] != b"\r\n":
            raise MultipartError("the boundary appears inside a part")
        where.append(at)
        if len(where) > max_parts + 1:
            raise MultipartError(f"the body has more than {max_parts} parts")
        at = body.find(delimiter, at + 1)
    found: list[Part] = []
    for k, head in enumerate(where):
        pos = head + dlen
        last = k == len(where) - 1
        if body.startswith(b"--", pos):
            # The close delimiter: then the end, or CRLF and an epilogue (without a delimiter, as checked above).
            pos += 2
            if not last or not (pos == size or body.startswith(b"\r\n", pos)):
                raise MultipartError("the closing boundary is malformed or not the last")
            return found
        if last:
            raise MultipartError("the body has no closing boundary")
        # No transport padding (python-multipart refuses it after the first delimiter): CRLF right away.
        if not body.startswith(b"\r\n", pos):
            raise MultipartError("a boundary line is malformed")
        following = where[k + 1]
        # Headers, a blank line, the value, CRLF, the next delimiter; the value may be empty.
        blank = body.find(b"\r\n\r\n", pos, min(following - 2, pos + 2 + max_header_bytes + 4))
        if blank < 0:
            raise MultipartError("a part has no blank line after its headers, or too many header bytes")
        if blank == pos:
            raise MultipartError("a part's Content-Disposition header is missing or repeated")
        name, filename = _headers(body[pos + 2 : blank])
        found.append(Part(name, blank + 4, following - 2, filename, head))
    raise MultipartError("the body has no closing boundary")  # pragma: no cover (the loop returns or raises)


# -- the cross-check -------------------------------------------------------------------------------------------------

_Reading = list[tuple[str | None, str | None, bytes]]


def _werkzeug(body: bytes, boundary: bytes) -> _Reading:
    """The body as Flask reads it: werkzeug.formparser.MultiPartParser.parse, without the files on disk."""
    decoder = _wz.MultipartDecoder(boundary)
    out: _Reading = []
    current: tuple[str | None, str | None] = (None, None)
    data: list[bytes] = []
    ended = False
    chunks: list[bytes | None] = [body[i : i + _WERKZEUG_CHUNK] for i in range(0, len(body), _WERKZEUG_CHUNK)]
    for chunk in [*chunks, None]:
        decoder.receive_data(chunk)
        event = decoder.next_event()
        while not isinstance(event, (_wz.Epilogue, _wz.NeedData)):
            if isinstance(event, _wz.File):
                current, data = (event.name, event.filename), []
            elif isinstance(event, _wz.Field):
                current, data = (event.name, None), []
            elif isinstance(event, _wz.Data):
                data.append(event.data)
                if not event.more_data:
                    out.append((*current, b"".join(data)))
            event = decoder.next_event()
        ended = ended or isinstance(event, _wz.Epilogue)
    if not ended:
        raise ValueError("no epilogue")
    return out


def _starlette(body: bytes, boundary: bytes) -> _Reading:
    """The body as Starlette reads it: starlette.formparsers.MultiPartParser's callbacks on python-multipart."""
    out: _Reading = []
    state: dict[str, object] = {}
    header_name: list[bytes] = []
    header_value: list[bytes] = []
    data: list[bytes] = []

    def decode(raw: bytes) -> str:  # starlette.formparsers._user_safe_decode, in the UTF-8 boundary_of requires
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def on_part_begin() -> None:
        state.clear()
        data.clear()

    def on_header_end() -> None:
        if b"".join(header_name).lower() == b"content-disposition":
            state["disposition"] = b"".join(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        options = _pm.parse_options_header(state.get("disposition"))[1]  # type: ignore[arg-type]
        state["name"] = decode(options[b"name"])
        state["filename"] = decode(options[b"filename"]) if b"filename" in options else None

    def on_part_end() -> None:
        out.append((state["name"], state["filename"], b"".join(data)))  # type: ignore[arg-type]

    def on_end() -> None:
        state["end"] = True

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": lambda d, s, e: data.append(d[s:e]),
        "on_part_end": on_part_end,
        "on_header_field": lambda d, s, e: header_name.append(d[s:e]),
        "on_header_value": lambda d, s, e: header_value.append(d[s:e]),
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_end": on_end,
    }
    parser = _pm.MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    parser.logger = _QUIET
    parser.write(body)
    parser.finalize()
    if not state.get("end"):
        raise ValueError("no end")
    return out


def _cross_check(body: bytes, boundary: bytes, found: list[Part]) -> None:
    ours = [(p.name, p.filename, body[p.start : p.end]) for p in found]
    for reader in (_werkzeug, _starlette):
        try:
            theirs = reader(body, boundary)
        except Exception:  # any failure of theirs, on a body ours accepts, is a difference
            theirs = None
        if theirs != ours:
            raise MultipartError("the body is read differently by parsers")


def parts(body: bytes, boundary: bytes, max_parts: int = MAX_PARTS,
          max_header_bytes: int = MAX_HEADER_BYTES) -> list[Part]:
    """The parts of a multipart body, with where each value lies. A body outside the strict grammar, or one that
    Werkzeug or python-multipart reads differently, raises MultipartError."""
    found = _parse(body, boundary, max_parts, max_header_bytes)
    _cross_check(body, boundary, found)
    return found


def values(body: bytes, boundary: bytes, name: str, found: list[Part] | None = None) -> list[str]:
    """`found`: what parts() returned for this very body, so that it is not read (and cross-checked) again."""
    found = parts(body, boundary) if found is None else found
    return [body[p.start : p.end].decode("utf-8", "surrogateescape") for p in found if p.name == name]


def replace_values(body: bytes, boundary: bytes, name: str, new: list[str | None],
                   found: list[Part] | None = None) -> bytes:
    """The body with the values of `name`'s parts replaced in order; None removes that whole part. A new value that
    holds the delimiter would frame the body anew: MultipartError. `found`: as for values()."""
    delimiter = b"--" + boundary
    chunks, last, i = [], 0, 0
    for part in parts(body, boundary) if found is None else found:
        if part.name != name:
            continue
        value = new[i]
        i += 1
        if value is None:
            # From this part's delimiter to the next one's: the part is gone, the others untouched.
            chunks.append(body[last : part.head])
            last = part.end + 2
        else:
            encoded = value.encode("utf-8", "surrogateescape")
            if delimiter in encoded:
                raise MultipartError("a new value holds the multipart boundary")
            chunks += [body[last : part.start], encoded]
            last = part.end
    chunks.append(body[last:])
    return b"".join(chunks)
