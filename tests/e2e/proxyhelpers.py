"""Helpers for the sidecar's end-to-end tests: a recording upstream, real proxy processes, and leak checks.

The upstream is a real HTTP/1.1 server (keep-alive) in a thread of the test process. It records exactly the bytes it
reads for each request (request line, headers, and the body as it came over the wire, still compressed if it was)
and answers by echoing the decoded request body back with the same Content-Type, so response rules can be tested; a
fixed answer can be set per path instead. A TLS variant serves a self-signed certificate made here.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import brotli
import psycopg
from backports import zstd  # what mitmproxy itself uses for zstd on Python 3.12 (zstandard is not installed)

from tests.e2e.helpers import REPO, cli_command, free_port

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))
PG_URL_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


# -- bodies ------------------------------------------------------------------------------------------------------


def encode_body(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "br":
        return brotli.compress(data)
    if encoding == "zstd":
        return zstd.compress(data)
    if encoding in ("", "identity"):
        return data
    raise ValueError(f"unknown encoding {encoding}")


def decode_body(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        try:
            return zlib.decompress(data)
        except zlib.error:
            return zlib.decompress(data, -zlib.MAX_WBITS)
    if encoding == "br":
        return brotli.decompress(data)
    if encoding == "zstd":
        return zstd.decompress(data)
    if encoding in ("", "identity"):
        return data
    raise ValueError(f"unknown encoding {encoding}")


# -- the recording upstream ----------------------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request as the upstream received it."""

    raw: bytes  # everything read for this request: request line, headers, body (chunked framing included)
    method: str
    target: str  # the request target as sent (path and query)
    headers: list[tuple[str, str]]
    body: bytes  # the body as received (still compressed if it was), chunked framing removed

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.target).query, keep_blank_values=True)

    @property
    def decoded(self) -> bytes:
        return decode_body(self.body, self.header("Content-Encoding") or "")

    def json(self) -> Any:
        return json.loads(self.decoded)

    def searchable(self) -> bytes:
        """The raw bytes plus the decoded body, so a value hidden by compression is still found."""
        return self.raw + b"\n" + self.decoded


class _TeeReader:
    """Wraps the handler's rfile and keeps every byte read from it until taken."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.buffer = bytearray()

    def readline(self, limit: int = -1) -> bytes:
        data = self.inner.readline(limit)
        self.buffer += data
        return data

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.buffer += data
        return data

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Fixed:
    status: int
    body: bytes
    content_type: str = "application/json"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RecordingServer

    def setup(self) -> None:
        if self.server.tls_context is not None:
            self.request.do_handshake()
        super().setup()
        self.rfile = _TeeReader(self.rfile)  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        raw = self.rfile.take()  # type: ignore[attr-defined]
        record = Recorded(raw, self.command, self.path, list(self.headers.items()), body)
        self.server.upstream._record(record)
        fixed = self.server.upstream.fixed.get(record.path)
        if fixed is not None:
            status, content_type, out = fixed.status, fixed.content_type, fixed.body
        else:
            status = 200
            content_type = self.headers.get("Content-Type") or "application/octet-stream"
            try:
                out = record.decoded
            except Exception:
                status, content_type, out = 400, "text/plain", b"upstream could not decode the body"
        extra: list[tuple[str, str]] = []
        wanted = self.headers.get("X-Test-Response-Encoding")
        if wanted and status == 200:
            out = encode_body(out, wanted)
            extra.append(("Content-Encoding", wanted))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(out)))
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle  # noqa: N815


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    tls_context: ssl.SSLContext | None = None
    upstream: RecordingUpstream

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.tls_context is not None:
            # The handshake runs in the handler's thread, so a slow client cannot stall the accept loop.
            sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client (the proxy) closing its connection early is not the upstream's business


class RecordingUpstream:
    """A real HTTP/1.1 server on 127.0.0.1 in a thread; `requests` holds what it received, in order."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.requests: list[Recorded] = []
        self.fixed: dict[str, Fixed] = {}
        self._lock = threading.Lock()
        self._server = _RecordingServer(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.tls_context = context
        self.port: int = self._server.server_address[1]
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="recording-upstream", daemon=True)

    def start(self) -> RecordingUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _record(self, record: Recorded) -> None:
        with self._lock:
            self.requests.append(record)

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def since(self, mark: int) -> list[Recorded]:
        with self._lock:
            return list(self.requests[mark:])

    def last(self) -> Recorded:
        with self._lock:
            assert self.requests, "the upstream received nothing"
            return self.requests[-1]

    def set_fixed(self, path: str, body: Any, status: int = 200) -> None:
        self.fixed[path] = Fixed(status, json.dumps(body).encode())

    def recorded_bytes(self) -> bytes:
        """Everything received so far (and every body decoded), joined: the haystack for leak checks."""
        with self._lock:
            return b"\n".join(r.searchable() for r in self.requests)


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and localhost, and its key: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokenbunker test upstream")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "upstream-cert.pem", directory / "upstream-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# -- config ----------------------------------------------------------------------------------------------------


