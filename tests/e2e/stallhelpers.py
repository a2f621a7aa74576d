"""Helpers for tests/e2e/test_proxy_stall.py: compression bombs built without ever holding their output, a client
that times small requests on a keep-alive connection, an adversarial request in a thread, and the proxy's memory.

The bombs are built chunk by chunk. The deflate-family ones (gzip, zlib, raw deflate) and the brotli one are built
from one compressed piece repeated: a compressor flushed after each 1 MiB of spaces (zlib's Z_FULL_FLUSH resets its
window, brotli's flush byte-aligns it) writes the same bytes for every further 1 MiB, so the piece is compressed
once and repeated, and the checksums (CRC-32 for gzip, Adler-32 for zlib) are computed over the chunks one by one.
`check_bomb` decodes a bomb streaming, counting bytes only, to prove the construction (slow: not for every run).
"""

from __future__ import annotations

import http.client
import statistics
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli
from backports import zstd

MiB = 1 << 20
_SPACES = b" " * MiB


# -- bombs ---------------------------------------------------------------------------------------------------------


def zstd_bomb(prefix: bytes, mib: int) -> bytes:
    """Two zstd frames: `prefix`, then `mib` MiB of spaces (32 KB for 1 GiB: every 128 KiB block is one RLE block)."""
    c = zstd.ZstdCompressor()
    pieces = [c.compress(_SPACES) for _ in range(mib)]
    pieces.append(c.flush())
    return zstd.compress(prefix) + b"".join(pieces)


