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

from sqlalchemy import Connection, insert, select, text

from vault.crypto import seal
from vault.datakeys import SHARED_KEY_ID, DataKeys
from vault.keys import KeyRing
from vault.models import audit_table as audit

GENESIS = b"\x00" * 32
_PG_LOCK_ID = 0x7B0C  # the chain's advisory lock, shared by every replica
ACTIONS = (
    "create", "read", "change", "forget", "tokenize", "reveal", "token-delete", "consent-give", "consent-withdraw",
    "login", "request-create", "request-approve", "request-cancel", "app-create", "app-read", "app-change",
    "app-delete", "session-create", "session-read", "session-delete", "share", "shared-read", "export",
    "retention", "lbasis", "pactivity", "backup", "restore", "xtoken",
    "consent-read", "consent-revoke",
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
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
    last = conn.execute(select(audit.c.row_hash).order_by(audit.c.seq.desc()).limit(1)).scalar()
    return GENESIS if last is None else bytes(last)


def record_many(conn: Connection, keyring: KeyRing, keys: DataKeys, events: Sequence[Event], now: int) -> list[str]:
    """Append `events` to the chain in this transaction; their atokens, in order."""
    if not events:
        return []
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
    conn.execute(insert(audit), rows)
    return [row["atoken"] for row in rows]


def record(conn: Connection, keyring: KeyRing, keys: DataKeys, event: Event, now: int) -> str:
    return record_many(conn, keyring, keys, [event], now)[0]
