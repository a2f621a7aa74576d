"""The floor of the sidecar bench's cases (c) and (e): a mitmproxy addon doing only the work that cannot be avoided.

Loaded by bench/proxy_bench.py into `tokenbunker proxy` with no routes (`-s bench/floor_addon.py`), so that it runs
on exactly the lean master of case (f). It is not the product and has none of its checks: no rules, no routes, no
errors handled, no thread hand-off (its transaction runs on the event loop), no cache. What it does keep, for each
flow, is what the product's guarantees need, on bare `sqlite3` and the vault's own schema (WAL, synchronous=NORMAL):

* `floor_mode=tokenize` (c): parse the JSON body; the subject's keyed hash looked up in tb_people; a new data key
  (AES-GCM key wrapped under a key-encryption key) and a new person row; 3 random tokens, each value sealed with
  AES-GCM under the person's key; one audit row chained to the last (keyed hash); one committed transaction; the
  body written back with the tokens.
* `floor_mode=reveal` (e): parse the upstream's JSON answer; one SELECT of its 3 tokens; the data key unwrapped
  (cached, as the vault caches data keys); 3 AES-GCM opens, the phone masked; one audit row chained to the last; one
  committed transaction; the answer written back with the values.
* `floor_mode=rewrite`: tokenize's JSON rewrite alone (random tokens, no database, no crypto).

With `floor_stats=FILE` it writes, when the proxy stops, how long its transactions took (p50 and mean, from BEGIN
to the end of COMMIT, and the COMMIT alone), as measured inside the proxy.

If this floor misses a target, no implementation of the product on this runtime and machine meets it with a
committed transaction per flow.
"""

from __future__ import annotations

import hmac
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from mitmproxy import http

SCHEMA = Path(__file__).resolve().parent.parent / "vault" / "migrations" / "sqlite_head.sql"
_AUDIT_SQL = ("INSERT INTO tb_audit (atoken, at, actor, action, person_id, route, status, data_key_id, detail, "
              "prev_hash, row_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)")


