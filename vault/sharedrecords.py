"""Shared records: a time-limited, field-limited view of a person's profile, app record or session, that a
partner reads without a token at GET /v1/get/{record}.

A shared record holds the names of the fields (dotted paths into JSON objects), where they come from and until
when; never their values. Reads take the current values, so a record shares nothing once its person is forgotten.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from vault.errors import BadInput, NotFound
from vault.models import shared_records_table as shared

DEFAULT_EXPIRATION = "1d"  # when the call names none: a share is meant to be short-lived
MAX_FIELDS = 50
MAX_PATH_CHARS = 200
PARTNER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:-]{0,63}", re.ASCII)


def parse_fields(raw: object) -> list[str]:
    """Dotted paths from "a,b.c" (Databunker's form) or ["a", "b.c"]: each part of a path non-empty."""
    if isinstance(raw, str):
        items: list[Any] = raw.split(",")
    elif isinstance(raw, list):
        items = raw
    else:
        raise BadInput("'fields' is required: a comma-separated list of field names such as \"name,address.city\"")
    paths: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise BadInput("'fields' must hold field names (strings)")
        path = item.strip()
        if not path or len(path) > MAX_PATH_CHARS or any(not part for part in path.split(".")):
            raise BadInput(f"'fields': each field is a name or a dotted path (a.b), at most {MAX_PATH_CHARS} "
                           "characters, with no empty part")
        if path not in paths:
            paths.append(path)
    if not paths:
        raise BadInput("'fields' names no field")
    if len(paths) > MAX_FIELDS:
        raise BadInput(f"'fields': at most {MAX_FIELDS} fields")
    return paths


def check_partner(partner: object) -> str | None:
    if partner in (None, ""):
        return None
    if not isinstance(partner, str) or not PARTNER_PATTERN.fullmatch(partner):
        raise BadInput("'partner' is a name of 1 to 64 letters, digits, spaces and . _ : -")
    return partner


@dataclass(frozen=True)
class SharedRecord:
    id: str
    person_id: str
    fields: list[str]
    app: str | None
    session_id: str | None
    partner: str | None
    expires_at: int

    @property
    def reader(self) -> str:
        """Who reads it, as the audit trail names them."""
        return f"partner:{self.partner}" if self.partner else "shared-record"


def create(conn: Connection, person_id: str, fields: list[str], app: str | None, session_id: str | None,
           partner: str | None, expires_at: int, now: int) -> str:
    record_id = str(uuid.uuid4())
    conn.execute(insert(shared).values(
        id=record_id, person_id=person_id, fields=json.dumps(fields, ensure_ascii=False), app=app,
        session_id=session_id, partner=partner, created_at=now, expires_at=expires_at,
    ))
    return record_id


def find(conn: Connection, record_id: str, now: int) -> SharedRecord:
    """A live shared record; NotFound for an unknown, malformed or expired one (all look the same)."""
    try:
        record_id = str(uuid.UUID(record_id)) if len(record_id) == 36 else ""
    except ValueError:
        record_id = ""
    row = conn.execute(select(shared).where(shared.c.id == record_id, shared.c.expires_at > now)).first()
    if row is None:
        raise NotFound("shared record not found")
    return SharedRecord(row.id, row.person_id, json.loads(row.fields), row.app, row.session_id, row.partner,
                        row.expires_at)


def extract(doc: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """Only the named fields of `doc`, nested as they are there; a path that is not there is left out."""
    out: dict[str, Any] = {}
    for path in fields:
        parts = path.split(".")
        node: Any = doc
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            target = out
            for part in parts[:-1]:
                if not isinstance(target.get(part), dict):
                    target[part] = {}
                target = target[part]
            target[parts[-1]] = copy.deepcopy(node)
    return out


def purge_expired_shared_records(conn: Connection, now: int) -> int:
    """Delete the shared records that expired at or before `now`; how many."""
    return conn.execute(delete(shared).where(shared.c.expires_at <= now)).rowcount


def forget(conn: Connection, person_id: str) -> int:
    return conn.execute(delete(shared).where(shared.c.person_id == person_id)).rowcount
