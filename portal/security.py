"""What keeps the portal safe: CSRF tokens on every form, cookies that scripts and other sites cannot use, a strict
Content-Security-Policy (the portal runs no script at all), and no caching of pages that show personal data.

CSRF tokens are keyed hashes of the cookie they belong to (the session's, or before login a random pre-session
cookie), so they need no server state and die with the session.
"""

from __future__ import annotations

import hmac
import secrets

from flask import abort, g, request
from werkzeug.wrappers import Response

from vault.web import state

PERSON_COOKIE = "tb_session"
DPO_COOKIE = "tb_console"
PRE_COOKIE = "tb_pre"
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")


def _binding() -> str:
    """The cookie this request's forms are bound to; a new pre-session cookie when there is none yet."""
    for name in (DPO_COOKIE, PERSON_COOKIE, PRE_COOKIE):
        value = request.cookies.get(name)
        if value:
            return f"{name}={value}"
    if "new_pre" not in g:
        g.new_pre = secrets.token_urlsafe(32)
    return f"{PRE_COOKIE}={g.new_pre}"


def csrf_token() -> str:
    return state().vault.keyring.lookup_hash("portal-csrf", _binding()).hex()


def check_csrf() -> None:
    """Every POST carries the token of the cookie it came with; anything else is refused before it is read."""
    given = request.form.get("csrf", "")
    if "new_pre" in g or not hmac.compare_digest(given, csrf_token()):
        abort(400, "This form has expired or did not come from this site. Go back, reload the page and try again.")


def set_cookie(response: Response, name: str, value: str) -> None:
    response.set_cookie(name, value, httponly=True, samesite="Strict", secure=request.is_secure, path="/")


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="Strict", secure=request.is_secure)


def harden(response: Response) -> Response:
    """Headers on every portal answer; a pre-session cookie minted while rendering is set here."""
    if "new_pre" in g:
        response.set_cookie(PRE_COOKIE, g.new_pre, httponly=True, samesite="Strict", secure=request.is_secure,
                            path="/", max_age=3600)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response
