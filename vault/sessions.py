"""Sessions: data about a visit (IP, user agent, ...) under a client-chosen uuid, with an optional expiry.

A session linked to a person is sealed under their data key (forget-me deletes it, and shreds it anyway); one
linked to no one under the shared key. The associated data binds a ciphertext to its session id and person.
An expired session reads as missing; purge_expired_sessions deletes the rows (the retention scheduler calls it).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select

from vault.crypto import seal, unseal
from vault.datakeys import DataKeys
from vault.errors import BadInput, NotFound
from vault.identity import MODES
from vault.models import sessions_table as sessions

EXPIRATION_KEY = "expiration"


def check_id(session_id: object) -> str:
    """The session's uuid in its canonical (lowercase, hyphenated) form."""
    try:
        if not isinstance(session_id, str) or len(session_id) != 36:
            raise ValueError
        return str(uuid.UUID(session_id))
    except ValueError:
        raise BadInput("a session id is a UUID such as 7a1f6c2e-0b8d-4f5e-9c3a-2d4b6e8f0a1c") from None


def split_body(body: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, str] | None, object | None]:
    """The session's data, the person it is linked to ((mode, identity) from a token/login/email/phone/custom
    key), and its `expiration` as given: neither of the last two is stored as data."""
    links = [mode for mode in MODES if mode in body]
    if len(links) > 1:
        raise BadInput(f"link a session to one person, by one of {', '.join(MODES)} (found {', '.join(links)})")
    link: tuple[str, str] | None = None
    if links:
        value = body[links[0]]
        if not isinstance(value, str) or not value:
            raise BadInput(f"'{links[0]}' must be a non-empty string")
        link = (links[0], value)
    data = {k: v for k, v in body.items() if k != EXPIRATION_KEY and k not in links}
    expiration = body.get(EXPIRATION_KEY)
    return data, link, None if expiration in (None, "") else expiration


@dataclass(frozen=True)
class Session:
    id: str
    person_id: str | None
    data_key_id: str
    created_at: int
    expires_at: int | None
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"session": self.id, "when": self.created_at, "data": self.data}


def _aad(session_id: str, person_id: str | None) -> bytes:
    return f"session|{session_id}|{person_id or '-'}".encode()


def _live(now: int) -> Any:
    return or_(sessions.c.expires_at.is_(None), sessions.c.expires_at > now)


def store(conn: Connection, keys: DataKeys, session_id: str, person_id: str | None, data_key_id: str,
          data: dict[str, Any], expires_at: int | None, now: int) -> None:
    """Store a session, replacing one stored before under the same id (as Databunker does)."""
    session_id = check_id(session_id)
    aead = keys.get_many(conn, {data_key_id})[data_key_id]
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    conn.execute(delete(sessions).where(sessions.c.id == session_id))
    conn.execute(insert(sessions).values(
        id=session_id, person_id=person_id, data_key_id=data_key_id, data=seal(aead, body, _aad(session_id, person_id)),
        created_at=now, expires_at=expires_at,
    ))


def _open(conn: Connection, keys: DataKeys, rows: list[Any]) -> list[Session]:
    aeads = keys.get_many(conn, {row.data_key_id for row in rows}) if rows else {}
    out = []
    for row in rows:
        aead = aeads.get(row.data_key_id)
        if aead is None:
            continue  # the owner's key is destroyed: nothing to read
        data = json.loads(unseal(aead, row.data, _aad(row.id, row.person_id)))
        out.append(Session(row.id, row.person_id, row.data_key_id, row.created_at, row.expires_at, data))
    return out


def read(conn: Connection, keys: DataKeys, session_id: str, now: int) -> Session:
    session_id = check_id(session_id)
    row = conn.execute(select(sessions).where(sessions.c.id == session_id, _live(now))).first()
    found = _open(conn, keys, [row]) if row is not None else []
    if not found:
        raise NotFound("session not found")
    return found[0]


def owner(conn: Connection, session_id: str, now: int) -> tuple[str | None, str]:
    """(person id, data key id) of a live session; NotFound when there is none."""
    session_id = check_id(session_id)
    row = conn.execute(select(sessions.c.person_id, sessions.c.data_key_id)
                       .where(sessions.c.id == session_id, _live(now))).first()
    if row is None:
        raise NotFound("session not found")
    return row.person_id, row.data_key_id


def remove(conn: Connection, session_id: str, now: int) -> tuple[str | None, str]:
    """Delete a live session; its (person id, data key id), for the audit trail."""
    found = owner(conn, session_id, now)
    conn.execute(delete(sessions).where(sessions.c.id == check_id(session_id)))
    return found


def list_for(conn: Connection, keys: DataKeys, person_id: str, now: int, offset: int,
             limit: int) -> tuple[int, list[Session]]:
    """A person's live sessions, newest first, and how many there are."""
    where = (sessions.c.person_id == person_id, _live(now))
    total = conn.execute(select(func.count()).select_from(sessions).where(*where)).scalar_one()
    rows = conn.execute(select(sessions).where(*where).order_by(sessions.c.created_at.desc(), sessions.c.id)
                        .offset(offset).limit(limit)).all()
    return total, _open(conn, keys, list(rows))


def purge_expired_sessions(conn: Connection, now: int) -> int:
    """Delete the sessions that expired at or before `now`; how many."""
    return conn.execute(delete(sessions).where(sessions.c.expires_at <= now)).rowcount


def forget(conn: Connection, person_id: str) -> int:
    return conn.execute(delete(sessions).where(sessions.c.person_id == person_id)).rowcount
