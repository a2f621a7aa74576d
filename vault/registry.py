"""The consent registry (Databunker's legal bases and processing activities): what people may agree to, and what the
organisation does that relies on it. Descriptions for people and DPOs, not personal data, so plain columns.

An agreement's brief need not name a legal basis here (the sidecar's `require_consent` rules name purposes of their
own); when one is defined with status `deleted`, it takes no new agreements.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from vault.consents import BRIEF_PATTERN, check_brief
from vault.errors import BadInput, NotFound
from vault.models import activities_table as activities
from vault.models import activity_bases_table as links
from vault.models import legal_bases_table as bases

BASIS_TYPES = ("consent", "contract", "legal-requirement", "vital-interest", "public-interest", "legitimate-interest")
BASIS_STATUSES = ("active", "deleted")
# Field: longest accepted text. Every field is optional; a POST replaces the whole record (Databunker does too).
_BASIS_TEXT = {"module": 64, "shortdesc": 256, "fulldesc": 8192, "requiredmsg": 2048}
_BASIS_FLAGS = ("usercontrol", "requiredflag")
_ACTIVITY_TEXT = {"title": 256, "script": 16384, "fulldesc": 8192, "applicableto": 256}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def check_activity(activity: str) -> str:
    if not isinstance(activity, str) or not BRIEF_PATTERN.match(activity):
        raise BadInput("a processing activity's name matches ^[a-z][a-z0-9-]{1,64}$")
    return activity


def _text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise BadInput(f"'{name}' must be a string of at most {limit} characters")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE  # a form field
    raise BadInput(f"'{name}' must be true or false")


def _unknown(body: dict[str, Any], known: set[str]) -> None:
    extra = set(body) - known
    if extra:
        raise BadInput(f"unknown key '{sorted(extra)[0][:40]}'")


def parse_basis(body: dict[str, Any]) -> dict[str, Any]:
    """A legal basis' columns from a request body (JSON or form), checked."""
    _unknown(body, {*_BASIS_TEXT, *_BASIS_FLAGS, "basistype", "status"})
    values: dict[str, Any] = {name: _text(body, name, limit) for name, limit in _BASIS_TEXT.items()}
    values.update({name: _flag(body, name) for name in _BASIS_FLAGS})
    basistype = body.get("basistype") or "consent"
    if basistype not in BASIS_TYPES:
        raise BadInput(f"'basistype' must be one of {', '.join(BASIS_TYPES)}")
    status = body.get("status") or "active"
    if status not in BASIS_STATUSES:
        raise BadInput("'status' must be active or deleted")
    values.update(basistype=basistype, status=status)
    return values


def parse_activity(body: dict[str, Any]) -> dict[str, Any]:
    _unknown(body, set(_ACTIVITY_TEXT))
    return {name: _text(body, name, limit) for name, limit in _ACTIVITY_TEXT.items()}


def _basis_dict(row: Any) -> dict[str, Any]:
    return {"brief": row.brief, "module": row.module, "shortdesc": row.shortdesc, "fulldesc": row.fulldesc,
            "basistype": row.basistype, "requiredmsg": row.requiredmsg, "usercontrol": bool(row.usercontrol),
            "requiredflag": bool(row.requiredflag), "status": row.status, "creationtime": row.created_at}


# -- legal bases ---------------------------------------------------------------------------------------------------

def set_basis(conn: Connection, brief: str, values: dict[str, Any], now: int) -> bool:
    """Create or replace a legal basis; True when it is new."""
    check_brief(brief)
    if not values.get("requiredflag"):
        values = {**values, "requiredmsg": ""}  # the message shown when it is required, as Databunker keeps it
    if conn.execute(update(bases).where(bases.c.brief == brief).values(updated_at=now, **values)).rowcount:
        return False
    conn.execute(insert(bases).values(brief=brief, created_at=now, updated_at=now, **values))
    return True


def get_basis(conn: Connection, brief: str) -> dict[str, Any] | None:
    row = conn.execute(select(bases).where(bases.c.brief == brief)).first()
    return None if row is None else _basis_dict(row)


