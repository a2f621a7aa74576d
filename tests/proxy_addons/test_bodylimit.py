"""bodylimit.decode: round trips per encoding, decompression bombs stopped early with bounded memory, and the strict
refusals (truncated, trailing data, stacked or unknown encodings)."""

from __future__ import annotations

import gzip
import os
import struct
import time
import tracemalloc
import zlib

import brotli
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_addons import bodylimit
from proxy_addons.bodylimit import (
    BodyError,
    BodyTooLarge,
    BodyUndecodable,
    EncodingUnsupported,
    decode,
    encodings_of,
)

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from backports import zstd  # type: ignore[import-not-found,no-redef]

MiB = 1 << 20
GiB = 1 << 30


# --- encoders ---------------------------------------------------------------------------------------------------

def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zlib_raw(data: bytes, level: int = 6) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def br(data: bytes) -> bytes:
    return brotli.compress(data, quality=1)


def zs(data: bytes) -> bytes:
    return zstd.compress(data)


def skippable(payload: bytes, magic: int = 0x184D2A50) -> bytes:
    return struct.pack("<II", magic, len(payload)) + payload


ENCODERS = {
    "identity": lambda d: d,
    "gzip": gz,
    "x-gzip": gz,
    "gzip-zlib": zlib.compress,  # zlib data labelled gzip, as mitmproxy accepts
    "deflate": zlib.compress,
    "deflate-raw": zlib_raw,
    "br": br,
    "zstd": zs,
}


def header(name: str) -> str:
    return {"gzip-zlib": "gzip", "deflate-raw": "deflate"}.get(name, name)


# --- bombs, built without holding the decoded body ----------------------------------------------------------------

