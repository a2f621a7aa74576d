"""API: passwordless login (/v1/prelogin, /v1/login, /v1/logout). A thin layer over the vault (see vault/web.py).

/v1/prelogin answers the same for every identity, known or not; /v1/login answers the same for a wrong code, an
expired one and an unknown identity. Both count against limits per identity and per client address.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from vault.errors import Unauthorized
from vault.login import SESSION_PREFIX
from vault.web import client_address, login_policy, send_login_code, state

bp = Blueprint("login", __name__, url_prefix="/v1")



@bp.get("/prelogin/<mode>/<ident>")
@bp.get("/prelogin/<mode>/<ident>/<path:captcha>")
def prelogin(mode: str, ident: str, captcha: str | None = None) -> Response:
    """Send a one-time code (the captcha segments Databunker takes are accepted and ignored: limits stand in)."""
    send_login_code(mode, ident, client_address())
    return jsonify(status="ok", result="code-sent")


@bp.get("/login/<mode>/<ident>/<code>")
def login(mode: str, ident: str, code: str) -> Response:
    person, token = state().vault.login(mode, ident, code, client_address(), login_policy())
    return jsonify(status="ok", xtoken=token, token=person)


@bp.post("/logout")
def logout() -> Response:
    """Ours: end the session whose token is given (a person's xtoken from /v1/login)."""
    given = request.headers.get("X-Bunker-Token", "")
    if not given.startswith(SESSION_PREFIX) or not state().vault.logout(given):
        raise Unauthorized("missing or invalid X-Bunker-Token")
    return jsonify(status="ok", result="done")
