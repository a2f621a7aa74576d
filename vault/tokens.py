"""Batch tokenize and detokenize: one transaction and a fixed number of statements per batch, whatever its size.

These run on SQLAlchemy Core against plain tuples and dicts: the ORM's per-object bookkeeping would cost more than
the cryptography itself on this path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update

from vault import consents, rawsql
from vault.crypto import unseal
from vault.datakeys import SHARED_KEY_ID, DataKeys
from vault.errors import BadInput, NotFound
from vault.identity import mask
from vault.keys import KeyRing
from vault.models import people_table as people
from vault.models import tokens_table as tokens
from vault.tokenplan import (  # noqa: F401  (TokenRequest and its limits are imported from here too)
    BY_LOOKUP_SQL,
    INSERT_COLUMNS,
    KIND_PATTERN,
    MAX_VALUE_CHARS,
    REVEALS,
    ROUTE_PATTERN,
    Existing,
    TokenRequest,
    aad,
    lookups_of,
    plan,
    split_found,
)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token: str
    kind: str
    format: str
    created: int
    expires: int | None
    subject: str | None
    route: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "kind": self.kind,
            "format": self.format,
            "created": self.created,
            "expires": self.expires,
            "subject": self.subject,
            "route": self.route,
        }


def tokenize(
    conn: Connection,
    keyring: KeyRing,
    keys: DataKeys,
    reqs: Sequence[TokenRequest],
    now: int,
    subjects: Sequence[str | None] | None = None,
    owner_keys: dict[str, str] | None = None,
    expiries: list[int | None] | None = None,
    owners_out: list[str | None] | None = None,
) -> list[str]:
    """Tokens for `reqs`, in order. `subjects`, when given, names each request's owner in place of its own field
    (the sidecar resolves people in the same transaction); `owner_keys` gives their data key ids when known.
    `expiries` and `owners_out`, when given, get each token's expiry and owner (a deterministic token found again
    keeps its own; the sidecar's cache of deterministic tokens needs both)."""
    owner_of = list(subjects) if subjects is not None else [r.subject for r in reqs]
    wanted_owners = {o for o in owner_of if o}
    if owner_keys is not None and wanted_owners <= owner_keys.keys():
        owners = {o: owner_keys[o] for o in wanted_owners}
    else:
        owners = _owner_keys(conn, wanted_owners)
    aeads = keys.get_many(conn, set(owners.values()) | {SHARED_KEY_ID})

    lookups = lookups_of(keyring, reqs)
    existing: Existing = {}
    expired: list[str] = []
    wanted = [lk for lk in lookups if lk is not None]
    if wanted:
        unique_lookups = list(set(wanted))
        sql = BY_LOOKUP_SQL.format(marks=rawsql.marks(conn, len(unique_lookups)))
        split_found(rawsql.fetchall(conn, sql, unique_lookups), now, existing, expired)
    made = plan(reqs, lookups, owner_of, owners, aeads, existing, now, expiries, owners_out)

    if expired:
        conn.execute(delete(tokens).where(tokens.c.token.in_(expired)))
    if made.adopted:
        conn.execute(
            update(tokens).where(tokens.c.token == bindparam("t")),
            made.adopted,
        )
    if made.new_rows:
        rawsql.executemany(conn, _insert_sql(conn), made.new_rows)
    return made.tokens


def _insert_sql(conn: Connection) -> str:
    # The driver's own executemany over tuples: SQLAlchemy's per-row parameter processing cost more than the
    # insert itself on this path (measured in bench/vault_bench.py).
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return (f"INSERT INTO {tokens.name} ({', '.join(INSERT_COLUMNS)}) "
            f"VALUES ({', '.join([mark] * len(INSERT_COLUMNS))})")


def _owner_keys(conn: Connection, subjects: set[str] | set[str | None]) -> dict[str, str]:
    """person uuid -> data key id, for every subject of the batch; an unknown subject fails the whole batch."""
    wanted = {s for s in subjects if s}
    if not wanted:
        return {}
    rows = conn.execute(_OWNER_KEYS, {"ids": list(wanted)}).all()
    found = {row.id: row.data_key_id for row in rows}
    if len(found) != len(wanted):
        raise NotFound("unknown subject: no person has that token")
    return found


# Statements built once: their compiled forms come from SQLAlchemy's cache on every batch, not rebuilt per call.
_OWNER_KEYS = select(people.c.id, people.c.data_key_id).where(people.c.id.in_(bindparam("ids", expanding=True)))


