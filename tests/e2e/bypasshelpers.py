"""Helpers for tests/e2e/test_proxy_bypass.py: real apps (Flask under waitress, Starlette under uvicorn) behind a real
`tokenbunker proxy`, raw HTTP requests, and the check that no personal value reached the app in any form.

Each app (tests/e2e/apps/) appends one JSON line per request to a log file: what it routed on, the bytes it received
and what it parsed (JSON, form fields, files, query). Requests carry an `X-Test-Id` header, so the test finds the
record of the request it sent, or knows that the app never saw it (the sidecar refused it).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import re
import secrets
import socket
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli
from backports import zstd

from tests.e2e.proxyhelpers import ProxyProcess, leaks

APPS_DIR = Path(__file__).resolve().parent / "apps"
APP_SCRIPTS = {"flask": APPS_DIR / "flask_app.py", "starlette": APPS_DIR / "starlette_app.py"}
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
TEST_ID = "X-Test-Id"


# -- the apps --------------------------------------------------------------------------------------------------


class SeenLog:
    """Reads an app's JSON-lines log incrementally; records by their X-Test-Id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pending = b""
        self.by_id: dict[str | None, list[dict[str, Any]]] = {}

    def _read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            if line.strip():
                record = json.loads(line)
                self.by_id.setdefault(record.get("id"), []).append(record)

    def get(self, test_id: str, wait: float = 0.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + wait
        while True:
            self._read()
            found = self.by_id.get(test_id, [])
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.02)


class AppProcess(ProxyProcess):
    """One app of tests/e2e/apps/ in a subprocess on a free loopback port: started, stopped and read as a proxy
    process is, and ready once it has recorded a probe request."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.script = APP_SCRIPTS[kind]
        self.log_path = workdir / f"{kind}-seen.jsonl"
        self.seen = SeenLog(self.log_path)
        super().__init__(self._argv, dict(os.environ), workdir, f"{kind}-app")

    def _argv(self, port: int) -> list[str]:
        return [sys.executable, str(self.script), "--port", str(port), "--log", str(self.log_path)]

    def start(self) -> AppProcess:
        super().start()
        probe = f"probe-{secrets.token_hex(4)}"
        answer = send(self.port, "GET", "/__probe", [(TEST_ID, probe)], b"")
        assert answer.status == 200, (answer.status, answer.body[:300])
        assert self.seen.get(probe, wait=2.0), f"the {self.kind} app did not record its probe\n{self.output()}"
        return self


# -- raw requests ----------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def chunked(body: bytes, sizes: Sequence[int] = (7, 1, 64)) -> bytes:
    out, pos, i = [], 0, 0
    while pos < len(body):
        size = sizes[i % len(sizes)]
        piece = body[pos:pos + size]
        out.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        pos += size
        i += 1
    return b"".join(out) + b"0\r\n\r\n"


def send(port: int, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes, *,
         chunk: bool = False) -> Answer:
    """One request over a new connection, sent byte for byte as given: the target is not normalised, the headers
    are not reordered or merged (requests and urllib would do both). Framing (Content-Length or chunked) is added."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{key}: {value}" for key, value in headers]
    if chunk:
        lines.append("Transfer-Encoding: chunked")
        payload = chunked(body)
    else:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(head + payload)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        data = response.read()
        return Answer(response.status, list(response.getheaders()), data)


# -- what the app received, and where a value was found -----------------------------------------------------------

_WIDE = ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")


def _decode_one(data: bytes, coding: str) -> bytes:
    coding = coding.strip().lower()
    if coding in ("gzip", "x-gzip"):
        return gzip.decompress(data)
    if coding == "deflate":
        try:
            return zlib.decompress(data)
        except zlib.error:
            return zlib.decompress(data, -zlib.MAX_WBITS)
    if coding == "br":
        return brotli.decompress(data)
    if coding == "zstd":
        return zstd.decompress(data)
    if coding in ("", "identity"):
        return data
    raise ValueError(coding)


