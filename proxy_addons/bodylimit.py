"""Is a compressed body larger than the limit once decoded? Found out without inflating it whole.

A 2 KB zstd body can unpack to gigabytes; mitmproxy's decoder would build all of it in memory. Here each encoding
is decoded in bounded steps that stop one byte past the limit.
"""

from __future__ import annotations

import zlib

import brotli

try:
    from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found,no-redef]

STEP = 1 << 16


def exceeds(raw: bytes, content_encoding: str, limit: int) -> bool:
    """True when `raw`, decoded per Content-Encoding, is longer than `limit` bytes. Unknown or broken encodings
    return False: the real decoder then refuses them with its own error."""
    encodings = [e.strip().lower() for e in content_encoding.split(",") if e.strip()]
    if len(encodings) != 1 or encodings[0] in ("identity", ""):
        return len(raw) > limit if not encodings or encodings == ["identity"] else False
    try:
        return _decoded_length(raw, encodings[0], limit + 1) > limit
    except Exception:  # malformed data: left to mitmproxy's decoder, which fails closed with a clear message
        return False


def _decoded_length(raw: bytes, encoding: str, cap: int) -> int:
    if encoding in ("gzip", "x-gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else (zlib.MAX_WBITS if raw[:1] == b"\x78" else
                                                                  -zlib.MAX_WBITS)
        d = zlib.decompressobj(wbits)
        total, data = 0, raw
        while data and total < cap:
            out = d.decompress(data, STEP)
            total += len(out)
            data = d.unconsumed_tail
        return total
    if encoding == "br":
        b = brotli.Decompressor()
        total = len(b.process(raw, output_buffer_limit=STEP))
        while total < cap and not b.is_finished() and not b.can_accept_more_data():
            total += len(b.process(b"", output_buffer_limit=STEP))
        return total
    if encoding == "zstd":
        z = zstd.ZstdDecompressor()
        total = len(z.decompress(raw, max_length=STEP))
        while total < cap and not z.eof and z.needs_input is False:
            total += len(z.decompress(b"", max_length=STEP))
        return total
    return 0
