"""Decode an HTTP body per its Content-Encoding: bounded, streaming and strict.

A 32 KB zstd body can unpack to gigabytes, and mitmproxy's own decoder (mitmproxy.net.encoding) builds all of it in
memory at once. `decode` works in bounded steps instead: it feeds the input in slices of `IN_STEP` bytes, asks every
decompressor for at most `STEP` bytes of output at a time (never more than one byte past what the limit still
allows), and raises `BodyTooLarge` as soon as the output passes the limit. So it never holds much more than `limit`
bytes of output, whatever the body.

Its answer defines what the sidecar accepts, so it decodes at least everything a real decoder behind the proxy could
decode, and refuses (never skips) what it cannot account for:

- every gzip member of a multi-member body, every zstd frame of a multi-frame body (skippable frames included);
- data after the end of the stream that is not another member / frame: `BodyUndecodable`;
- a stream cut before its end: `BodyUndecodable` (mitmproxy's gzip decoder would return the partial output);
- checksums (gzip CRC-32 and size, zlib Adler-32, zstd content checksum when present) are verified;
- more than one encoding (`gzip, br`) or an encoding it does not know: `EncodingUnsupported`;
- more than MAX_PARTS gzip members or zstd frames: `BodyUndecodable`. Each zstd frame needs a fresh decompressor
  (about 10-20 us), so 10 MiB of 10-byte frames would cost some 20 s of CPU (mitmproxy's decoder: minutes, as it
  copies the rest of the body after every frame). Real bodies have one member or frame, rarely a few.

Like mitmproxy, "gzip" also accepts a zlib (RFC 1950) stream, and "deflate" accepts a zlib stream or raw deflate
(RFC 1951). Unlike mitmproxy, "deflate" picks by the first two bytes (a valid zlib header: zlib, strictly; anything
else: raw deflate) instead of retrying as raw deflate after any zlib error: a body whose zlib reading fails its
checksum is refused rather than re-read as something else. An empty body decodes to b"" under any single supported
encoding, as in mitmproxy (HEAD, 204 and 304 answers carry Content-Encoding without a body).
"""

from __future__ import annotations

import re
import zlib

import brotli

try:
    from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found,no-redef]

STEP = 1 << 16  # most output asked of a decompressor in one call
IN_STEP = 1 << 16  # most input given to a decompressor in one call (bounds the copies of unconsumed input)
_FIRST_IN_STEP = 1 << 10  # the first input slice of each member / frame; doubles up to IN_STEP
MAX_PARTS = 1024  # most gzip members or zstd frames (skippable ones included) in one body
_BR_STEP = 1 << 14  # brotli 1.2 rounds its output buffer up (32 KiB floor, then grows by half): ask for less

SUPPORTED = ("gzip", "deflate", "br", "zstd")
_ALIASES = {"x-gzip": "gzip"}
_TOKEN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,32}")
_ZSTD_SKIPPABLE = 0x184D2A50  # the 16 magic numbers 0x184D2A50..0x184D2A5F, little-endian


