"""App records (Databunker's userapp): one JSON object per person and app, sealed under the person's data key.

The associated data binds a ciphertext to its person and app, so a record cannot be moved to someone else or to
another app. Messages name apps (a pattern-checked name) and never a value.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, delete, insert, select, update

from vault.crypto import seal, unseal
from vault.datakeys import DataKeys
from vault.errors import BadInput, Conflict, NotFound
from vault.models import app_records_table as records
from vault.patching import PatchError, apply_change

APP_PATTERN = re.compile(r"[a-z][a-z0-9_]{1,30}", re.ASCII)


def check_app(app: object) -> str:
    if not isinstance(app, str) or not APP_PATTERN.fullmatch(app):
        raise BadInput("an app name matches ^[a-z][a-z0-9_]{1,30}$")
    return app


def _aad(person_id: str, app: str) -> bytes:
    return f"app|{person_id}|{app}".encode()


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _key(conn: Connection, keys: DataKeys, data_key_id: str) -> AESGCM:
    found = keys.get_many(conn, {data_key_id})
    if data_key_id not in found:
        raise NotFound("app record not found")  # the person's key is gone: nothing of theirs can be read
    return found[data_key_id]


def create(conn: Connection, keys: DataKeys, person_id: str, data_key_id: str, app: str, data: Any,
           now: int) -> None:
    check_app(app)
    if not isinstance(data, dict):
        raise BadInput("an app record is a JSON object")
    exists = conn.execute(select(records.c.app).where(records.c.person_id == person_id, records.c.app == app))
    if exists.first() is not None:
        raise Conflict("this person already has a record for this app: change it with PUT")
    sealed = seal(_key(conn, keys, data_key_id), _encode(data), _aad(person_id, app))
    conn.execute(insert(records).values(person_id=person_id, app=app, data=sealed, created_at=now, updated_at=now))


def read(conn: Connection, keys: DataKeys, person_id: str, data_key_id: str, app: str) -> dict[str, Any]:
    check_app(app)
    sealed = conn.execute(
        select(records.c.data).where(records.c.person_id == person_id, records.c.app == app)
    ).scalar()
    if sealed is None:
        raise NotFound("app record not found")
    data: dict[str, Any] = json.loads(unseal(_key(conn, keys, data_key_id), sealed, _aad(person_id, app)))
    return data


def change(conn: Connection, keys: DataKeys, person_id: str, data_key_id: str, app: str, patch: Any,
           now: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply a merge patch (object) or a JSON Patch (array); the record before and after."""
    before = read(conn, keys, person_id, data_key_id, app)
    try:
        after = apply_change(before, patch)
    except PatchError as exc:
        raise BadInput(str(exc)) from None
    sealed = seal(_key(conn, keys, data_key_id), _encode(after), _aad(person_id, app))
    conn.execute(
        update(records).where(records.c.person_id == person_id, records.c.app == app)
        .values(data=sealed, updated_at=now)
    )
    return before, after


def remove(conn: Connection, person_id: str, app: str) -> None:
    check_app(app)
    gone = conn.execute(delete(records).where(records.c.person_id == person_id, records.c.app == app)).rowcount
    if not gone:
        raise NotFound("app record not found")


def apps_of(conn: Connection, person_id: str) -> list[str]:
    return list(conn.execute(
        select(records.c.app).where(records.c.person_id == person_id).order_by(records.c.app)
    ).scalars())


def all_apps(conn: Connection) -> list[str]:
    return list(conn.execute(select(records.c.app).distinct().order_by(records.c.app)).scalars())


def forget(conn: Connection, person_id: str) -> int:
    return conn.execute(delete(records).where(records.c.person_id == person_id)).rowcount