def _deflate_pieces(prefix: bytes, mib: int, wbits: int) -> tuple[bytes, bytes]:
    """(header and the prefix's compressed bytes, the compressed bytes of each further MiB of spaces) for a stream
    made with Z_FULL_FLUSH after the prefix and after every MiB: each MiB then compresses to the same bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    first = c.compress(_SPACES) + c.flush(zlib.Z_FULL_FLUSH)
    second = c.compress(_SPACES) + c.flush(zlib.Z_FULL_FLUSH)
    assert first == second, "zlib did not repeat itself after a full flush"
    return head, first


_FINAL_EMPTY_BLOCK = b"\x03\x00"  # a final fixed-Huffman block holding only its end-of-block code, byte-aligned


def deflate_bomb(prefix: bytes, mib: int, container: str) -> bytes:
    """`prefix` then `mib` MiB of spaces in one deflate stream; container: "raw" (RFC 1951), "zlib" (RFC 1950) or
    "gzip" (RFC 1952, one member)."""
    wbits = {"raw": -15, "zlib": 15, "gzip": 31}[container]
    head, piece = _deflate_pieces(prefix, mib, wbits)
    body = head + piece * mib + _FINAL_EMPTY_BLOCK
    if container == "raw":
        return body
    if container == "zlib":
        adler = zlib.adler32(prefix)
        for _ in range(mib):
            adler = zlib.adler32(_SPACES, adler)
        return body + struct.pack(">I", adler)
    crc = zlib.crc32(prefix)
    for _ in range(mib):
        crc = zlib.crc32(_SPACES, crc)
    return body + struct.pack("<II", crc, (len(prefix) + mib * MiB) & 0xFFFFFFFF)


def gzip_multimember_bomb(prefix: bytes, members: int, mib_each: int) -> bytes:
    """A gzip member holding `prefix`, then `members` identical members of `mib_each` MiB of spaces each."""
    import gzip

    return gzip.compress(prefix, 9) + deflate_bomb(b"", mib_each, "gzip") * members


def brotli_bomb(prefix: bytes, mib: int) -> bytes:
    """`prefix` then `mib` MiB of spaces in one brotli stream (about 13 bytes per MiB once the window is full)."""
    c = brotli.Compressor(quality=5, lgwin=24)
    head = c.process(prefix) + c.flush()
    warm = [c.process(_SPACES) + c.flush() for _ in range(3)]
    piece = c.process(_SPACES) + c.flush()
    again = c.process(_SPACES) + c.flush()
    assert piece == again, "brotli did not repeat itself after a flush"
    return head + b"".join(warm) + piece * (mib - 4) + again + c.finish()


def check_bomb(data: bytes, encoding: str, expected: int) -> None:
    """Decode `data` streaming, counting bytes only, and check it decodes to exactly `expected` bytes."""
    total = 0
    if encoding == "zstd":
        pos = 0
        while pos < len(data):
            d = zstd.ZstdDecompressor()
            chunk = data[pos:]
            while not d.eof:
                out = d.decompress(chunk, max_length=MiB)
                chunk = b""
                total += len(out)
            pos = len(data) - len(d.unused_data)
    elif encoding == "br":
        d = brotli.Decompressor()
        for i in range(0, len(data), 64):
            total += len(d.process(data[i:i + 64], output_buffer_limit=MiB))
            while not d.is_finished() and not d.can_accept_more_data():
                total += len(d.process(b"", output_buffer_limit=MiB))
        assert d.is_finished()
    else:
        rest = data
        while rest:
            wbits = {"deflate-raw": -15, "zlib": 15, "gzip": 31}[encoding]
            d = zlib.decompressobj(wbits)
            buf = rest
            while not d.eof:
                out = d.decompress(buf, MiB)
                buf = d.unconsumed_tail
                total += len(out)
                if not out and not buf:
                    raise AssertionError("truncated")
            rest = d.unused_data
            assert encoding == "gzip" or not rest
    assert total == expected, (total, expected)


def peek_decoded(data: bytes, content_encoding: str, limit: int = 4 * MiB) -> bytes:
    """At most `limit` bytes of the start of a body decoded per its Content-Encoding (for leak checks of a body
    that might be a bomb: never more than `limit` is produced)."""
    enc = content_encoding.strip().lower()
    try:
        if enc in ("", "identity"):
            return data[:limit]
        if enc == "zstd":
            return zstd.ZstdDecompressor().decompress(data, max_length=limit)
        if enc == "br":
            return brotli.Decompressor().process(data[:64 * 1024], output_buffer_limit=limit)[:limit]
        if enc in ("gzip", "x-gzip"):
            return zlib.decompressobj(47).decompress(data, limit)
        if enc == "deflate":
            wbits = 15 if len(data) >= 2 and (data[0] << 8 | data[1]) % 31 == 0 and data[0] & 0x0F == 8 else -15
            return zlib.decompressobj(wbits).decompress(data, limit)
    except Exception:  # noqa: BLE001 - undecodable: the raw bytes are all there is to search
        return data[:limit]
    return data[:limit]


# -- the upstream ----------------------------------------------------------------------------------------------------


def without_nagle(upstream: Any) -> None:
    """TCP_NODELAY on the recording upstream's connections (a RecordingUpstream, before its first request).

    Its handler writes a response's headers and its body in two send() calls; with Nagle's algorithm the body waits
    for the ACK of the headers, which the proxy's kernel delays by up to 40 ms (delayed ACK). That adds ~40 ms of
    noise to every echoed response after the first on a keep-alive connection: not the proxy's time."""
    server = upstream._server
    base = server.RequestHandlerClass
    server.RequestHandlerClass = type(f"NoDelay{base.__name__}", (base,), {"disable_nagle_algorithm": True})


# -- the proxy's memory -------------------------------------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int:
    """A `VmXXX:` figure of /proc/<pid>/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: `5` into clear_refs); False if that is not allowed here."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- timed requests -----------------------------------------------------------------------------------------------


class ProbeTimeout(TimeoutError):
    """No answer within the client's timeout; `seconds`: how long it waited."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:.2f} s")
        self.seconds = seconds


