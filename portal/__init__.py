"""The privacy portal: where a person logs in without a password to see, correct, download and delete their data
and give or withdraw consents, and where a DPO reviews requests. Server-rendered, no JavaScript, served by
`tokenbunker serve` at `/` beside the API (`/v1/`), over the same vault (see vault/web.py's state())."""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from flask import Blueprint, Flask, Response, render_template, request
from werkzeug.exceptions import HTTPException

from portal.security import csrf_token, harden
from vault.errors import VaultError
from vault.web import state

log = logging.getLogger("tokenbunker.portal")
bp = Blueprint("portal", __name__, template_folder="templates", static_folder="static",
               static_url_path="/portal-static")


def register(app: Flask) -> None:
    from portal import dpo, person  # noqa: F401  (their views attach to bp)

    app.register_blueprint(bp)


@bp.app_template_global("csrf_token")
def _csrf_token() -> str:
    return csrf_token()


@bp.app_template_filter("datetime")
def _datetime(when: int | None) -> str:
    if when is None:
        return ""
    return time.strftime("%d %b %Y, %H:%M UTC", time.gmtime(when))


@bp.app_template_filter("isotime")
def _isotime(when: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


@bp.context_processor
def _brand() -> dict[str, Any]:
    config = state().config
    portal = config.portal if config is not None else None
    return {"brand": {
        "title": portal.title if portal else "Tokenbunker privacy portal",
        "logo": portal.logo_url if portal else None,
        "terms": portal.terms_url if portal else None,
        "privacy": portal.privacy_url if portal else None,
        "contact": portal.contact_email if portal else None,
    }, "nav": None, "notices": (), "logout_endpoint": "portal.logout", "home_endpoint": "portal.home"}


@bp.after_request
def _harden(response: Response) -> Response:
    harden(response)
    return response


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[str, int]:
    status = exc.code or 500
    message = exc.description if status == 400 else {404: "There is nothing here.", 405: "That did not work."}.get(
        status, "Something went wrong.")
    return render_template("error.html", status=status, message=message), status


@bp.errorhandler(VaultError)
def _vault_error(exc: VaultError) -> tuple[str, int]:
    # Messages of the vault's errors never hold a value; shown as they are, in the page's words.
    status = exc.status if exc.status < 500 else 503
    message = exc.message if exc.status < 500 else "The service is unavailable right now. Please try again later."
    return render_template("error.html", status=status, message=message), status


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> tuple[str, int]:
    # Where it broke, never what it held: the exception's text could carry a value.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("portal: unexpected %s on %s %s\n%s", type(exc).__name__, request.method, request.url_rule, frames)
    return render_template("error.html", status=500, message="Something went wrong on our side. Please try again "
                           "later."), 500

