"""Throughput of rules.detectors.Detector.find over a generated nginx-like access log (one core, one thread).

Run from the repository root: `.venv/bin/python bench/detectors_bench.py` (`--lines N`, `--rounds N`, `--detectors
ipv4,ipv6`). The log mixes IPv4 clients, IPv6 clients (a few with an IPv4 X-Forwarded-For) and lines with no
candidate at all, with realistic User-Agents (reduced Chrome "Chrome/124.0.0.0" ones included: they look like IPs).
Clients come from a pool, as in real logs, so the IPv6 validation cache is warm after the first round; the first
round is reported separately. This is a measurement, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rules.detectors import Detector  # noqa: E402

AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 "
    "Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "python-requests/2.31.0",
]
PATHS = ["/", "/index.html", "/api/v1/orders/{n}", "/static/app.{h}.js", "/login", "/search?q=shoes&page={p}",
         "/health", "/api/v1/users/{n}/avatar.png"]
REFERERS = ["-", "https://www.example.com/", "https://www.example.com/shop/cart?id={n}", "https://google.com/"]
METHODS = ["GET"] * 8 + ["POST", "PUT"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
NO_CANDIDATE = [
    'upstream keepalive connection closed while reading response header from upstream, request: "GET /health"',
    "worker process 4242 exited on signal 9",
    "using the \"epoll\" event method; start worker processes",
    "2024/10/10 13:55:36 [notice] 1#1: signal process started",
]


def make_log(lines: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    v4 = [str(ipaddress.IPv4Address(rnd.getrandbits(32))) for _ in range(5000)]
    v6 = [str(ipaddress.IPv6Address((0x2001_0DB8 << 96) | rnd.getrandbits(64))) for _ in range(1500)]
    out = []
    for i in range(lines):
        r = rnd.random()
        if r < 0.10:
            out.append(rnd.choice(NO_CANDIDATE) + "\n")
            continue
        client = rnd.choice(v6) if r < 0.30 else rnd.choice(v4)
        xff = f' "{rnd.choice(v4)}"' if r < 0.15 else ""
        n, h, p = rnd.randrange(1, 10**7), f"{rnd.getrandbits(32):08x}", rnd.randrange(1, 20)
        path = rnd.choice(PATHS).format(n=n, h=h, p=p)
        day = f"{rnd.randrange(1, 29):02d}/{rnd.choice(MONTHS)}/2024"
        when = f"{day}:{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
        out.append(
            f'{client} - - [{when} +0000] "{rnd.choice(METHODS)} {path} HTTP/1.1" {rnd.choice([200, 200, 304, 404])} '
            f'{rnd.randrange(0, 50000)} "{rnd.choice(REFERERS).format(n=n)}" "{rnd.choice(AGENTS)}"{xff}\n'
        )
    return out


def run(det: Detector, lines: list[str]) -> tuple[float, int]:
    find = det.find
    found = 0
    t0 = time.perf_counter()
    for line in lines:
        found += len(find(line))
    return time.perf_counter() - t0, found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--detectors", default="ipv4,ipv6")
    args = ap.parse_args()
    lines = make_log(args.lines)
    size = sum(len(x.encode()) for x in lines)
    det = Detector(args.detectors.split(","))
    print(f"{len(lines)} lines, {size / 1e6:.2f} MB ({size / len(lines):.0f} B/line), detectors {list(det.names)}")
    first, found = run(det, lines)
    best = min(run(det, lines)[0] for _ in range(args.rounds))
    for label, t in (("first round (cold caches)", first), (f"best of {args.rounds} rounds", best)):
        print(f"  find  {label:26s}: {len(lines) / t:>10,.0f} lines/s  {size / t / 1e6:6.1f} MB/s  "
              f"{t / len(lines) * 1e6:5.2f} us/line")
    has = det.has_candidate
    t0 = time.perf_counter()
    for line in lines:
        has(line)
    t = time.perf_counter() - t0
    print(f"  has_candidate                   : {len(lines) / t:>10,.0f} lines/s  {size / t / 1e6:6.1f} MB/s")
    print(f"  findings: {found} ({found / len(lines):.2f}/line)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
