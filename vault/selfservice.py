"""What a person sees of themselves (the portal's "My data", "Download my data" and "Who used my data"): their
profile, app records, sessions, consents, and every token the sidecar made for them, revealed, grouped by kind and
by the route that made it; and their audit trail with its details opened, since the details are theirs."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, select

from vault import apprecords, audit, consents, people, registry, sessions
from vault.crypto import unseal
from vault.datakeys import DataKeys
from vault.models import audit_table, tokens_table
from vault.people import PersonRef
from vault.tokenplan import aad as token_aad

MAX_TOKENS = 5000  # shown and exported per person: a bound, not a page


def owned_tokens(conn: Connection, keys: DataKeys, ref: PersonRef, now: int) -> list[dict[str, Any]]:
    """The person's live tokens with their values, oldest first."""
    rows = conn.execute(
        select(tokens_table.c.token, tokens_table.c.kind, tokens_table.c.format, tokens_table.c.value,
               tokens_table.c.route, tokens_table.c.created_at, tokens_table.c.expires_at)
        .where(tokens_table.c.owner_id == ref.id).order_by(tokens_table.c.created_at).limit(MAX_TOKENS)
    ).all()
    aead = keys.get_many(conn, {ref.data_key_id}).get(ref.data_key_id)
    out = []
    for row in rows:
        if aead is None or (row.expires_at is not None and row.expires_at <= now):
            continue
        out.append({"token": row.token, "kind": row.kind, "format": row.format, "route": row.route,
                    "value": unseal(aead, row.value, token_aad(row.token, row.kind)).decode(),
                    "created": row.created_at, "expires": row.expires_at})
    return out


def group_tokens(tokens: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By kind, then by route: [{kind, routes: [{route, found: [values...]}]}], without repeats."""
    kinds: dict[str, dict[str | None, list[str]]] = {}
    for t in tokens:
        values = kinds.setdefault(t["kind"], {}).setdefault(t["route"], [])
        if t["value"] not in values:
            values.append(t["value"])
    return [{"kind": kind, "routes": [{"route": route, "found": values} for route, values in routes.items()]}
            for kind, routes in sorted(kinds.items())]


def overview(conn: Connection, keys: DataKeys, ref: PersonRef, now: int) -> dict[str, Any]:
    apps = {app: apprecords.read(conn, keys, ref.id, ref.data_key_id, app) for app in apprecords.apps_of(conn, ref.id)}
    agreed = consents.listing(conn, ref.id, now)
    return {
        "token": ref.id,
        "profile": people.read(conn, keys, ref),
        "apps": apps,
        "sessions": [s.as_dict() for s in sessions.list_for(conn, keys, ref.id, now, 0, 100)[1]],
        "consents": [c.as_dict() for c in agreed],
        "tokens": owned_tokens(conn, keys, ref, now),
    }


def consent_choices(conn: Connection, ref: PersonRef, now: int) -> list[dict[str, Any]]:
    """Every active purpose a person can agree to (the legal bases), with their answer; and purposes they
    answered that no legal basis describes (the sidecar's, say)."""
    answers = {c.brief: c for c in consents.listing(conn, ref.id, now)}
    _total, bases = registry.list_bases(conn, 0, 1000)
    out = []
    for basis in bases:
        if basis.get("status") == "deleted" and basis["brief"] not in answers:
            continue
        answer = answers.pop(basis["brief"], None)
        out.append({**basis, "answer": None if answer is None else answer.as_dict()})
    for brief, answer in sorted(answers.items()):
        out.append({"brief": brief, "shortdesc": brief, "fulldesc": "", "usercontrol": True, "status": "active",
                    "answer": answer.as_dict()})
    return out


def trail(conn: Connection, keys: DataKeys, ref: PersonRef, limit: int = 200) -> list[dict[str, Any]]:
    """The person's audit rows, newest first, with details opened (they are the person's own)."""
    rows = conn.execute(select(audit_table).where(audit_table.c.person_id == ref.id)
                        .order_by(audit_table.c.seq.desc()).limit(limit)).all()
    aead = keys.get_many(conn, {ref.data_key_id}).get(ref.data_key_id)
    out = []
    for row in rows:
        detail = None
        if row.detail is not None and aead is not None and row.data_key_id == ref.data_key_id:
            detail = json.loads(unseal(aead, bytes(row.detail), audit._aad(row.atoken)))
        out.append({"atoken": row.atoken, "when": row.at, "who": row.actor, "action": row.action,
                    "route": row.route, "status": row.status, "detail": detail})
    return out

