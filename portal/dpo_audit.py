"""The DPO console's audit search: find a person by email, phone, login or uuid and list their audit trail, newest
first; open one row's detail (which the vault records as the DPO's "audit-read"). The search is a POST, so an email
or phone number never goes into a URL; only the audit row's uuid does."""

from __future__ import annotations

import uuid
from typing import Any

from flask import abort, request

from portal import bp
from portal.auth import dpo_actor, dpo_required
from portal.dpo import page
from portal.security import check_csrf
from vault.web import state

MODES = {"email": "Email address", "phone": "Phone number", "login": "Login name", "token": "Person's uuid"}
PAGE = 50


@bp.get("/dpo/audit")
@dpo_required
def dpo_audit() -> Any:
    return page("dpo_audit.html", modes=MODES, mode="email", ident="")


def _person_of(mode: str, ident: str) -> str | None:
    """The person's uuid, also for a forgotten one when named by uuid (their audit rows stay)."""
    vault = state().vault
    found = vault.person_id_of(mode, ident)
    if found is None and mode == "token":
        try:
            person = str(uuid.UUID(ident))
        except ValueError:
            return None
        return person if vault.person_known(person) else None
    return found


@bp.post("/dpo/audit")
@dpo_required
def dpo_audit_search() -> Any:
    check_csrf()
    mode = request.form.get("mode", "email")
    ident = request.form.get("ident", "").strip()
    if mode not in MODES:
        mode = "email"
    if not ident:
        return page("dpo_audit.html", 400, modes=MODES, mode=mode, ident=ident,
                    notices=[("error", f"Enter the {MODES[mode].lower()} to search for.")])
    try:
        offset = max(0, int(request.form.get("offset", "0")))
    except ValueError:
        offset = 0
    person = _person_of(mode, ident)
    if person is None:
        return page("dpo_audit.html", 404, modes=MODES, mode=mode, ident=ident, searched=True,
                    notices=[("info", f"No person found with that {MODES[mode].lower()}.")])
    total, rows = state().vault.audit_trail(person, offset, PAGE)
    return page("dpo_audit.html", modes=MODES, mode=mode, ident=ident, searched=True, person=person, rows=rows,
                total=total, offset=offset, size=PAGE, alive=state().vault.person_id_of("token", person) is not None)


@bp.get("/dpo/audit/<atoken>")
@dpo_required
def dpo_audit_event(atoken: str) -> Any:
    try:
        atoken = str(uuid.UUID(atoken))
    except ValueError:
        abort(404)
    event = state().vault.audit_event(atoken, by=dpo_actor())
    return page("dpo_audit_event.html", event=event)
