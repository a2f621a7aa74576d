"""People (Databunker's "users"): a JSON profile sealed under the person's own data key, found by keyed hashes."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select, update

from vault import apprecords, consents, rawsql, sessions, sharedrecords
from vault.crypto import seal, unseal
from vault.datakeys import DataKeys
from vault.errors import BadInput, Conflict, NotFound
from vault.identity import INDEX_MODES, IdentityError, index_values, normalize
from vault.keys import KeyRing
from vault.models import forgotten_table as forgotten
from vault.models import people_table as people
from vault.models import tokens_table as tokens
from vault.patching import PatchError, apply_change


@dataclass(frozen=True)
class PersonRef:
    id: str
    data_key_id: str


def _aad(person_id: str) -> bytes:
    return f"person|{person_id}".encode()


def _index_hashes(keyring: KeyRing, profile: dict[str, Any], country: str) -> dict[str, bytes]:
    try:
        values = index_values(profile, country)
    except IdentityError as exc:
        raise BadInput(str(exc)) from None
    return {f"{mode}_idx": keyring.lookup_hash(f"idx|{mode}", value) for mode, value in values.items()}


def _check_unique(conn: Connection, hashes: dict[str, bytes], except_id: str | None = None) -> None:
    if not hashes:
        return
    query = select(people.c.id, *(people.c[col] for col in hashes)).where(
        or_(*(people.c[col] == value for col, value in hashes.items()))
    )
    for row in conn.execute(query):
        if row.id == except_id:
            continue
        for col, value in hashes.items():
            if getattr(row, col) == value:
                raise Conflict(f"duplicate index: {col.removesuffix('_idx')}")


def _encode(profile: dict[str, Any]) -> bytes:
    return json.dumps(profile, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def create(conn: Connection, keyring: KeyRing, keys: DataKeys, profile: Any, country: str, now: int) -> PersonRef:
    if not isinstance(profile, dict) or not profile:
        raise BadInput("a person is a non-empty JSON object")
    hashes = _index_hashes(keyring, profile, country)
    if not hashes:
        raise BadInput(f"at least one of {', '.join(INDEX_MODES)} is required")
    _check_unique(conn, hashes)
    person_id = str(uuid.uuid4())
    key_id, aead = keys.create(conn, now)
    conn.execute(
        insert(people).values(
            id=person_id,
            data_key_id=key_id,
            profile=seal(aead, _encode(profile), _aad(person_id)),
            created_at=now,
            updated_at=now,
            **hashes,
        )
    )
    return PersonRef(person_id, key_id)


_PEOPLE_COLUMNS = ("id", "data_key_id", "profile", "created_at", "updated_at", *(f"{m}_idx" for m in INDEX_MODES))


def resolve_many(
    conn: Connection, keyring: KeyRing, keys: DataKeys, wanted: set[tuple[str, str]], now: int,
    created: list[tuple[PersonRef, str, str]] | None = None,
) -> dict[tuple[str, str], PersonRef]:
    """People by (index mode, normalised value), made with just that field when missing: one SELECT per index
    mode and one insert per table, however many flows the group holds. The people made are added to `created`
    as (ref, mode, value), for the caller to give them what waited for them (consents.claim_pending).

    The sidecar's hottest write: the statements go through the driver's cursor (vault/rawsql.py). No uniqueness
    check before the insert: the unique indexes catch a race with another writer, as an IntegrityError that the
    caller's retry answers by finding theirs."""
    out: dict[tuple[str, str], PersonRef] = {}
    hashed = {(mode, value): keyring.lookup_hash(f"idx|{mode}", value) for mode, value in wanted}
    for mode in {m for m, _ in wanted}:
        by_hash = {h: key for key, h in hashed.items() if key[0] == mode}
        sql = (f"SELECT id, data_key_id, {mode}_idx FROM {people.name} "
               f"WHERE {mode}_idx IN ({rawsql.marks(conn, len(by_hash))})")
        for person_id, key_id, found_hash in rawsql.fetchall(conn, sql, list(by_hash)):
            out[by_hash[bytes(found_hash)]] = PersonRef(person_id, key_id)
    missing = [key for key in wanted if key not in out]
    if missing:
        new_keys = keys.create_many(conn, len(missing), now)
        rows: list[tuple[Any, ...]] = []
        for (mode, value), (key_id, aead) in zip(missing, new_keys, strict=True):
            person_id = str(uuid.uuid4())
            rows.append((person_id, key_id, seal(aead, _encode({mode: value}), _aad(person_id)), now, now,
                         *(hashed[(mode, value)] if m == mode else None for m in INDEX_MODES)))
            out[(mode, value)] = PersonRef(person_id, key_id)
            if created is not None:
                created.append((out[(mode, value)], mode, value))
        rawsql.executemany(conn, f"INSERT INTO {people.name} ({', '.join(_PEOPLE_COLUMNS)}) "
                                 f"VALUES ({rawsql.marks(conn, len(_PEOPLE_COLUMNS))})", rows)
    return out


