"""Consents (Databunker's agreements): a person's yes or no to one purpose, which gates reveals that need it.

A brief need not be a defined legal basis (vault/registry.py). Consent given by email or phone before the person
exists waits in tb_pending_agreements under the keyed hash of the address, and becomes the person's when they are
created. Revoking a purpose for everyone marks every agreement to it "revoked"."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, and_, delete, insert, or_, select, update

from vault import rawsql
from vault.errors import BadInput, NotFound
from vault.keys import KeyRing
from vault.models import agreements_table as agreements
from vault.models import pending_agreements_table as pending
from vault.models import people_table

BRIEF_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,64}$")


def check_brief(brief: str) -> str:
    if not isinstance(brief, str) or not BRIEF_PATTERN.match(brief):
        raise BadInput("a consent purpose (brief) matches ^[a-z][a-z0-9-]{1,64}$")
    return brief


PENDING_MODES = ("email", "phone")  # consent may be given by these before the person exists (as Databunker allows)


@dataclass(frozen=True)
class Consent:
    brief: str
    status: str  # yes, no, expired, revoked
    given_at: int | None
    expires_at: int | None
    method: str | None
    reference: str | None
    modified_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "brief": self.brief,
            "status": self.status,
            "starttime": self.given_at,
            "expiration": self.expires_at,
            "agreementmethod": self.method,
            "referencecode": self.reference,
            "lastmodifiedby": self.modified_by,
        }


def parse_starttime(value: Any, now: int) -> int | None:
    """When consent was given, if not now (None): a unix time, not in the future. (Databunker also takes a
    duration from now; here consent counts from when it was given, so a start to come is refused.)"""
    if value in (None, ""):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= now:
        raise BadInput("'starttime' must be a unix time, not in the future")
    return value


def _consent(row: Any, now: int) -> Consent:
    status = row.status
    if status == "yes" and row.expires_at is not None and row.expires_at <= now:
        status = "expired"
    return Consent(row.brief, status, row.given_at, row.expires_at, row.method, row.reference, row.modified_by)


def _terms(status: str, now: int, expires_at: int | None, method: str | None, reference: str | None,
           given_at: int | None, modified_by: str | None) -> dict[str, Any]:
    if status not in ("yes", "no"):
        raise BadInput("'status' must be yes or no")
    return {"status": status, "given_at": now if given_at is None else given_at, "expires_at": expires_at,
            "updated_at": now, "method": method, "reference": reference, "modified_by": modified_by}


def _upsert(conn: Connection, table: Table, key: dict[str, Any], values: dict[str, Any]) -> None:
    where = and_(*(table.c[name] == value for name, value in key.items()))
    if conn.execute(update(table).where(where).values(**values)).rowcount == 0:
        conn.execute(insert(table).values(**key, **values))


def give(conn: Connection, person_id: str, brief: str, now: int, expires_at: int | None = None,
         method: str | None = None, reference: str | None = None, *, status: str = "yes",
         given_at: int | None = None, modified_by: str | None = None) -> None:
    """Record a person's answer (yes, or no) to a purpose, replacing the one before."""
    values = _terms(status, now, expires_at, method, reference, given_at, modified_by)
    _upsert(conn, agreements, {"person_id": person_id, "brief": check_brief(brief)}, values)


def withdraw(conn: Connection, person_id: str, brief: str, now: int, modified_by: str | None = None) -> None:
    where = and_(agreements.c.person_id == person_id, agreements.c.brief == check_brief(brief))
    changed = {"status": "no", "updated_at": now, **({"modified_by": modified_by} if modified_by else {})}
    if conn.execute(update(agreements).where(where).values(**changed)).rowcount == 0:
        raise NotFound("no such consent for this person")


def get(conn: Connection, person_id: str, brief: str, now: int) -> Consent:
    row = conn.execute(
        select(agreements).where(agreements.c.person_id == person_id, agreements.c.brief == check_brief(brief))
    ).first()
    if row is None:
        raise NotFound("no such consent for this person")
    return _consent(row, now)


def listing(conn: Connection, person_id: str, now: int) -> list[Consent]:
    rows = conn.execute(select(agreements).where(agreements.c.person_id == person_id).order_by(agreements.c.brief))
    return [_consent(row, now) for row in rows]


# -- consent given before the person exists, keyed by the keyed hash of their email or phone ----------------------

def pending_key(keyring: KeyRing, mode: str, normalised: str) -> bytes:
    """The people table's index hash of a normalised email or phone (people.py makes the same one)."""
    if mode not in PENDING_MODES:
        raise BadInput("consent can be given before the person exists only by email or phone")
    return keyring.lookup_hash(f"idx|{mode}", normalised)


