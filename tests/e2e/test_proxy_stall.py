"""No input stalls the sidecar for other clients: a real `tokenbunker proxy` (reverse mode, in-process SQLite vault)
in front of a recording upstream, one process for the module (restarted only when a test leaves it busy or bloated).

Each test sends one adversarial request from a thread and, while it is in flight, times small requests from two
other connections, each in its own thread, every ~20 ms: a JSON POST to an ordinary tokenizing route (a fresh value
each, so it needs the vault's writer) and a GET to a route without rules. A stall of the event loop delays both; a
writer held by the attack delays the POST only. The issue's budget: "No input of under 1 MB delays another client
by more than 100 ms", so each probe's latency may exceed the median of the same probe just before the attack (the
baseline, on the warmed-up proxy) by at most BUDGET; a delay within NOISE_FACTOR of it is measured once more. The
adversarial request must be refused by the sidecar (its JSON error) or forwarded without its personal values in the
clear, and the proxy's peak RSS (VmHWM, reset before each attack) must stay under RSS_BOUND. Benign inputs of the
same sizes run through the same harness as controls.

Run with `-s` (or `-rP`) to see the figures of passing tests too:

    .venv/bin/python -m pytest tests/e2e/test_proxy_stall.py -q --db=sqlite -s
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.helpers import cli_env, new_master_key
from tests.e2e.proxyhelpers import ProxyProcess, RecordingUpstream, tokenbunker_proxy, write_proxy_config
from tests.e2e.stallhelpers import (
    Attack,
    Client,
    Heartbeat,
    MiB,
    Probe,
    brotli_bomb,
    deflate_bomb,
    gzip_multimember_bomb,
    peek_decoded,
    proc_status_kb,
    reset_peak_rss,
    without_nagle,
    zstd_bomb,
)

MAX_BODY = 8 * MiB  # generous: every input below but the bombs' decoded size fits
BUDGET = 0.100  # most a probe may take over its baseline while the attack runs
# Over 1 MB the issue sets no latency budget; the sidecar holds it all the same (input 4 is refused while its JSON is
# walked, in a worker thread), so it is checked too.
LARGE_INPUT_BUDGET: float | None = BUDGET
# The proxy stalls now and then by itself: a full garbage collection on a warmed-up proxy takes ~35-75 ms here (one
# in ~1000 probes, both probes at once, no attack running), and up to ~170 ms was seen once. A delay over the budget
# but within NOISE_FACTOR times it is measured once more, and fails only if it is over the budget again.
NOISE_FACTOR = 3
FAST_REFUSAL = 1.0  # seconds: a bomb, or a message with too many values, is refused at least this fast
RSS_BOUND = 400 * 1000 * 1000  # bytes of peak RSS, start-up included
PROBE_EVERY = 0.020
MIN_PROBING = 1.0  # probe for at least this long, and for as long as the attack runs...
ATTACK_CAP = 5.0  # ...but no longer: an attack unanswered by then fails the test (and the proxy is restarted)
PROBE_TIMEOUT = 2.5  # a probe unanswered by then counts with this latency (the proxy is restarted after the test)
BASELINE_ROUNDS = 7
BLOATED = RSS_BOUND * 0.6  # a proxy left with this much RSS by an earlier test is restarted before the next

RULES = r"""
version: 1
routes:
  - name: small
    match: {path: "/small", methods: [POST]}
    request:
      - {json: "$.email", action: tokenize, kind: email}
  - name: upload
    match: {path: "/upload", methods: [POST]}
    request:
      - {json: "$.email", action: tokenize, kind: email}
  - name: detect
    match: {path: "/detect", methods: [POST]}
    request:
      - {detect: [email], action: tokenize}
  - name: text
    match: {path: "/text", methods: [POST]}
    request:
      - {text: '[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}', action: tokenize, kind: email}
  - name: form
    match: {path: "/form", methods: [POST]}
    request:
      - {form: email, action: tokenize, kind: email}
  - name: import
    match: {path: "/import", methods: [POST]}
    request:
      - {json: "$[*].email", action: tokenize, kind: email}
  - name: open
    match: {path: "/open/*"}
