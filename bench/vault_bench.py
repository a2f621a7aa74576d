"""Tokenize / detokenize throughput of the vault against a raw ceiling measured in the same run.

Run from the repository root: `make bench` (= `.venv/bin/python bench/vault_bench.py`), `--quick` for a ~15 s run,
`--batches N` to change the number of timed batches of 1,000, `--db URL` to also run the in-process cases on
PostgreSQL. See bench/README.md for what each case means. This is a measurement, not a test: it always exits 0.

The ceiling is what a hand-written loop costs for the same outcome, with no vault code in it but token generation:
`vault.formats.make_token("opaque", v)` + keyed hash (hmac sha256) + AES-GCM seal with a fresh 12-byte nonce (and
the same associated data as ours) + a bare `sqlite3` executemany of the rows into a table shaped like ours (same
columns, primary key, unique lookup, indexes on owner_id and expires_at; same PRAGMAs), one transaction per batch.
Detokenize's ceiling is one `SELECT ... WHERE token IN (?, ...)` per batch and an AES-GCM open of each row.
"""

from __future__ import annotations

import argparse
import gc
import hmac
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from vault.core import Vault  # noqa: E402
from vault.formats import make_token  # noqa: E402
from vault.tokens import TokenRequest  # noqa: E402

BATCH = 1000
KIND = "email"
TARGET_RATIO = 0.50
TARGET_HTTP_MS = 50.0