def write_proxy_config(path: Path, database_url: str, rules: Sequence[Path], *, vault_url: str | None = None,
                       max_body_bytes: int | None = None) -> Path:
    """Values as JSON strings (valid YAML), so URLs with `%`, `?` or `:` stay intact."""
    lines = [
        "vault:",
        f"  database_url: {json.dumps(database_url)}",
        "proxy:",
        f"  rules: {json.dumps([str(r) for r in rules])}",
        f"  vault_url: {json.dumps(vault_url)}",
    ]
    if max_body_bytes is not None:
        lines.append(f"  max_body_bytes: {max_body_bytes}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def pg_schema_url(request: Any) -> str:
    """A fresh PostgreSQL schema in the session's test database (as tests/conftest.py's database_url makes)."""
    db_url: str = request.getfixturevalue("pg_database")
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{db_url}?options={urllib.parse.quote('-csearch_path=' + schema)}"


# -- proxy processes -------------------------------------------------------------------------------------------


def tcp_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ProxyProcess:
    """One proxy process (`tokenbunker proxy` or `mitmdump -s`); stdout and stderr go to files under `workdir`."""

    def __init__(self, argv: Callable[[int], list[str]], env: dict[str, str], workdir: Path, name: str) -> None:
        self.argv = argv
        self.env = env
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ProxyProcess:
        for _attempt in range(3):
            self.port = free_port()
            if self._start_once():
                return self
        raise AssertionError(f"the proxy could not get a free port\n{self.output()}")

    def _start_once(self) -> bool:
        out, err = self.stdout_path.open("ab"), self.stderr_path.open("ab")
        self._files = [out, err]
        self.proc = subprocess.Popen(self.argv(self.port), cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=err)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_files()
                if "address already in use" in self.log().lower():
                    return False
                raise AssertionError(f"the proxy exited with {self.proc.returncode} before it was ready\n"
                                     f"{self.output()}")
            if tcp_ready(self.port):
                return True
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"the proxy was not ready within {START_TIMEOUT} s\n{self.output()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_files()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_files()

    def _close_files(self) -> None:
        for handle in self._files:
            handle.close()
        self._files = []

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace") if self.stdout_path.exists() else ""

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace") if self.stderr_path.exists() else ""

    def log(self) -> str:
        return self.stdout + self.stderr

    def output(self) -> str:
        return f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"

    def wait_for_log(self, text: str, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.05)
        return False


def tokenbunker_proxy(config: Path, env: dict[str, str], workdir: Path, name: str, mode: str,
                      *extra: str) -> ProxyProcess:
    def argv(port: int) -> list[str]:
        return cli_command("proxy", "--config", str(config), "--mode", mode, "--listen-host", "127.0.0.1",
                           "--listen-port", str(port), *extra)

    return ProxyProcess(argv, env, workdir, name)


def mitmdump_proxy(config: Path, env: dict[str, str], workdir: Path, name: str, mode: str,
                   *extra: str) -> ProxyProcess:
    def argv(port: int) -> list[str]:
        return [MITMDUMP, "-s", str(REPO / "proxy_addons" / "tokenize.py"), "--set", f"tokenbunker_config={config}",
                "--mode", mode, "--listen-host", "127.0.0.1", "--listen-port", str(port), *extra]

    return ProxyProcess(argv, env, workdir, name)


# -- checks ----------------------------------------------------------------------------------------------------


def spellings(value: str) -> set[bytes]:
    """The ways a value can appear on the wire: as UTF-8, JSON-escaped, percent-encoded, digits only."""
    out = {
        value.encode(),
        value.lower().encode(),
        json.dumps(value)[1:-1].encode(),
        json.dumps(value, ensure_ascii=False)[1:-1].encode(),
        urllib.parse.quote(value, safe="").encode(),
        urllib.parse.quote_plus(value, safe="").encode(),
        urllib.parse.quote(value).encode(),
    }
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) >= 6 and digits != value and re.fullmatch(r"[\d\s+().-]+", value):  # a phone or card number
        out.add(digits.encode())
    return {s for s in out if s}