"""

PROBE_MARK = "@probe.example.org"


# -- the proxy -------------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    work: Path
    config: Path
    env: dict[str, str]
    upstream: RecordingUpstream
    proxy: ProxyProcess | None = None
    startup_rss_kb: int = 0
    dirty: bool = False  # an attack or a probe was left unanswered: the proxy may still be busy with it
    starts: int = 0

    @property
    def port(self) -> int:
        assert self.proxy is not None
        return self.proxy.port

    @property
    def pid(self) -> int:
        assert self.proxy is not None and self.proxy.proc is not None
        return self.proxy.proc.pid

    def start(self) -> None:
        self.starts += 1
        # confdir: mitmproxy writes its CA there, not in ~/.mitmproxy.
        self.proxy = tokenbunker_proxy(self.config, self.env, self.work, f"proxy{self.starts}",
                                       f"reverse:{self.upstream.url}", "--set", f"confdir={self.work / 'mitmproxy'}")
        self.proxy.start()
        self.dirty = False
        warm_up(self)
        self.startup_rss_kb = proc_status_kb(self.pid, "VmRSS")
        print(f"\nproxy started (pid {self.pid}): RSS after start-up and warm-up {self.startup_rss_kb / 1024:.0f} MiB, "
              f"peak so far {proc_status_kb(self.pid, 'VmHWM') / 1024:.0f} MiB")

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()

    def ready(self) -> None:
        """The proxy, restarted if an earlier test left it busy or bloated, so no test measures another's damage."""
        assert self.proxy is not None and self.proxy.proc is not None
        if self.dirty:
            why = "an earlier attack or probe was left unanswered"
        elif self.proxy.proc.poll() is not None:
            why = f"the proxy exited with {self.proxy.proc.returncode}"
        elif (rss := proc_status_kb(self.pid, "VmRSS")) * 1024 > BLOATED:
            why = f"an earlier attack left it with {rss / 1024:.0f} MiB of RSS"
        else:
            return
        print(f"\nrestarting the proxy: {why}")
        self.proxy.kill()
        self.start()