def give_pending(conn: Connection, mode: str, key: bytes, brief: str, now: int, expires_at: int | None = None,
                 method: str | None = None, reference: str | None = None, *, status: str = "yes",
                 given_at: int | None = None, modified_by: str | None = None) -> None:
    values = _terms(status, now, expires_at, method, reference, given_at, modified_by)
    _upsert(conn, pending, {"index_hash": key, "brief": check_brief(brief)}, {"index_mode": mode, **values})


def withdraw_pending(conn: Connection, key: bytes, brief: str, now: int, modified_by: str | None = None) -> None:
    where = and_(pending.c.index_hash == key, pending.c.brief == check_brief(brief))
    changed = {"status": "no", "updated_at": now, **({"modified_by": modified_by} if modified_by else {})}
    if conn.execute(update(pending).where(where).values(**changed)).rowcount == 0:
        raise NotFound("no such consent for this person")


def get_pending(conn: Connection, key: bytes, brief: str, now: int) -> Consent:
    where = and_(pending.c.index_hash == key, pending.c.brief == check_brief(brief))
    row = conn.execute(select(pending).where(where)).first()
    if row is None:
        raise NotFound("no such consent for this person")
    return _consent(row, now)


def listing_pending(conn: Connection, key: bytes, now: int) -> list[Consent]:
    rows = conn.execute(select(pending).where(pending.c.index_hash == key).order_by(pending.c.brief))
    return [_consent(row, now) for row in rows]


def claim_pending(conn: Connection, claims: Iterable[tuple[str, bytes]], now: int) -> list[tuple[str, str, str]]:
    """Make the pending agreements of new people (or of people given a new email or phone) theirs: `claims` are
    (person id, index hash) pairs. Answers
    (person id, brief, status) for each agreement moved. When a person's email and phone both had one for the same
    brief, the later answer wins."""
    owner = {key: person_id for person_id, key in claims}
    if not owner:
        return []
    # Nearly always nothing waits (every new person of the sidecar comes through here): one bare SELECT says so.
    if not rawsql.fetchall(conn, f"SELECT 1 FROM {pending.name} WHERE index_hash IN "
                                 f"({rawsql.marks(conn, len(owner))}) LIMIT 1", list(owner)):
        return []
    rows = conn.execute(select(pending).where(pending.c.index_hash.in_(list(owner)))
                        .order_by(pending.c.updated_at)).all()
    if not rows:
        return []
    # A person who already answered for a brief (their address was added to an existing record) keeps the newer
    # answer of the two.
    held = {(r.person_id, r.brief): r.updated_at for r in conn.execute(
        select(agreements.c.person_id, agreements.c.brief, agreements.c.updated_at)
        .where(agreements.c.person_id.in_(set(owner.values()))))}
    moved: dict[tuple[str, str], str] = {}
    for row in rows:
        person_id = owner[bytes(row.index_hash)]
        if held.get((person_id, row.brief), -1) > row.updated_at:
            continue
        values = {name: row._mapping[name] for name in ("status", "given_at", "expires_at", "updated_at", "method",
                                                        "reference", "modified_by")}
        _upsert(conn, agreements, {"person_id": person_id, "brief": row.brief}, values)
        moved[(person_id, row.brief)] = row.status
    conn.execute(delete(pending).where(pending.c.index_hash.in_(list(owner))))
    return [(person_id, brief, status) for (person_id, brief), status in moved.items()]


# -- a purpose for everyone ------------------------------------------------------------------------------------------

def in_use(conn: Connection, brief: str) -> bool:
    """Whether any agreement (a person's or a pending one) names `brief`."""
    return any(conn.execute(select(table.c.brief).where(table.c.brief == brief).limit(1)).first() is not None
               for table in (agreements, pending))


def revoke_all(conn: Connection, brief: str, now: int) -> tuple[list[tuple[str, str]], list[str]]:
    """Every agreement to `brief` becomes "revoked" (reveals gated by it stop). Answers the people whose agreement
    changed, as (person id, data key id), and the index modes of the pending agreements that changed."""
    check_brief(brief)
    people = [(row.person_id, row.data_key_id) for row in conn.execute(
        select(agreements.c.person_id, people_table.c.data_key_id)
        .join(people_table, people_table.c.id == agreements.c.person_id)
        .where(agreements.c.brief == brief, agreements.c.status != "revoked")
        .order_by(agreements.c.person_id))]
    modes = [row.index_mode for row in conn.execute(
        select(pending.c.index_mode).where(pending.c.brief == brief, pending.c.status != "revoked"))]
    for table in (agreements, pending):
        conn.execute(update(table).where(table.c.brief == brief, table.c.status != "revoked")
                     .values(status="revoked", updated_at=now))
    return people, modes


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
