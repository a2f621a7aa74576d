"""Batch tokenize and detokenize: one transaction and a fixed number of statements per batch, whatever its size.

These run on SQLAlchemy Core against plain tuples and dicts: the ORM's per-object bookkeeping would cost more than
the cryptography itself on this path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update

from vault import consents, rawsql
from vault.crypto import seal, unseal
from vault.datakeys import SHARED_KEY_ID, DataKeys
from vault.errors import BadInput, NotFound
from vault.formats import FORMATS, check_value_for_format, make_token
from vault.identity import mask
from vault.keys import KeyRing
from vault.models import people_table as people
from vault.models import tokens_table as tokens

KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ROUTE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
MAX_VALUE_CHARS = 65536
REVEALS = ("plain", "masked")


@dataclass(frozen=True, slots=True)
class TokenRequest:
    value: str
    kind: str = "generic"
    format: str = "opaque"
    deterministic: bool = False
    ttl: int | None = None  # seconds
    subject: str | None = None  # a person's uuid
    route: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or self.value == "":
            raise BadInput("value must be a non-empty string")
        if len(self.value) > MAX_VALUE_CHARS:
            raise BadInput(f"value is longer than {MAX_VALUE_CHARS} characters")
        if not isinstance(self.kind, str) or not KIND_PATTERN.match(self.kind):
            raise BadInput("kind must match ^[a-z][a-z0-9_-]{0,31}$")
        if self.format not in FORMATS:
            raise BadInput(f"unknown token format: use one of {', '.join(FORMATS)}")
        if not isinstance(self.deterministic, bool):
            raise BadInput("deterministic must be true or false")
        if self.ttl is not None and (isinstance(self.ttl, bool) or not isinstance(self.ttl, int) or self.ttl <= 0):
            raise BadInput("ttl must be a positive duration")
        if self.route is not None and (not isinstance(self.route, str) or not ROUTE_PATTERN.match(self.route)):
            raise BadInput("route must be a short name of letters, digits and _.:-")
        check_value_for_format(self.format, self.value)


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


def _aad(token: str, kind: str) -> bytes:
    return f"tok|{token}|{kind}".encode()


def _lookup_scope(req: TokenRequest) -> str:
    return f"tok|{req.kind}|{req.format}"


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

    lookups = [keyring.lookup_hash(_lookup_scope(r), r.value) if r.deterministic else None for r in reqs]
    existing: dict[bytes, tuple[str, str | None, int | None]] = {}  # lookup -> (token, owner, expiry)
    expired: list[str] = []
    wanted = [lk for lk in lookups if lk is not None]
    if wanted:
        unique_lookups = list(set(wanted))
        sql = _BY_LOOKUP_SQL.format(marks=rawsql.marks(conn, len(unique_lookups)))
        for token, lookup, expires_at, owner_id in rawsql.fetchall(conn, sql, unique_lookups):
            if expires_at is not None and expires_at <= now:
                expired.append(token)  # its value is gone; the value gets a new token below
            else:
                existing[bytes(lookup)] = (token, owner_id, expires_at)

    out: list[str] = []
    new_rows: list[tuple[Any, ...]] = []  # in _INSERT_COLUMNS order
    adopted: list[dict[str, Any]] = []
    made: dict[bytes, str] = {}  # deterministic values made earlier in this same batch
    made_expiry: dict[bytes, int | None] = {}
    made_owner: dict[bytes, str | None] = {}
    batch_tokens: set[str] = set()
    for req, lk, subject in zip(reqs, lookups, owner_of, strict=True):
        if lk is not None:
            hit = existing.get(lk)
            if hit is not None:
                hit_token, hit_owner, hit_expiry = hit
                out.append(hit_token)
                if expiries is not None:
                    expiries.append(hit_expiry)
                if owners_out is not None:
                    owners_out.append(hit_owner if hit_owner is not None else subject)  # adopted just below
                if hit_owner is None and subject is not None:
                    # A value first seen unowned (a log IP, say) and now seen with its person becomes theirs, so
                    # forget-me reaches it too.
                    key_id = owners[subject]
                    adopted.append(
                        {
                            "t": hit_token,
                            "owner_id": subject,
                            "data_key_id": key_id,
                            "value": seal(aeads[key_id], req.value.encode(), _aad(hit_token, req.kind)),
                        }
                    )
                    existing[lk] = (hit_token, subject, hit_expiry)
                continue
            if lk in made:
                out.append(made[lk])
                if expiries is not None:
                    expiries.append(made_expiry[lk])
                if owners_out is not None:
                    owners_out.append(made_owner[lk])
                continue
        token = make_token(req.format, req.value)
        while token in batch_tokens:
            token = make_token(req.format, req.value)
        batch_tokens.add(token)
        key_id = owners[subject] if subject else SHARED_KEY_ID
        new_rows.append((
            token, req.kind, req.format, seal(aeads[key_id], req.value.encode(), _aad(token, req.kind)), lk, subject,
            key_id, now, now + req.ttl if req.ttl else None, req.route,
        ))
        if lk is not None:
            made[lk] = token
            made_expiry[lk] = now + req.ttl if req.ttl else None
            made_owner[lk] = subject
        out.append(token)
        if expiries is not None:
            expiries.append(now + req.ttl if req.ttl else None)
        if owners_out is not None:
            owners_out.append(subject)

    if expired:
        conn.execute(delete(tokens).where(tokens.c.token.in_(expired)))
    if adopted:
        conn.execute(
            update(tokens).where(tokens.c.token == bindparam("t")),
            adopted,
        )
    if new_rows:
        # Deterministic rows go in lookup order: writers racing on overlapping batches then take the unique-index
        # locks in the same order and one waits for the other instead of both deadlocking.
        new_rows.sort(key=lambda row: row[4] or b"")
        rawsql.executemany(conn, _insert_sql(conn), new_rows)
    return out


_INSERT_COLUMNS = ("token", "kind", "format", "value", "lookup", "owner_id", "data_key_id", "created_at",
                   "expires_at", "route")


def _insert_sql(conn: Connection) -> str:
    # The driver's own executemany over tuples: SQLAlchemy's per-row parameter processing cost more than the
    # insert itself on this path (measured in bench/vault_bench.py).
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return (f"INSERT INTO {tokens.name} ({', '.join(_INSERT_COLUMNS)}) "
            f"VALUES ({', '.join([mark] * len(_INSERT_COLUMNS))})")


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
_BY_LOOKUP_SQL = f"SELECT token, lookup, expires_at, owner_id FROM {tokens.name} WHERE lookup IN ({{marks}})"
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
        plains[token] = (unseal(aead, bytes(sealed), _aad(token, kind)).decode(), kind)
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
