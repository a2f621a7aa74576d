"""Sidecar throughput and latency: the upstream direct, plain mitmdump, and `tokenbunker proxy` with and without rules.

Run from the repository root: `.venv/bin/python bench/proxy_bench.py` (~2.5-3 min on 2 cores), `--quick` for a
~45 s run. See bench/README.md ("Sidecar") for what each case is. This is a measurement, not a test: it always
exits 0, and says PASS/FAIL against the targets on its last lines.

Requirements: Linux (CPU use is read from /proc; the rest is portable), the project's venv with mitmproxy (the
`mitmdump` and `tokenbunker` console scripts are taken from the directory of the Python running this script), and
nothing else: the upstream and the load generator are pure-Python asyncio, each in its own process. `--profile`
uses py-spy when one is found (`--py-spy PATH`, `py-spy` on PATH, or /tmp/pyspy/bin/py-spy, e.g. made by
`python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy`), else cProfile (on Python 3.12 it sees every
thread, mixed in one profile).

Every process is started and stopped here: an upstream (a minimal HTTP/1.1 server answering a fixed JSON body),
each proxy in turn, and one load generator per measurement (N keep-alive connections for concurrency N, closed
loop: each connection sends its next POST as soon as the previous answer is read). The vault is SQLite (WAL) in a
temporary directory, in-process in the sidecar, as `tokenbunker proxy` runs it by default.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: mitmdump and tokenbunker live beside its python

PATH = "/api/users"
PLAIN_DOMAIN = "bench.example"  # every clear email address ends so; tokens never do (token.invalid)
PLAIN_MARK = b"@" + PLAIN_DOMAIN.encode()
SAME = {"email": f"same.person00@{PLAIN_DOMAIN}", "phone": "+44 20 7946 0018", "name": "Same Person 0001"}
SHOWN = {"email": f"shown.person@{PLAIN_DOMAIN}", "phone": "+44 20 7946 0999", "name": "Shown Person"}
PAD = "the proxy bench body, about two hundred bytes"

TARGET_VS_B = 1.0
TARGET_VS_F = 0.8
TARGET_ADDED_P50_MS = 0.3
CHECKED = ("c", "d", "e")


def request_body(i: int | None) -> bytes:
    """~200 bytes of JSON, always the same length: new values for each i, or SAME's values (i None)."""
    if i is None:
        email, phone, name = SAME["email"], SAME["phone"], SAME["name"]
    else:
        email = f"user{i:09d}@{PLAIN_DOMAIN}"
        phone = f"+44 20 7{i % 1000:03d} {i // 1000 % 10000:04d}"
        name = f"Person {i:09d}"
    return json.dumps({"email": email, "phone": phone, "name": name, "plan": "basic", "newsletter": False,
                       "country": "GB", "note": PAD}, separators=(",", ":")).encode()


# -- the upstream: a minimal asyncio HTTP/1.1 server ------------------------------------------------------------


class Upstream(asyncio.Protocol):
    """Keep-alive HTTP/1.1 with Content-Length bodies; answers every request with one fixed response. Counts the
    requests, and those whose body holds a clear email (PLAIN_MARK); GET /__stats returns and resets the counts."""

    response = b""
    stats: Counter[str] = Counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            n = 0
            i = head.find(b"\r\ncontent-length:")
            if i > 0:
                j = head.find(b"\r\n", i + 2)
                n = int(head[i + 17:j if j > 0 else end])
            if len(buf) < end + 4 + n:
                break
            body, buf = buf[end + 4:end + 4 + n], buf[end + 4 + n:]
            if head.startswith(b"get /__stats"):
                text = json.dumps(dict(Upstream.stats)).encode()
                Upstream.stats.clear()
                out.append(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(text), text))
                continue
            Upstream.stats["requests"] += 1
            if PLAIN_MARK in body:
                Upstream.stats["plain"] += 1
            out.append(self.response)
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))


async def upstream_main(body: bytes) -> None:
    Upstream.response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % len(body)) + body
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", 0, backlog=1024)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    await stop


# -- the load generator ---------------------------------------------------------------------------------------