def unpacked(body: bytes, content_encoding: str) -> list[bytes]:
    """`body` as an app might read it: decoded per its Content-Encoding (codings undone last to first), and also by
    every decoder that accepts it whatever the header says; each of those also as text in UTF-16/32, re-encoded as
    UTF-8. A value hidden by compression or a wide encoding is still found."""
    found = [body]
    try:
        data = body
        for coding in reversed([c for c in content_encoding.split(",") if c.strip()]):
            data = _decode_one(data, coding)
        found.append(data)
    except Exception:
        pass
    for coding in ("gzip", "deflate", "br", "zstd"):
        try:
            found.append(_decode_one(body, coding))
        except Exception:
            pass
    texts = []
    for data in found:
        for codec in _WIDE:
            if len(data) >= 2:
                texts.append(data.decode(codec, errors="ignore").encode("utf-8", errors="ignore"))
    return found + texts


def record_sections(record: dict[str, Any]) -> dict[str, bytes]:
    """Everything the app received and parsed, by where it was: the haystacks a planted value is looked for in."""
    headers = dict(record.get("headers") or [])
    encoding = next((v for k, v in headers.items() if k.lower() == "content-encoding"), "")
    body = base64.b64decode(record["body"])
    files = record.get("files") or []
    return {
        "path": f"{record['path']}\n{record['raw_target']}".encode("utf-8", "surrogateescape"),
        "query": (record["query_string"] + "\n" + json.dumps(record.get("args"), ensure_ascii=False)).encode(),
        "headers": "\n".join(f"{k}: {v}" for k, v in record.get("headers") or []).encode("utf-8", "replace"),
        "body": b"\n".join(unpacked(body, encoding)),
        "json": (json.dumps(record.get("json"), ensure_ascii=False) + "\n"
                 + json.dumps(record.get("json"))).encode("utf-8", "surrogatepass"),
        "form": json.dumps(record.get("form"), ensure_ascii=False).encode("utf-8", "surrogatepass"),
        "files": b"\n".join(f"{name}\n{filename}".encode("utf-8", "replace") + b"\n" + base64.b64decode(content)
                            for name, filename, content in files),
    }


def leaked_where(record: dict[str, Any], values: Iterable[str]) -> dict[str, list[str]]:
    """{value: [sections of the record where it was found]} for the planted values found anywhere."""
    out: dict[str, list[str]] = {}
    for section, haystack in record_sections(record).items():
        for value in leaks(haystack, values):
            out.setdefault(value, []).append(section)
    return out


# -- the sidecar's refusals ------------------------------------------------------------------------------------

# A file path, a rule's FILE:LINE, a Python traceback: the sidecar's business, never the client's.
SERVER_DETAIL = re.compile(r"\.ya?ml\b|\.py\b|/tmp/|/work/|/home/|/root/|/etc/|\bline \d+|Traceback|File \"", re.I)


def sidecar_refusal(answer: Answer) -> dict[str, Any] | None:
    """The sidecar's own JSON error body, or None when the answer is not one."""
    if not (answer.header("Content-Type") or "").startswith("application/json"):
        return None
    try:
        body = json.loads(answer.body)
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("status") == "error" and str(body.get("message", "")).startswith(
            "tokenbunker: "):
        return body
    return None


def check_refusal_body(answer: Answer, values: Iterable[str]) -> None:
    body = sidecar_refusal(answer)
    assert body is not None, (answer.status, answer.body[:300])
    assert set(body) >= {"status", "message", "route"}, body
    assert not SERVER_DETAIL.search(answer.body.decode("utf-8", "replace")), body
    assert not leaks(answer.body, values), body


# -- one exchange ----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one request sent through the sidecar."""

    # refused (a 4xx from the sidecar), refused-5xx, refusal-tells-too-much (its body names a file or rule line),
    # reached (the app got it, and no planted value), leaked (it got a planted value), error (a harness problem, or
    # an answer that is neither the app's nor the sidecar's)
    kind: str
    answer: Answer | None = None
    record: dict[str, Any] | None = None
    leaked: dict[str, list[str]] = field(default_factory=dict)
    detail: str = ""

    @property
    def reached(self) -> bool:
        return self.record is not None