class BodyError(ValueError):
    """A body the sidecar will not pass on. `message` is short and safe to send to the client; `status` is the HTTP
    status to answer with."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BodyTooLarge(BodyError):
    status = 413


class BodyUndecodable(BodyError):
    """Malformed data, a truncated stream, or bytes after the end of the stream."""

    status = 400


class EncodingUnsupported(BodyError):
    """An unknown content coding, or more than one stacked."""

    status = 415


def encodings_of(content_encoding: str) -> list[str]:
    """The codings a Content-Encoding value lists, in order: lower-cased, stripped, "identity" and empty items dropped,
    "x-gzip" given as "gzip" (RFC 9110 8.4.1.3). Pass all Content-Encoding fields joined with ", " (mitmproxy's
    `headers.get` does so)."""
    found = []
    for item in content_encoding.split(","):
        token = item.strip(" \t").lower()
        if token and token != "identity":
            found.append(_ALIASES.get(token, token))
    return found


def decode(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """`raw` decoded per `content_encoding`. Raises BodyTooLarge once the decoded body passes `limit` bytes (having
    produced at most about `limit` + STEP bytes), BodyUndecodable for malformed, truncated or trailing data, and
    EncodingUnsupported for unknown or stacked codings."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    encodings = encodings_of(content_encoding)
    unknown = [e for e in encodings if e not in SUPPORTED]
    if unknown:
        name = unknown[0]
        raise EncodingUnsupported(f"unsupported Content-Encoding {name!r}" if _TOKEN.fullmatch(name)
                                  else "unsupported Content-Encoding")
    if len(encodings) > 1:
        raise EncodingUnsupported(f"stacked Content-Encoding ({', '.join(encodings)}) is not supported: "
                                  "send at most one coding")
    if not encodings:
        if len(raw) > limit:
            raise BodyTooLarge(_too_large(limit))
        return bytes(raw)
    if not raw:
        return b""
    encoding = encodings[0]
    sink = _Sink(limit)
    view = memoryview(raw).cast("B")
    try:
        if encoding == "gzip":
            _gunzip(view, sink)
        elif encoding == "deflate":
            _inflate_deflate(view, sink)
        elif encoding == "br":
            _unbrotli(view, sink)
        else:
            _unzstd(view, sink)
    except BodyError:
        raise
    except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as exc:
        raise BodyUndecodable(f"the {encoding} body is malformed") from exc
    return sink.result()


def _too_large(limit: int) -> str:
    return f"the body is larger than the limit of {limit} bytes once decoded"