@pytest.fixture(scope="module")
def stack(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert backend == "sqlite"  # timing is measured with the in-process SQLite vault only (sqlite_only)
    work = tmp_path_factory.mktemp("stall")
    rules = work / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    config = write_proxy_config(work / "config.yaml", f"sqlite:///{work / 'vault.db'}", [rules],
                                max_body_bytes=MAX_BODY)
    upstream = RecordingUpstream()
    without_nagle(upstream)  # else ~40 ms of delayed-ACK wait on every echoed answer: noise in every figure
    upstream.start()
    # A fixed answer: the upstream would otherwise decode a forwarded bomb in this process to echo it.
    upstream.set_fixed("/upload", {"ok": True})
    s = Stack(work, config, cli_env(TOKENBUNKER_MASTER_KEY=new_master_key()), upstream)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        upstream.stop()


def warm_up(stack: Stack) -> None:
    """Every route once, and a few rounds of the probes: imports, compiled rules, SQLite pages, connections."""
    client = Client(stack.port)
    try:
        for path, body, ctype in (
            ("/upload", gzip.compress(b'{"email": "w@warm.example.org"}'), "application/json"),
            ("/detect", b"hello w@warm.example.org", "text/plain"),
            ("/text", b"hello w@warm.example.org", "text/plain"),
            ("/form", b"email=w%40warm.example.org", "application/x-www-form-urlencoded"),
            ("/import", b'[{"email": "w@warm.example.org"}]', "application/json"),
        ):
            headers = {"Content-Type": ctype}
            if path == "/upload":
                headers["Content-Encoding"] = "gzip"
            status, data, _ = client.call("POST", path, body, headers)
            assert status == 200, (path, status, data[:300], stack.proxy.output()[-2000:] if stack.proxy else "")
        with probes(stack, "warm") as (post, get):
            for _ in range(20):
                post.once()
                get.once()
        assert not post.problems and not get.problems, post.problems + get.problems
    finally:
        client.close()


# -- probes ----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def probes(stack: Stack, tag: str) -> Iterator[tuple[Probe, Probe]]:
    """The two small requests, each on its own keep-alive connection (closed at the end)."""
    post_client = Client(stack.port, timeout=PROBE_TIMEOUT)
    get_client = Client(stack.port, timeout=PROBE_TIMEOUT)

    def send_post(n: int) -> tuple[int, bytes, float]:
        body = json.dumps({"email": f"p{n}.{tag}.{secrets.token_hex(3)}{PROBE_MARK}"}).encode()
        return post_client.call("POST", "/small", body, {"Content-Type": "application/json"})

    def check_post(n: int, status: int, body: bytes) -> str | None:
        if status != 200:
            return f"status {status}: {body[:200]!r}"
        if PROBE_MARK.encode() in body or b"tbk_" not in body:
            return f"not tokenized: {body[:200]!r}"
        return None

    def send_get(n: int) -> tuple[int, bytes, float]:
        return get_client.call("GET", f"/open/ping?n={n}")

    def check_get(n: int, status: int, body: bytes) -> str | None:
        return None if status == 200 else f"status {status}: {body[:200]!r}"

    try:
        yield Probe("POST /small", send_post, check_post), Probe("GET /open", send_get, check_get)
    finally:
        post_client.close()
        get_client.close()


# -- the inputs ------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    path: str
    content_type: str
    build: Callable[[], bytes]
    marker: bytes  # in every personal value of the body: must not reach the upstream in the clear
    encoding: str = ""
    expect: str = "protected"  # "refused-413": only a 413 will do; "forwarded": benign, must go through
    fast: bool = False  # the answer must come within FAST_REFUSAL
    budget: float | None = BUDGET  # None: the probes' delay is printed, not checked
    note: str = ""
    _body: bytes | None = field(default=None, repr=False)

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = self.build()
        return self._body


BOMB_PREFIX = b'{"email": "bomb.victim@bomb.example.org"}'
BOMB_MARK = b"@bomb.example.org"


def emails_text() -> bytes:
    """30,000 short addresses, one a line: 349 KB."""
    return "".join(f"u{i}@x.io\n" for i in range(30_000)).encode()


def emails_under_cap() -> bytes:
    """9,000 addresses (under proxy.max_values_per_message): all tokenized, in calls of 500, while others go on."""
    return "".join(f"u{i}@x.io\n" for i in range(9_000)).encode()


def values_under_cap() -> bytes:
    """9,000 selected JSON fields: 300 KB."""
    return json.dumps([{"email": f"u{i}@example.com"} for i in range(9_000)]).encode()


def plain_text(size: int) -> bytes:
    """Words without any address, number or token: `size` bytes."""
    words = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore\n"
    return (words * (size // len(words) + 1))[:size]


def multipart_redos() -> bytes:
    """One part whose header block has `content-disposition:` 8,000 times on one line (160 KB), then a real one."""
    return (b"--stallboundary\r\n"
            + b"content-disposition:" * 8000 + b"\r\n"
            + b'Content-Disposition: form-data; name="email"\r\n\r\n'
            + b"victim@form.example.org\r\n--stallboundary--\r\n")


def many_values() -> bytes:
    """100,000 selected fields: 3.3 MB."""
    return json.dumps([{"email": f"u{i}@example.com"} for i in range(100_000)]).encode()


def benign_gzip_json() -> bytes:
    doc = {"email": "benign@benign.example.org", "note": plain_text(349 * 1000 - 60).decode()}
    return gzip.compress(json.dumps(doc).encode())


CASES = {
    # 1. compression bombs: decoded sizes 0.9-1 GiB, far over MAX_BODY: only a 413, and fast.
    "bomb-zstd-2-frames": Case("/upload", "application/json", lambda: zstd_bomb(BOMB_PREFIX, 1024), BOMB_MARK,
                               "zstd", "refused-413", fast=True, note="zstd({email}) + zstd(1 GiB of spaces)"),
    "bomb-gzip-label-zlib-data": Case("/upload", "application/json",
                                      lambda: deflate_bomb(BOMB_PREFIX, 900, "zlib"), BOMB_MARK, "gzip",
                                      "refused-413", fast=True, note="zlib stream of 900 MiB labelled gzip"),
    "bomb-deflate-raw": Case("/upload", "application/json", lambda: deflate_bomb(BOMB_PREFIX, 900, "raw"),
                             BOMB_MARK, "deflate", "refused-413", fast=True,
                             note="raw deflate of 900 MiB labelled deflate"),
    "bomb-gzip-multimember": Case("/upload", "application/json",
                                  lambda: gzip_multimember_bomb(BOMB_PREFIX, 112, 8), BOMB_MARK, "gzip",
                                  "refused-413", fast=True, note="gzip({email}) + 112 members of 8 MiB of spaces"),
    "bomb-brotli": Case("/upload", "application/json", lambda: brotli_bomb(BOMB_PREFIX, 1024), BOMB_MARK, "br",
                        "refused-413", fast=True, note="brotli of 1 GiB"),
    # 2. text and detect rules over 30,000 addresses.
    "detect-30k-emails": Case("/detect", "text/plain", emails_text, b"@x.io",
                              note="349 KB text/plain, 30,000 addresses, detect: [email]"),
    "text-regex-30k-emails": Case("/text", "text/plain", emails_text, b"@x.io",
                                  note="349 KB text/plain, 30,000 addresses, a text: regex"),
    # Under the value cap: the message is tokenized whole, and the probes' own new values still get their turn.
    "detect-9000-emails": Case("/detect", "text/plain", emails_under_cap, b"@x.io",
                               note="105 KB text/plain, 9,000 addresses, detect: [email]"),
    "json-9000-values": Case("/import", "application/json", values_under_cap, b"@example.com",
                             note="300 KB, 9,000 x $[*].email"),
    # 3. the multipart part-name parser.
    "multipart-8000-dispositions": Case("/form", "multipart/form-data; boundary=stallboundary", multipart_redos,
                                        b"@form.example.org", note="160 KB header block, form: email"),
    # 4. values per message: over 1 MB, so its refusal must be fast; the probes' delay is printed (LARGE_INPUT_BUDGET).
    "json-100k-values": Case("/import", "application/json", many_values, b"@example.com", expect="refused-413",
                             fast=True, budget=LARGE_INPUT_BUDGET, note="3.3 MB, 100,000 x $[*].email"),
    # Controls: benign bodies of the same sizes, through the same routes; they must pass the same harness.
    "control-text-no-emails": Case("/detect", "text/plain", lambda: plain_text(349 * 1000), b"@x.io",
                                   expect="forwarded", note="349 KB of words, detect: [email]"),
    "control-text-regex-no-emails": Case("/text", "text/plain", lambda: plain_text(349 * 1000), b"@x.io",
                                         expect="forwarded", note="349 KB of words, text: regex"),
    "control-gzip-json": Case("/upload", "application/json", benign_gzip_json, b"@benign.example.org", "gzip",
                              expect="forwarded", note="gzip JSON of 349 KB, one email"),
}


# -- the test --------------------------------------------------------------------------------------------------------


@dataclass
class Measured:
    case: str
    base: dict[str, float]  # probe name -> median latency before the attack
    post: Probe  # the probes during the attack
    get: Probe
    attack: Attack
    answered: bool
    probing: float  # seconds the probes ran
    rss_before_kb: int
    peak_kb: int
    peak_reset: bool
    heartbeat: float  # this process's own worst wake-up delay while probing
    figures: str = ""

    def delay(self, probe: Probe) -> float:
        return probe.max - self.base[probe.name]


def measure(stack: Stack, name: str, case: Case, body: bytes, post: Probe, get: Probe) -> Measured:
    """The probes' baseline on the idle proxy, then the attack with each probe running in its own thread until the
    attack is answered (at least MIN_PROBING, at most ATTACK_CAP)."""
    pid = stack.pid
    for _ in range(BASELINE_ROUNDS):
        post.once()
        get.once()
        time.sleep(PROBE_EVERY)
    assert not post.problems and not get.problems, post.problems + get.problems
    base = {p.name: p.median for p in (post, get)}
    base_all = {p.name: [round(x * 1000, 1) for x in p.latencies] for p in (post, get)}
    post.reset()
    get.reset()

    peak_reset = reset_peak_rss(pid)
    rss_before = proc_status_kb(pid, "VmRSS")
    headers = {"Content-Type": case.content_type}
    if case.encoding:
        headers["Content-Encoding"] = case.encoding
    attack = Attack(stack.port, "POST", case.path, body, headers, timeout=ATTACK_CAP + 30).start()
    attack.sent.wait(ATTACK_CAP)
    sent_after = (attack.sent_at or time.perf_counter()) - attack.started
    stop = threading.Event()
    probe_start = time.perf_counter()
    gc.disable()  # this process's own collections would show as the proxy's latency
    try:
        with Heartbeat() as heartbeat:
            threads = [post.run(stop, PROBE_EVERY), get.run(stop, PROBE_EVERY)]
            while True:
                elapsed = time.perf_counter() - probe_start
                if (attack.done and elapsed >= MIN_PROBING) or elapsed >= ATTACK_CAP:
                    break
                time.sleep(0.01)
            stop.set()
            for thread in threads:
                thread.join(PROBE_TIMEOUT + 1)
    finally:
        gc.enable()
    probing = time.perf_counter() - probe_start
    answered = attack.done
    peak_kb = proc_status_kb(pid, "VmHWM")
    if not answered or post.timeouts or get.timeouts:
        stack.dirty = True  # still at work: the next test gets a fresh proxy

    m = Measured(name, base, post, get, attack, answered, probing, rss_before, peak_kb, peak_reset, heartbeat.worst)
    budget = BUDGET if case.budget is None else case.budget
    over = sum(1 for p in (post, get) for x in p.latencies if x - base[p.name] > budget)
    if answered and attack.status:
        outcome = f"answered {attack.status} after {attack.seconds:.2f} s: {attack.response[:140]!r}"
    elif attack.error:
        outcome = f"error {attack.error} after {attack.seconds:.2f} s"
    else:
        outcome = f"NOT answered after {attack.seconds:.2f} s"
    timeouts = "".join(f", {p.timeouts} {p.name} unanswered within {PROBE_TIMEOUT} s" for p in (post, get)
                       if p.timeouts)
    m.figures = (
        f"\n[{name}] {case.note}; body {len(body):,} bytes{', ' + case.encoding if case.encoding else ''}\n"
        f"  baseline medians: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in base.items())
        + f" (all, ms: {base_all})\n"
        f"  attack: sent in {sent_after * 1000:.0f} ms, {outcome}\n"
        f"  probes while it ran: {len(post.latencies)} POST + {len(get.latencies)} GET in {probing:.2f} s; max "
        + ", ".join(f"{p.name} {p.max * 1000:.0f} ms (median {p.median * 1000:.1f}, delay "
                    f"{m.delay(p) * 1000:.0f})" for p in (post, get))
        + f"; {over} probe(s) over baseline + {budget * 1000:.0f} ms{timeouts}"
        f"{'' if case.budget is not None else ' (not checked)'}; this process's worst wake-up delay "
        f"{heartbeat.worst * 1000:.0f} ms\n"
        f"  RSS: start-up {stack.startup_rss_kb / 1024:.0f} MiB, before the attack {rss_before / 1024:.0f} MiB, "
        f"peak during it {peak_kb / 1024:.0f} MiB{'' if peak_reset else ' (peak not reset: since start-up)'}"
    )
    return m


def attempt(stack: Stack, name: str, case: Case, body: bytes) -> tuple[Measured, int]:
    """One measurement on a ready proxy: (its figures, the upstream's request count before it)."""
    stack.ready()
    mark = stack.upstream.count()
    gc.collect()
    with probes(stack, secrets.token_hex(3)) as (post, get):
        m = measure(stack, name, case, body, post, get)
    print(m.figures)
    return m, mark


def worst_delay(m: Measured) -> float:
    return max(m.delay(m.post), m.delay(m.get))


@pytest.mark.sqlite_only
@pytest.mark.parametrize("name", list(CASES))
def test_no_input_stalls_other_clients(stack: Stack, name: str) -> None:
    case = CASES[name]
    body = case.body  # built before any timing
    m, mark = attempt(stack, name, case, body)
    if (case.budget is not None and case.budget < worst_delay(m) <= NOISE_FACTOR * case.budget
            and m.answered and not m.post.problems and not m.get.problems):
        print(f"  a delay of {worst_delay(m) * 1000:.0f} ms could be the proxy's own noise: measuring again")
        m, mark = attempt(stack, name, case, body)
    figures, attack, post, get = m.figures, m.attack, m.post, m.get

    # The harness worked: every probe was answered as it should be.
    assert not post.problems and not get.problems, f"{(post.problems + get.problems)[:5]}{figures}"
    assert post.latencies and get.latencies, figures
    # Memory first: a bomb that inflated shows here whatever else happened.
    assert m.peak_kb * 1024 < RSS_BOUND, f"peak RSS {m.peak_kb / 1024:.0f} MiB, over {RSS_BOUND / 1e6:.0f} MB{figures}"
    assert m.answered, f"the adversarial request was not answered within {ATTACK_CAP} s{figures}"
    assert attack.error is None, figures
    if case.budget is not None:
        for p in (post, get):
            assert m.delay(p) <= case.budget, (
                f"{p.name} took {p.max * 1000:.0f} ms against a baseline of {m.base[p.name] * 1000:.1f} ms: another "
                f"client delayed by {m.delay(p) * 1000:.0f} ms (budget {case.budget * 1000:.0f} ms){figures}")
    if case.fast:
        assert attack.seconds < FAST_REFUSAL, f"answered after {attack.seconds:.2f} s, not within " \
                                              f"{FAST_REFUSAL} s{figures}"
    check_outcome(stack, case, attack, mark, figures)


def check_outcome(stack: Stack, case: Case, attack: Attack, mark: int, figures: str) -> None:
    """Refused by the sidecar with its own JSON error, or forwarded with no personal value in the clear."""
    status = attack.status or 0
    got = [r for r in stack.upstream.since(mark) if r.path == case.path]
    for record in got:  # whatever was expected, nothing personal in the clear upstream
        forwarded = peek_decoded(record.body, record.header("Content-Encoding") or "", limit=4 * MiB)
        assert case.marker not in record.raw and case.marker not in forwarded, \
            f"personal values reached the upstream in the clear{figures}"
    if case.expect == "forwarded":
        assert status == 200 and len(got) == 1, f"{status} {attack.response[:300]!r}{figures}"
    if case.expect == "refused-413":
        assert status == 413, f"{status} {attack.response[:300]!r}; forwarded upstream: {len(got)}{figures}"
    if 400 <= status < 500:
        assert attack.content_type.startswith("application/json"), (attack.content_type, figures)
        answer = json.loads(attack.response)
        assert answer["status"] == "error", answer
        assert not got, f"refused, yet the upstream received it{figures}"
        return
    assert 200 <= status < 300, f"{status} {attack.response[:300]!r}{figures}"
    assert len(got) == 1, (len(got), figures)