class Client:
    """One keep-alive HTTP/1.1 connection to the proxy; `call` returns (status, body, seconds), the seconds from
    sending the request to the end of the answer (connecting, when it has to, is not counted)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.conn.connect()
        start = time.perf_counter()
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            resp = self.conn.getresponse()
            data = resp.read()
        except TimeoutError:
            self.close()
            raise ProbeTimeout(time.perf_counter() - start) from None
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        elapsed = time.perf_counter() - start
        if resp.will_close:
            self.close()
        return resp.status, data, elapsed

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Probe:
    """One kind of small request, timed: once at a time, or every `every` seconds in a thread of its own (so a probe
    held up, say, behind the vault's writer does not hide how the others fare)."""

    name: str
    send: Callable[[int], tuple[int, bytes, float]]  # (sequence number) -> (status, body, seconds)
    check: Callable[[int, int, bytes], str | None]  # (n, status, body) -> a problem, or None
    latencies: list[float] = field(default_factory=list)  # a timed-out probe counts with the time it waited
    problems: list[str] = field(default_factory=list)  # wrong answers, broken connections: not latency
    timeouts: int = 0
    sent: int = 0

    def once(self) -> None:
        n = self.sent
        self.sent += 1
        try:
            status, body, seconds = self.send(n)
        except ProbeTimeout as exc:
            self.latencies.append(exc.seconds)
            self.timeouts += 1
            return
        except (OSError, http.client.HTTPException) as exc:
            self.problems.append(f"{self.name} #{n}: {type(exc).__name__}: {exc}")
            return
        self.latencies.append(seconds)
        problem = self.check(n, status, body)
        if problem:
            self.problems.append(f"{self.name} #{n}: {problem}")

    def run(self, stop: threading.Event, every: float) -> threading.Thread:
        """Probe every `every` seconds (or as soon as the previous one is answered) until `stop` is set."""

        def loop() -> None:
            while not stop.is_set():
                tick = time.perf_counter()
                self.once()
                stop.wait(max(0.0, every - (time.perf_counter() - tick)))

        thread = threading.Thread(target=loop, name=f"probe {self.name}", daemon=True)
        thread.start()
        return thread

    def reset(self) -> None:
        self.latencies.clear()
        self.timeouts = 0

    @property
    def max(self) -> float:
        return max(self.latencies, default=0.0)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies) if self.latencies else 0.0


@dataclass
class Attack:
    """The adversarial request, sent on its own connection from a thread."""

    port: int
    method: str
    path: str
    body: bytes
    headers: dict[str, str]
    timeout: float = 30.0
    sent: threading.Event = field(default_factory=threading.Event)
    status: int | None = None
    content_type: str = ""
    response: bytes = b""
    error: str | None = None
    started: float = 0.0
    sent_at: float = 0.0
    answered_at: float = 0.0
    _thread: threading.Thread | None = None

    def start(self) -> Attack:
        self._thread = threading.Thread(target=self._run, name="attack", daemon=True)
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.connect()
            conn.request(self.method, self.path, body=self.body, headers=self.headers)
            self.sent_at = time.perf_counter()
            self.sent.set()
            resp = conn.getresponse()
            self.status = resp.status
            self.content_type = resp.getheader("Content-Type", "")
            self.response = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.answered_at = time.perf_counter()
            conn.close()
            self.sent.set()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        assert self._thread is not None
        self._thread.join(timeout)
        return self.done

    @property
    def seconds(self) -> float:
        """From the start of sending to the end of the answer (or of waiting for it)."""
        return (self.answered_at or time.perf_counter()) - self.started


class Heartbeat:
    """This process's own scheduling delays while it measures: a thread that sleeps `every` seconds and records how
    late it wakes. A large figure means the probes' latencies were inflated here (GIL, GC, a busy machine), not by
    the proxy."""

    def __init__(self, every: float = 0.005) -> None:
        self.every = every
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            time.sleep(self.every)
            self.worst = max(self.worst, time.perf_counter() - start - self.every)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(1)