class _Sink:
    """The decoded pieces so far; raises BodyTooLarge as soon as they pass the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.pieces: list[bytes] = []

    def room(self, step: int = STEP) -> int:
        """Most output to ask for next: one byte past the limit at most, so passing it is seen. Always >= 1 (zlib
        reads max_length=0 as "no limit")."""
        return min(step, self.limit - self.size + 1)

    def add(self, piece: bytes) -> None:
        if piece:
            self.size += len(piece)
            if self.size > self.limit:
                self.pieces.clear()
                raise BodyTooLarge(_too_large(self.limit))
            self.pieces.append(piece)

    def result(self) -> bytes:
        pieces, self.pieces = self.pieces, []
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _truncated(encoding: str) -> BodyUndecodable:
    return BodyUndecodable(f"the {encoding} body is truncated")


def _trailing(encoding: str) -> BodyUndecodable:
    return BodyUndecodable(f"the {encoding} body has data after its end")


def _inflate(view: memoryview, pos: int, wbits: int, sink: _Sink, encoding: str) -> int:
    """Inflate one zlib-format stream (gzip member, zlib or raw deflate, per `wbits`) starting at `pos`; returns
    where it ended."""
    d = zlib.decompressobj(wbits)
    end = len(view)
    step = _FIRST_IN_STEP  # small first: after a short member, unused_data copies the rest of the slice
    while not d.eof:
        if pos >= end:
            raise _truncated(encoding)
        chunk = view[pos:pos + step]
        pos += len(chunk)
        step = min(2 * step, IN_STEP)
        data: bytes | memoryview = chunk
        while True:
            room = sink.room()
            out = d.decompress(data, room)
            sink.add(out)
            data = d.unconsumed_tail
            # Output short of `room`: zlib used all the input it had and has nothing more pending. Output == room:
            # ask again, with what input is left (maybe none), until it comes short.
            if d.eof or len(out) < room:
                break
    return pos - len(d.unused_data)


def _gunzip(view: memoryview, sink: _Sink) -> None:
    # The first member as mitmproxy reads it (wbits 32+15: a gzip header, else a zlib header). A zlib stream has no
    # members after it; a gzip member may be followed by more gzip members, each decoded.
    pos = _inflate(view, 0, 32 + zlib.MAX_WBITS, sink, "gzip")
    if pos < len(view) and view[0] != 0x1F:
        raise _trailing("gzip")
    parts = 1
    while pos < len(view):
        if view[pos:pos + 2] != b"\x1f\x8b"[:len(view) - pos]:
            raise _trailing("gzip")
        parts += 1
        if parts > MAX_PARTS:
            raise BodyUndecodable(f"the gzip body has more than {MAX_PARTS} members")
        pos = _inflate(view, pos, 16 + zlib.MAX_WBITS, sink, "gzip")


def _is_zlib_header(view: memoryview) -> bool:
    """RFC 1950: CM 8 (deflate), CINFO <= 7, and the header a multiple of 31. Raw deflate as real encoders write it
    never looks like this (its first byte would need non-zero padding bits in a stored block header)."""
    return len(view) >= 2 and view[0] & 0x0F == 8 and view[0] >> 4 <= 7 and (view[0] << 8 | view[1]) % 31 == 0


def _inflate_deflate(view: memoryview, sink: _Sink) -> None:
    wbits = zlib.MAX_WBITS if _is_zlib_header(view) else -zlib.MAX_WBITS
    if _inflate(view, 0, wbits, sink, "deflate") < len(view):
        raise _trailing("deflate")


def _unbrotli(view: memoryview, sink: _Sink) -> None:
    # brotli 1.2: process(data, output_buffer_limit=n) stops once its output buffer reaches n (rounded up to its
    # allocation quantum) and keeps the rest for process(b"") calls. can_accept_more_data() may say True while output
    # is still pending, so drain until a call gives nothing. Input past the end of the stream makes process() raise.
    d = brotli.Decompressor()
    end = len(view)
    pos = 0
    while pos < end:
        if d.is_finished():
            raise _trailing("br")
        chunk = view[pos:pos + IN_STEP]
        pos += len(chunk)
        out = d.process(chunk, output_buffer_limit=sink.room(_BR_STEP))
        idle = 0
        while True:
            sink.add(out)
            if d.is_finished() or (not out and d.can_accept_more_data()):
                break
            idle = idle + 1 if not out else 0
            if idle > 8:  # pragma: no cover - a decoder making no progress; never seen
                raise BodyUndecodable("the br body is malformed")
            out = d.process(b"", output_buffer_limit=sink.room(_BR_STEP))
    if not d.is_finished():
        raise _truncated("br")


def _unzstd(view: memoryview, sink: _Sink) -> None:
    # Every frame in turn, each with its own decompressor (one cannot go on past the end of a frame). After a frame
    # the position goes back by len(unused_data), so the next frame is read from `view` again: no copy of the rest
    # of the body per frame. Skippable frames are stepped over here, without a decompressor.
    end = len(view)
    pos = parts = 0
    while pos < end:
        parts += 1
        if parts > MAX_PARTS:
            raise BodyUndecodable(f"the zstd body has more than {MAX_PARTS} frames")
        if end - pos >= 8 and int.from_bytes(view[pos:pos + 4], "little") & ~0xF == _ZSTD_SKIPPABLE:
            size = int.from_bytes(view[pos + 4:pos + 8], "little")
            if pos + 8 + size > end:
                raise _truncated("zstd")
            pos += 8 + size
            continue
        d = zstd.ZstdDecompressor()
        idle = 0
        step = _FIRST_IN_STEP  # small first: after a short frame, unused_data copies the rest of the slice
        while not d.eof:
            if d.needs_input:
                if pos >= end:
                    raise _truncated("zstd")
                chunk = view[pos:pos + step]
                pos += len(chunk)
                step = min(2 * step, IN_STEP)
                idle = 0
                out = d.decompress(chunk, max_length=sink.room())
            else:
                out = d.decompress(b"", max_length=sink.room())
                idle = idle + 1 if not out else 0
                if idle > 8:  # pragma: no cover - a decoder making no progress; never seen
                    raise BodyUndecodable("the zstd body is malformed")
            sink.add(out)
        pos -= len(d.unused_data)