def data_key_of(conn: Connection, person_id: str) -> str | None:
    return conn.execute(select(people.c.data_key_id).where(people.c.id == person_id)).scalar()


def exists(conn: Connection, person_id: str) -> str | None:
    row = conn.execute(select(people.c.id).where(people.c.id == person_id)).first()
    return None if row is None else str(row.id)


def find(conn: Connection, keyring: KeyRing, mode: str, ident: str, country: str) -> PersonRef:
    try:
        value = normalize(mode, ident, country)
    except IdentityError as exc:
        raise BadInput(str(exc)) from None
    column = people.c.id if mode == "token" else people.c[f"{mode}_idx"]
    key = value if mode == "token" else keyring.lookup_hash(f"idx|{mode}", value)
    row = conn.execute(select(people.c.id, people.c.data_key_id).where(column == key)).first()
    if row is None:
        raise NotFound("person not found")
    return PersonRef(row.id, row.data_key_id)


def read(conn: Connection, keys: DataKeys, ref: PersonRef) -> dict[str, Any]:
    sealed = conn.execute(select(people.c.profile).where(people.c.id == ref.id)).scalar_one()
    aead = keys.get_many(conn, {ref.data_key_id})[ref.data_key_id]
    profile: dict[str, Any] = json.loads(unseal(aead, sealed, _aad(ref.id)))
    return profile


def page(conn: Connection, offset: int, limit: int) -> tuple[int, list[PersonRef]]:
    """How many people there are, and `limit` of them from `offset`, oldest first (POST /v1/users)."""
    total = conn.execute(select(func.count()).select_from(people)).scalar_one()
    rows = conn.execute(select(people.c.id, people.c.data_key_id).order_by(people.c.created_at, people.c.id)
                        .offset(offset).limit(limit))
    return total, [PersonRef(row.id, row.data_key_id) for row in rows]


def change(
    conn: Connection, keyring: KeyRing, keys: DataKeys, ref: PersonRef, patch: Any, country: str, now: int
) -> dict[str, Any]:
    try:
        profile = apply_change(read(conn, keys, ref), patch)
    except PatchError as exc:
        raise BadInput(str(exc)) from None
    hashes = _index_hashes(keyring, profile, country)
    if not hashes:
        raise BadInput(f"at least one of {', '.join(INDEX_MODES)} must remain")
    _check_unique(conn, hashes, except_id=ref.id)
    aead = keys.get_many(conn, {ref.data_key_id})[ref.data_key_id]
    all_indexes = {f"{mode}_idx": hashes.get(f"{mode}_idx") for mode in INDEX_MODES}
    conn.execute(
        update(people)
        .where(people.c.id == ref.id)
        .values(profile=seal(aead, _encode(profile), _aad(ref.id)), updated_at=now, **all_indexes)
    )
    return profile


def forget(conn: Connection, keys: DataKeys, ref: PersonRef, now: int) -> int:
    """Crypto-shred: delete the tokens, app records, sessions, shared records, the record and the data key; keep
    only the fact that it happened. Two forgets of one person at once: the second waits on the row lock (PostgreSQL;
    SQLite's writers take turns anyway), then finds nobody and is NotFound, not a failed insert of the proof."""
    if conn.execute(select(people.c.id).where(people.c.id == ref.id).with_for_update()).first() is None:
        raise NotFound("person not found")
    removed = conn.execute(delete(tokens).where(tokens.c.owner_id == ref.id)).rowcount
    consents.forget(conn, ref.id)
    apprecords.forget(conn, ref.id)
    sessions.forget(conn, ref.id)
    sharedrecords.forget(conn, ref.id)
    conn.execute(delete(people).where(people.c.id == ref.id))
    keys.destroy(conn, ref.data_key_id)
    conn.execute(insert(forgotten).values(person_id=ref.id, forgotten_at=now))
    return removed
