"""The vault's REST API (contract: shared/contracts/api-v1.md). A thin layer: parse, authorize, call, serialize."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from vault.config import Config
from vault.consents import parse_starttime
from vault.core import FlowTokenize, Vault
from vault.durations import parse_expiry
from vault.errors import BadInput, NotFound, TooLarge, Unavailable, VaultError
from vault.identity import INDEX_MODES
from vault.notify import Notifier
from vault.tokens import TokenRequest
from vault.web import EXT, ApiState, actor, error, list_field, object_body, request_body, requires, state

log = logging.getLogger("tokenbunker.api")
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
_ITEM_KEYS = {"value", "kind", "format", "deterministic", "ttl", "subject", "route"}

v1 = Blueprint("v1", __name__, url_prefix="/v1")
probes = Blueprint("probes", __name__)


def create_app(vault: Vault, *, root_token_hash: bytes, max_body_bytes: int = 4 << 20, max_batch: int = 1000,
               scrubber: Any = None, config: Config | None = None, notifier: Notifier | None = None) -> Flask:
    app = Flask("tokenbunker")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXT] = ApiState(vault, root_token_hash, max_batch, scrubber, config, notifier)
    # Imported here: each blueprint module imports this one's neighbours, not the other way round.
    from vault import api_audit, api_consent, api_login, api_records, api_requests

    app.register_blueprint(v1)
    for blueprint in (api_records.bp, api_consent.bp, api_requests.bp, api_audit.bp, api_login.bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(probes)
    if config is None or config.portal.enabled:
        import portal

        portal.register(app)
    if config is not None and config.api.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = config.api.trusted_proxies  # only that many hops: a client cannot forge its own address past them
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    app.register_error_handler(VaultError, _vault_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _vault_error(exc: VaultError) -> tuple[Response, int]:
    if exc.status >= 500:
        log.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url_rule, exc.message)
    return error(exc.status, exc.message)


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    if status == 413:
        return error(413, f"request body too large (limit {current_app.config['MAX_CONTENT_LENGTH']} bytes)")
    return error(status, (exc.name or "error").lower())


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    # The traceback's frames say where; the exception's text could hold a value, so it is left out.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unexpected %s on %s %s\n%s", type(exc).__name__, request.method, request.url_rule, frames)
    return error(500, "internal error")


def _token_request(index: int, item: Any, now: int) -> TokenRequest:
    if not isinstance(item, dict):
        raise BadInput(f"items[{index}]: must be a JSON object")
    unknown = set(item) - _ITEM_KEYS
    if unknown:
        raise BadInput(f"items[{index}]: unknown key '{sorted(unknown)[0][:40]}'")
    try:
        ttl = item.get("ttl")
        return TokenRequest(
            value=item.get("value"),  # type: ignore[arg-type]
            kind=item.get("kind", "generic"),
            format=item.get("format", "opaque"),
            deterministic=item.get("deterministic", False),
            ttl=None if ttl is None else parse_expiry(ttl, now),
            subject=item.get("subject"),
            route=item.get("route"),
        )
    except BadInput as exc:
        raise BadInput(f"items[{index}]: {exc.message}") from None


@v1.post("/tokenize")
@requires("tokenize")
def tokenize() -> Response:
    body = object_body()
    unknown = set(body) - {"items", "subject", "expiry"}
    if unknown:
        raise BadInput(f"unknown key '{sorted(unknown)[0][:40]}'")
    vault = state().vault
    now = vault.now()
    reqs = [_token_request(i, item, now) for i, item in enumerate(list_field(body, "items"))]
    if "subject" not in body:
        if body.get("expiry") is True:
            # Ours: when each token stops resolving (a found deterministic token keeps its first expiry).
            made = vault.tokenize_with_expiry(reqs)
            return jsonify(status="ok", tokens=[t for t, _ in made], expires=[e for _, e in made])
        return jsonify(status="ok", tokens=vault.tokenize(reqs))
    # Ours: the person the values belong to, found by an index (or created), as the sidecar does it.
    subject = body["subject"]
    if (not isinstance(subject, dict) or set(subject) != {"index", "value"} or subject["index"] not in INDEX_MODES
            or not isinstance(subject["value"], str)):
        raise BadInput("'subject' must be {\"index\": \"email|phone|login|custom\", \"value\": \"...\"}")
    if any(r.subject for r in reqs):
        raise BadInput("items cannot name their own subject when the call names one")
    [result] = vault.tokenize_flows([FlowTokenize((subject["index"], subject["value"]), reqs)], by=actor())
    if isinstance(result, VaultError):
        raise result
    return jsonify(status="ok", tokens=result.tokens, subject=result.person)


@v1.post("/detokenize")
@requires("detokenize")
def detokenize() -> Response:
    body = object_body()
    unknown = set(body) - {"tokens", "reveal", "purpose", "explain", "route"}
    if unknown:
        raise BadInput(f"unknown key '{sorted(unknown)[0][:40]}'")
    token_list = list_field(body, "tokens")
    if not all(isinstance(t, str) for t in token_list):
        raise BadInput("'tokens' must be an array of strings")
    reveal = body.get("reveal", "plain")
    if reveal not in ("plain", "masked"):
        raise BadInput("'reveal' must be plain or masked")
    purpose = body.get("purpose")
    if purpose is not None and not isinstance(purpose, str):
        raise BadInput("'purpose' must be a string")
    route = body.get("route")  # ours: the sidecar route asking, for the audit trail
    if route is not None and (not isinstance(route, str) or not 0 < len(route) <= 128):
        raise BadInput("'route' must be a route name of at most 128 characters")
    values, reasons = state().vault.detokenize_explained(token_list, reveal, purpose, g.grant.detokenize_kinds,
                                                                by=actor(), route=route)
    if body.get("explain") is True:
        return jsonify(status="ok", values=values, reasons=reasons)
    return jsonify(status="ok", values=values)


@v1.get("/token/<path:token>")
@requires("tokens:read")
def token_get(token: str) -> Response:
    return jsonify(status="ok", **state().vault.token_info(token).as_dict())


@v1.delete("/token/<path:token>")
@requires("tokens:write")
def token_delete(token: str) -> Response:
    state().vault.delete_token(token, by=actor())
    return jsonify(status="ok", result="done")


@v1.post("/user")
@requires("users:write")
def user_create() -> Response:
    return jsonify(status="ok", token=state().vault.create_person(object_body(), by=actor()))


@v1.get("/user/<mode>/<path:ident>")
@requires("users:read")
def user_get(mode: str, ident: str) -> Response:
    person_id, profile = state().vault.get_person(mode, ident, by=actor())
    return jsonify(status="ok", token=person_id, data=profile)


@v1.put("/user/<mode>/<path:ident>")
@requires("users:write")
def user_change(mode: str, ident: str) -> Response:
    from vault.api_requests import request_if_needed

    change = request_body()
    if (held := request_if_needed("change-profile", mode, ident, change)) is not None:
        return held
    return jsonify(status="ok", token=state().vault.update_person(mode, ident, change, by=actor()))


@v1.delete("/user/<mode>/<path:ident>")
@requires("users:write")
def user_forget(mode: str, ident: str) -> Response:
    from vault.api_requests import request_if_needed

    if (held := request_if_needed("forget-me", mode, ident)) is not None:
        return held
    state().vault.forget_person(mode, ident, by=actor())
    return jsonify(status="ok", result="done")


@v1.post("/agreement/<brief>/<mode>/<path:ident>")
@requires("consent")
def agreement_give(brief: str, mode: str, ident: str) -> Response:
    """Give (status yes, the default) or refuse (no) consent; by email or phone it may come before the person."""
    body = request_body() if request.content_length else {}
    if not isinstance(body, dict):
        raise BadInput("the request body must be a JSON object")
    vault = state().vault
    now = vault.now()
    expiration = body.get("expiration")
    expires_at = None if expiration in (None, "") else now + parse_expiry(expiration, now, "expiration")
    status = body.get("status") or "yes"
    if status not in ("yes", "no"):
        raise BadInput("'status' must be yes or no")
    texts = {name: body.get(name) for name in ("agreementmethod", "referencecode", "lastmodifiedby")}
    if not all(v is None or (isinstance(v, str) and len(v) <= 64) for v in texts.values()):
        raise BadInput("'agreementmethod', 'referencecode' and 'lastmodifiedby' are strings of at most 64 characters")
    if status == "no":
        from vault.api_requests import request_if_needed

        # Withdrawing a consent that is given waits for a DPO when approval.agreement_withdraw says so; a refusal
        # with nothing to withdraw (no such person or agreement yet) is simply recorded.
        try:
            if (held := request_if_needed("agreement-withdraw", mode, ident, brief=brief)) is not None:
                return held
        except NotFound:
            pass
    vault.give_consent(brief, mode, ident, expires_at, texts["agreementmethod"], texts["referencecode"], by=actor(),
                       status=status, given_at=parse_starttime(body.get("starttime"), now),
                       modified_by=texts["lastmodifiedby"] or None)
    return jsonify(status="ok")


@v1.delete("/agreement/<brief>/<mode>/<path:ident>")
@requires("consent")
def agreement_withdraw(brief: str, mode: str, ident: str) -> Response:
    from vault.api_requests import request_if_needed

    if (held := request_if_needed("agreement-withdraw", mode, ident, brief=brief)) is not None:
        return held
    state().vault.withdraw_consent(brief, mode, ident, by=actor())
    return jsonify(status="ok")


@v1.get("/agreement/<brief>/<mode>/<path:ident>")
@requires("consent")
def agreement_get(brief: str, mode: str, ident: str) -> Response:
    return jsonify(status="ok", data=state().vault.get_consent(brief, mode, ident, by=actor()).as_dict())


@v1.post("/xtoken")
@requires("root")
def xtoken_create() -> Response:
    """Ours: a scoped access token, shown once (only its keyed hash is kept)."""
    body = object_body()
    unknown = set(body) - {"name", "scopes", "expiration"}
    if unknown:
        raise BadInput(f"unknown key '{sorted(unknown)[0][:40]}'")
    vault = state().vault
    expiration = body.get("expiration")
    expires_at = None if expiration in (None, "") else vault.now() + parse_expiry(expiration, vault.now(),
                                                                                 "expiration")
    token_id, token = vault.create_api_token(body.get("name"), body.get("scopes"), expires_at)  # type: ignore[arg-type]
    return jsonify(status="ok", id=token_id, xtoken=token, expires=expires_at)


@v1.get("/xtoken")
@requires("root")
def xtoken_list() -> Response:
    rows = state().vault.api_tokens()
    return jsonify(status="ok", total=len(rows), rows=rows)


@v1.delete("/xtoken/<token_id>")
@requires("root")
def xtoken_revoke(token_id: str) -> Response:
    state().vault.revoke_api_token(token_id)
    return jsonify(status="ok", result="done")


@v1.post("/scrub")
@requires("scrub")
def scrub() -> Response:
    """Log lines in, the same lines scrubbed out: text/plain or NDJSON as sent, or JSON {"lines": [...]}."""
    api = state()
    if api.scrubber is None:
        raise Unavailable("no log rules are configured (scrub.rules or proxy.rules with a logs: section)")
    if request.mimetype == "application/json":
        body = object_body()
        lines = body.get("lines")
        if set(body) != {"lines"} or not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise BadInput("the body must be {\"lines\": [\"...\", ...]}")
        if len(lines) > api.max_batch * 10:
            raise TooLarge(f"too many lines: {len(lines)} > {api.max_batch * 10} in one call")
        if any("\n" in x for x in lines):
            raise BadInput("a line holds a newline")
        with api.scrub_lock:
            out = api.scrubber.scrub("\n".join(lines)) if lines else ""
        return jsonify(status="ok", lines=out.split("\n") if lines else [])
    # Bytes decoded as the command does: lines that are not UTF-8 come back byte for byte.
    from rules.logstream import decode, encode

    text = decode(request.get_data(cache=False))
    with api.scrub_lock:
        out = api.scrubber.scrub(text)
    mimetype = "application/x-ndjson" if request.mimetype == "application/x-ndjson" else "text/plain"
    return Response(encode(out), mimetype=mimetype)


@v1.get("/openapi.json")
def openapi() -> Response:
    return Response(OPENAPI_PATH.read_bytes(), mimetype="application/json")


@probes.get("/health")
def health() -> Response:
    return jsonify(status="ok")


@probes.get("/ready")
def ready() -> tuple[Response, int]:
    if not state().vault.ping():
        return error(503, "database unavailable")
    return jsonify(status="ok"), 200