class Client(asyncio.Protocol):
    def __init__(self, gen: Load) -> None:
        self.gen = gen
        self.buf = b""
        self.need = -1
        self.start = 0
        self.status = 0
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.gen.live += 1
        self.send()

    def send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.gen.next_request())

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end].lower()
                self.status = int(head[9:12])
                i = head.find(b"\r\ncontent-length:")
                if i < 0:  # this generator reads Content-Length bodies only: say so, start a fresh connection
                    self.gen.errors["no content-length"] += 1
                    self.transport.close()
                    return
                j = head.find(b"\r\n", i + 2)
                self.start = end + 4
                self.need = self.start + int(head[i + 17:j if j > 0 else end])
            if len(buf) < self.need:
                break
            body, buf, self.need = buf[self.start:self.need], buf[self.need:], -1
            self.gen.answered(self, body)
        self.buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class Load:
    """Closed loop over `conc` keep-alive connections; per-request latency recorded during the measured window."""

    def __init__(self, port: int, conc: int, same: bool, watch: dict[str, int]) -> None:
        self.port, self.conc, self.same, self.watch = port, conc, same, watch
        self.head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n\r\n").encode()
        self.fixed = self.head % len(request_body(None)) + request_body(None)
        self.i = secrets.randbelow(900_000_000)  # new values: a fresh range per run (9 digits: a constant length)
        self.running = True
        self.measuring = False
        self.lat: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.revealed = 0
        self.live = 0
        self.idle: asyncio.Future[None] | None = None

    def next_request(self) -> bytes:
        if self.same:
            return self.fixed
        self.i += 1
        body = request_body(self.i)
        return self.head % len(body) + body

    def answered(self, conn: Client, body: bytes) -> None:
        if self.measuring:
            self.lat.append(time.perf_counter() - conn.sent)
            self.statuses[conn.status] += 1
            if PLAIN_MARK in body:
                self.revealed += 1
        if self.running:
            conn.send()
        else:
            conn.transport.close()

    def lost(self, conn: Client) -> None:
        self.live -= 1
        if self.running:
            self.errors["connection lost"] += 1
            asyncio.get_running_loop().create_task(self.connect())
        elif self.live == 0 and self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: Client(self), "127.0.0.1", self.port)
        except OSError as exc:
            self.errors[f"connect: {exc.strerror}"] += 1
            await asyncio.sleep(0.05)
            if self.running:
                loop.create_task(self.connect())

    async def run(self, warmup: float, duration: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.idle = loop.create_future()
        await asyncio.gather(*(self.connect() for _ in range(self.conc)))
        await asyncio.sleep(warmup)
        cpu0, procs0 = time.process_time(), {k: _cpu_seconds(p) for k, p in self.watch.items()}
        t0 = time.perf_counter()
        self.measuring = True
        await asyncio.sleep(duration)
        self.measuring = False
        elapsed = time.perf_counter() - t0
        cpu1, procs1 = time.process_time(), {k: _cpu_seconds(p) for k, p in self.watch.items()}
        self.running = False
        try:
            await asyncio.wait_for(asyncio.shield(self.idle), 10)
        except TimeoutError:
            self.errors["no answer at the end"] += self.live
        lat = sorted(self.lat)
        cpu = {k: (procs1[k] - procs0[k]) / elapsed for k in self.watch if procs0[k] >= 0 and procs1[k] >= 0}
        cpu["generator"] = (cpu1 - cpu0) / elapsed
        return {"n": len(lat), "seconds": elapsed, "rps": len(lat) / elapsed, "p50": _q(lat, 0.50) * 1000,
                "p99": _q(lat, 0.99) * 1000, "statuses": {str(k): v for k, v in self.statuses.items()},
                "errors": dict(self.errors), "revealed": self.revealed, "cpu": cpu,
                "lat_us": [round(x * 1e6) for x in lat]}


def _q(data: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of sorted data."""
    if not data:
        return float("nan")
    return data[min(len(data) - 1, max(0, round(q * len(data) + 0.5) - 1))]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its threads, from /proc; -1 where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return -1.0


# -- orchestration --------------------------------------------------------------------------------------------


@dataclass
class CaseDef:
    key: str
    label: str
    proxy: str  # "" (direct), "mitmdump", "mitmdump-log", "sidecar", "floor"
    rules: str | None = None
    same: bool = False
    expect_plain: str = "all"  # upstream sees clear emails in "all" requests, or in "none"
    expect_revealed: bool = False  # the client sees a clear email in every answer
    floor: str = ""  # "floor" cases: bench/floor_addon.py's mode


RULES_HEAD = f"""version: 1
routes:
  - name: bench
    match: {{path: "{PATH}", methods: [POST]}}
"""
TOKENIZE = RULES_HEAD + """    subject: {json: "$.email", index: email}
    request:
      - {json: "$.email", action: tokenize, kind: email, format: email<det>}
      - {json: "$.phone", action: tokenize, kind: phone, format: digits<det>}
      - {json: "$.name", action: tokenize, kind: name<det>}
"""
REVEAL = RULES_HEAD + """    response:
      - {json: "$.email", action: detokenize}
      - {json: "$.phone", action: detokenize, reveal: masked}
      - {json: "$.name", action: detokenize}
"""

CASES = [
    CaseDef("a", "(a) upstream direct", ""),
    CaseDef("b", "(b) mitmdump -q", "mitmdump"),
    CaseDef("b2", "(b2) mitmdump, flow log", "mitmdump-log"),
    CaseDef("f", "(f) lean, no rules", "sidecar", "version: 1\nroutes: []\n"),
    CaseDef("c", "(c) tokenize 3, new", "sidecar", TOKENIZE.replace("<det>", ""), expect_plain="none"),
    CaseDef("d", "(d) tokenize 3, repeat", "sidecar", TOKENIZE.replace("<det>", ", deterministic: true"), same=True,
            expect_plain="none"),
    CaseDef("e", "(e) reveal 3", "sidecar", REVEAL, expect_revealed=True),
    # The floors of (c) and (e) (bench/floor_addon.py): only the unavoidable work, on (f)'s lean master.
    CaseDef("gr", "(g-r) rewrite, no vault", "floor", "version: 1\nroutes: []\n", expect_plain="none",
            floor="rewrite"),
    CaseDef("gc", "(g-c) floor of (c)", "floor", "version: 1\nroutes: []\n", expect_plain="none", floor="tokenize"),
    CaseDef("ge", "(g-e) floor of (e)", "floor", "version: 1\nroutes: []\n", expect_revealed=True, floor="reveal"),
]
FLOORS = {"gr": "c", "gc": "c", "ge": "e"}


@dataclass
class Result:
    """One case at one concurrency: the rounds' measurements merged."""

    case: CaseDef
    conc: int
    seconds: float = 0.0
    lat_us: list[int] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)  # req/s of each round
    cpu_seconds: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    ratios: dict[str, float | None] = field(default_factory=dict)

    def add(self, data: dict[str, Any], problems: list[str]) -> None:
        self.seconds += data["seconds"]
        self.lat_us += data["lat_us"]
        self.rounds.append(data["rps"])
        for k, v in data["cpu"].items():
            self.cpu_seconds[k] += v * data["seconds"]
        self.problems += [p for p in problems if p not in self.problems]
        self.lat_us.sort()

    @property
    def rps(self) -> float:
        return len(self.lat_us) / self.seconds if self.seconds else 0.0

    def ms(self, q: float) -> float:
        return _q(self.lat_us, q) / 1000

    @property
    def cpu_ms_per_request(self) -> float | None:
        return self.cpu_seconds["proxy"] * 1000 / len(self.lat_us) if "proxy" in self.cpu_seconds and self.lat_us \
            else None

    def cpu(self, who: str) -> float | None:
        return self.cpu_seconds[who] / self.seconds if who in self.cpu_seconds and self.seconds else None

    @property
    def check(self) -> str:
        return "CHECK FAILED: " + "; ".join(self.problems) if self.problems else "ok"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bench:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.audit_reveals = args.audit_reveals
        self.tmp = tmp
        self.args = args
        self.key = secrets.token_hex(32)
        self.env = {**os.environ, "TOKENBUNKER_MASTER_KEY": self.key, "PYTHONDONTWRITEBYTECODE": "1"}
        self.env.pop("TOKENBUNKER_CONFIG", None)
        self.upstream: subprocess.Popen[str] | None = None
        self.up_port = 0
        self.proxies: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        self.results: dict[tuple[str, int], Result] = {}

    def db(self, key: str) -> str:
        """Each sidecar has a vault (SQLite file) of its own."""
        return f"sqlite:///{self.tmp}/vault-{key}.db"

    # -- processes ----------------------------------------------------------------------------------------

    def prepare(self) -> bytes:
        """Three tokens made through the vault library (owned by a person) in case (e)'s vault, and the fixed answer
        upstream gives to every request, which holds them."""
        sys.path.insert(0, str(ROOT))
        from vault.core import FlowTokenize, Vault
        from vault.tokens import TokenRequest

        vault = Vault.open(self.db("e"), bytes.fromhex(self.key))
        try:
            reqs = [TokenRequest(SHOWN["email"], kind="email", format="email"),
                    TokenRequest(SHOWN["phone"], kind="phone", format="digits"),
                    TokenRequest(SHOWN["name"], kind="name")]
            made = vault.tokenize_flows([FlowTokenize(("email", SHOWN["email"]), reqs)])[0]
            tokens = made.tokens  # type: ignore[union-attr]
        finally:
            vault.close()
        # The floor of (e) stores the same three tokens in a database of its own, with its own keys.
        (self.tmp / "floor-seed.json").write_text(json.dumps(
            {tokens[0]: ["email", SHOWN["email"]], tokens[1]: ["phone", SHOWN["phone"]],
             tokens[2]: ["name", SHOWN["name"]]}))
        return json.dumps({"id": 123456, "email": tokens[0], "phone": tokens[1], "name": tokens[2], "plan": "basic",
                           "newsletter": False, "country": "GB", "created": "2026-11-26T12:00:00Z"},
                          separators=(",", ":")).encode()

    def start_upstream(self, body: bytes) -> None:
        (self.tmp / "answer.json").write_bytes(body)
        self.upstream = subprocess.Popen([sys.executable, __file__, "_upstream", str(self.tmp / "answer.json")],
                                         stdout=subprocess.PIPE, text=True, env=self.env)
        assert self.upstream.stdout is not None
        line = self.upstream.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError("the upstream did not start")
        self.up_port = int(line.split()[1])

    def up_stats(self) -> dict[str, int]:
        conn = http.client.HTTPConnection("127.0.0.1", self.up_port, timeout=5)
        try:
            conn.request("GET", "/__stats")
            return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
        finally:
            conn.close()

    def proxy_command(self, case: CaseDef, port: int) -> list[str]:
        upstream = f"reverse:http://127.0.0.1:{self.up_port}"
        confdir = ["--set", f"confdir={self.tmp / 'mitmproxy'}"]
        if case.proxy in ("mitmdump", "mitmdump-log"):
            quiet = ["-q"] if case.proxy == "mitmdump" else []
            return [str(BIN / "mitmdump"), "--mode", upstream, "--listen-host", "127.0.0.1", "-p", str(port), *quiet,
                    *confdir]
        rules = self.tmp / f"rules-{case.key}.yaml"
        rules.write_text(case.rules or "")
        config = self.tmp / f"config-{case.key}.yaml"
        config.write_text(f"vault:\n  database_url: {self.db(case.key)}\nproxy:\n  rules: [{rules}]\n"
                          f"  audit_reveals: {self.audit_reveals}\n")
        floor = [] if not case.floor else [
            "-s", str(ROOT / "bench" / "floor_addon.py"), "--set", f"floor_mode={case.floor}",
            "--set", f"floor_db={self.tmp / f'floor-{case.key}.db'}",
            "--set", f"floor_stats={self.tmp / f'floor-{case.key}.json'}",
            *(["--set", f"floor_seed={self.tmp / 'floor-seed.json'}"] if case.floor == "reveal" else [])]
        return [str(BIN / "tokenbunker"), "proxy", "--config", str(config), "--mode", upstream,
                "--listen-port", str(port), *confdir, *floor]

    def spawn(self, case: CaseDef, port: int, command: list[str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"proxy-{case.key}.log", "wb") as log:
            return subprocess.Popen(command or self.proxy_command(case, port), stdout=subprocess.DEVNULL,
                                    stderr=log, env=self.env, cwd=self.tmp)

    def wait_ready(self, case: CaseDef, proc: subprocess.Popen[bytes], port: int) -> None:
        """Ready once a POST through it is answered 200 by the upstream."""
        deadline = time.monotonic() + 60
        body = request_body(None)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("POST", PATH, body, {"Content-Type": "application/json"})
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop(proc)
        tail = (self.tmp / f"proxy-{case.key}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{case.label}: the proxy did not come up:\n{tail}")

    @staticmethod
    def stop(proc: subprocess.Popen[Any]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop_all(self) -> None:
        for proc, _port in self.proxies.values():
            self.stop(proc)
        self.proxies.clear()
        if self.upstream is not None:
            self.stop(self.upstream)

    def load(self, port: int, conc: int, same: bool, watch: dict[str, int], warmup: float,
             duration: float) -> dict[str, Any]:
        spec = json.dumps({"port": port, "conc": conc, "same": same, "watch": watch, "warmup": warmup,
                           "duration": duration})
        out = subprocess.run([sys.executable, __file__, "_load", spec], capture_output=True, text=True,
                             env=self.env, timeout=warmup + duration + 60)
        if out.returncode != 0:
            raise RuntimeError(f"the load generator failed: {out.stderr[-1500:]}")
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    # -- the run ------------------------------------------------------------------------------------------

    def start_proxies(self, cases: Sequence[CaseDef]) -> None:
        """All proxies at once (they start in parallel; idle, they cost nothing measurable), each on its port."""
        t0 = time.perf_counter()
        for case in cases:
            if case.proxy:
                port = _free_port()
                self.proxies[case.key] = (self.spawn(case, port), port)
        for case in cases:
            if case.key in self.proxies:
                proc, port = self.proxies[case.key]
                try:
                    self.wait_ready(case, proc, port)
                except RuntimeError as exc:
                    del self.proxies[case.key]
                    print(f"bench: {exc}", file=sys.stderr)
        print(f"  {len(self.proxies)} proxies up in {time.perf_counter() - t0:.1f} s", flush=True)

    def measure(self, case: CaseDef, conc: int, warmup: float, duration: float) -> None:
        port = self.up_port
        watch = {"upstream": self.upstream.pid} if self.upstream else {}
        if case.proxy:
            if case.key not in self.proxies:
                return
            proc, port = self.proxies[case.key]
            watch["proxy"] = proc.pid
        self.up_stats()  # reset the counts
        data = self.load(port, conc, case.same, watch, warmup, duration)
        problems = self.check(case, data, self.up_stats())
        result = self.results.setdefault((case.key, conc), Result(case, conc))
        result.add(data, problems)
        cpu = data["cpu"]
        print(f"  {case.label:<24} conc {conc:>2}: {data['rps']:>8,.0f} req/s  p50 {data['p50']:6.2f} ms  "
              f"p99 {data['p99']:6.2f} ms  cpu: proxy {_pct(cpu.get('proxy'))}, generator "
              f"{_pct(cpu.get('generator'))}, upstream {_pct(cpu.get('upstream'))}  "
              f"{'; '.join(problems) or 'ok'}", flush=True)

    @staticmethod
    def check(case: CaseDef, data: dict[str, Any], seen: dict[str, int]) -> list[str]:
        problems = []
        bad = {k: v for k, v in data["statuses"].items() if k != "200"}
        if bad:
            problems.append(f"statuses {bad}")
        if data["errors"]:
            problems.append(f"errors {data['errors']}")
        requests, plain = seen.get("requests", 0), seen.get("plain", 0)
        if case.expect_plain == "none" and plain:
            problems.append(f"{plain} of {requests} requests reached upstream in clear")
        if case.expect_plain == "all" and plain != requests:
            problems.append(f"only {plain} of {requests} requests reached upstream unchanged")
        if case.expect_revealed and data["revealed"] != data["n"]:
            problems.append(f"{data['n'] - data['revealed']} of {data['n']} answers not revealed")
        if not case.expect_revealed and data["revealed"]:
            problems.append(f"{data['revealed']} answers hold a clear email")
        return problems


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


# -- report ---------------------------------------------------------------------------------------------------


def report(results: list[Result]) -> None:
    by = {(r.case.key, r.conc): r for r in results}
    for r in results:
        for base in ("b", "f"):
            ref = by.get((base, r.conc))
            r.ratios[base] = r.rps / ref.rps if ref and ref.rps else None
    print()
    head = (f"{'case':<25}|{'conc':>5} |{'req/s':>8} |{'p50 ms':>7} |{'p99 ms':>7} |{'ratio vs (b)':>13} |"
            f"{'ratio vs (f)':>13} | proxy cpu ms/req | proxy cpu | rounds req/s")
    print(head)
    print("-" * len(head))
    for r in results:
        rb, rf = (f"{x:.2f}" if x is not None else "-" for x in (r.ratios["b"], r.ratios["f"]))
        per = r.cpu_ms_per_request
        rounds = " / ".join(f"{x:,.0f}" for x in r.rounds)
        print(f"{r.case.label:<25}|{r.conc:>5} |{r.rps:>8,.0f} |{r.ms(0.5):>7.2f} |{r.ms(0.99):>7.2f} |{rb:>13} |"
              f"{rf:>13} | {'-' if per is None else f'{per:.2f}':>16} | {_pct(r.cpu('proxy')):>9} | {rounds}")
    bad = [r for r in results if r.problems]
    print("\nchecks: " + ("every answer 200, PII never upstream in (c)/(d)/(g-r)/(g-c), every answer of (e)/(g-e) "
                          "revealed: ok" if not bad
                          else "; ".join(f"{r.case.label} conc {r.conc}: {r.check}" for r in bad)))
    direct = [r for r in results if r.case.key == "a"]
    if direct:
        best = max(direct, key=lambda r: r.rps)
        proxied = [r.rps for r in results if r.case.proxy]
        print(f"load generator: {best.rps:,.0f} req/s against the upstream direct (conc {best.conc}, generator cpu "
              f"{_pct(best.cpu('generator'))}, upstream cpu {_pct(best.cpu('upstream'))})"
              + (f" = {best.rps / max(proxied):.1f}x the fastest proxy case" if proxied else "")
              + "; in the proxy cases the generator used "
              + f"{max((r.cpu('generator') or 0) for r in results if r.case.proxy) * 100:.0f}% of a core at most"
              if proxied else "")
    print()
    for key in CHECKED:
        for conc in sorted({r.conc for r in results}):
            found = by.get((key, conc))
            if found is None:
                continue
            r = found
            for base, target in (("b", TARGET_VS_B), ("f", TARGET_VS_F)):
                ratio = r.ratios[base]
                if ratio is not None:
                    print(f"{r.case.label} conc {conc}: req/s {ratio:.2f}x ({base}) (target >= {target:.1f}x): "
                          f"{'PASS' if ratio >= target else 'FAIL'}")
            f1 = by.get(("f", conc))
            if conc == 1 and f1 is not None:
                added = r.ms(0.5) - f1.ms(0.5)
                print(f"{r.case.label} conc 1: p50 added over (f) {added:+.2f} ms (target <= "
                      f"{TARGET_ADDED_P50_MS:.1f} ms): {'PASS' if added <= TARGET_ADDED_P50_MS else 'FAIL'}")
    floor_lines = []
    for key, of in FLOORS.items():
        for conc in sorted({r.conc for r in results}):
            fl, case, f_case = by.get((key, conc)), by.get((of, conc)), by.get(("f", conc))
            if fl is None:
                continue
            parts = [f"req/s {fl.ratios['f']:.2f}x (f)" if fl.ratios["f"] is not None else "",
                     f"{fl.ratios['b']:.2f}x (b)" if fl.ratios["b"] is not None else ""]
            if conc == 1 and f_case is not None:
                parts.append(f"p50 added over (f) {fl.ms(0.5) - f_case.ms(0.5):+.2f} ms")
            if case is not None and case.rps:
                parts.append(f"({of}) reaches {case.rps / fl.rps:.2f}x of its floor's req/s")
            floor_lines.append(f"  {fl.case.label} conc {conc}: " + ", ".join(p for p in parts if p))
    if floor_lines:
        print("\nfloors (bench/floor_addon.py: only the unavoidable work, bare sqlite3, one commit per flow on the "
              "loop; informational; at conc 16 the product's group commit can beat them):")
        print("\n".join(floor_lines))
    # Other work on the machine moves req/s and latency a lot; the proxy's CPU time per request much less.
    lines = []
    for key in (*CHECKED, *FLOORS):
        for conc in sorted({r.conc for r in results}):
            case, f_case = by.get((key, conc)), by.get(("f", conc))
            if case is None or case.cpu_ms_per_request is None:
                continue
            per = case.cpu_ms_per_request
            parts = [f"{per:.2f} ms"]
            for name in ("b", "f"):
                ref = by.get((name, conc))
                if ref is not None and ref.cpu_ms_per_request:
                    parts.append(f"{ref.cpu_ms_per_request / per:.2f}x ({name})")
            if f_case is not None and f_case.cpu_ms_per_request is not None:
                parts.append(f"{per - f_case.cpu_ms_per_request:+.2f} ms over (f)")
            lines.append(f"  {case.case.label} conc {conc}: " + ", ".join(parts))
    if lines:
        print("\nproxy CPU per request (robust to other load; the inverse ratio is the throughput ratio a CPU-bound "
              "proxy would reach; informational):")
        print("\n".join(lines))


def floor_timings(tmp: Path, cases: Sequence[CaseDef]) -> None:
    """What the floors' transactions took inside their proxies, over the whole run (both concurrencies)."""
    lines = []
    for case in cases:
        path = tmp / f"floor-{case.key}.json"
        if case.floor and path.exists():
            t = json.loads(path.read_text())
            lines.append(f"  {case.label}: {t['flows']:,} transactions, BEGIN to COMMIT done p50 "
                         f"{t['txn_p50_us'] / 1000:.2f} ms (mean {t['txn_mean_us'] / 1000:.2f} ms), of which "
                         f"COMMIT p50 {t['commit_p50_us'] / 1000:.2f} ms")
    if lines:
        print("\nthe floors' own transactions, timed inside the proxy (one per flow, on the event loop):")
        print("\n".join(lines))


# -- profile --------------------------------------------------------------------------------------------------

CPROFILE_DRIVER = """
import cProfile, signal, sys
sys.path.insert(0, sys.argv[1])
out = sys.argv[2]
prof = cProfile.Profile()
def on(*_): prof.enable()
def off(*_):
    prof.disable()
    prof.dump_stats(out)
signal.signal(signal.SIGRTMIN + 1, on)  # mitmproxy takes SIGUSR1 and SIGUSR2 for its own debug dumps
signal.signal(signal.SIGRTMIN + 2, off)
import tokenbunker_cli
sys.exit(tokenbunker_cli.main(sys.argv[3:]))
"""


def find_py_spy(given: str | None) -> str | None:
    for candidate in (given, shutil.which("py-spy"), "/tmp/pyspy/bin/py-spy"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def profile(bench: Bench, conc: int, tool: str | None, key: str, gil: bool) -> None:
    """One sidecar case (default (c)) at `conc` with the sidecar under a profiler for the measured window only."""
    case = next(c for c in CASES if c.key == key)
    port = _free_port()
    warmup, duration = max(bench.args.warmup, 1.0), bench.args.duration
    out = bench.tmp / "profile.out"
    command = None
    if tool is None:
        command = [sys.executable, "-c", CPROFILE_DRIVER, str(ROOT), str(out), *bench.proxy_command(case, port)[1:]]
    how = "cProfile (Python 3.12: all threads, mixed in one profile)"
    if tool:
        how = f"py-spy (250 Hz, nonblocking, {'the thread holding the GIL' if gil else 'every busy thread'})"
    print(f"\nprofile: {case.label} at conc {conc}, {duration:.0f} s, with {how}", flush=True)
    proc = bench.spawn(case, port, command)
    bench.wait_ready(case, proc, port)
    try:
        spec = json.dumps({"port": port, "conc": conc, "same": case.same, "watch": {"proxy": proc.pid},
                           "warmup": warmup, "duration": duration})
        gen = subprocess.Popen([sys.executable, __file__, "_load", spec], stdout=subprocess.PIPE, text=True,
                               env=bench.env)
        time.sleep(warmup)
        if tool:
            spy = subprocess.run([tool, "record", "--pid", str(proc.pid), "--duration", str(int(duration)),
                                  "--rate", "250", "--format", "raw", "--threads", "--nonblocking",
                                  *(["--gil"] if gil else []), "--output", str(out)], capture_output=True, text=True)
            if spy.returncode != 0 or not out.exists():
                print(f"profile: py-spy failed: {spy.stderr.strip()[-800:]}")
        else:
            proc.send_signal(signal.SIGRTMIN + 1)
            time.sleep(duration)
            proc.send_signal(signal.SIGRTMIN + 2)
        data = json.loads(gen.communicate(timeout=60)[0])
        print(f"profile: {data['rps']:,.0f} req/s under the profiler (p50 {data['p50']:.2f} ms), proxy cpu "
              f"{_pct(data['cpu'].get('proxy'))}")
        time.sleep(0.5)
    finally:
        bench.stop(proc)
    if not out.exists():
        log = (bench.tmp / f"proxy-{case.key}.log").read_text(errors="replace")[-1500:]
        print(f"profile: no profile was written; the proxy said:\n{log}")
        return
    if bench.args.profile_out:
        shutil.copy(out, bench.args.profile_out)
        print(f"profile: raw output copied to {bench.args.profile_out}")
    if tool:
        summarize_py_spy(out, 250 * int(duration), gil)
    else:
        summarize_cprofile(out)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.12/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return os.path.relpath(path, ROOT) if path.startswith(str(ROOT)) else path


OURS = ("proxy_addons/", "rules/", "vault/")


def _ours(path: str) -> bool:
    return path.startswith(str(ROOT)) and _short(path).startswith(OURS)


def summarize_py_spy(path: Path, possible: int, gil: bool) -> None:
    """Inclusive and self sample counts per function (line numbers folded), per thread (named as Python names it:
    MainThread, tokenbunker-writer, tokenbunker-reader_N)."""
    incl: dict[str, Counter[str]] = defaultdict(Counter)
    self_: dict[str, Counter[str]] = defaultdict(Counter)
    threads: dict[str, set[str]] = defaultdict(set)
    samples: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        tid, _, name = frames[0].partition(": ")
        kind = name.rstrip("0123456789_") or tid
        funcs = []
        for frame in frames[1:]:
            func, _, where = frame.rpartition(" (")
            funcs.append(f"{func} ({_short(where.rsplit(':', 1)[0])})")
        threads[kind].add(tid)
        n = int(count)
        samples[kind] += n
        for func in set(funcs):
            incl[kind][func] += n
        if funcs:
            self_[kind][funcs[-1]] += n
    what = "holding the GIL" if gil else "busy (on CPU or waiting for the GIL)"
    print(f"\nsamples per thread {what}, as % of wall time ({possible} possible samples per thread):")
    for kind, n in samples.most_common():
        print(f"    {kind} ({len(threads[kind])} thread{'s' if len(threads[kind]) > 1 else ''}): "
              f"{n / possible * 100:.0f}%")
    if gil:
        print(f"    GIL held, all threads: {sum(samples.values()) / possible * 100:.0f}%")
    for kind, _n in samples.most_common(2):
        print(f"\n{kind}: inclusive (incl) and self time, % of wall time {what}")
        for func, n in incl[kind].most_common(40 if kind == "MainThread" else 25):
            mark = "*" if any(f"({p}" in func for p in OURS) else " "
            print(f"  {mark} incl {n / possible * 100:5.1f}%  self {self_[kind][func] / possible * 100:5.1f}%  {func}")
    print("\n(* = Tokenbunker code; line numbers folded, each function counted once per sample)")
    for kind, _n in samples.most_common(2):
        print(f"\nTokenbunker functions, {kind}, by inclusive time:")
        ours = [(f, n) for f, n in incl[kind].most_common() if any(f"({p}" in f for p in OURS)]
        for func, n in ours[:25]:
            print(f"    incl {n / possible * 100:5.1f}%  self {self_[kind][func] / possible * 100:5.1f}%  {func}")
    libs = ("json/", "jsonpath_ng/", "sqlalchemy/", "cryptography/", "mitmproxy/net/http", "mitmproxy/http.py",
            "mitmproxy/coretypes", "copy.py", "ply/", "uuid.py", "sqlite3/")
    for kind, _n in samples.most_common(2):
        print(f"\nlibrary hot spots, {kind} (json, jsonpath_ng, sqlalchemy, cryptography, mitmproxy http, uuid):")
        for func, n in [(f, n) for f, n in incl[kind].most_common() if any(f"({p}" in f for p in libs)][:15]:
            print(f"    incl {n / possible * 100:5.1f}%  self {self_[kind][func] / possible * 100:5.1f}%  {func}")


def summarize_cprofile(path: Path) -> None:
    import pstats

    stats = pstats.Stats(str(path))
    rows = []
    entries = stats.stats.items()  # type: ignore[attr-defined]
    for (file, line, name), (_cc, nc, tt, ct, _callers) in entries:
        rows.append((ct, tt, nc, f"{name} ({_short(file)}:{line})", file))
    rows.sort(reverse=True)
    print("\ncProfile, by cumulative time (the measured window only; main and vault threads mixed):")
    for ct, tt, nc, where, _file in rows[:30]:
        print(f"    cum {ct:6.2f} s  self {tt:6.2f} s  calls {nc:>8}  {where}")
    print("\nTokenbunker functions by cumulative time:")
    for ct, tt, nc, where, _file in [r for r in rows if _ours(r[4])][:25]:
        print(f"    cum {ct:6.2f} s  self {tt:6.2f} s  calls {nc:>8}  {where}")


# -- main -----------------------------------------------------------------------------------------------------


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--audit-reveals", choices=("strict", "buffered"), default="strict",
                        help="the sidecar's proxy.audit_reveals (default strict, the product's default)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (~45 s): 1.5 s per case and concurrency, one round")
    parser.add_argument("--duration", type=float,
                        help="seconds measured per case and concurrency, over all rounds (default 8)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each measurement (default 0.3)")
    parser.add_argument("--rounds", type=int, help="rounds over all cases, each measuring duration/rounds, so "
                        "that noise from the rest of the machine falls on every case alike (default 4, 1 with --quick)")
    parser.add_argument("--conc", default="1,16", help="concurrency levels, comma-separated (default 1,16)")
    parser.add_argument("--cases", default="a,b,b2,f,c,d,e,gr,gc,ge",
                        help="cases to run, comma-separated, from a,b,b2,f,c,d,e and the floors gr,gc,ge "
                        "(default: all)")
    parser.add_argument("--profile", action="store_true", help="then profile a sidecar case (--profile-case, default "
                        "c) at the highest concurrency")
    parser.add_argument("--profile-only", action="store_true", help="only the profile, no table")
    parser.add_argument("--profile-case", default="c", choices=[c.key for c in CASES if c.proxy == "sidecar"],
                        help="the sidecar case to profile (default c)")
    parser.add_argument("--profile-out", help="keep the profiler's raw output (py-spy collapsed stacks or a "
                        "cProfile .prof file) here")
    parser.add_argument("--all-threads", action="store_true", help="py-spy: sample every busy thread, not only the "
                        "one holding the GIL")
    parser.add_argument("--cprofile", action="store_true", help="profile with cProfile even if py-spy is found")
    parser.add_argument("--py-spy", dest="py_spy", help="path of a py-spy executable")
    args = parser.parse_args(argv)
    args.duration = args.duration or (1.5 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else 0.3
    args.rounds = max(1, args.rounds or (1 if args.quick else 4))
    concs = [int(c) for c in args.conc.split(",") if c.strip()]
    wanted = [k.strip() for k in args.cases.split(",") if k.strip()]
    unknown = set(wanted) - {c.key for c in CASES}
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    for script in ("mitmdump", "tokenbunker"):
        if not (BIN / script).exists():
            parser.error(f"{BIN / script} not found: run this with the project's venv python (.venv/bin/python)")
    started = time.perf_counter()
    print(f"tokenbunker proxy bench: {args.duration:g} s per case and concurrency in {args.rounds} round(s), each "
          f"after {args.warmup:g} s warm-up, "
          f"concurrency {', '.join(map(str, concs))}, POST {len(request_body(0))}-byte JSON, keep-alive; python "
          f"{sys.version.split()[0]}, {os.cpu_count()} cpus, load average {_load_average()}", flush=True)
    cases = [c for c in CASES if c.key in wanted]
    with tempfile.TemporaryDirectory(prefix="tb-proxy-bench-") as tmp:
        bench = Bench(Path(tmp), args)
        try:
            bench.start_upstream(bench.prepare())
            if not args.profile_only:
                bench.start_proxies(cases)
                for conc in concs:
                    for _round in range(args.rounds):
                        for case in cases:
                            try:
                                bench.measure(case, conc, args.warmup, args.duration / args.rounds)
                            except Exception as exc:  # a measurement: report it and go on with the others
                                print(f"bench: {case.label} failed: {type(exc).__name__}: {str(exc)[:1500]}",
                                      file=sys.stderr)
                for proc, _port in list(bench.proxies.values()):
                    bench.stop(proc)
                bench.proxies.clear()
                report(list(bench.results.values()))
                floor_timings(bench.tmp, cases)
            if args.profile or args.profile_only:
                tool = None if args.cprofile else find_py_spy(args.py_spy)
                try:
                    profile(bench, max(concs), tool, args.profile_case, not args.all_threads)
                except Exception as exc:
                    print(f"bench: the profile failed: {type(exc).__name__}: {str(exc)[:1500]}", file=sys.stderr)
        finally:
            bench.stop_all()
    print(f"\n(bench took {time.perf_counter() - started:.0f} s; load average now {_load_average()}. The generator, "
          "upstream and proxy share the machine's cores: absolute figures move with other load, ratios less)")
    return 0


def _child(role: str, arg: str) -> None:
    if role == "_upstream":
        asyncio.run(upstream_main(Path(arg).read_bytes()))
    else:
        spec = json.loads(arg)
        gen = Load(spec["port"], spec["conc"], spec["same"], spec["watch"])
        print(json.dumps(asyncio.run(gen.run(spec["warmup"], spec["duration"]))))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("_upstream", "_load"):
        _child(sys.argv[1], sys.argv[2])
        sys.exit(0)
    try:
        main()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    sys.exit(0)
