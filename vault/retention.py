"""Retention: a person's record expires (is forgotten) at a time unless retained (Databunker's /v1/exp), and the
maximum retention of other kinds (ttl tokens, agreements, decided requests), applied by the scheduler in `serve`.

Every step is idempotent: a row is claimed by a conditional update before it is acted on, so a run that is cut
short, or run again by another replica, never acts twice. On PostgreSQL a run also takes an advisory try-lock
(`try_lock`), so only one replica works at a time; on SQLite the write lock serialises the writers.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, or_, select, text, update

from vault.errors import BadInput, Conflict, NotFound
from vault.models import agreements_table as agreements
from vault.models import expirations_table as expirations
from vault.models import outbox_table as outbox
from vault.models import people_table as people
from vault.models import tokens_table as tokens

STATUSES = ("wait", "retain", "canceled", "expired")  # and "expiring": claimed by a run, being forgotten
_PG_LOCK_ID = 0x7B0D  # the retention run's advisory lock (the audit chain's is 0x7B0C)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
BATCH = 500  # rows of one kind per run: short transactions; the next run takes the rest


def try_lock(conn: Connection) -> bool:
    """Take the run's lock for this transaction, if no other replica holds it (always True on SQLite)."""
    if conn.dialect.name != "postgresql":
        return True
    return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID}).scalar())


def check_exptoken(exptoken: str) -> str:
    if not isinstance(exptoken, str) or not _UUID.match(exptoken):
        raise BadInput("an exptoken is a uuid")
    return exptoken


def start(conn: Connection, person_id: str, exptime: int, status: str, now: int) -> str:
    """Set (or reset) when the person's record expires; a new exptoken each time, so old links stop working."""
    if status not in ("wait", "retain"):
        raise BadInput("status must be wait or retain")
    exptoken = str(uuid.uuid4())
    values = {"exptoken": exptoken, "exptime": exptime, "status": status, "updated_at": now}
    found = conn.execute(select(expirations.c.status).where(expirations.c.person_id == person_id)
                         .with_for_update()).first()
    if found is not None and found.status == "expiring":
        raise Conflict("this person's record is being forgotten")
    if found is None:
        conn.execute(insert(expirations).values(person_id=person_id, created_at=now, **values))
    else:
        conn.execute(update(expirations).where(expirations.c.person_id == person_id).values(**values))
    return exptoken


def status(conn: Connection, person_id: str) -> dict[str, Any]:
    row = conn.execute(select(expirations).where(expirations.c.person_id == person_id)).first()
    if row is None:
        return {"exptime": None, "expstatus": None, "exptoken": None}
    shown = "wait" if row.status == "expiring" else row.status
    return {"exptime": row.exptime, "expstatus": shown, "exptoken": row.exptoken}


def cancel(conn: Connection, person_id: str, now: int) -> None:
    done = conn.execute(update(expirations)
                        .where(expirations.c.person_id == person_id,
                               expirations.c.status.in_(("wait", "retain", "canceled")))
                        .values(status="canceled", updated_at=now))
    if done.rowcount == 0:
        if conn.execute(select(expirations.c.status).where(expirations.c.person_id == person_id)).first():
            raise Conflict("this person's record is being forgotten, or is gone")
        raise NotFound("no expiration was started for this person")


def owner(conn: Connection, exptoken: str) -> tuple[str, str]:
    """The person an exptoken names, and the expiration's status."""
    row = conn.execute(select(expirations.c.person_id, expirations.c.status)
                       .where(expirations.c.exptoken == check_exptoken(exptoken))).first()
    if row is None:
        raise NotFound("no such exptoken")
    return row.person_id, row.status


def retain(conn: Connection, exptoken: str, now: int) -> str:
    person_id, _status = owner(conn, exptoken)
    done = conn.execute(update(expirations)
                        .where(expirations.c.exptoken == exptoken,
                               expirations.c.status.in_(("wait", "retain", "canceled")))
                        .values(status="retain", updated_at=now))
    if done.rowcount == 0:
        raise Conflict("this record has expired, or is being forgotten")
    return person_id


def claim(conn: Connection, person_id: str, now: int) -> bool:
    """Mark one expiration as being forgotten (from wait, retain or canceled: the person's own delete link)."""
    done = conn.execute(update(expirations)
                        .where(expirations.c.person_id == person_id,
                               expirations.c.status.in_(("wait", "retain", "canceled", "expiring")))
                        .values(status="expiring", updated_at=now))
    return done.rowcount == 1


def claim_due(conn: Connection, now: int, limit: int = BATCH) -> list[str]:
    """The people whose expiry passed and who were not retained, marked as being forgotten. Rows a cut-short run
    left "expiring" are taken again (only the lock holder runs, and forgetting twice finds no one the second
    time)."""
    due = conn.execute(select(expirations.c.person_id)
                       .where(expirations.c.status.in_(("wait", "expiring")), expirations.c.exptime <= now)
                       .order_by(expirations.c.exptime).limit(limit).with_for_update(skip_locked=True))
    claimed = []
    for row in due:
        done = conn.execute(update(expirations)
                            .where(expirations.c.person_id == row.person_id,
                                   expirations.c.status.in_(("wait", "expiring")))
                            .values(status="expiring", updated_at=now))
        if done.rowcount == 1:
            claimed.append(row.person_id)
    return claimed


def mark_expired(conn: Connection, person_id: str, now: int) -> None:
    conn.execute(update(expirations).where(expirations.c.person_id == person_id)
                 .values(status="expired", updated_at=now))


def expire_agreements(conn: Connection, now: int, limit: int = BATCH) -> list[tuple[str, str, str]]:
    """Agreements whose expiration passed, now marked "expired": (person, brief, person's data key) each."""
    due = conn.execute(
        select(agreements.c.person_id, agreements.c.brief, people.c.data_key_id)
        .join(people, people.c.id == agreements.c.person_id)
        .where(agreements.c.status == "yes", agreements.c.expires_at <= now).limit(limit)
    ).all()
    changed = []
    for row in due:
        done = conn.execute(update(agreements)
                            .where(agreements.c.person_id == row.person_id, agreements.c.brief == row.brief,
                                   agreements.c.status == "yes")
                            .values(status="expired", updated_at=now))
        if done.rowcount == 1:
            changed.append((row.person_id, row.brief, row.data_key_id))
    return changed


def purge_agreements(conn: Connection, before: int) -> int:
    """Delete agreements no longer in force (no, expired, revoked) whose last change is older than `before`."""
    return conn.execute(delete(agreements).where(
        and_(agreements.c.status != "yes", agreements.c.updated_at < before))).rowcount


def purge_old_tokens(conn: Connection, before: int) -> int:
    """Delete tokens made before `before`, whatever their ttl (the tokens' maximum retention)."""
    return conn.execute(delete(tokens).where(tokens.c.created_at < before)).rowcount


def purge_outbox(conn: Connection, before: int) -> int:
    """Delete callbacks delivered, or given up, before `before`; pending ones stay whatever their age."""
    return conn.execute(delete(outbox).where(or_(
        and_(outbox.c.delivered_at.is_not(None), outbox.c.delivered_at < before),
        and_(outbox.c.failed_at.is_not(None), outbox.c.failed_at < before)))).rowcount