def leaks(haystack: bytes, values: Iterable[str]) -> list[str]:
    """The values (of `values`) found in `haystack` in any spelling."""
    return [v for v in values if any(s in haystack for s in spellings(v))]


@dataclass
class PiiValues:
    """Distinctive personal values: a hit anywhere is never a coincidence."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    sent: set[str] = field(default_factory=set)

    def __call__(self, value: str) -> str:
        self.sent.add(value)
        return value


OPAQUE_TOKEN = re.compile(r"^tbk_[a-z2-7]{26}$")
EMAIL_TOKEN = re.compile(r"^tbk_[a-z2-7]{20}@token\.invalid$")
ANY_TOKEN = re.compile(r"tbk_[a-z2-7]{20}@token\.invalid|tbk_[a-z2-7]{26}")
UNKNOWN_TOKEN = "tbk_" + "a" * 26


def assert_refused(resp: Any, status: int, route: str | None) -> dict[str, Any]:
    """The sidecar's own JSON error: the status, the route named in the body and the message."""
    assert resp.status_code == status, (resp.status_code, resp.headers.get("Content-Type"), resp.text[:300])
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body: dict[str, Any] = resp.json()
    assert body["status"] == "error", body
    assert body["route"] == route, body
    prefix = f"tokenbunker: route '{route}': " if route else "tokenbunker: "
    assert body["message"].startswith(prefix), body
    return body


def assert_framing(record: Recorded) -> None:
    """The upstream got a body whose length matches what the headers announced."""
    length = record.header("Content-Length")
    if length is not None:
        assert int(length) == len(record.body), (length, len(record.body), record.raw[:300])
        assert record.header("Transfer-Encoding") is None, record.headers
    else:
        assert record.body == b"" or "chunked" in (record.header("Transfer-Encoding") or "").lower()


def multipart_parts(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """A strict RFC 7578 split: [(headers, content)], the content exactly as between the delimiters."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, content_type
    delimiter = b"--" + match.group(1).encode()
    chunks = body.split(b"\r\n" + delimiter)
    assert chunks[0].startswith(delimiter), body[:200]
    chunks[0] = chunks[0][len(delimiter):]
    parts = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break
        head, sep, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        assert sep, chunk[:200]
        headers = {}
        for line in head.split(b"\r\n"):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


CLIENT_ADDRESS = re.compile(r"(?<![\d.])127\.0\.0\.1:(\d{1,5})(?!\d)")


def client_addresses(log: str, known_ports: Iterable[int]) -> list[str]:
    """Lines naming 127.0.0.1 with a port that is none of ours (listen, upstream, vault): a client's own port."""
    known = {str(p) for p in known_ports}
    return [line for line in log.splitlines()
            if any(m.group(1) not in known for m in CLIENT_ADDRESS.finditer(line))]