def detokenize(
    conn: Connection,
    keys: DataKeys,
    token_list: Sequence[str],
    reveal: str | Sequence[str],
    now: int,
    purpose: str | None = None,
    kinds: frozenset[str] | None = None,
    seen: list[tuple[str | None, str, str, bool]] | None = None,
    seen_modes: list[str] | None = None,
) -> tuple[list[str | None], list[str | None]]:
    """Values in the order asked, and why each missing one is missing: "unknown" (never made, expired, deleted or
    forgotten), "consent" (a purpose was named and the token's owner has not consented to it now; a token that
    belongs to no one has no one to consent, so it is never revealed under a purpose) or "scope" (the caller may
    reveal only `kinds`, and this token is of another kind).

    `reveal` is "plain" or "masked" for every token, or one of them per token (the sidecar asks for a message's
    plain and masked fields in one call). `seen_modes`, beside `seen`, gets each row's mode: "plain" if any
    position asked for that token plain (the more revealing of the two), else "masked"."""
    modes = [reveal] * len(token_list) if isinstance(reveal, str) else list(reveal)
    if len(modes) != len(token_list) or any(m not in REVEALS for m in modes):
        raise BadInput("reveal must be plain or masked")
    unique = list(dict.fromkeys(token_list))
    if not unique:
        return [], []
    # The driver's cursor (vault/rawsql.py), without SQLAlchemy's per-statement work: the sidecar's hottest read.
    rows = rawsql.fetchall(conn, _DETOKENIZE_SQL.format(marks=rawsql.marks(conn, len(unique))), unique)
    aeads = keys.get_many(conn, {row[3] for row in rows})
    allowed = consents.holders(conn, (row[5] for row in rows), purpose, now) if purpose is not None else None
    plain_wanted = {t for t, m in zip(token_list, modes, strict=True) if m == "plain"}
    plains: dict[str, tuple[str, str]] = {}  # token -> (value, kind)
    refused: set[str] = set()
    out_of_scope: set[str] = set()
    for token, kind, sealed, key_id, expires_at, owner_id in rows:
        if expires_at is not None and expires_at <= now:
            continue
        aead = aeads.get(key_id)
        if aead is None:
            continue  # the owner's key was destroyed: this value is gone
        if kinds is not None and kind not in kinds:
            out_of_scope.add(token)
            continue
        mode = "plain" if token in plain_wanted else "masked"
        if allowed is not None and owner_id not in allowed:
            refused.add(token)
            if seen is not None:
                seen.append((owner_id, key_id, kind, False))
                if seen_modes is not None:
                    seen_modes.append(mode)
            continue
        if seen is not None:
            seen.append((owner_id, key_id, kind, True))
            if seen_modes is not None:
                seen_modes.append(mode)
        plains[token] = (unseal(aead, bytes(sealed), aad(token, kind)).decode(), kind)
    out: list[str | None] = []
    for token, mode in zip(token_list, modes, strict=True):
        found = plains.get(token)
        out.append(None if found is None else mask(found[1], found[0]) if mode == "masked" else found[0])
    reasons = [None if v is not None else "consent" if t in refused else "scope" if t in out_of_scope else "unknown"
               for t, v in zip(token_list, out, strict=True)]
    return out, reasons


_DETOKENIZE_SQL = (f"SELECT token, kind, value, data_key_id, expires_at, owner_id FROM {tokens.name} "
                   "WHERE token IN ({marks})")


def owner_of(conn: Connection, token: str) -> str | None:
    row = conn.execute(select(tokens.c.owner_id).where(tokens.c.token == token)).first()
    return None if row is None else row.owner_id


def token_info(conn: Connection, token: str, now: int) -> TokenInfo:
    row = conn.execute(
        select(
            tokens.c.token, tokens.c.kind, tokens.c.format, tokens.c.created_at, tokens.c.expires_at,
            tokens.c.owner_id, tokens.c.route,
        ).where(tokens.c.token == token)
    ).first()
    if row is None or (row.expires_at is not None and row.expires_at <= now):
        raise NotFound("token not found")
    return TokenInfo(row.token, row.kind, row.format, row.created_at, row.expires_at, row.owner_id, row.route)


def delete_token(conn: Connection, token: str) -> tuple[str | None, str, str]:
    """Delete one token; its (owner, data key, kind), for the audit row."""
    row = conn.execute(select(tokens.c.owner_id, tokens.c.data_key_id, tokens.c.kind)
                       .where(tokens.c.token == token)).first()
    if row is None or conn.execute(delete(tokens).where(tokens.c.token == token)).rowcount == 0:
        raise NotFound("token not found")
    return row.owner_id, row.data_key_id, row.kind


def purge_expired(conn: Connection, now: int) -> int:
    return conn.execute(delete(tokens).where(tokens.c.expires_at <= now)).rowcount
