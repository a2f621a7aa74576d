"""DPO requests: a change that waits for a data protection officer's approval (Databunker's user requests).

Which operations wait is the `approval` policy in config.yaml: each of change-profile, forget-me and
agreement-withdraw is `self` (applied at once) or `dpo` (a request); change-app-data names app-name glob patterns.
The stored change is sealed under the person's data key with the rtoken in the associated data, so it cannot be
read after forget-me, nor moved to another request. Approving applies it through the vault's own operations.
"""

from __future__ import annotations

import fnmatch
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, delete, func, insert, select, update

from vault.crypto import seal, unseal
from vault.datakeys import DataKeys
from vault.errors import BadInput, Conflict, NotFound
from vault.models import requests_table as requests

ACTIONS = ("forget-me", "change-profile", "change-app-data", "agreement-withdraw")
STATUSES = ("open", "approved", "canceled")
APP_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,30}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_REASON_CHARS = 1024


class Policy(Protocol):
    """What needs a DPO (vault.config.ApprovalSettings has this shape)."""

    @property
    def change_profile(self) -> str: ...
    @property
    def forget_me(self) -> str: ...
    @property
    def agreement_withdraw(self) -> str: ...
    @property
    def change_app_data(self) -> tuple[str, ...]: ...


def needs_approval(policy: Policy | None, action: str, app: str | None = None) -> bool:
    """Whether `action` (on `app`, for change-app-data) waits for a DPO. No policy: everything is self-service."""
    if action not in ACTIONS:
        raise ValueError(f"unknown request action {action!r}")
    if policy is None:
        return False
    if action == "change-app-data":
        return app is not None and any(fnmatch.fnmatchcase(app, pattern) for pattern in policy.change_app_data)
    setting = {"forget-me": policy.forget_me, "change-profile": policy.change_profile,
               "agreement-withdraw": policy.agreement_withdraw}[action]
    return setting == "dpo"


def check_rtoken(rtoken: str) -> str:
    if not isinstance(rtoken, str) or not _UUID.match(rtoken):
        raise BadInput("an rtoken is a request's uuid")
    return rtoken


def check_status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise BadInput(f"status must be one of {', '.join(STATUSES)}")
    return status


def _aad(rtoken: str, part: str) -> bytes:
    return f"request|{rtoken}|{part}".encode()


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Pending:
    """A request as the vault applies it: the change opened with the person's key."""

    rtoken: str
    action: str
    person_id: str
    data_key_id: str
    app: str | None
    brief: str | None
    change: Any


def create(conn: Connection, keys: DataKeys, person_id: str, data_key_id: str, action: str, change: Any,
           app: str | None, brief: str | None, by: str, now: int) -> tuple[str, bool]:
    """A new open request, or the open one that asks exactly the same: (rtoken, whether it is new)."""
    if action not in ACTIONS:
        raise BadInput(f"action must be one of {', '.join(ACTIONS)}")
    if app is not None and not APP_PATTERN.match(app):
        raise BadInput("an app name matches ^[a-z][a-z0-9_]{1,30}$")
    aead = keys.get_many(conn, {data_key_id})[data_key_id]
    same = conn.execute(select(requests.c.rtoken, requests.c.change).where(
        requests.c.person_id == person_id, requests.c.action == action, requests.c.status == "open",
        requests.c.app.is_(None) if app is None else requests.c.app == app,
        requests.c.brief.is_(None) if brief is None else requests.c.brief == brief,
    ).order_by(requests.c.created_at))
    for row in same:
        stored = None if row.change is None else json.loads(unseal(aead, row.change, _aad(row.rtoken, "change")))
        if stored == change:
            return row.rtoken, False
    rtoken = str(uuid.uuid4())
    conn.execute(insert(requests).values(
        rtoken=rtoken, action=action, person_id=person_id, app=app, brief=brief, data_key_id=data_key_id,
        change=None if change is None else seal(aead, _encode(change), _aad(rtoken, "change")),
        status="open", requested_by=by[:128], created_at=now,
    ))
    return rtoken, True


def _row(conn: Connection, rtoken: str) -> Any:
    row = conn.execute(select(requests).where(requests.c.rtoken == check_rtoken(rtoken))).first()
    if row is None:
        raise NotFound("no such request")
    return row


def _open_change(conn: Connection, keys: DataKeys, row: Any, missing_ok: bool = False) -> Any:
    if row.change is None:
        return None
    aead = keys.get_many(conn, {row.data_key_id}).get(row.data_key_id)
    if aead is None:
        if missing_ok:
            return None
        raise NotFound("the person of this request was forgotten")
    return json.loads(unseal(aead, row.change, _aad(row.rtoken, "change")))


