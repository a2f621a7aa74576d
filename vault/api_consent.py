"""API: legal bases, processing activities and agreements beyond the basics (/v1/lbasis, /v1/pactivity,
/v1/agreements). A thin layer over the vault (see vault/web.py).

Reads need the scope "consent"; changes to the registry, and revoking a purpose for everyone, need "dpo".
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from vault.web import actor, list_args, object_body, requires, state

bp = Blueprint("consent", __name__, url_prefix="/v1")


def _optional_body() -> dict[str, Any]:
    """Every field of these bodies is optional: no body is an empty one."""
    return object_body() if request.content_length else {}


@bp.get("/lbasis")
@requires("consent")
def lbasis_list() -> Response:
    total, rows = state().vault.legal_bases(*list_args())
    return jsonify(status="ok", total=total, rows=rows)


@bp.post("/lbasis/<brief>")
@requires("dpo")
def lbasis_set(brief: str) -> Response:
    state().vault.set_legal_basis(brief, _optional_body(), by=actor())
    return jsonify(status="ok")


@bp.delete("/lbasis/<brief>")
@requires("dpo")
def lbasis_delete(brief: str) -> Response:
    revoked = state().vault.delete_legal_basis(brief, by=actor())
    return jsonify(status="ok", revoked=revoked)


@bp.get("/pactivity")
@requires("consent")
def pactivity_list() -> Response:
    total, rows = state().vault.activities(*list_args())
    return jsonify(status="ok", total=total, rows=rows)


@bp.post("/pactivity/<activity>")
@requires("dpo")
def pactivity_set(activity: str) -> Response:
    state().vault.set_activity(activity, _optional_body(), by=actor())
    return jsonify(status="ok")


@bp.delete("/pactivity/<activity>")
@requires("dpo")
def pactivity_delete(activity: str) -> Response:
    state().vault.delete_activity(activity, by=actor())
    return jsonify(status="ok")


@bp.post("/pactivity/<activity>/<brief>")
@requires("dpo")
def pactivity_link(activity: str, brief: str) -> Response:
    state().vault.link_activity(activity, brief, by=actor())
    return jsonify(status="ok")


@bp.delete("/pactivity/<activity>/<brief>")
@requires("dpo")
def pactivity_unlink(activity: str, brief: str) -> Response:
    state().vault.unlink_activity(activity, brief, by=actor())
    return jsonify(status="ok")


@bp.get("/agreements/<mode>/<path:ident>")
@requires("consent")
def agreements_list(mode: str, ident: str) -> Response:
    offset, limit = list_args()
    rows = state().vault.agreements(mode, ident, by=actor())
    return jsonify(status="ok", total=len(rows), rows=rows[offset:offset + limit])


@bp.delete("/agreement/<brief>")
@requires("dpo")
def agreement_revoke_all(brief: str) -> Response:
    revoked = state().vault.revoke_consent_all(brief, by=actor())
    return jsonify(status="ok", revoked=revoked)
