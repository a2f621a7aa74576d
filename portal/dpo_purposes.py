"""The DPO console's purposes: the legal bases people can agree to (Databunker's lbasis) and the processing
activities that rely on them (Databunker's pactivity): list, add or replace, link and unlink, delete."""

from __future__ import annotations

from typing import Any

from flask import redirect, request, url_for

from portal import bp
from portal.auth import dpo_actor, dpo_required
from portal.dpo import page
from portal.security import check_csrf
from vault.errors import VaultError
from vault.registry import BASIS_STATUSES, BASIS_TYPES
from vault.web import state

BASIS_TEXT = ("module", "shortdesc", "fulldesc", "requiredmsg")
BASIS_FLAGS = ("usercontrol", "requiredflag")
ACTIVITY_TEXT = ("title", "script", "fulldesc", "applicableto")
TYPE_WORDS = {"consent": "Consent", "contract": "Contract", "legal-requirement": "Legal requirement",
              "vital-interest": "Vital interest", "public-interest": "Public interest",
              "legitimate-interest": "Legitimate interest"}
_ALL = 1000  # a console lists every purpose: there are tens, not thousands


def _purposes_page(status: int = 200, notices: list[tuple[str, str]] | None = None, basis: dict[str, Any] | None = None,
                   activity: dict[str, Any] | None = None) -> Any:
    vault = state().vault
    _total, bases = vault.legal_bases(0, _ALL)
    _total, activities = vault.activities(0, _ALL)
    editing = request.args.get("edit", "")
    if basis is None:
        basis = next((b for b in bases if b["brief"] == editing), None) or {"basistype": "consent", "status": "active"}
    return page("dpo_purposes.html", status, bases=bases, activities=activities, basis=basis, activity=activity or {},
                types=BASIS_TYPES, type_words=TYPE_WORDS, basis_statuses=BASIS_STATUSES, notices=notices or [])


def _refused(exc: VaultError, **kept: Any) -> Any:
    if exc.status >= 500:
        raise exc
    return _purposes_page(exc.status, [("error", f"That did not work: {exc.message}.")], **kept)


@bp.get("/dpo/purposes")
@dpo_required
def dpo_purposes() -> Any:
    return _purposes_page()


@bp.post("/dpo/purposes/bases")
@dpo_required
def dpo_basis_save() -> Any:
    check_csrf()
    brief = request.form.get("brief", "").strip()
    body: dict[str, Any] = {name: request.form.get(name, "") for name in BASIS_TEXT}
    body.update({name: request.form.get(name) == "yes" for name in BASIS_FLAGS})
    body.update(basistype=request.form.get("basistype", ""), status=request.form.get("status", ""))
    try:
        state().vault.set_legal_basis(brief, body, by=dpo_actor())
    except VaultError as exc:
        return _refused(exc, basis={"brief": brief, **body})
    return redirect(url_for("portal.dpo_purposes", saved=1), code=303)


@bp.post("/dpo/purposes/bases/<brief>/delete")
@dpo_required
def dpo_basis_delete(brief: str) -> Any:
    check_csrf()
    try:
        revoked = state().vault.delete_legal_basis(brief, by=dpo_actor())
    except VaultError as exc:
        return _refused(exc)
    if revoked:
        return _purposes_page(notices=[("ok", f"Deleted. {revoked} consent{'s' if revoked != 1 else ''} given for "
                                              "it were revoked; the purpose is kept, marked deleted, for them.")])
    return redirect(url_for("portal.dpo_purposes", deleted=1), code=303)


@bp.post("/dpo/purposes/activities")
@dpo_required
def dpo_activity_save() -> Any:
    check_csrf()
    name = request.form.get("activity", "").strip()
    body = {field: request.form.get(field, "") for field in ACTIVITY_TEXT}
    try:
        state().vault.set_activity(name, body, by=dpo_actor())
    except VaultError as exc:
        return _refused(exc, activity={"activity": name, **body})
    return redirect(url_for("portal.dpo_purposes", saved=1), code=303)


@bp.post("/dpo/purposes/activities/<activity>/delete")
@dpo_required
def dpo_activity_delete(activity: str) -> Any:
    check_csrf()
    try:
        state().vault.delete_activity(activity, by=dpo_actor())
    except VaultError as exc:
        return _refused(exc)
    return redirect(url_for("portal.dpo_purposes", deleted=1), code=303)


@bp.post("/dpo/purposes/activities/<activity>/link")
@dpo_required
def dpo_activity_link(activity: str) -> Any:
    check_csrf()
    try:
        state().vault.link_activity(activity, request.form.get("brief", ""), by=dpo_actor())
    except VaultError as exc:
        return _refused(exc)
    return redirect(url_for("portal.dpo_purposes", linked=1), code=303)


@bp.post("/dpo/purposes/activities/<activity>/unlink")
@dpo_required
def dpo_activity_unlink(activity: str) -> Any:
    check_csrf()
    try:
        state().vault.unlink_activity(activity, request.form.get("brief", ""), by=dpo_actor())
    except VaultError as exc:
        return _refused(exc)
    return redirect(url_for("portal.dpo_purposes", unlinked=1), code=303)
