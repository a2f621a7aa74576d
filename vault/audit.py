"""The audit trail: every operation on personal data, in a tamper-evident chain.

Each row holds who acted (the token's name, never the token), when, what, on whom, and the result; `detail`
(before/after of a change, the kinds revealed) is sealed under the person's data key, so forget-me leaves rows that
prove what was done but hold nothing readable. Rows are chained by a keyed hash: row_hash = H(prev_hash, row), in
`seq` order. Writers take the chain in turn (SQLite: the write lock every vault write holds; PostgreSQL: an
advisory lock held to commit), so the chain is linear with any number of replicas. Record at the end of a write
transaction: the lock is then held for the shortest time.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from vault import rawsql
from vault.crypto import seal, unseal
from vault.datakeys import SHARED_KEY_ID, DataKeys
from vault.errors import NotFound, Tampered
from vault.keys import KeyRing
from vault.models import audit_table as audit

GENESIS = b"\x00" * 32
LIBRARY = "library"  # who acted, when a caller of the library does not say
_PG_LOCK_ID = 0x7B0C  # the chain's advisory lock, shared by every replica
ACTIONS = (
    "create", "read", "change", "forget", "tokenize", "reveal", "token-delete", "consent-give", "consent-withdraw",
    "login", "request-create", "request-approve", "request-cancel", "app-create", "app-read", "app-change",
    "app-delete", "session-create", "session-read", "session-delete", "share", "shared-read", "export",
    "retention", "lbasis", "pactivity", "backup", "restore", "xtoken",
    "consent-read", "consent-revoke",
    "audit-read",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One row to record. `data_key_id` is the person's (or None: the shared key seals the detail)."""

    actor: str
    action: str
    person_id: str | None = None
    data_key_id: str | None = None
    status: str = "ok"
    route: str | None = None
    detail: dict[str, Any] | None = None


def _aad(atoken: str) -> bytes:
    return f"audit|{atoken}".encode()


def link(keyring: KeyRing, prev_hash: bytes, row: dict[str, Any]) -> bytes:
    """The keyed hash that chains `row` (as stored) to the row before it."""
    fields = [row["atoken"], row["at"], row["actor"], row["action"], row["person_id"], row["route"], row["status"],
              row["data_key_id"], None if row["detail"] is None else bytes(row["detail"]).hex()]
    return keyring.audit_hash(prev_hash + json.dumps(fields, separators=(",", ":")).encode())


