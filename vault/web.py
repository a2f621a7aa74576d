"""What every API blueprint shares: the per-app state, authorization by scope, body parsing, the caller's name.

The endpoints live in small blueprints (vault/api.py for tokens and people, vault/api_*.py for the rest); each
view names the scope it needs with @requires and passes `actor()` to the vault, which records it in the audit trail.
"""

from __future__ import annotations

import functools
import hmac
import json
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from flask import Response, current_app, g, jsonify, request

from vault.apitokens import Grant
from vault.config import Config, LoginSettings, parse_duration
from vault.core import Vault
from vault.errors import BadInput, Forbidden, TooLarge, Unauthorized, Unavailable
from vault.login import LOGIN_MODES, SESSION_PREFIX, Policy
from vault.notify import Message, Notifier

EXT = "tokenbunker"


class ApiState:
    """What the API needs, kept in app.extensions (no module globals)."""

    def __init__(self, vault: Vault, root_token_hash: bytes, max_batch: int, scrubber: Any = None,
                 config: Config | None = None, notifier: Notifier | None = None) -> None:
        self.vault = vault
        self.config = config  # the loaded config.yaml, when served by `tokenbunker serve` (None in some tests)
        if notifier is None:
            notifier = Notifier.from_settings(config.notify) if config is not None else Notifier(None, None)
        self.notifier = notifier
        self.root_token_hash = root_token_hash
        self.max_batch = max_batch
        self.scrubber = scrubber  # a rules.scrub.LogScrubber, or None when no log rules are configured
        self.scrub_lock = threading.Lock()


def state() -> ApiState:
    found: ApiState = current_app.extensions[EXT]
    return found


def error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(status="error", message=message), status


def requires(scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Every /v1 endpoint names the scope it needs: the root token holds them all, a scoped token only its own, and
    a person's session (from /v1/login) only its few, on views that name that same person."""

    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            given = request.headers.get("X-Bunker-Token", "")
            api = state()
            if not given:
                raise Unauthorized("missing or invalid X-Bunker-Token")
            grant = _grant_for(api, given)
            if not grant.allows(scope):
                raise Forbidden(f"this token lacks the scope '{scope}'")
            if grant.person is not None:
                _check_own(api, grant.person, kwargs)
            g.grant = grant
            return view(*args, **kwargs)

        return checked

    return wrap


def _grant_for(api: ApiState, given: str) -> Grant:
    digest = api.vault.keyring.api_token_hash(given)
    if hmac.compare_digest(digest, api.root_token_hash):
        return Grant.root()
    if given.startswith(SESSION_PREFIX):
        found = api.vault.person_session(given, login_policy())
        if found is None:
            raise Unauthorized("missing or invalid X-Bunker-Token")
        return Grant.self_service(*found)
    grant = api.vault.grant_for(digest)
    if grant is None:
        raise Unauthorized("missing or invalid X-Bunker-Token")
    return grant


# Views whose person is named by a uuid in the path rather than by {mode}/{ident}.
_PERSON_ARGS = ("person", "token")


def _check_own(api: ApiState, person: str, kwargs: dict[str, Any]) -> None:
    """A person's session acts on its own records only, whatever the path says; anything else is 403 (not 404:
    whether another person exists is not theirs to learn)."""
    if "mode" in kwargs and "ident" in kwargs:
        if api.vault.person_id_of(kwargs["mode"], kwargs["ident"]) == person:
            return
    elif any(kwargs.get(name) == person for name in _PERSON_ARGS):
        return
    raise Forbidden("a person's session may act only on that person's own records")


def login_policy() -> Policy:
    config = state().config
    settings = config.login if config is not None else LoginSettings()
    return Policy(
        code_ttl=parse_duration(settings.code_ttl), max_attempts=settings.max_attempts,
        lockout=parse_duration(settings.lockout), codes_per_hour=settings.codes_per_hour,
        client_per_hour=settings.client_per_hour, session_idle=parse_duration(settings.session_idle),
        session_absolute=parse_duration(settings.session_absolute),
    )


def request_body() -> Any:
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


def object_body() -> dict[str, Any]:
    body = request_body()
    if not isinstance(body, dict):
        raise BadInput("the request body must be a JSON object")
    return body


def list_field(body: dict[str, Any], name: str) -> list[Any]:
    items = body.get(name)
    if not isinstance(items, list):
        raise BadInput(f"'{name}' must be a JSON array")
    limit = state().max_batch
    if len(items) > limit:
        raise TooLarge(f"too many {name}: {len(items)} > {limit} in one call")
    return items


def actor() -> str:
    """Who is acting, as the audit trail names them: "root", or the scoped token's name and id (never the token)."""
    grant: Grant = g.grant
    if grant.person is not None:
        return "self"
    return "root" if grant.id == "root" else f"xtoken:{grant.name}:{grant.id}"


def list_args() -> tuple[int, int]:
    """?offset=&limit= as the contract has them: limit 10 by default, at most 100."""
    try:
        offset = int(request.args.get("offset", "0"))
        limit = int(request.args.get("limit", "10"))
    except ValueError:
        raise BadInput("offset and limit must be whole numbers") from None
    if offset < 0 or not 1 <= limit <= 100:
        raise BadInput("offset must be >= 0 and limit from 1 to 100")
    return offset, limit


def client_address() -> str:
    """Who is asking, as the login limits count it (behind api.trusted_proxies, the address the proxy saw)."""
    return request.remote_addr or "unknown"


def send_login_code(mode: str, ident: str, client: str) -> None:
    """A one-time code to a known email or phone (nothing to an unknown one; the caller answers the same either
    way). Raises BadInput for a malformed address, RateLimited past the limits, Unavailable with no sender."""
    api = state()
    channel = "email" if mode == "email" else "sms"
    if mode in LOGIN_MODES and not api.notifier.can_send(channel):
        raise Unavailable(f"no {channel} sender is configured (notify.*): login codes cannot be sent")
    policy = login_policy()
    made = api.vault.request_login_code(mode, ident, client, policy)
    if made is not None:
        address, code = made
        minutes = max(1, policy.code_ttl // 60)
        title = api.config.portal.title if api.config is not None else "Tokenbunker"
        api.notifier.send(Message(address, channel, f"{title}: your login code",
                                  f"Your login code is {code}. It expires in {minutes} minutes and works once.\n"
                                  "If you did not ask for it, ignore this message."))
