"""Who is on the other end of a portal page: a person (the session cookie a login code opened) or a DPO (a console
session opened with an API token that holds the scope dpo, checked again on every request)."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any

from flask import g, redirect, request, url_for

from portal.security import DPO_COOKIE, PERSON_COOKIE, PRE_COOKIE, clear_cookie, set_cookie
from vault.apitokens import Grant
from vault.web import login_policy, state


def current_person() -> str | None:
    """The logged-in person's uuid, or None (no cookie, or a session that is idle, expired or logged out)."""
    if "person" not in g:
        token = request.cookies.get(PERSON_COOKIE, "")
        found = state().vault.person_session(token, login_policy()) if token.startswith("tbs_") else None
        g.person = None if found is None else found[1]
    person: str | None = g.person
    return person


def person_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if current_person() is None:
            return redirect(url_for("portal.home", expired=1 if request.cookies.get(PERSON_COOKIE) else None),
                            code=303)
        return view(*args, **kwargs)

    return checked


def current_dpo() -> Grant | None:
    """The DPO's grant: root, or a scoped token with the scope dpo that is still valid (not revoked or expired)."""
    if "dpo" not in g:
        g.dpo = None
        token = request.cookies.get(DPO_COOKIE, "")
        found = state().vault.console_session(token, login_policy()) if token.startswith("tbd_") else None
        if found is not None:
            g.dpo = grant_of(found[1])
    dpo: Grant | None = g.dpo
    return dpo


def grant_of(token_hash: bytes) -> Grant | None:
    """The grant behind an API token's keyed hash, if it may use the DPO console."""
    api = state()
    if hmac.compare_digest(token_hash, api.root_token_hash):
        return Grant.root()
    grant = api.vault.grant_for(token_hash)
    return grant if grant is not None and grant.allows("dpo") else None


def dpo_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if current_dpo() is None:
            return redirect(url_for("portal.dpo_login"), code=303)
        return view(*args, **kwargs)

    return checked


def dpo_actor() -> str:
    grant = current_dpo()
    assert grant is not None
    return "dpo:root" if grant.id == "root" else f"dpo:{grant.name}:{grant.id}"


def signed_in(endpoint: str, cookie: str, token: str) -> Any:
    """After a login: to `endpoint`, with the session in its cookie and the pre-session cookie gone."""
    response = redirect(url_for(endpoint), code=303)
    set_cookie(response, cookie, token)
    clear_cookie(response, PRE_COOKIE)
    return response


def signed_out(cookie: str, prefix: str, endpoint: str) -> Any:
    """A logout: the session ends in the vault (not only in the browser), then to `endpoint` saying so."""
    token = request.cookies.get(cookie, "")
    if token.startswith(prefix):
        state().vault.logout(token)
    response = redirect(url_for(endpoint, out=1), code=303)
    clear_cookie(response, cookie)
    return response
