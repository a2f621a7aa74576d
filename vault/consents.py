"""Consents (Databunker's agreements): a person's yes or no to one purpose, which gates reveals that need it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, or_, select, update

from vault.errors import BadInput, NotFound
from vault.models import agreements_table as agreements

BRIEF_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,64}$")


def check_brief(brief: str) -> str:
    if not isinstance(brief, str) or not BRIEF_PATTERN.match(brief):
        raise BadInput("a consent purpose (brief) matches ^[a-z][a-z0-9-]{1,64}$")
    return brief


@dataclass(frozen=True)
class Consent:
    brief: str
    status: str  # yes, no, expired
    given_at: int | None
    expires_at: int | None
    method: str | None
    reference: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "brief": self.brief,
            "status": self.status,
            "starttime": self.given_at,
            "expiration": self.expires_at,
            "agreementmethod": self.method,
            "referencecode": self.reference,
        }


def give(conn: Connection, person_id: str, brief: str, now: int, expires_at: int | None = None,
         method: str | None = None, reference: str | None = None) -> None:
    values = {"status": "yes", "given_at": now, "expires_at": expires_at, "updated_at": now, "method": method,
              "reference": reference}
    where = and_(agreements.c.person_id == person_id, agreements.c.brief == check_brief(brief))
    if conn.execute(update(agreements).where(where).values(**values)).rowcount == 0:
        conn.execute(insert(agreements).values(person_id=person_id, brief=brief, **values))


def withdraw(conn: Connection, person_id: str, brief: str, now: int) -> None:
    where = and_(agreements.c.person_id == person_id, agreements.c.brief == check_brief(brief))
    if conn.execute(update(agreements).where(where).values(status="no", updated_at=now)).rowcount == 0:
        raise NotFound("no such consent for this person")


def get(conn: Connection, person_id: str, brief: str, now: int) -> Consent:
    row = conn.execute(
        select(agreements).where(agreements.c.person_id == person_id, agreements.c.brief == check_brief(brief))
    ).first()
    if row is None:
        raise NotFound("no such consent for this person")
    status = row.status
    if status == "yes" and row.expires_at is not None and row.expires_at <= now:
        status = "expired"
    return Consent(row.brief, status, row.given_at, row.expires_at, row.method, row.reference)


def holders(conn: Connection, person_ids: Iterable[str | None], brief: str, now: int) -> set[str]:
    """The people among `person_ids` whose consent to `brief` holds right now."""
    wanted = {p for p in person_ids if p}
    if not wanted:
        return set()
    rows = conn.execute(
        select(agreements.c.person_id).where(
            agreements.c.person_id.in_(wanted),
            agreements.c.brief == brief,
            agreements.c.status == "yes",
            or_(agreements.c.expires_at.is_(None), agreements.c.expires_at > now),
        )
    )
    return {row.person_id for row in rows}


def forget(conn: Connection, person_id: str) -> None:
    conn.execute(delete(agreements).where(agreements.c.person_id == person_id))
