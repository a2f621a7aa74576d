"""The vault's REST API (contract: shared/contracts/api-v1.md). A thin layer: parse, authorize, call, serialize."""

from __future__ import annotations

import functools
import hmac
import json
import logging
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from vault.apitokens import Grant
from vault.core import FlowTokenize, Vault
from vault.durations import parse_expiry
from vault.errors import BadInput, Forbidden, TooLarge, Unauthorized, Unavailable, VaultError
from vault.identity import INDEX_MODES
from vault.tokens import TokenRequest

log = logging.getLogger("tokenbunker.api")
EXT = "tokenbunker"
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
_ITEM_KEYS = {"value", "kind", "format", "deterministic", "ttl", "subject", "route"}

v1 = Blueprint("v1", __name__, url_prefix="/v1")
probes = Blueprint("probes", __name__)


class ApiState:
    """What the API needs, kept in app.extensions (no module globals)."""

    def __init__(self, vault: Vault, root_token_hash: bytes, max_batch: int, scrubber: Any = None) -> None:
        self.vault = vault
        self.root_token_hash = root_token_hash
        self.max_batch = max_batch
        self.scrubber = scrubber  # a rules.scrub.LogScrubber, or None when no log rules are configured
        self.scrub_lock = threading.Lock()


def create_app(vault: Vault, *, root_token_hash: bytes, max_body_bytes: int = 4 << 20, max_batch: int = 1000,
               scrubber: Any = None) -> Flask:
    app = Flask("tokenbunker")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXT] = ApiState(vault, root_token_hash, max_batch, scrubber)
    app.register_blueprint(v1)
    app.register_blueprint(probes)
    app.register_error_handler(VaultError, _vault_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _state() -> ApiState:
    state: ApiState = current_app.extensions[EXT]
    return state


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(status="error", message=message), status


def _vault_error(exc: VaultError) -> tuple[Response, int]:
    if exc.status >= 500:
        log.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url_rule, exc.message)
    return _error(exc.status, exc.message)


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    if status == 413:
        return _error(413, f"request body too large (limit {current_app.config['MAX_CONTENT_LENGTH']} bytes)")
    return _error(status, (exc.name or "error").lower())


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    # The traceback's frames say where; the exception's text could hold a value, so it is left out.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unexpected %s on %s %s\n%s", type(exc).__name__, request.method, request.url_rule, frames)
    return _error(500, "internal error")


