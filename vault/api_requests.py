"""API: DPO requests and retention (/v1/request(s), /v1/exp). A thin layer over the vault (see vault/web.py).

`request_if_needed` is what a view calls before applying an operation that the approval policy may hold for a DPO.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from vault import dporequests
from vault.config import ApprovalSettings
from vault.durations import parse_expiry
from vault.errors import BadInput
from vault.web import actor, list_args, object_body, request_body, requires, state

bp = Blueprint("requests", __name__, url_prefix="/v1")
_BY_LINK = "exptoken"  # who acts, in the audit trail, when a person follows their own retention link


def approval_policy() -> ApprovalSettings:
    config = state().config
    return config.approval if config is not None else ApprovalSettings()


def request_if_needed(action: str, mode: str, ident: str, change: Any = None, *, app: str | None = None,
                      brief: str | None = None) -> Response | None:
    """When the approval policy holds `action` for a DPO, store the request and answer request-created; else None,
    and the caller applies the operation itself. E.g. in PUT /v1/userapp/...:
    `if (held := request_if_needed("change-app-data", mode, ident, body, app=app)) is not None: return held`."""
    if not dporequests.needs_approval(approval_policy(), action, app):
        return None
    rtoken = state().vault.create_request(action, mode, ident, change, app=app, brief=brief, by=actor())
    return jsonify(status="ok", result="request-created", rtoken=rtoken)


def _status_arg() -> str | None:
    status = request.args.get("status")
    return dporequests.check_status(status or None)


@bp.get("/requests")
@requires("dpo")
def requests_list() -> Response:
    offset, limit = list_args()
    total, rows = state().vault.requests(_status_arg() or "open", offset, limit)
    return jsonify(status="ok", total=total, rows=rows)


@bp.get("/requests/<mode>/<path:ident>")
@requires("dpo")
def requests_of_person(mode: str, ident: str) -> Response:
    offset, limit = list_args()
    total, rows = state().vault.requests(_status_arg(), offset, limit, mode=mode, ident=ident)
    return jsonify(status="ok", total=total, rows=rows)


@bp.get("/request/<rtoken>")
@requires("dpo")
def request_get(rtoken: str) -> Response:
    return jsonify(status="ok", **state().vault.get_request(rtoken, by=actor()))


@bp.post("/request/<rtoken>")
@requires("dpo")
def request_approve(rtoken: str) -> Response:
    state().vault.approve_request(rtoken, by=actor())
    return jsonify(status="ok", result="done")


@bp.delete("/request/<rtoken>")
@requires("dpo")
def request_cancel(rtoken: str) -> Response:
    body = request_body() if request.content_length else {}
    if not isinstance(body, dict) or set(body) - {"reason"}:
        raise BadInput("the body may hold only {\"reason\": \"...\"}")
    reason = body.get("reason")
    state().vault.cancel_request(rtoken, reason or None, by=actor())
    return jsonify(status="ok", result="done")


@bp.post("/exp/start/<mode>/<path:ident>")
@requires("users:write")
def exp_start(mode: str, ident: str) -> Response:
    body = object_body()
    if "expiration" not in body or set(body) - {"expiration", "status"}:
        raise BadInput("the body is {\"expiration\": \"30d\" or a unix time, \"status\": \"wait\" or \"retain\"}")
    vault = state().vault
    now = vault.now()
    exptime = now + parse_expiry(body["expiration"], now, "expiration")
    exptoken = vault.start_expiration(mode, ident, exptime, body.get("status") or "wait", by=actor())
    return jsonify(status="ok", exptoken=exptoken)


@bp.get("/exp/status/<mode>/<path:ident>")
@requires("users:read")
def exp_status(mode: str, ident: str) -> Response:
    return jsonify(status="ok", **state().vault.expiration_status(mode, ident))


@bp.delete("/exp/cancel/<mode>/<path:ident>")
@requires("users:write")
def exp_cancel(mode: str, ident: str) -> Response:
    state().vault.cancel_expiration(mode, ident, by=actor())
    return jsonify(status="ok")


@bp.get("/exp/retain/<exptoken>")
def exp_retain(exptoken: str) -> Response:
    """The person's own link (no token, as Databunker): keep my record."""
    state().vault.retain_by_exptoken(exptoken, by=_BY_LINK)
    return jsonify(status="ok", result="done")


@bp.get("/exp/delete/<exptoken>")
def exp_delete(exptoken: str) -> Response:
    """The person's own link (no token, as Databunker): forget my record now."""
    state().vault.delete_by_exptoken(exptoken, by=_BY_LINK)
    return jsonify(status="ok", result="done")
