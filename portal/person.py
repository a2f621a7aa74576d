"""The person's pages: log in with a one-time code, see their data, correct it, consents, download, forget me, and
who used their data. Every form carries a CSRF token; no page puts personal data in its URL."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, redirect, render_template, request, url_for

from portal import bp
from portal.auth import current_person, person_required, signed_in, signed_out
from portal.security import PERSON_COOKIE, check_csrf, clear_cookie
from portal.words import KIND_TITLES, ago, sentence
from vault.config import ApprovalSettings
from vault.errors import BadInput, Conflict, NotFound, RateLimited, Unauthorized, Unavailable
from vault.login import SESSION_PREFIX
from vault.web import client_address, login_policy, send_login_code, state

NAV = [("portal.me", "My data"), ("portal.consents", "Consents"), ("portal.activity", "Who used my data"),
       ("portal.export", "Download my data"), ("portal.forget", "Forget me")]
FLAGS = {  # ?flag=1 after a redirect: which notice to show (never data in a URL)
    "saved": ("ok", "Your changes are saved."),
    "sent": ("info", "Your change was sent to our data protection officer. You will see it here once approved."),
    "given": ("ok", "Thank you: your consent is recorded."),
    "withdrawn": ("ok", "Your consent is withdrawn. We stop using your data for that purpose now."),
    "withdraw-sent": ("info", "Your withdrawal was sent to our data protection officer for approval."),
    "forget-sent": ("info", "Your request to be forgotten was sent to our data protection officer. Once it is "
                            "approved your data is deleted and you can no longer log in here."),
    "out": ("ok", "You are logged out."),
    "expired": ("warn", "Your session ended. Please log in again."),
}


def _page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    notices = [FLAGS[name] for name in FLAGS if request.args.get(name)] + list(context.pop("notices", []))
    nav = NAV if current_person() is not None else None
    return render_template(template, nav=nav, notices=notices, **context), status


def _flagged(endpoint: str, flag: str) -> str:
    return url_for(endpoint) + f"?{flag}=1"


def _policy() -> ApprovalSettings:
    config = state().config
    return config.approval if config is not None else ApprovalSettings()


def _mode_of(identity: str) -> str:
    return "email" if "@" in identity else "phone"


# -- logging in ------------------------------------------------------------------------------------------------------


@bp.get("/")
def home() -> Any:
    if current_person() is not None:
        return redirect(url_for("portal.me"), code=303)
    return _page("login.html")


@bp.post("/login")
def login_start() -> Any:
    check_csrf()
    identity = request.form.get("identity", "").strip()
    if not identity:
        return _page("login.html", 400, notices=[("error", "Enter your email address or phone number.")])
    mode = _mode_of(identity)
    try:
        send_login_code(mode, identity, client_address())
    except BadInput:
        return _page("login.html", 400, identity=identity, notices=[
            ("error", "That does not look like an email address or a phone number. Please check it.")])
    except (RateLimited, Unavailable) as exc:
        return _page("login.html", exc.status, identity=identity, notices=[("error", exc.message)])
    # The same page whether or not we know this identity: nobody learns who has data here.
    return _page("code.html", identity=identity, mode=mode, minutes=max(1, login_policy().code_ttl // 60))


@bp.post("/login/code")
def login_finish() -> Any:
    check_csrf()
    identity = request.form.get("identity", "").strip()
    code = "".join(request.form.get("code", "").split())
    mode = _mode_of(identity)
    minutes = max(1, login_policy().code_ttl // 60)
    try:
        _person, token = state().vault.login(mode, identity, code, client_address(), login_policy())
    except (Unauthorized, BadInput):
        return _page("code.html", 401, identity=identity, mode=mode, minutes=minutes, notices=[
            ("error", "That code is wrong or has expired. Check it, or ask for a new one.")])
    except RateLimited as exc:
        return _page("code.html", 429, identity=identity, mode=mode, minutes=minutes,
                     notices=[("error", exc.message)])
    return signed_in("portal.me", PERSON_COOKIE, token)


@bp.post("/logout")
def logout() -> Any:
    check_csrf()
    return signed_out(PERSON_COOKIE, SESSION_PREFIX, "portal.home")


# -- my data ---------------------------------------------------------------------------------------------------------


def _person() -> str:
    person = current_person()
    assert person is not None  # person_required
    return person


@bp.get("/me")
@person_required
def me() -> Any:
    from vault.selfservice import group_tokens

    data = state().vault.my_data(_person())
    return _page("me.html", data=data, groups=group_tokens(data["tokens"]), now=state().vault.now(),
                 kind_words=KIND_TITLES)


def _editable(profile: dict[str, Any]) -> list[tuple[str, str]]:
    """Top-level text and number fields, as the form shows them; nested ones are shown, not edited here."""
    return [(k, "" if v is None else str(v)) for k, v in profile.items()
            if v is None or (isinstance(v, str | int | float) and not isinstance(v, bool))]


def _fixed(profile: dict[str, Any]) -> list[str]:
    editable = {k for k, _v in _editable(profile)}
    return [k for k in profile if k not in editable]


@bp.get("/me/edit")
@person_required
def edit() -> Any:
    profile = state().vault.my_data(_person())["profile"]
    return _page("edit.html", fields=_editable(profile), fixed=_fixed(profile),
                 dpo=_policy().change_profile == "dpo")


@bp.post("/me/edit")
@person_required
def edit_save() -> Any:
    check_csrf()
    vault = state().vault
    profile = vault.my_data(_person())["profile"]
    patch: dict[str, Any] = {}
    for key, old in _editable(profile):
        if f"field.{key}" not in request.form:
            continue
        new = request.form[f"field.{key}"].strip()
        if new != old:
            patch[key] = new or None  # emptied: the field is removed
    if not patch:
        return redirect(url_for("portal.me"), code=303)
    try:
        result, _ref = vault.apply_or_request(_policy(), "change-profile", "token", _person(), patch, by="self")
    except (BadInput, Conflict) as exc:
        typed = [(k, request.form.get(f"field.{k}", v)) for k, v in _editable(profile)]
        return _page("edit.html", exc.status, fields=typed, fixed=_fixed(profile),
                     dpo=_policy().change_profile == "dpo", notices=[("error", _friendly(exc.message))])
    return redirect(_flagged("portal.me", "sent" if result == "request-created" else "saved"), code=303)


def _friendly(message: str) -> str:
    if "duplicate index" in message:
        return "That email address or phone number is already used by another record."
    if "must remain" in message:
        return "Keep at least one way to reach you (email or phone)."
    return f"That change could not be saved: {message}."


# -- consents --------------------------------------------------------------------------------------------------------


@bp.get("/me/consents")
@person_required
def consents() -> Any:
    return _page("consents.html", choices=state().vault.my_consents(_person()),
                 dpo=_policy().agreement_withdraw == "dpo")


@bp.post("/me/consents/<brief>")
@person_required
def consent_change(brief: str) -> Any:
    check_csrf()
    vault = state().vault
    action = request.form.get("action")
    if action == "give":
        vault.give_consent(brief, "token", _person(), method="portal", by="self", modified_by="self")
        return redirect(url_for("portal.consents", given=1), code=303)
    if action == "withdraw":
        try:
            result, _ref = vault.apply_or_request(_policy(), "agreement-withdraw", "token", _person(), brief=brief,
                                                  by="self")
        except NotFound:
            return redirect(url_for("portal.consents"), code=303)  # nothing to withdraw
        return redirect(_flagged("portal.consents", "withdraw-sent" if result == "request-created" else "withdrawn"),
                        code=303)
    raise BadInput("choose give or withdraw")


# -- download, activity, forget me -----------------------------------------------------------------------------------


@bp.get("/me/export")
@person_required
def export() -> Response:
    vault = state().vault
    data = vault.my_data(_person(), action="export")
    document = {"format": "tokenbunker-personal-data", "version": 1, "exported": vault.now(), **data,
                "activity": vault.my_activity(_person(), limit=10_000)}
    body = json.dumps(document, ensure_ascii=False, indent=2)
    return Response(body, mimetype="application/json", headers={
        "Content-Disposition": 'attachment; filename="my-data.json"'})


@bp.get("/me/activity")
@person_required
def activity() -> Any:
    vault = state().vault
    now = vault.now()
    rows = [{"text": sentence(row), "ago": ago(now - row["when"]), "when": row["when"], "status": row["status"]}
            for row in vault.my_activity(_person())]
    return _page("activity.html", rows=rows)


def _forget_pending() -> bool:
    _total, rows = state().vault.requests("open", 0, 100, mode="token", ident=_person())
    return any(row["action"] == "forget-me" for row in rows)


@bp.get("/me/forget")
@person_required
def forget() -> Any:
    return _page("forget.html", dpo=_policy().forget_me == "dpo", pending=_forget_pending())


@bp.post("/me/forget")
@person_required
def forget_confirm() -> Any:
    check_csrf()
    if request.form.get("confirm") != "yes":
        return _page("forget.html", 400, dpo=_policy().forget_me == "dpo", pending=False,
                     notices=[("error", "Tick the box to confirm that you want your data deleted.")])
    vault = state().vault
    if _forget_pending():
        return redirect(_flagged("portal.forget", "forget-sent"), code=303)  # asked already: not twice
    result, _ref = vault.apply_or_request(_policy(), "forget-me", "token", _person(), by="self")
    if result == "request-created":
        return redirect(_flagged("portal.me", "forget-sent"), code=303)
    response = Response(render_template("forgotten.html", nav=None, notices=()))
    clear_cookie(response, PERSON_COOKIE)
    return response