def deflate_spaces(mib: int) -> bytes:
    """Raw deflate of `mib` MiB of spaces. Each MiB ends in a full flush, which resets the compressor, so every MiB
    compresses to the same bytes: compress one, repeat it, then end the stream."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    piece = c.compress(b" " * MiB) + c.flush(zlib.Z_FULL_FLUSH)
    return piece * mib + c.flush()


def _checksums(mib: int) -> tuple[int, int]:
    crc, adler, block = 0, 1, b" " * MiB
    for _ in range(mib):
        crc, adler = zlib.crc32(block, crc), zlib.adler32(block, adler)
    return crc, adler


def gzip_spaces(mib: int) -> bytes:
    crc, _ = _checksums(mib)
    head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # magic, deflate, no flags, mtime 0, XFL 2, OS unknown
    return head + deflate_spaces(mib) + struct.pack("<II", crc, mib * MiB % 2**32)


def zlib_spaces(mib: int) -> bytes:
    _, adler = _checksums(mib)
    return b"\x78\xda" + deflate_spaces(mib) + struct.pack(">I", adler)


def brotli_spaces(mib: int) -> bytes:
    c, block = brotli.Compressor(quality=0), b" " * MiB
    return b"".join([c.process(block) for _ in range(mib)] + [c.finish()])


def zstd_spaces(mib: int) -> bytes:
    c, block = zstd.ZstdCompressor(level=1), b" " * MiB
    return b"".join([c.compress(block) for _ in range(mib)] + [c.flush()])


BOMBS = {
    # (builder of `mib` MiB of spaces, Content-Encoding, prefix: a small valid member/frame before the bomb)
    "zstd-second-frame": (zstd_spaces, "zstd", zs(b"{}")),
    "zstd-after-skippable": (zstd_spaces, "zstd", skippable(b"x" * 100)),
    "gzip": (gzip_spaces, "gzip", b""),
    "gzip-second-member": (gzip_spaces, "gzip", gz(b"{}")),
    "zlib-labelled-gzip": (zlib_spaces, "gzip", b""),
    "deflate-zlib": (zlib_spaces, "deflate", b""),
    "deflate-raw": (deflate_spaces, "deflate", b""),
    "br": (brotli_spaces, "br", b""),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_builders_are_valid(name: str) -> None:
    build, encoding, prefix = BOMBS[name]
    expected = (b"{}" if prefix.startswith((zs(b"{}")[:4], b"\x1f\x8b")) else b"") + b" " * (3 * MiB)
    assert decode(prefix + build(3), encoding, 4 * MiB) == expected


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_one_gib_bomb_is_refused_early_with_bounded_memory(name: str) -> None:
    build, encoding, prefix = BOMBS[name]
    body = prefix + build(1024)
    assert len(body) < 2 * MiB
    limit = MiB
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        started = time.perf_counter()
        with pytest.raises(BodyTooLarge) as caught:
            decode(body, encoding, limit)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413
    assert peak < 3 * limit + MiB, f"{name}: peak {peak} bytes"
    assert elapsed < 2.0, f"{name}: {elapsed:.2f} s"


# --- round trips ------------------------------------------------------------------------------------------------

DATA = os.urandom(150_000) + b"a" * 400_000 + bytes(range(256)) * 300  # more than one input and output step


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_round_trip(name: str) -> None:
    assert decode(ENCODERS[name](DATA), header(name), len(DATA)) == DATA
    assert decode(ENCODERS[name](b""), header(name), 0) == b""


@pytest.fixture(scope="module")
def big() -> bytes:
    return os.urandom(3 * MiB) + b"a" * (3 * MiB) + bytes(range(256)) * 4096


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_round_trip_of_a_large_body(name: str, big: bytes) -> None:
    """Many input and output steps: incompressible stretches (raw / stored blocks) and long runs."""
    assert decode(ENCODERS[name](big), header(name), len(big)) == big


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_limit_is_inclusive(name: str) -> None:
    body = ENCODERS[name](DATA)
    assert decode(body, header(name), len(DATA)) == DATA
    with pytest.raises(BodyTooLarge):
        decode(body, header(name), len(DATA) - 1)


def test_multi_member_gzip_decodes_every_member() -> None:
    members = [b"first ", os.urandom(100_000), b"", b" last"]
    body = b"".join(gz(m) for m in members)
    assert decode(body, "gzip", MiB) == b"".join(members)
    with pytest.raises(BodyTooLarge):  # the later members count toward the limit
        decode(body, "gzip", 100_000)


def test_gzip_members_straddling_input_steps() -> None:
    members = [os.urandom(n) for n in (bodylimit.IN_STEP - 30, 7, bodylimit.IN_STEP + 5, 1)]
    assert decode(b"".join(gz(m) for m in members), "gzip", MiB) == b"".join(members)


def test_multi_frame_zstd_with_skippable_frames() -> None:
    frames = [b"{", os.urandom(bodylimit.IN_STEP + 100), b"", b"}"]
    body = skippable(b"meta") + zs(frames[0]) + skippable(b"", 0x184D2A5F) + zs(frames[1]) + zs(frames[2]) + \
        skippable(os.urandom(bodylimit.IN_STEP)) + zs(frames[3])
    assert decode(body, "zstd", MiB) == b"".join(frames)
    assert decode(skippable(b"only"), "zstd", 0) == b""


def test_zstd_frame_with_checksum_and_streamed_frames() -> None:
    c = zstd.ZstdCompressor(options={zstd.CompressionParameter.checksum_flag: 1})
    body = c.compress(DATA) + c.flush() + zs(b"!")
    assert decode(body, "zstd", MiB) == DATA + b"!"
    corrupt = bytearray(body)
    corrupt[len(body) - len(zs(b"!")) - 1] ^= 0xFF  # last byte of the first frame's checksum
    with pytest.raises(BodyUndecodable):
        decode(bytes(corrupt), "zstd", MiB)


def test_zlib_labelled_gzip_and_deflate_variants() -> None:
    assert decode(zlib.compress(b"hello"), "gzip", 100) == b"hello"
    assert decode(zlib.compress(b"hello"), "x-gzip", 100) == b"hello"
    assert decode(zlib.compress(b"hello"), "deflate", 100) == b"hello"
    assert decode(zlib_raw(b"hello"), "deflate", 100) == b"hello"
    assert decode(zlib_raw(b"hello", 0), "deflate", 100) == b"hello"  # a stored block


def test_identity() -> None:
    assert decode(b"abc", "", 3) == b"abc"
    assert decode(b"abc", "identity", 3) == b"abc"
    assert decode(bytearray(b"abc"), " Identity , ", 3) == b"abc"
    with pytest.raises(BodyTooLarge) as caught:
        decode(b"abcd", "", 3)
    assert caught.value.status == 413
    assert decode(b"", "", 0) == b""


def test_identity_items_are_ignored_next_to_a_coding() -> None:
    assert decode(gz(b"x"), "identity, gzip", 10) == b"x"


def test_encodings_of() -> None:
    assert encodings_of("") == []
    assert encodings_of(" identity ,, ") == []
    assert encodings_of("GZip") == ["gzip"]
    assert encodings_of("x-gzip") == ["gzip"]
    assert encodings_of("gzip,\tBR") == ["gzip", "br"]
    assert encodings_of("identity, zstd") == ["zstd"]


# --- refusals ---------------------------------------------------------------------------------------------------

def _refused(raw: bytes, content_encoding: str, kind: type[BodyError], status: int) -> BodyError:
    with pytest.raises(kind) as caught:
        decode(raw, content_encoding, MiB)
    assert caught.value.status == status
    assert caught.value.message and "\n" not in caught.value.message
    return caught.value


COMPRESSED = ["gzip", "gzip-zlib", "deflate", "deflate-raw", "br", "zstd"]


@pytest.mark.parametrize("name", COMPRESSED)
@pytest.mark.parametrize("data", [b"hello world, hello world", DATA], ids=["small", "large"])
@pytest.mark.parametrize("cut", [1, 4, 0.5])
def test_truncated_stream_is_undecodable(name: str, data: bytes, cut: int | float) -> None:
    body = ENCODERS[name](data)
    keep = int(len(body) * cut) if isinstance(cut, float) else len(body) - cut
    _refused(body[:keep], header(name), BodyUndecodable, 400)


@pytest.mark.parametrize("name", COMPRESSED)
@pytest.mark.parametrize("trailer", [b"x", b"\x00", b"\x00" * 8, b"\x1f", b"garbage after the end"])
@pytest.mark.parametrize("data", [b"hello", DATA], ids=["small", "large"])
def test_trailing_garbage_is_undecodable(name: str, trailer: bytes, data: bytes) -> None:
    _refused(ENCODERS[name](data) + trailer, header(name), BodyUndecodable, 400)


def test_trailing_data_after_a_zlib_stream_labelled_gzip_is_undecodable() -> None:
    # zlib has no members: not even a valid gzip member may follow it.
    _refused(zlib.compress(b"a") + gz(b"b"), "gzip", BodyUndecodable, 400)
    _refused(zlib.compress(b"a") + zlib.compress(b"b"), "gzip", BodyUndecodable, 400)
    _refused(zlib.compress(b"a") + zlib.compress(b"b"), "deflate", BodyUndecodable, 400)
    _refused(zlib_raw(b"a") + zlib_raw(b"b"), "deflate", BodyUndecodable, 400)


def test_a_zlib_member_after_a_gzip_member_is_undecodable() -> None:
    _refused(gz(b"a") + zlib.compress(b"b"), "gzip", BodyUndecodable, 400)


def test_zstd_truncated_skippable_frame_is_undecodable() -> None:
    _refused(zs(b"a") + skippable(b"12345678")[:-1], "zstd", BodyUndecodable, 400)
    _refused(zs(b"a") + skippable(b"")[:6], "zstd", BodyUndecodable, 400)


def with_dictionary(data: bytes) -> bytes:
    c = zlib.compressobj(zdict=data)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("raw, encoding", [
    (b"not compressed at all", "gzip"),
    (b"not compressed at all", "deflate"),
    (b"not compressed at all", "br"),
    (b"not compressed at all", "zstd"),
    (gz(b"x")[:-8] + b"\0\0\0\0" + gz(b"x")[-4:], "gzip"),  # bad CRC-32
    (zlib.compress(b"x")[:-1] + bytes([zlib.compress(b"x")[-1] ^ 1]), "deflate"),  # bad Adler-32
    (zlib.compress(b"x")[:-1] + bytes([zlib.compress(b"x")[-1] ^ 1]), "gzip"),
    (with_dictionary(b"dictionary"), "deflate"),  # FDICT: needs a preset dictionary nobody has
    (with_dictionary(b"dictionary"), "gzip"),
])
def test_malformed_data_is_undecodable(raw: bytes, encoding: str) -> None:
    _refused(raw, encoding, BodyUndecodable, 400)


@pytest.mark.parametrize("value", ["gzip, br", "br,gzip", "gzip, gzip", "deflate, identity, zstd"])
def test_stacked_encodings_are_unsupported(value: str) -> None:
    error = _refused(gz(b"x"), value, EncodingUnsupported, 415)
    assert "stacked" in error.message


@pytest.mark.parametrize("value", ["compress", "x-compress", "gzip;q=1", "deflateraw", "none", "bzip2", "pack200-gzip"])
def test_unknown_encodings_are_unsupported(value: str) -> None:
    error = _refused(gz(b"x"), value, EncodingUnsupported, 415)
    assert "unsupported" in error.message


def test_unknown_encoding_name_is_echoed_only_when_it_is_a_plain_token() -> None:
    assert "'compress'" in _refused(b"x", "compress", EncodingUnsupported, 415).message
    assert "<" not in _refused(b"x", "<script>", EncodingUnsupported, 415).message


def test_unsupported_wins_over_an_empty_body() -> None:
    _refused(b"", "gzip, br", EncodingUnsupported, 415)
    _refused(b"", "compress", EncodingUnsupported, 415)


def test_empty_body_decodes_to_nothing_under_any_single_coding() -> None:
    for value in ("gzip", "x-gzip", "deflate", "br", "zstd"):
        assert decode(b"", value, 0) == b""


def test_negative_limit_is_a_programming_error() -> None:
    with pytest.raises(ValueError) as caught:
        decode(b"", "", -1)
    assert not isinstance(caught.value, BodyError)


def test_error_classes() -> None:
    assert issubclass(BodyTooLarge, BodyError) and BodyTooLarge("m").status == 413
    assert issubclass(BodyUndecodable, BodyError) and BodyUndecodable("m").status == 400
    assert issubclass(EncodingUnsupported, BodyError) and EncodingUnsupported("m").status == 415
    assert issubclass(BodyError, ValueError)
    assert BodyTooLarge("short reason").message == "short reason"


# --- property ---------------------------------------------------------------------------------------------------

@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, bytes, str, int]:
    """(data, its encoding, Content-Encoding, a limit at, just under or around its length). gzip and zstd bodies
    are sometimes split into several members / frames."""
    data = draw(st.one_of(st.binary(max_size=3000),
                          st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(1, 40_000))))
    name = draw(st.sampled_from(sorted(ENCODERS)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3))) if name in ("gzip", "zstd") else []
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    limit = draw(st.one_of(st.sampled_from([len(data), max(len(data) - 1, 0)]), st.integers(0, 2 * len(data) + 1)))
    return data, b"".join(ENCODERS[name](p) for p in parts), header(name), limit


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_decode_inverts_encode_up_to_the_limit(body: tuple[bytes, bytes, str, int]) -> None:
    data, raw, content_encoding, limit = body
    if len(data) <= limit:
        assert decode(raw, content_encoding, limit) == data
    else:
        with pytest.raises(BodyTooLarge):
            decode(raw, content_encoding, limit)


# --- many members / frames ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("unit, encoding", [
    (gz(b"x"), "gzip"),
    (zs(b"x"), "zstd"),
    (skippable(b""), "zstd"),
])
def test_member_and_frame_count_is_capped(unit: bytes, encoding: str) -> None:
    """Each zstd frame needs a fresh decompressor (~10-20 us): 10 MiB of 10-byte frames would take ~20 s of CPU.
    Bodies with more than MAX_PARTS members / frames are refused, quickly, however long they are."""
    at_cap = unit * bodylimit.MAX_PARTS
    started = time.perf_counter()
    assert decode(at_cap, encoding, MiB) == (b"" if unit.startswith(skippable(b"")[:4]) else b"x" * bodylimit.MAX_PARTS)
    assert time.perf_counter() - started < 1.0
    _refused(at_cap + unit, encoding, BodyUndecodable, 400)
    started = time.perf_counter()
    _refused(unit * (10 * MiB // len(unit)), encoding, BodyUndecodable, 400)
    assert time.perf_counter() - started < 1.0