def exchange(proxy_port: int, seen: SeenLog, method: str, target: str, headers: Sequence[tuple[str, str]],
             body: bytes, values: Iterable[str], *, chunk: bool = False) -> Outcome:
    """Send one request through the sidecar and classify what became of it; never raises for a harness problem
    (it is an Outcome of kind `error`, with the reason)."""
    values = list(values)
    test_id = secrets.token_hex(8)
    try:
        answer = send(proxy_port, method, target, [*headers, (TEST_ID, test_id)], body, chunk=chunk)
    except Exception as exc:
        return Outcome("error", detail=f"the request failed: {type(exc).__name__}: {exc}")
    # The app writes its record before it answers, so it is there once the answer is; any other answer (a refusal)
    # never reached the app, and its log is read once.
    records = seen.get(test_id, wait=2.0 if answer.status == 200 else 0.0)
    if not records:
        refusal = sidecar_refusal(answer)
        if refusal is None:
            return Outcome("error", answer, detail=f"neither the app's answer nor a sidecar refusal: "
                                                   f"{answer.status} {answer.body[:300]!r}")
        try:
            check_refusal_body(answer, values)
        except AssertionError as exc:
            return Outcome("refusal-tells-too-much", answer, detail=f"a refusal body names a file, a rule's line "
                                                                    f"or a value: {exc}")
        return Outcome("refused" if 400 <= answer.status < 500 else "refused-5xx", answer,
                       detail=str(refusal.get("message")))
    if len(records) != 1:
        return Outcome("error", answer, records[0], detail=f"the app recorded {len(records)} requests for one")
    record = records[0]
    found = leaked_where(record, values)
    if found:
        return Outcome("leaked", answer, record, found)
    if answer.status != 200:
        return Outcome("error", answer, record, detail=f"the app saw it but the client got {answer.status}")
    return Outcome("reached", answer, record)


def describe(outcome: Outcome, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes) -> str:
    lines = [f"{outcome.kind}: {method} {target}"]
    lines += [f"  {k}: {v}" for k, v in headers]
    lines.append(f"  body ({len(body)} bytes): {body[:400]!r}")
    if outcome.leaked:
        lines.append(f"  plaintext found in the app's {outcome.leaked}")
    if outcome.record is not None:
        rec = outcome.record
        lines.append(f"  app routed on {rec['path']!r}; parsed json={json.dumps(rec.get('json'))[:200]} "
                     f"form={json.dumps(rec.get('form'))[:200]} files={[f[:2] for f in rec.get('files') or []]} "
                     f"form_error={rec.get('form_error')}")
    if outcome.answer is not None and outcome.record is None:
        lines.append(f"  answer {outcome.answer.status}: {outcome.answer.body[:300]!r}")
    if outcome.detail:
        lines.append(f"  {outcome.detail}")
    return "\n".join(lines)


# -- values ----------------------------------------------------------------------------------------------------


def luhn_card(prefix: str = "4000") -> str:
    digits = prefix + "".join(str(secrets.randbelow(10)) for _ in range(15 - len(prefix)))
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return digits + str((10 - total % 10) % 10)


@dataclass
class Planted:
    """Distinctive personal values for one request: a hit anywhere is never a coincidence."""

    tag: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def email(self) -> str:
        return f"pii-{self.tag}@example.com"

    @property
    def phone(self) -> str:
        return f"+44 7700 900{int(self.tag, 16) % 1000:03d}"

    @property
    def name(self) -> str:
        return f"Zoë Ñúñez {self.tag}"

    @property
    def card(self) -> str:
        return self._card

    def __post_init__(self) -> None:
        self._card = luhn_card()

    def values(self) -> list[str]:
        return [self.email, self.phone, self.name, self.card]