def _lock_chain(conn: Connection) -> bytes:
    if conn.dialect.name == "postgresql":
        rawsql.fetchall(conn, "SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_ID,))
    # The driver's cursor (vault/rawsql.py): this and the insert below run in every sidecar flow's transaction.
    last = rawsql.fetchall(conn, _LAST_HASH_SQL, ())
    return GENESIS if not last else bytes(last[0][0])


_LAST_HASH_SQL = f"SELECT row_hash FROM {audit.name} ORDER BY seq DESC LIMIT 1"
_COLUMNS = ("atoken", "at", "actor", "action", "person_id", "route", "status", "data_key_id", "detail", "prev_hash",
            "row_hash")


def record_many(conn: Connection, keyring: KeyRing, keys: DataKeys, events: Sequence[Event], now: int) -> list[str]:
    """Append `events` to the chain in this transaction; their atokens, in order."""
    if not events:
        return []
    unknown = {e.action for e in events} - set(ACTIONS)
    if unknown:  # a programming error: the trail's vocabulary is ACTIONS, which the portal's sentences follow
        raise ValueError(f"unknown audit action(s) {sorted(unknown)}")
    key_ids = {e.data_key_id or SHARED_KEY_ID for e in events if e.detail is not None}
    aeads = keys.get_many(conn, key_ids) if key_ids else {}
    prev = _lock_chain(conn)
    rows: list[dict[str, Any]] = []
    for event in events:
        atoken = str(uuid.uuid4())
        key_id = event.data_key_id or SHARED_KEY_ID
        sealed = None
        if event.detail is not None and key_id in aeads:
            body = json.dumps(event.detail, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
            sealed = seal(aeads[key_id], body, _aad(atoken))
        row: dict[str, Any] = {
            "atoken": atoken, "at": now, "actor": event.actor[:128], "action": event.action,
            "person_id": event.person_id, "route": event.route, "status": event.status,
            "data_key_id": key_id if sealed is not None else None, "detail": sealed,
        }
        row["prev_hash"] = prev
        row["row_hash"] = prev = link(keyring, prev, row)
        rows.append(row)
    sql = f"INSERT INTO {audit.name} ({', '.join(_COLUMNS)}) VALUES ({rawsql.marks(conn, len(_COLUMNS))})"
    rawsql.executemany(conn, sql, [tuple(row[c] for c in _COLUMNS) for row in rows])
    return [row["atoken"] for row in rows]


def record(conn: Connection, keyring: KeyRing, keys: DataKeys, event: Event, now: int) -> str:
    return record_many(conn, keyring, keys, [event], now)[0]


# -- reads ------------------------------------------------------------------------------------------------------

_PAGE = 1000


def _summary(row: Any) -> dict[str, Any]:
    """A row as lists show it: who, when, what, on whom, the result. Never the detail (it may hold before/after
    values); `GET /v1/audit/get/{atoken}` opens that, one row at a time, and is itself audited."""
    return {"atoken": row.atoken, "seq": row.seq, "when": row.at, "who": row.actor, "action": row.action,
            "mode": "token" if row.person_id else None, "token": row.person_id, "route": row.route,
            "status": row.status, "has_detail": row.detail is not None}


def listing(conn: Connection, person_id: str | None, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """Newest first; everyone's, or one person's (by uuid)."""
    where = [] if person_id is None else [audit.c.person_id == person_id]
    total = conn.execute(select(func.count()).select_from(audit).where(*where)).scalar_one()
    rows = conn.execute(select(audit).where(*where).order_by(audit.c.seq.desc()).offset(offset).limit(limit))
    return total, [_summary(row) for row in rows]


def get(conn: Connection, keys: DataKeys, atoken: str) -> dict[str, Any]:
    """One row with its detail opened: `detail_state` is "open", "none" (nothing was recorded) or "shredded" (the
    key that sealed it was destroyed by forget-me: the row stays, its detail is unreadable for good)."""
    row = conn.execute(select(audit).where(audit.c.atoken == atoken)).first()
    if row is None:
        raise NotFound("no such audit event")
    out = _summary(row)
    out["detail"], out["detail_state"] = None, "none"
    if row.detail is not None:
        aead = keys.get_many(conn, {row.data_key_id}).get(row.data_key_id) if row.data_key_id else None
        if aead is None:
            out["detail_state"] = "shredded"
        else:
            try:
                out["detail"] = json.loads(unseal(aead, bytes(row.detail), _aad(row.atoken)))
                out["detail_state"] = "open"
            except Tampered:
                out["detail_state"] = "tampered"
    return out


# -- verification -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `tokenbunker audit verify` reports: the rows walked, and the first broken link if any."""

    rows: int
    head: bytes
    broken_seq: int | None = None
    broken_atoken: str | None = None
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.intact:
            return f"{self.rows} rows, chain intact (head {self.head.hex()[:16]})"
        return f"chain broken at seq {self.broken_seq} (atoken {self.broken_atoken}): {self.problem}"


def verify(conn: Connection, keyring: KeyRing) -> Verdict:
    """Walk the chain in seq order, recomputing every link, a page at a time. An edit to any column breaks that
    row's own hash; a deleted row breaks the next row's link to its predecessor. (Deleting the newest rows leaves a
    shorter chain that is still whole: compare the head printed here with an earlier run's to see that.)"""
    expected, count, after = GENESIS, 0, None
    while True:
        query = select(audit).order_by(audit.c.seq).limit(_PAGE)
        if after is not None:
            query = query.where(audit.c.seq > after)
        page = conn.execute(query).all()
        if not page:
            return Verdict(count, expected)
        for row in page:
            fields = row._asdict()
            stored_prev, stored_hash = bytes(row.prev_hash), bytes(row.row_hash)
            self_ok = link(keyring, stored_prev, fields) == stored_hash
            if stored_prev != expected or not self_ok:
                return Verdict(count, expected, row.seq, row.atoken, _diagnose(keyring, fields, expected, count,
                                                                              stored_prev, self_ok))
            expected, count, after = stored_hash, count + 1, row.seq


def _diagnose(keyring: KeyRing, fields: dict[str, Any], expected: bytes, count: int, stored_prev: bytes,
              self_ok: bool) -> str:
    if stored_prev == expected:
        return "edited row: its content does not match its hash"
    if self_ok:
        where = "the chain does not start at the first row" if count == 0 else "the row before it in the chain"
        return f"deleted row or missing link: its prev_hash does not match {where} (rows were removed)"
    if link(keyring, expected, fields) == bytes(fields["row_hash"]):
        return "bad prev: its prev_hash column was edited"
    return "edited row and bad prev: neither its content nor its link to the row before match"