class Floor:
    def __init__(self) -> None:
        self.db: sqlite3.Connection | None = None
        self.kek = AESGCM(os.urandom(32))
        self.index_key = os.urandom(32)
        self.audit_key = os.urandom(32)
        self.keys: dict[str, AESGCM] = {}
        self.timings: list[tuple[float, float]] = []  # per flow: the transaction up to COMMIT, and the COMMIT

    def load(self, loader: Any) -> None:
        loader.add_option("floor_mode", str, "", "tokenize, reveal, or rewrite (the JSON rewrite of tokenize only)")
        loader.add_option("floor_db", str, "", "the SQLite file")
        loader.add_option("floor_seed", str, "", "reveal: a JSON file of {token: value} to store first")
        loader.add_option("floor_stats", str, "", "at the end, write the transactions' timings here (JSON)")

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx

        if "floor_db" not in updated or not ctx.options.floor_db:
            return
        self.db = sqlite3.connect(ctx.options.floor_db, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'tb_people'").fetchall():
            self.db.executescript(SCHEMA.read_text())
        if ctx.options.floor_seed:
            seed = json.loads(Path(ctx.options.floor_seed).read_text())
            self.db.execute("BEGIN IMMEDIATE")
            # Stored again under this instance's keys (mitmproxy reloads a script that changes on disk).
            self.db.executemany("DELETE FROM tb_tokens WHERE token = ?", [(t,) for t in seed])
            person, key_id, key = self._new_person(f"seed@{uuid.uuid4()}", int(time.time()))
            self.db.executemany("INSERT INTO tb_tokens (token, kind, format, value, owner_id, data_key_id, created_at) "
                                "VALUES (?,?,?,?,?,?,?)",
                                [(t, kind, "opaque", self._seal(key, v, t), person, key_id, 0)
                                 for t, (kind, v) in seed.items()])
            self.db.execute("COMMIT")

    def _seal(self, key: AESGCM, value: str, aad: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + key.encrypt(nonce, value.encode(), aad.encode())

    def _new_person(self, email: str, now: int) -> tuple[str, str, AESGCM]:
        assert self.db is not None
        lookup = hmac.digest(self.index_key, email.encode(), "sha256")
        self.db.execute("SELECT id, data_key_id FROM tb_people WHERE email_idx = ?", (lookup,)).fetchall()
        raw = AESGCM.generate_key(256)
        key_id, person = str(uuid.uuid4()), str(uuid.uuid4())
        nonce = os.urandom(12)
        self.db.execute("INSERT INTO tb_data_keys VALUES (?,?,?)", (key_id, nonce + self.kek.encrypt(nonce, raw, None),
                                                                    now))
        key = self.keys[key_id] = AESGCM(raw)
        self.db.execute("INSERT INTO tb_people VALUES (?,?,?,?,?,?,?,?,?)",
                        (person, key_id, self._seal(key, json.dumps({"email": email}), person), None, lookup, None,
                         None, now, now))
        return person, key_id, key

    def _audit(self, now: int, action: str, person: str, key_id: str, key: AESGCM, detail: dict[str, Any]) -> None:
        assert self.db is not None
        last = self.db.execute("SELECT row_hash FROM tb_audit ORDER BY seq DESC LIMIT 1").fetchall()
        prev = last[0][0] if last else b"\0" * 32
        atoken = str(uuid.uuid4())
        sealed = self._seal(key, json.dumps(detail), atoken)
        row = [atoken, now, "proxy", action, person, "bench", "ok", key_id, sealed.hex()]
        row_hash = hmac.digest(self.audit_key, prev + json.dumps(row).encode(), "sha256")
        self.db.execute(_AUDIT_SQL, (atoken, now, "proxy", action, person, "bench", "ok", key_id, sealed, prev,
                                     row_hash))

    def request(self, flow: http.HTTPFlow) -> None:
        from mitmproxy import ctx

        if ctx.options.floor_mode == "rewrite":  # no vault at all: the JSON rewrite alone
            doc = json.loads(flow.request.get_content() or b"{}")
            for field in ("email", "phone", "name"):
                doc[field] = os.urandom(12).hex() + ("@token.invalid" if field == "email" else "")
            flow.request.set_content(json.dumps(doc, separators=(",", ":")).encode())
            return
        if ctx.options.floor_mode != "tokenize" or self.db is None:
            return
        doc = json.loads(flow.request.get_content() or b"{}")
        now = int(time.time())
        started = time.perf_counter()
        self.db.execute("BEGIN IMMEDIATE")
        person, key_id, key = self._new_person(doc["email"], now)
        rows = []
        for field, kind in (("email", "email"), ("phone", "phone"), ("name", "name")):
            token = os.urandom(12).hex() + ("@token.invalid" if kind == "email" else "")
            rows.append((token, kind, "opaque", self._seal(key, doc[field], token), person, key_id, now, "bench"))
            doc[field] = token
        self.db.executemany("INSERT INTO tb_tokens (token, kind, format, value, owner_id, data_key_id, created_at, "
                            "route) VALUES (?,?,?,?,?,?,?,?)", rows)
        self._audit(now, "tokenize", person, key_id, key, {"kinds": ["email", "name", "phone"], "count": 3})
        self._commit(started)
        flow.request.set_content(json.dumps(doc, separators=(",", ":")).encode())

    def response(self, flow: http.HTTPFlow) -> None:
        from mitmproxy import ctx

        if ctx.options.floor_mode != "reveal" or self.db is None or flow.response is None:
            return
        doc = json.loads(flow.response.get_content() or b"{}")
        fields = ("email", "phone", "name")
        now = int(time.time())
        started = time.perf_counter()
        self.db.execute("BEGIN IMMEDIATE")
        found = {t: (v, o, k) for t, v, o, k in self.db.execute(
            "SELECT token, value, owner_id, data_key_id FROM tb_tokens WHERE token IN (?,?,?)",
            [doc[f] for f in fields]).fetchall()}
        person = key_id = ""
        key: AESGCM | None = None
        for f in fields:
            sealed, person, key_id = found[doc[f]]
            key = self.keys.get(key_id)
            if key is None:
                wrapped = self.db.execute("SELECT wrapped FROM tb_data_keys WHERE id = ?", (key_id,)).fetchone()[0]
                key = self.keys[key_id] = AESGCM(self.kek.decrypt(wrapped[:12], wrapped[12:], None))
            value = key.decrypt(sealed[:12], sealed[12:], doc[f].encode()).decode()
            doc[f] = value if f != "phone" else "*" * (len(value) - 4) + value[-4:]
        assert key is not None
        self._audit(now, "reveal", person, key_id, key, {"kinds": ["email", "name", "phone"], "count": 3})
        self._commit(started)
        flow.response.set_content(json.dumps(doc, separators=(",", ":")).encode())

    def _commit(self, started: float) -> None:
        assert self.db is not None
        before = time.perf_counter()
        self.db.execute("COMMIT")
        self.timings.append((before - started, time.perf_counter() - before))

    def done(self) -> None:
        from mitmproxy import ctx

        if self.db is not None:
            self.db.close()
        if ctx.options.floor_stats and self.timings:
            def p50(xs: list[float]) -> float:
                return sorted(xs)[len(xs) // 2] * 1e6

            whole = [a + b for a, b in self.timings]
            Path(ctx.options.floor_stats).write_text(json.dumps({
                "flows": len(self.timings), "txn_p50_us": p50(whole), "txn_mean_us": sum(whole) / len(whole) * 1e6,
                "before_commit_p50_us": p50([a for a, _ in self.timings]),
                "commit_p50_us": p50([b for _, b in self.timings])}))


addons = [Floor()]