def basis_status(conn: Connection, brief: str) -> str | None:
    return conn.execute(select(bases.c.status).where(bases.c.brief == brief)).scalar()


def delete_basis(conn: Connection, brief: str, in_use: bool) -> None:
    """Remove a legal basis from every activity; drop it when no agreement names it, else mark it deleted (kept for
    the descriptions of the agreements that name it)."""
    check_brief(brief)
    if basis_status(conn, brief) is None:
        raise NotFound("no such legal basis")
    conn.execute(delete(links).where(links.c.brief == brief))
    if in_use:
        conn.execute(update(bases).where(bases.c.brief == brief).values(status="deleted"))
    else:
        conn.execute(delete(bases).where(bases.c.brief == brief))


def list_bases(conn: Connection, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    total = conn.execute(select(func.count()).select_from(bases)).scalar_one()
    rows = conn.execute(select(bases).order_by(bases.c.brief).offset(offset).limit(limit))
    return total, [_basis_dict(row) for row in rows]


def describe(conn: Connection, briefs: set[str]) -> dict[str, dict[str, Any]]:
    """The legal bases among `briefs` that are defined."""
    if not briefs:
        return {}
    return {row.brief: _basis_dict(row) for row in conn.execute(select(bases).where(bases.c.brief.in_(briefs)))}


# -- processing activities -----------------------------------------------------------------------------------------

def set_activity(conn: Connection, activity: str, values: dict[str, Any], now: int) -> bool:
    check_activity(activity)
    where = activities.c.activity == activity
    if conn.execute(update(activities).where(where).values(updated_at=now, **values)).rowcount:
        return False
    conn.execute(insert(activities).values(activity=activity, created_at=now, updated_at=now, **values))
    return True


def _require_activity(conn: Connection, activity: str) -> None:
    check_activity(activity)
    if conn.execute(select(activities.c.activity).where(activities.c.activity == activity)).first() is None:
        raise NotFound("no such processing activity")


def delete_activity(conn: Connection, activity: str) -> None:
    _require_activity(conn, activity)
    conn.execute(delete(links).where(links.c.activity == activity))
    conn.execute(delete(activities).where(activities.c.activity == activity))


def link(conn: Connection, activity: str, brief: str, now: int) -> bool:
    """Link an activity to a legal basis; False when they were linked already."""
    _require_activity(conn, activity)
    status = basis_status(conn, check_brief(brief))
    if status is None:
        raise NotFound("no such legal basis")
    if status == "deleted":
        raise BadInput("that legal basis is deleted")
    where = (links.c.activity == activity) & (links.c.brief == brief)
    if conn.execute(select(links.c.brief).where(where)).first() is not None:
        return False
    conn.execute(insert(links).values(activity=activity, brief=brief, created_at=now))
    return True


def unlink(conn: Connection, activity: str, brief: str) -> None:
    _require_activity(conn, activity)
    where = (links.c.activity == activity) & (links.c.brief == check_brief(brief))
    if conn.execute(delete(links).where(where)).rowcount == 0:
        raise NotFound("that processing activity is not linked to that legal basis")


def list_activities(conn: Connection, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """Activities with their legal bases: `legalbasis` as Databunker has it (briefs joined by commas) and `briefs`,
    the linked legal bases themselves."""
    total = conn.execute(select(func.count()).select_from(activities)).scalar_one()
    page = conn.execute(select(activities).order_by(activities.c.activity).offset(offset).limit(limit)).all()
    names = [row.activity for row in page]
    linked: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    if names:
        query = (select(links.c.activity, bases).join(bases, bases.c.brief == links.c.brief)
                 .where(links.c.activity.in_(names)).order_by(links.c.activity, bases.c.brief))
        for row in conn.execute(query):
            linked[row.activity].append(_basis_dict(row))
    return total, [
        {"activity": row.activity, "title": row.title, "script": row.script, "fulldesc": row.fulldesc,
         "applicableto": row.applicableto, "creationtime": row.created_at,
         "legalbasis": ",".join(b["brief"] for b in linked[row.activity]), "briefs": linked[row.activity]}
        for row in page
    ]