def _open_reason(conn: Connection, keys: DataKeys, row: Any) -> str | None:
    aead = None if row.reason is None else keys.get_many(conn, {row.data_key_id}).get(row.data_key_id)
    if aead is None:
        return None
    reason: str = json.loads(unseal(aead, row.reason, _aad(row.rtoken, "reason")))
    return reason


def as_dict(row: Any) -> dict[str, Any]:
    """A request as lists show it: what, whose, by whom, its state; never the change."""
    return {"rtoken": row.rtoken, "token": row.person_id, "action": row.action, "status": row.status,
            "app": row.app, "brief": row.brief, "when": row.created_at, "requestedby": row.requested_by,
            "decidedby": row.decided_by, "decided": row.decided_at}


def pending(conn: Connection, keys: DataKeys, rtoken: str) -> tuple[dict[str, Any], Pending]:
    """One request and its change, opened (None when the person was forgotten since: the key is gone)."""
    row = _row(conn, rtoken)
    found = as_dict(row)
    found["reason"] = _open_reason(conn, keys, row)
    change = _open_change(conn, keys, row, missing_ok=True)
    return found, Pending(row.rtoken, row.action, row.person_id, row.data_key_id, row.app, row.brief, change)


def listing(conn: Connection, status: str | None, offset: int, limit: int,
            person_id: str | None = None) -> tuple[int, list[dict[str, Any]]]:
    where = []
    if check_status(status) is not None:
        where.append(requests.c.status == status)
    if person_id is not None:
        where.append(requests.c.person_id == person_id)
    total = conn.execute(select(func.count()).select_from(requests).where(*where)).scalar_one()
    rows = conn.execute(select(requests).where(*where).order_by(requests.c.created_at, requests.c.rtoken)
                        .offset(offset).limit(limit))
    return total, [as_dict(row) for row in rows]


def _refuse_decided(row: Any) -> None:
    if row.status != "open":
        raise Conflict(f"this request is already {row.status}")


def claim(conn: Connection, keys: DataKeys, rtoken: str, by: str, now: int) -> Pending:
    """Mark an open request approved (before it is applied, so two approvers cannot both apply it)."""
    row = _row(conn, rtoken)
    _refuse_decided(row)
    change = _open_change(conn, keys, row)
    done = conn.execute(update(requests).where(requests.c.rtoken == rtoken, requests.c.status == "open")
                        .values(status="approved", decided_by=by[:128], decided_at=now))
    if done.rowcount != 1:
        raise Conflict("this request was decided meanwhile")
    return Pending(row.rtoken, row.action, row.person_id, row.data_key_id, row.app, row.brief, change)


def reopen(conn: Connection, rtoken: str) -> None:
    """Undo a claim whose change could not be applied: the request is open again."""
    conn.execute(update(requests).where(requests.c.rtoken == rtoken, requests.c.status == "approved")
                 .values(status="open", decided_by=None, decided_at=None))


def cancel(conn: Connection, keys: DataKeys, rtoken: str, reason: str | None, by: str, now: int) -> Pending:
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise BadInput(f"'reason' must be a string of at most {MAX_REASON_CHARS} characters")
    row = _row(conn, rtoken)
    _refuse_decided(row)
    aead = keys.get_many(conn, {row.data_key_id}).get(row.data_key_id)
    sealed = None if reason is None or aead is None else seal(aead, _encode(reason), _aad(rtoken, "reason"))
    done = conn.execute(update(requests).where(requests.c.rtoken == rtoken, requests.c.status == "open")
                        .values(status="canceled", decided_by=by[:128], decided_at=now, reason=sealed))
    if done.rowcount != 1:
        raise Conflict("this request was decided meanwhile")
    return Pending(row.rtoken, row.action, row.person_id, row.data_key_id, row.app, row.brief, None)


def purge_decided(conn: Connection, before: int, limit: int = 1000) -> int:
    """Delete approved and canceled requests decided before `before` (open ones wait for a DPO). Idempotent."""
    old = select(requests.c.rtoken).where(requests.c.status != "open", requests.c.decided_at < before).limit(limit)
    rtokens = [row.rtoken for row in conn.execute(old)]
    if not rtokens:
        return 0
    return conn.execute(delete(requests).where(requests.c.rtoken.in_(rtokens))).rowcount