def requires(scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Every /v1 endpoint names the scope it needs: the root token holds them all, a scoped token only its own."""

    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            given = request.headers.get("X-Bunker-Token", "")
            state = _state()
            if not given:
                raise Unauthorized("missing or invalid X-Bunker-Token")
            digest = state.vault.keyring.api_token_hash(given)
            if hmac.compare_digest(digest, state.root_token_hash):
                grant = Grant.root()
            else:
                found = state.vault.grant_for(digest)
                if found is None:
                    raise Unauthorized("missing or invalid X-Bunker-Token")
                grant = found
            if not grant.allows(scope):
                raise Forbidden(f"this token lacks the scope '{scope}'")
            g.grant = grant
            return view(*args, **kwargs)

        return checked

    return wrap


def _body() -> Any:
    """A JSON body, or a form whose fields become top-level string keys (as Databunker accepts)."""
    if request.mimetype == "multipart/form-data":
        return {key: request.form[key] for key in request.form}
    raw = request.get_data(cache=False)
    # `curl -d '{...}'` labels JSON as a form; a form body never starts with { or [, so read it as the JSON it is.
    if request.mimetype == "application/x-www-form-urlencoded" and raw.lstrip()[:1] not in (b"{", b"["):
        return {key: values[-1] for key, values in parse_qs(raw.decode("utf-8", "replace"),
                                                               keep_blank_values=True).items()}
    if not raw.strip():
        raise BadInput("the request body is empty")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadInput("the request body is not valid JSON") from None


def _object_body() -> dict[str, Any]:
    body = _body()
    if not isinstance(body, dict):
        raise BadInput("the request body must be a JSON object")
    return body


def _list_field(body: dict[str, Any], name: str) -> list[Any]:
    items = body.get(name)
    if not isinstance(items, list):
        raise BadInput(f"'{name}' must be a JSON array")
    limit = _state().max_batch
    if len(items) > limit:
        raise TooLarge(f"too many {name}: {len(items)} > {limit} in one call")
    return items


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
    body = _object_body()
    unknown = set(body) - {"items", "subject", "expiry"}
    if unknown:
        raise BadInput(f"unknown key '{sorted(unknown)[0][:40]}'")
    vault = _state().vault
    now = vault.now()
    reqs = [_token_request(i, item, now) for i, item in enumerate(_list_field(body, "items"))]
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
    [result] = vault.tokenize_flows([FlowTokenize((subject["index"], subject["value"]), reqs)])
    if isinstance(result, VaultError):
        raise result
    return jsonify(status="ok", tokens=result.tokens, subject=result.person)


@v1.post("/detokenize")
@requires("detokenize")
def detokenize() -> Response:
    body = _object_body()
    unknown = set(body) - {"tokens", "reveal", "purpose", "explain"}
    if unknown:
        raise BadInput(f"unknown key '{sorted(unknown)[0][:40]}'")
    token_list = _list_field(body, "tokens")
    if not all(isinstance(t, str) for t in token_list):
        raise BadInput("'tokens' must be an array of strings")
    reveal = body.get("reveal", "plain")
    if reveal not in ("plain", "masked"):
        raise BadInput("'reveal' must be plain or masked")
    purpose = body.get("purpose")
    if purpose is not None and not isinstance(purpose, str):
        raise BadInput("'purpose' must be a string")
    values, reasons = _state().vault.detokenize_explained(token_list, reveal, purpose, g.grant.detokenize_kinds)
    if body.get("explain") is True:
        return jsonify(status="ok", values=values, reasons=reasons)
    return jsonify(status="ok", values=values)


@v1.get("/token/<path:token>")
@requires("tokens:read")
def token_get(token: str) -> Response:
    return jsonify(status="ok", **_state().vault.token_info(token).as_dict())


@v1.delete("/token/<path:token>")
@requires("tokens:write")
def token_delete(token: str) -> Response:
    _state().vault.delete_token(token)
    return jsonify(status="ok", result="done")


@v1.post("/user")
@requires("users:write")
def user_create() -> Response:
    return jsonify(status="ok", token=_state().vault.create_person(_object_body()))


@v1.get("/user/<mode>/<path:ident>")
@requires("users:read")
def user_get(mode: str, ident: str) -> Response:
    person_id, profile = _state().vault.get_person(mode, ident)
    return jsonify(status="ok", token=person_id, data=profile)


@v1.put("/user/<mode>/<path:ident>")
@requires("users:write")
def user_change(mode: str, ident: str) -> Response:
    return jsonify(status="ok", token=_state().vault.update_person(mode, ident, _body()))


@v1.delete("/user/<mode>/<path:ident>")
@requires("users:write")
def user_forget(mode: str, ident: str) -> Response:
    _state().vault.forget_person(mode, ident)
    return jsonify(status="ok", result="done")


@v1.post("/agreement/<brief>/<mode>/<path:ident>")
@requires("consent")
def agreement_give(brief: str, mode: str, ident: str) -> Response:
    body = _body() if request.content_length else {}
    if not isinstance(body, dict):
        raise BadInput("the request body must be a JSON object")
    vault = _state().vault
    expiration = body.get("expiration")
    expires_at = None if expiration in (None, "") else vault.now() + parse_expiry(expiration, vault.now(), "expiration")
    if body.get("status", "yes") not in ("yes", "no"):
        raise BadInput("'status' must be yes or no")
    method, reference = body.get("agreementmethod"), body.get("referencecode")
    if not all(v is None or (isinstance(v, str) and len(v) <= 64) for v in (method, reference)):
        raise BadInput("'agreementmethod' and 'referencecode' are strings of at most 64 characters")
    if body.get("status", "yes") == "no":
        vault.withdraw_consent(brief, mode, ident)
    else:
        vault.give_consent(brief, mode, ident, expires_at, method, reference)
    return jsonify(status="ok")


@v1.delete("/agreement/<brief>/<mode>/<path:ident>")
@requires("consent")
def agreement_withdraw(brief: str, mode: str, ident: str) -> Response:
    _state().vault.withdraw_consent(brief, mode, ident)
    return jsonify(status="ok")


@v1.get("/agreement/<brief>/<mode>/<path:ident>")
@requires("consent")
def agreement_get(brief: str, mode: str, ident: str) -> Response:
    return jsonify(status="ok", data=_state().vault.get_consent(brief, mode, ident).as_dict())


@v1.post("/xtoken")
@requires("root")
def xtoken_create() -> Response:
    """Ours: a scoped access token, shown once (only its keyed hash is kept)."""
    body = _object_body()
    unknown = set(body) - {"name", "scopes", "expiration"}
    if unknown:
        raise BadInput(f"unknown key '{sorted(unknown)[0][:40]}'")
    vault = _state().vault
    expiration = body.get("expiration")
    expires_at = None if expiration in (None, "") else vault.now() + parse_expiry(expiration, vault.now(),
                                                                                 "expiration")
    token_id, token = vault.create_api_token(body.get("name"), body.get("scopes"), expires_at)  # type: ignore[arg-type]
    return jsonify(status="ok", id=token_id, xtoken=token, expires=expires_at)


@v1.get("/xtoken")
@requires("root")
def xtoken_list() -> Response:
    rows = _state().vault.api_tokens()
    return jsonify(status="ok", total=len(rows), rows=rows)


@v1.delete("/xtoken/<token_id>")
@requires("root")
def xtoken_revoke(token_id: str) -> Response:
    _state().vault.revoke_api_token(token_id)
    return jsonify(status="ok", result="done")


@v1.post("/scrub")
@requires("scrub")
def scrub() -> Response:
    """Log lines in, the same lines scrubbed out: text/plain or NDJSON as sent, or JSON {"lines": [...]}."""
    state = _state()
    if state.scrubber is None:
        raise Unavailable("no log rules are configured (scrub.rules or proxy.rules with a logs: section)")
    if request.mimetype == "application/json":
        body = _object_body()
        lines = body.get("lines")
        if set(body) != {"lines"} or not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise BadInput("the body must be {\"lines\": [\"...\", ...]}")
        if len(lines) > state.max_batch * 10:
            raise TooLarge(f"too many lines: {len(lines)} > {state.max_batch * 10} in one call")
        if any("\n" in x for x in lines):
            raise BadInput("a line holds a newline")
        with state.scrub_lock:
            out = state.scrubber.scrub("\n".join(lines)) if lines else ""
        return jsonify(status="ok", lines=out.split("\n") if lines else [])
    # Bytes decoded as the command does: lines that are not UTF-8 come back byte for byte.
    from rules.logstream import decode, encode

    text = decode(request.get_data(cache=False))
    with state.scrub_lock:
        out = state.scrubber.scrub(text)
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
    if not _state().vault.ping():
        return _error(503, "database unavailable")
    return jsonify(status="ok"), 200
