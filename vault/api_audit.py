"""API: the audit trail, backup and metrics (/v1/audit, /v1/sys/backup, /v1/metrics). A thin layer over the vault (see
vault/web.py).
"""

from __future__ import annotations

import time
import uuid

from flask import Blueprint, Response, current_app, jsonify, request

from vault.errors import BadInput, NotFound
from vault.metrics import RequestCounter, render
from vault.web import actor, list_args, requires, state

bp = Blueprint("audit", __name__, url_prefix="/v1")
_COUNTER = "tokenbunker.requests"


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadInput(f"{what} must be a uuid") from None


@bp.get("/audit/admin")
@requires("audit:read")
def audit_admin() -> Response:
    offset, limit = list_args()
    total, rows = state().vault.audit_trail(None, offset, limit)
    return jsonify(status="ok", total=total, rows=rows)


@bp.get("/audit/list/<token>")
@requires("audit:read")
def audit_list(token: str) -> Response:
    person = _uuid(token, "the person token")
    offset, limit = list_args()
    vault = state().vault
    total, rows = vault.audit_trail(person, offset, limit)
    if total == 0 and not vault.person_known(person):
        raise NotFound("person not found")
    return jsonify(status="ok", total=total, rows=rows)


@bp.get("/audit/get/<atoken>")
@requires("audit:read")
def audit_get(atoken: str) -> Response:
    event = state().vault.audit_event(_uuid(atoken, "atoken"), by=actor())
    return jsonify(status="ok", event=event)


@bp.get("/sys/backup")
@requires("root")
def sys_backup() -> Response:
    """A consistent, still-encrypted dump as JSON lines; `tokenbunker restore FILE` reads it."""
    lines = state().vault.backup_lines(by=actor())
    name = time.strftime("tokenbunker-%Y%m%dT%H%M%SZ.jsonl", time.gmtime())
    return Response(lines, mimetype="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


@bp.get("/metrics")
@requires("metrics")
def metrics() -> Response:
    samples = state().vault.metrics() + _counter().samples()
    return Response(render(samples), content_type="text/plain; version=0.0.4; charset=utf-8")


def _counter() -> RequestCounter:
    found: RequestCounter = current_app.extensions.setdefault(_COUNTER, RequestCounter())
    return found


@bp.after_app_request
def _count(response: Response) -> Response:
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    _counter().add(rule, request.method, response.status_code)
    return response
