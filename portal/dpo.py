"""The DPO console: log in with an API token (root, or one holding the scope dpo), review the requests that wait for
approval with a before/after view of each change, approve or cancel them with a reason. Purposes and processing
activities are in portal/dpo_purposes.py, the audit search in portal/dpo_audit.py.

The API token is pasted into a form (never a URL), hashed at once, and exchanged for a console session cookie
(tbd_...); the session checks the API token again on every request, so revoking it ends the session."""

from __future__ import annotations

import json
from typing import Any

from flask import abort, redirect, render_template, request, url_for

from portal import bp
from portal.auth import current_dpo, dpo_actor, dpo_required, grant_of, signed_in, signed_out
from portal.security import DPO_COOKIE, check_csrf
from vault import dporequests
from vault.errors import BadInput, NotFound, RateLimited, Unauthorized, VaultError
from vault.login import DPO_PREFIX
from vault.patching import PatchError, apply_change
from vault.web import client_address, login_policy, state

NAV = [("portal.dpo_home", "Requests"), ("portal.dpo_purposes", "Purposes"), ("portal.dpo_audit", "Audit")]
FLAGS = {  # ?flag=1 after a redirect: which notice to show (never data in a URL)
    "approved": ("ok", "Approved: the change is applied."),
    "canceled": ("ok", "Canceled: nothing was changed, and your reason is recorded."),
    "saved": ("ok", "Saved."),
    "deleted": ("ok", "Deleted."),
    "linked": ("ok", "Linked."),
    "unlinked": ("ok", "Unlinked."),
    "out": ("ok", "You are logged out of the DPO console."),
}
WRONG_TOKEN = "That token cannot open the DPO console. Check that you pasted all of it, and that it is the root " \
              "token or a token with the scope dpo that has not been revoked or expired."
ACTION_WORDS = {"forget-me": "Forget this person", "change-profile": "Change their profile",
                "change-app-data": "Change their app data", "agreement-withdraw": "Withdraw a consent"}
STATUS_WORDS = {"open": "Open", "approved": "Approved", "canceled": "Canceled"}
PAGE = 50


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    """A console page: its notices (from flags and the view), the console's nav once logged in."""
    notices = [FLAGS[name] for name in FLAGS if request.args.get(name)] + list(context.pop("notices", []))
    nav = NAV if current_dpo() is not None else None
    return render_template(template, nav=nav, logout_endpoint="portal.dpo_logout", home_endpoint="portal.dpo_home",
                           notices=notices,
                           actions=ACTION_WORDS, statuses=STATUS_WORDS, asker=asker, **context), status


@bp.app_template_filter("pretty")
def pretty(value: Any) -> str:
    """JSON for people to read (the page escapes it, as any text; tojson would show <, > and & as \\u escapes)."""
    return json.dumps(value, ensure_ascii=False, indent=2)


def asker(actor: str | None) -> str:
    """Who asked, in plain words (the audit trail's actor names, never a token)."""
    actor = actor or ""
    if actor == "self":
        return "The person, in the portal or with their own session"
    if actor == "root":
        return "The root token"
    if actor.startswith("xtoken:"):
        return f"The application “{actor.split(':')[1]}”"
    if actor.startswith("dpo:"):
        return "The DPO console"
    return actor or "Unknown"


def offset_arg() -> int:
    try:
        return max(0, int(request.args.get("offset", "0")))
    except ValueError:
        return 0


# -- logging in ------------------------------------------------------------------------------------------------------


