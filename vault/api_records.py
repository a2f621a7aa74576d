"""API: app records, sessions and shared records (/v1/userapp, /v1/session(s), /v1/sharedrecord, /v1/get, POST
/v1/users). A thin layer over the vault (see vault/web.py).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from vault.errors import BadInput, Forbidden
from vault.sessions import split_body
from vault.web import actor, list_args, object_body, request_body, requires, state

bp = Blueprint("records", __name__, url_prefix="/v1")

_SHARE_KEYS = {"fields", "app", "session", "partner", "expiration"}


def _optional_object() -> dict[str, Any]:
    """The body as an object, or {} when there is none."""
    if not request.content_length:
        return {}
    return object_body()


# -- app records ------------------------------------------------------------------------------------------------

@bp.post("/userapp/<mode>/<path:ident>/<app>")
@requires("users:write")
def app_create(mode: str, ident: str, app: str) -> Response:
    return jsonify(status="ok", token=state().vault.create_app_record(mode, ident, app, object_body(), by=actor()))


@bp.get("/userapp/<mode>/<path:ident>/<app>")
@requires("users:read")
def app_get(mode: str, ident: str, app: str) -> Response:
    person_id, data = state().vault.get_app_record(mode, ident, app, by=actor())
    return jsonify(status="ok", token=person_id, data=data)


@bp.put("/userapp/<mode>/<path:ident>/<app>")
@requires("users:write")
def app_change(mode: str, ident: str, app: str) -> Response:
    from vault.api_requests import request_if_needed

    change = request_body()
    if (held := request_if_needed("change-app-data", mode, ident, change, app=app)) is not None:
        return held  # approval.change_app_data names this app: a DPO applies it
    return jsonify(status="ok", token=state().vault.change_app_record(mode, ident, app, change, by=actor()))


@bp.delete("/userapp/<mode>/<path:ident>/<app>")
@requires("users:write")
def app_delete(mode: str, ident: str, app: str) -> Response:
    state().vault.delete_app_record(mode, ident, app, by=actor())
    return jsonify(status="ok", result="done")


@bp.get("/userapp/<mode>/<path:ident>")
@requires("users:read")
def app_list(mode: str, ident: str) -> Response:
    person_id, apps = state().vault.list_app_records(mode, ident, by=actor())
    return jsonify(status="ok", token=person_id, apps=apps)


@bp.get("/userapps")
@requires("users:read")
def app_names() -> Response:
    return jsonify(status="ok", apps=state().vault.app_names())


# -- sessions ---------------------------------------------------------------------------------------------------

@bp.post("/session/<session>")
@requires("users:write")
def session_create(session: str) -> Response:
    data, link, expiration = split_body(_optional_object())
    made = state().vault.create_session(session, data, link=link, expiration=expiration, by=actor())
    return jsonify(status="ok", session=made)


@bp.get("/session/<session>")
@requires("users:read")
def session_get(session: str) -> Response:
    return jsonify(status="ok", **state().vault.get_session(session, by=actor()).as_dict())


@bp.delete("/session/<session>")
@requires("users:write")
def session_delete(session: str) -> Response:
    state().vault.delete_session(session, by=actor())
    return jsonify(status="ok", result="done")


@bp.get("/sessions/<mode>/<path:ident>")
@requires("users:read")
def session_list(mode: str, ident: str) -> Response:
    offset, limit = list_args()
    _person, total, page = state().vault.list_sessions(mode, ident, offset, limit, by=actor())
    return jsonify(status="ok", total=total, rows=[s.as_dict() for s in page])


# -- shared records ---------------------------------------------------------------------------------------------

@bp.post("/sharedrecord/<mode>/<path:ident>")
@requires("users:write")
def share(mode: str, ident: str) -> Response:
    body = object_body()
    unknown = set(body) - _SHARE_KEYS
    if unknown:
        raise BadInput(f"unknown key '{sorted(unknown)[0][:40]}'")
    for name in ("app", "session", "partner"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise BadInput(f"'{name}' must be a string")
    record = state().vault.share_record(mode, ident, body.get("fields"), app=body.get("app"),
                                        session=body.get("session"), partner=body.get("partner"),
                                        expiration=body.get("expiration"), by=actor())
    return jsonify(status="ok", record=record)


@bp.get("/get/<record>")
def shared_get(record: str) -> Response:
    """No token: the record's uuid is the capability; it shows only its fields, only until it expires."""
    return jsonify(status="ok", data=state().vault.read_shared_record(record))


# -- people listing ---------------------------------------------------------------------------------------------

@bp.post("/users")
@requires("root")
def users_list() -> Response:
    config = state().config
    if config is None or not config.api.list_users:
        raise Forbidden("listing people is disabled: set api.list_users: true in config.yaml "
                        "(or TOKENBUNKER_API_LIST_USERS=true) to enable it")
    offset, limit = list_args()
    total, people = state().vault.list_people(offset, limit, by=actor())
    return jsonify(status="ok", total=total, rows=[{"token": pid, "data": profile} for pid, profile in people])