# A table shaped like tb_tokens (vault/migrations/versions/0001_initial.py), without the foreign keys.
CEILING_SCHEMA = """
CREATE TABLE tokens (
    token VARCHAR(255) NOT NULL PRIMARY KEY,
    kind VARCHAR(32) NOT NULL,
    format VARCHAR(16) NOT NULL,
    value BLOB NOT NULL,
    lookup BLOB UNIQUE,
    owner_id VARCHAR(36),
    data_key_id VARCHAR(36) NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    route VARCHAR(128)
);
CREATE INDEX ix_tokens_expires_at ON tokens (expires_at);
CREATE INDEX ix_tokens_owner_id ON tokens (owner_id);
"""
CEILING_INSERT = (
    "INSERT INTO tokens (token, kind, format, value, lookup, owner_id, data_key_id, created_at, expires_at, route)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class BenchError(RuntimeError):
    """A case gave a wrong answer: its part of the run stops, the rest is still measured and reported."""


# -- values -------------------------------------------------------------------------------------------------------


class Values:
    """Realistic, never-repeating email addresses: user{i}@example{i%50}.com."""

    def __init__(self) -> None:
        self._next = 0

    def take(self, n: int) -> list[str]:
        start, self._next = self._next, self._next + n
        return [f"user{i}@example{i % 50}.com" for i in range(start, start + n)]


# -- results ------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    per_call: int  # items per call
    ceiling: str | None = None  # name of the case this one is compared with
    durations: list[float] = field(default_factory=list)  # seconds per call

    @property
    def ops_per_s(self) -> float:
        total = sum(self.durations)
        return self.per_call * len(self.durations) / total if total else 0.0

    def ms(self, q: float) -> float:
        data = sorted(self.durations)
        if not data:
            return 0.0
        if len(data) == 1:
            return data[0] * 1000
        return statistics.quantiles(data, n=100, method="inclusive")[round(q * 100) - 1] * 1000 if q < 1 else data[-1]


class Results:
    def __init__(self) -> None:
        self.cases: dict[str, Case] = {}

    def case(self, name: str, per_call: int, ceiling: str | None = None) -> Case:
        self.cases[name] = Case(name, per_call, ceiling)
        return self.cases[name]

    def ratio(self, case: Case) -> float | None:
        if case.ceiling is None or case.ceiling not in self.cases:
            return None
        base = self.cases[case.ceiling].ops_per_s
        return case.ops_per_s / base if base else None


def timed[**P, R](case: Case, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """fn(*args, **kwargs), its wall time (perf_counter) added to the case."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    case.durations.append(time.perf_counter() - t0)
    return out


# -- the ceiling: bare sqlite3 + AES-GCM + hmac ---------------------------------------------------------------------


class Ceiling:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(CEILING_SCHEMA)
        self.aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self.lookup_key = secrets.token_bytes(32)
        self.scope = f"tok|{KIND}|opaque".encode() + b"\x00"

    def tokenize(self, values: Sequence[str], deterministic: bool = False) -> list[str]:
        """Random tokens store no lookup (NULL), as ours do. Deterministic ones first look their keyed hashes up
        (one SELECT ... WHERE lookup IN (...)), as ours must, and store the hash under the unique index."""
        aead, key, scope, now = self.aead, self.lookup_key, self.scope, int(time.time())
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            lookups = [hmac.digest(key, scope + v.encode(), sha256) for v in values]
            found: dict[bytes, str] = {}
            if deterministic:
                marks = ",".join("?" * len(lookups))
                found = dict(db.execute(f"SELECT lookup, token FROM tokens WHERE lookup IN ({marks})", lookups))
            rows = []
            out = []
            for v, lookup in zip(values, lookups, strict=True):
                token = found.get(lookup)
                if token is None:
                    token = make_token("opaque", v)
                    nonce = os.urandom(12)
                    sealed = b"\x01" + nonce + aead.encrypt(nonce, v.encode(), f"tok|{token}|{KIND}".encode())
                    rows.append((token, KIND, "opaque", sealed, lookup if deterministic else None, None, "shared",
                                 now, None, None))
                out.append(token)
            db.executemany(CEILING_INSERT, rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return out

    def detokenize(self, token_list: Sequence[str]) -> list[str | None]:
        aead = self.aead
        marks = ",".join("?" * len(token_list))
        db = self.db
        db.execute("BEGIN")
        try:
            rows = db.execute(f"SELECT token, kind, value FROM tokens WHERE token IN ({marks})", token_list).fetchall()
        finally:
            db.execute("COMMIT")
        values = {
            token: aead.decrypt(sealed[1:13], sealed[13:], f"tok|{token}|{kind}".encode()).decode()
            for token, kind, sealed in rows
        }
        return [values.get(t) for t in token_list]

    def close(self) -> None:
        self.db.close()


# -- the runs -------------------------------------------------------------------------------------------------------


def reqs_for(values: Sequence[str], deterministic: bool = False) -> list[TokenRequest]:
    return [TokenRequest(value=v, kind=KIND, format="opaque", deterministic=deterministic) for v in values]


def tokenize(vault: Vault, values: Sequence[str], deterministic: bool = False) -> list[str]:
    """What a library caller does: build the requests (validated), then one call."""
    return vault.tokenize(reqs_for(values, deterministic))


def check(got: Sequence[str | None], want: Sequence[str], what: str) -> None:
    if list(got) != list(want):
        bad = sum(1 for g, w in zip(got, want, strict=False) if g != w) + abs(len(got) - len(want))
        raise BenchError(f"{what} returned {bad} wrong values out of {len(want)}")


class Phase:
    """Timed calls of one run; the first `warmup` rounds go to a scratch case that is never reported."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.scratch = Case("warm-up", 1)

    def pick(self, case: Case, round_no: int) -> Case:
        return self.scratch if round_no < self.warmup else case


def run_batched(res: Results, label: str, vault: Vault, ceiling: Ceiling | None, batches: int, warmup: int) -> None:
    """Batched tokenize (random, then deterministic) and detokenize, one phase each. Within a phase a ceiling batch
    follows each of the vault's, so the machine's noise falls on both alike, and each database file sees one kind of
    write per phase, so WAL checkpoints land on the case that caused them."""
    vals = Values()
    vault._bench_values = vals  # type: ignore[attr-defined]
    c_vals = Values()
    c_tok = res.case("ceiling tokenize batched", BATCH) if ceiling else None
    c_det = res.case("ceiling tokenize batched deterministic", BATCH) if ceiling else None
    c_detok = res.case("ceiling detokenize batched", BATCH) if ceiling else None
    tok = res.case(f"{label} tokenize batched", BATCH, "ceiling tokenize batched")
    det = res.case(f"{label} tokenize batched deterministic", BATCH, "ceiling tokenize batched deterministic")
    det_again = res.case(f"{label} tokenize batched deterministic, seen values", BATCH)
    detok = res.case(f"{label} detokenize batched", BATCH, "ceiling detokenize batched")
    ph = Phase(warmup)

    # Phase 1: random tokens.
    ours: list[tuple[list[str], list[str]]] = []
    theirs: list[tuple[list[str], list[str]]] = []
    for i in range(warmup + batches):
        v = vals.take(BATCH)
        ours.append((v, timed(ph.pick(tok, i), tokenize, vault, v)))
        if ceiling and c_tok:
            cv = c_vals.take(BATCH)
            theirs.append((cv, timed(ph.pick(c_tok, i), ceiling.tokenize, cv)))
    # Phase 2: deterministic tokens: new values, then the same values again (found through their lookup hash).
    for i in range(warmup + batches):
        v = vals.take(BATCH)
        first = timed(ph.pick(det, i), tokenize, vault, v, True)
        if timed(ph.pick(det_again, i), tokenize, vault, v, True) != first:
            raise BenchError("a deterministic value got a second token")
        if ceiling and c_det:
            timed(ph.pick(c_det, i), ceiling.tokenize, c_vals.take(BATCH), True)
    # Phase 3: reveal what phase 1 tokenized, batch by batch.
    for i, (v, toks) in enumerate(ours):
        check(timed(ph.pick(detok, i), vault.detokenize, toks), v, f"{label} detokenize")
        if ceiling and c_detok:
            cv, ctoks = theirs[i]
            check(timed(ph.pick(c_detok, i), ceiling.detokenize, ctoks), cv, "ceiling detokenize")


def run_single(res: Results, label: str, vault: Vault, ceiling: Ceiling | None, calls: int, warmup: int) -> None:
    """One value per call (one transaction each), vault and ceiling alternating; then reveal each, one per call."""
    vals: Values = vault._bench_values  # type: ignore[attr-defined]
    c_vals = Values()
    c_vals.take(10_000_000)  # keep clear of the batched ceiling's values
    c_tok = res.case("ceiling tokenize single", 1) if ceiling else None
    c_detok = res.case("ceiling detokenize single", 1) if ceiling else None
    tok = res.case(f"{label} tokenize single", 1, "ceiling tokenize single")
    detok = res.case(f"{label} detokenize single", 1, "ceiling detokenize single")
    ph = Phase(warmup)
    ours: list[tuple[list[str], list[str]]] = []
    theirs: list[tuple[list[str], list[str]]] = []
    for i in range(warmup + calls):
        v = vals.take(1)
        ours.append((v, timed(ph.pick(tok, i), tokenize, vault, v)))
        if ceiling and c_tok:
            cv = c_vals.take(1)
            theirs.append((cv, timed(ph.pick(c_tok, i), ceiling.tokenize, cv)))
    for i, (v, t) in enumerate(ours):
        check(timed(ph.pick(detok, i), vault.detokenize, t), v, f"{label} detokenize")
        if ceiling and c_detok:
            cv, ct = theirs[i]
            check(timed(ph.pick(c_detok, i), ceiling.detokenize, ct), cv, "ceiling detokenize")


def run_http(res: Results, vault: Vault, batches: int, calls: int, warmup: int) -> None:
    """The real WSGI stack (Flask app on waitress, 4 threads) in a thread of this process; a keep-alive client."""
    import requests
    import waitress

    from vault.api import create_app

    root = secrets.token_urlsafe(32)
    app = create_app(vault, root_token_hash=vault.keyring.api_token_hash(root))
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, name="bench-waitress", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.effective_port}/v1"
    session = requests.Session()
    session.headers["X-Bunker-Token"] = root
    vals: Values = vault._bench_values  # type: ignore[attr-defined]

    def post(path: str, body: dict[str, Any], key: str) -> list[Any]:
        """One POST: the client's JSON encoding and decoding are in the timing, as a caller would see them."""
        r = session.post(f"{base}/{path}", json=body, timeout=30)
        if r.status_code != 200:
            raise BenchError(f"POST /v1/{path} answered {r.status_code}: {r.text[:200]}")
        out: list[Any] = r.json()[key]
        return out

    def items(v: Sequence[str]) -> dict[str, Any]:
        return {"items": [{"value": x, "kind": KIND, "format": "opaque"} for x in v]}

    try:
        tok = res.case("HTTP tokenize batched", BATCH, "ceiling tokenize batched")
        detok = res.case("HTTP detokenize batched", BATCH, "ceiling detokenize batched")
        s_tok = res.case("HTTP tokenize single", 1, "ceiling tokenize single")
        s_detok = res.case("HTTP detokenize single", 1, "ceiling detokenize single")
        for size, case, detok_case, n, w in ((BATCH, tok, detok, batches, warmup),
                                             (1, s_tok, s_detok, calls, warmup * 10)):
            ph = Phase(w)
            done: list[tuple[list[str], list[str]]] = []
            for i in range(w + n):
                v = vals.take(size)
                done.append((v, timed(ph.pick(case, i), post, "tokenize", items(v), "tokens")))
            for i, (v, toks) in enumerate(done):
                check(timed(ph.pick(detok_case, i), post, "detokenize", {"tokens": toks}, "values"), v,
                      "HTTP detokenize")
    finally:
        session.close()
        # Let the worker threads finish (a worker pulls the server's trigger after its last response), then close.
        server.task_dispatcher.shutdown(timeout=5)
        server.close()
        thread.join(timeout=5)


# -- PostgreSQL -----------------------------------------------------------------------------------------------------


class PgSchema:
    """A fresh schema of its own (search_path through the URL's options), dropped afterwards."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self.schema = f"tb_bench_{os.getpid()}_{secrets.token_hex(3)}"
        admin = parsed.set(drivername="postgresql", query={k: v for k, v in parsed.query.items() if k != "options"})
        self.admin_url = admin.render_as_string(hide_password=False)
        self.url = parsed.set(drivername="postgresql+psycopg").update_query_dict(
            {"options": f"-csearch_path={self.schema}"}
        ).render_as_string(hide_password=False)
        self.safe = make_url(self.url).render_as_string(hide_password=True)

    def __enter__(self) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        return self.url

    def __exit__(self, *exc: object) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


# -- report ---------------------------------------------------------------------------------------------------------


def report(res: Results, pg_label: str | None) -> None:
    width = max(len(c.name) for c in res.cases.values()) + 2
    print()
    print(f"{'case':<{width}}{'ops/s':>10}  {'ratio-to-ceiling':>16}  {'ms/call p50':>11}  {'p95':>8}  calls")
    for c in res.cases.values():
        if not c.durations:
            continue
        r = res.ratio(c)
        ratio = f"{r:.2f}" if r is not None else "-"
        print(f"{c.name:<{width}}{c.ops_per_s:>10,.0f}  {ratio:>16}  {c.ms(0.5):>11.2f}  {c.ms(0.95):>8.2f}  "
              f"{len(c.durations)} x {c.per_call}")
    if pg_label:
        print(f"(pg = {pg_label}; its ratios are against the SQLite ceiling)")
    print()
    for op in ("tokenize", "detokenize"):
        ours = res.cases.get(f"sqlite {op} batched")
        if ours and ours.durations:
            r = res.ratio(ours) or 0.0
            verdict = "PASS" if r >= TARGET_RATIO else "FAIL"
            print(f"{op} batched in-process: {ours.ops_per_s:,.0f} ops/s = {r:.3f} x ceiling "
                  f"(target >= {TARGET_RATIO:.2f}): {verdict}")
    t, d = res.cases.get("HTTP tokenize batched"), res.cases.get("HTTP detokenize batched")
    if t and d and t.durations and d.durations:
        ok = max(t.ms(0.5), d.ms(0.5)) <= TARGET_HTTP_MS
        print(f"HTTP batch of {BATCH}: tokenize p50 {t.ms(0.5):.1f} ms p95 {t.ms(0.95):.1f} ms, detokenize p50 "
              f"{d.ms(0.5):.1f} ms p95 {d.ms(0.95):.1f} ms (target <= {TARGET_HTTP_MS:.0f} ms): "
              f"{'PASS' if ok else 'FAIL'}")


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (~15 s): fewer batches and calls")
    parser.add_argument("--batches", type=int, default=None, help="timed batches of 1,000 per batched case "
                        "(default 50, 10 with --quick)")
    parser.add_argument("--db", metavar="URL", help="also run the in-process cases on this PostgreSQL URL "
                        "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test; a fresh schema, dropped after)")
    args = parser.parse_args(argv)
    batches = args.batches or (10 if args.quick else 50)
    singles = 300 if args.quick else 2000
    http_singles = 100 if args.quick else 500
    warmup = 2 if args.quick else 3
    started = time.perf_counter()
    print(f"tokenbunker vault bench: {batches} batches of {BATCH} (+{warmup} warm-up), {singles} single calls, "
          f"{http_singles} single HTTP calls; python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} cpus, load average {_load()}")

    res = Results()
    pg_label = None
    failed: list[str] = []

    def part(name: str, fn: Callable[[], None]) -> None:
        """Run one part; a failure is reported and the other parts still run (this is a measurement)."""
        try:
            fn()
        except Exception as exc:
            failed.append(name)
            print(f"bench: {name} part failed: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="tb-bench-") as tmp:

        def in_process() -> None:
            vault = Vault.open(f"sqlite:///{tmp}/bench.db", secrets.token_bytes(32))
            ceiling = Ceiling(Path(tmp) / "ceiling.db")
            try:
                run_batched(res, "sqlite", vault, ceiling, batches, warmup)
                run_single(res, "sqlite", vault, ceiling, singles, warmup * 10)
            finally:
                ceiling.close()
                vault.close()

        def over_http() -> None:
            # A vault of its own, so HTTP batches land on a table as large as the in-process ones did (insert cost
            # grows with the table: random keys dirty more index pages per batch as the indexes grow).
            vault = Vault.open(f"sqlite:///{tmp}/http.db", secrets.token_bytes(32))
            vault._bench_values = Values()  # type: ignore[attr-defined]
            try:
                run_http(res, vault, batches, http_singles, warmup)
            finally:
                vault.close()

        part("in-process SQLite", in_process)
        part("HTTP", over_http)

    if args.db:

        def on_postgresql() -> None:
            nonlocal pg_label
            schema = PgSchema(args.db)
            with schema as url:
                pg_label = schema.safe
                pg = Vault.open(url, secrets.token_bytes(32))
                try:
                    run_batched(res, "pg", pg, None, batches, warmup)
                    run_single(res, "pg", pg, None, singles, warmup * 10)
                finally:
                    pg.close()

        part("PostgreSQL", on_postgresql)

    report(res, pg_label)
    if failed:
        print(f"(not measured, see the errors above: {', '.join(failed)})")
    print(f"(bench took {time.perf_counter() - started:.0f} s; load average now {_load()}: other work on the machine "
          "slows both sides, the ratios less than the absolute figures)")
    return 0


if __name__ == "__main__":
    gc.collect()
    try:
        main()
    except SystemExit as exc:  # --help, or a usage error argparse has already explained
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    sys.exit(0)