def _idle_minutes() -> int:
    return max(1, login_policy().session_idle // 60)


@bp.get("/dpo/login")
def dpo_login() -> Any:
    if current_dpo() is not None:
        return redirect(url_for("portal.dpo_home"), code=303)
    return page("dpo_login.html", idle=_idle_minutes())


@bp.post("/dpo/login")
def dpo_login_submit() -> Any:
    check_csrf()
    token = request.form.get("token", "").strip()
    if not token:
        return page("dpo_login.html", 400, idle=_idle_minutes(), notices=[("error", "Paste your API token first.")])
    vault = state().vault
    digest = vault.keyring.api_token_hash(token)
    del token  # only its keyed hash goes on
    try:
        session = vault.console_login(grant_of(digest), digest, client_address(), login_policy())
    except Unauthorized:
        return page("dpo_login.html", 401, idle=_idle_minutes(), notices=[("error", WRONG_TOKEN)])
    except RateLimited as exc:
        locked = f"Too many wrong tokens from your address: {exc.message}."
        return page("dpo_login.html", 429, idle=_idle_minutes(), notices=[("error", locked)])
    return signed_in("portal.dpo_home", DPO_COOKIE, session)


@bp.post("/dpo/logout")
def dpo_logout() -> Any:
    check_csrf()
    return signed_out(DPO_COOKIE, DPO_PREFIX, "portal.dpo_login")


# -- requests --------------------------------------------------------------------------------------------------------


@bp.get("/dpo")
@dpo_required
def dpo_home() -> Any:
    status = request.args.get("status", "open")
    if status not in dporequests.STATUSES:
        status = "open"
    offset = offset_arg()
    total, rows = state().vault.requests(status, offset, PAGE)
    return page("dpo_requests.html", rows=rows, total=total, shown=status, offset=offset, size=PAGE)


_MISSING = object()


def _flatten(value: Any, path: str = "") -> dict[str, Any]:
    """{"address": {"city": "X"}} as {"address.city": "X"}: nested fields as rows of a table."""
    if isinstance(value, dict) and (value or not path):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{path}.{key}" if path else str(key)))
        return out
    return {path: value}


def _shown(value: Any) -> str | None:
    if value is _MISSING:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def changed_fields(before: Any, after: Any) -> list[dict[str, Any]]:
    """The fields a change adds, changes or removes: field, before and after as text (None: not there)."""
    old, new = _flatten(before or {}), _flatten(after or {})
    rows = []
    for field in sorted(set(old) | set(new)):
        was, will = old.get(field, _MISSING), new.get(field, _MISSING)
        if was is _MISSING or will is _MISSING or was != will:
            rows.append({"field": field, "before": _shown(was), "after": _shown(will)})
    return rows


def _app_views(found: dict[str, Any]) -> tuple[Any, Any]:
    """An app record now and once the change applies (the vault's request view leaves app data to its reader)."""
    req, change = found["request"], found["change"]
    if change is None:
        return None, None
    try:
        _person, before = state().vault.get_app_record("token", req["token"], req["app"], by=dpo_actor())
    except NotFound:
        before = {}
    try:
        return before, apply_change(before, change)
    except PatchError:
        return before, None


def _request_page(rtoken: str, status: int = 200, notices: list[tuple[str, str]] | None = None,
                  failed: str | None = None) -> Any:
    """A request with its before/after view; `failed`: why approving or canceling it just did not work."""
    vault = state().vault
    found = vault.get_request(_rtoken(rtoken), by=dpo_actor())
    req = found["request"]
    before, after = found["before"], found["after"]
    forgotten = vault.person_id_of("token", req["token"]) is None
    if req["action"] == "change-app-data" and req["status"] == "open" and not forgotten:
        before, after = _app_views(found)
    basis = None
    if req["action"] == "agreement-withdraw":
        basis = next((b for b in vault.legal_bases(0, 1000)[1] if b["brief"] == req["brief"]), None)
    notices = list(notices or [])
    if failed is not None:
        notices.append(("warn", "This request was already decided.") if req["status"] != "open" else
                       ("error", f"That did not work: {failed}."))
    return page("dpo_request.html", status, req=req, change=found["change"], before=before, after=after,
                rows=changed_fields(before, after) if after is not None else [], basis=basis, forgotten=forgotten,
                notices=notices)


def _rtoken(rtoken: str) -> str:
    try:
        return dporequests.check_rtoken(rtoken)
    except BadInput:
        abort(404)


@bp.get("/dpo/requests/<rtoken>")
@dpo_required
def dpo_request(rtoken: str) -> Any:
    return _request_page(rtoken)


@bp.post("/dpo/requests/<rtoken>/approve")
@dpo_required
def dpo_approve(rtoken: str) -> Any:
    check_csrf()
    try:
        state().vault.approve_request(_rtoken(rtoken), by=dpo_actor())
    except VaultError as exc:
        if exc.status >= 500:
            raise
        # Decided meanwhile, or the change could not be applied (the request is then open again).
        return _request_page(rtoken, exc.status, failed=exc.message)
    return redirect(url_for("portal.dpo_home", approved=1), code=303)


@bp.post("/dpo/requests/<rtoken>/cancel")
@dpo_required
def dpo_cancel(rtoken: str) -> Any:
    check_csrf()
    reason = request.form.get("reason", "").strip()
    if not reason:
        return _request_page(rtoken, 400, [("error", "Write the reason for canceling: the person is entitled to "
                                                     "know why their request was refused.")])
    try:
        state().vault.cancel_request(_rtoken(rtoken), reason, by=dpo_actor())
    except VaultError as exc:
        if exc.status >= 500:
            raise
        return _request_page(rtoken, exc.status, failed=exc.message)
    return redirect(url_for("portal.dpo_home", canceled=1), code=303)


from portal import dpo_audit, dpo_purposes  # noqa: E402,F401  (their views attach to bp too)
