"""Shared records (/v1/sharedrecord, /v1/get) and forget-me reaching app records, sessions and shared records."""

from __future__ import annotations

import json
import secrets

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.conftest import Clock
from tests.vault.apihelpers import audit_rows, call, config_with, make_client, raw_database, scoped
from tests.vault.test_openapi import _check, _response_schema
from vault import sharedrecords
from vault.api import OPENAPI_PATH
from vault.core import Vault
from vault.errors import BadInput
from vault.models import app_records_table, sessions_table, shared_records_table

SID = "7a1f6c2e-0b8d-4f5e-9c3a-2d4b6e8f0a1c"
SHARE = "/v1/sharedrecord/email/ann@example.com"
PROFILE = {"email": "ann@example.com", "name": "Ann", "address": {"city": "Leeds", "street": "1 Road"}}


@pytest.fixture
def client(vault: Vault) -> FlaskClient:
    return make_client(vault)


@pytest.fixture
def ann(client: FlaskClient) -> str:
    token: str = call(client, "POST", "/v1/user", PROFILE).json["token"]
    return token


def _count(vault: Vault, table: object) -> int:
    with vault.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()  # type: ignore[arg-type]


def test_share_profile_fields_and_read_them_without_a_token(client: FlaskClient, vault: Vault, ann: str,
                                                            clock: Clock) -> None:
    made = call(client, "POST", SHARE, {"fields": "name,address.city,missing.x", "partner": "acme"})
    assert made.status_code == 200 and made.json["status"] == "ok"
    record = made.json["record"]
    got = client.get(f"/v1/get/{record}")
    assert got.json == {"status": "ok", "data": {"name": "Ann", "address": {"city": "Leeds"}}}
    # It reads the values as they are now.
    call(client, "PUT", "/v1/user/email/ann@example.com", {"name": "Anne"})
    assert client.get(f"/v1/get/{record}").json["data"]["name"] == "Anne"
    [share] = audit_rows(vault, "share")
    reads = audit_rows(vault, "shared-read")
    assert share.actor == "root" and share.person_id == ann
    assert [r.actor for r in reads] == ["partner:acme", "partner:acme"] and reads[0].person_id == ann
    # Default expiration: one day.
    clock.advance(86400 - 1)
    assert client.get(f"/v1/get/{record}").status_code == 200
    clock.advance(1)
    gone = client.get(f"/v1/get/{record}")
    assert gone.status_code == 404 and gone.json == {"status": "error", "message": "shared record not found"}


def test_share_app_record_and_session_fields(client: FlaskClient, vault: Vault, ann: str, clock: Clock) -> None:
    call(client, "POST", "/v1/userapp/email/ann@example.com/shop", {"tier": "gold", "card": {"last4": "1234"}})
    call(client, "POST", f"/v1/session/{SID}", {"ip": "192.0.2.1", "ua": "x", "email": "ann@example.com"})
    by_app = call(client, "POST", SHARE, {"fields": ["card.last4"], "app": "shop", "expiration": "10m"}).json
    by_session = call(client, "POST", SHARE, {"fields": "ip", "session": SID}).json
    assert client.get(f"/v1/get/{by_app['record']}").json["data"] == {"card": {"last4": "1234"}}
    assert client.get(f"/v1/get/{by_session['record']}").json["data"] == {"ip": "192.0.2.1"}
    assert [r.actor for r in audit_rows(vault, "shared-read")] == ["shared-record", "shared-record"]
    clock.advance(600)
    assert client.get(f"/v1/get/{by_app['record']}").status_code == 404
    # The source going away ends the share too.
    call(client, "DELETE", f"/v1/session/{SID}")
    assert client.get(f"/v1/get/{by_session['record']}").status_code == 404


def test_a_form_body_shares_too(client: FlaskClient, ann: str) -> None:
    made = client.post(SHARE, data={"fields": "name", "expiration": "1h"},
                       headers={"X-Bunker-Token": "root-token-for-tests-0123456789"})
    assert made.status_code == 200
    assert client.get(f"/v1/get/{made.json['record']}").json["data"] == {"name": "Ann"}


def test_expired_shared_records_are_purged(client: FlaskClient, vault: Vault, ann: str, clock: Clock) -> None:
    call(client, "POST", SHARE, {"fields": "name", "expiration": "1h"})
    call(client, "POST", SHARE, {"fields": "name", "expiration": "2h"})
    assert vault.purge_expired_shared_records() == 0
    clock.advance(3600)
    assert vault.purge_expired_shared_records() == 1 and _count(vault, shared_records_table) == 1


def test_unknown_records_are_not_found(client: FlaskClient) -> None:
    for record in ("00000000-0000-4000-8000-000000000000", "nope", "x" * 36):
        answer = client.get(f"/v1/get/{record}")
        assert answer.status_code == 404 and answer.json["message"] == "shared record not found"


def test_extract_takes_only_the_named_paths() -> None:
    doc = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    assert sharedrecords.extract(doc, ["b.c", "e", "a.x", "z"]) == {"b": {"c": 2}, "e": [1]}
    assert sharedrecords.extract(doc, ["b.c", "b"]) == {"b": {"c": 2, "d": 3}}
    assert sharedrecords.parse_fields(" a , b.c ,a") == ["a", "b.c"]
    for bad in ("", "a,,b", "a..b", ".a", 7, ["a", 1], ["x"] * 0):
        with pytest.raises(BadInput, match="fields"):
            sharedrecords.parse_fields(bad)


def test_no_shared_value_in_the_database(client: FlaskClient, vault: Vault, database_url: str) -> None:
    secret = f"name-{secrets.token_hex(6)}"
    call(client, "POST", "/v1/user", {"email": "ann@example.com", "name": secret})
    record = call(client, "POST", SHARE, {"fields": "name"}).json["record"]
    assert client.get(f"/v1/get/{record}").json["data"] == {"name": secret}
    assert secret.encode() not in raw_database(database_url, vault)


def test_share_needs_a_token_and_the_scope(client: FlaskClient, vault: Vault, ann: str) -> None:
    assert call(client, "POST", SHARE, {"fields": "name"}, token=None).status_code == 401
    refused = call(client, "POST", SHARE, {"fields": "name"}, token=scoped(vault, "users:read"))
    assert refused.status_code == 403 and refused.json["message"] == "this token lacks the scope 'users:write'"
    allowed = call(client, "POST", SHARE, {"fields": "name"}, token=scoped(vault, "users:write"))
    assert allowed.status_code == 200


@pytest.mark.parametrize(("body", "status", "message"), [
    ({}, 400, "'fields' is required"),
    ({"fields": "a,,b"}, 400, "no empty part"),
    ({"fields": "name", "colour": "red"}, 400, "unknown key 'colour'"),
    ({"fields": "name", "app": "Shop"}, 400, "app name"),
    ({"fields": "name", "app": 3}, 400, "'app' must be a string"),
    ({"fields": "name", "session": "nope"}, 400, "UUID"),
    ({"fields": "name", "app": "shop", "session": SID}, 400, "not both"),
    ({"fields": "name", "partner": "a/b"}, 400, "'partner'"),
    ({"fields": "name", "expiration": "soon"}, 400, "expiration"),
    ({"fields": "name", "app": "shop"}, 404, "app record not found"),
    ({"fields": "name", "session": SID}, 404, "session not found"),
])
def test_share_errors(client: FlaskClient, ann: str, body: object, status: int, message: str) -> None:
    answer = call(client, "POST", SHARE, body)
    assert answer.status_code == status, answer.json
    assert answer.json["status"] == "error" and message in answer.json["message"]


def test_share_errors_for_the_person(client: FlaskClient, ann: str) -> None:
    assert call(client, "POST", "/v1/sharedrecord/email/nobody@example.com", {"fields": "a"}).status_code == 404
    assert call(client, "POST", "/v1/sharedrecord/nick/x", {"fields": "a"}).status_code == 400
    # Someone else's session cannot be shared as Ann's.
    call(client, "POST", "/v1/user", {"email": "bob@example.com"})
    call(client, "POST", f"/v1/session/{SID}", {"ip": "x", "email": "bob@example.com"})
    assert call(client, "POST", SHARE, {"fields": "ip", "session": SID}).status_code == 404


def test_forget_me_removes_app_records_sessions_and_shared_records(client: FlaskClient, vault: Vault,
                                                                     ann: str) -> None:
    call(client, "POST", "/v1/user", {"email": "bob@example.com"})
    call(client, "POST", "/v1/userapp/email/ann@example.com/shop", {"tier": "gold"})
    call(client, "POST", "/v1/userapp/email/bob@example.com/shop", {"tier": "tin"})
    call(client, "POST", f"/v1/session/{SID}", {"ip": "x", "email": "ann@example.com"})
    record = call(client, "POST", SHARE, {"fields": "name"}).json["record"]
    app_share = call(client, "POST", SHARE, {"fields": "tier", "app": "shop"}).json["record"]
    assert client.get(f"/v1/get/{record}").status_code == 200

    vault.forget_person("email", "ann@example.com", by="root")

    assert call(client, "GET", f"/v1/userapp/token/{ann}/shop").status_code == 404
    assert call(client, "GET", f"/v1/session/{SID}").status_code == 404
    assert client.get(f"/v1/get/{record}").status_code == 404
    assert client.get(f"/v1/get/{app_share}").status_code == 404
    with vault.engine.connect() as conn:
        for table in (app_records_table, sessions_table, shared_records_table):
            assert conn.execute(select(func.count()).select_from(table)
                                .where(table.c.person_id == ann)).scalar_one() == 0
    assert call(client, "GET", "/v1/userapp/email/bob@example.com/shop").json["data"] == {"tier": "tin"}
    assert call(client, "GET", "/v1/userapps").json["apps"] == ["shop"]


def test_real_answers_match_the_documented_schemas(vault: Vault, clock: Clock) -> None:
    spec = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    client = make_client(vault, config_with("api:\n  list_users: true\n"))
    person = call(client, "POST", "/v1/user", PROFILE).json["token"]
    app_path, one, sess = "/v1/userapp/{mode}/{ident}/{app}", "/v1/userapp/email/ann@example.com/shop", \
        f"/v1/session/{SID}"
    answers = [
        ("post", app_path, call(client, "POST", one, {"tier": "gold"})),
        ("get", app_path, call(client, "GET", one)),
        ("put", app_path, call(client, "PUT", one, {"tier": "silver"})),
        ("get", "/v1/userapp/{mode}/{ident}", call(client, "GET", f"/v1/userapp/token/{person}")),
        ("get", "/v1/userapps", call(client, "GET", "/v1/userapps")),
        ("post", "/v1/session/{session}", call(client, "POST", sess, {"ip": "x", "token": person})),
        ("get", "/v1/session/{session}", call(client, "GET", sess)),
        ("get", "/v1/sessions/{mode}/{ident}", call(client, "GET", "/v1/sessions/email/ann@example.com")),
        ("post", "/v1/sharedrecord/{mode}/{ident}", made := call(client, "POST", SHARE, {"fields": "name"})),
        ("get", "/v1/get/{record}", client.get(f"/v1/get/{made.json['record']}")),
        ("post", "/v1/users", call(client, "POST", "/v1/users")),
        ("delete", "/v1/session/{session}", call(client, "DELETE", sess)),
        ("delete", app_path, call(client, "DELETE", one)),
    ]
    for method, path, answer in answers:
        assert answer.status_code == 200, path
        _check(spec, _response_schema(spec, method, path, 200), answer.json, f"{method} {path}")
    failures = [
        ("get", app_path, call(client, "GET", one), 404), ("post", app_path, call(client, "POST", one), 400),
        ("get", app_path, call(client, "GET", one, token=None), 401),
        ("get", app_path, call(client, "GET", one, token=scoped(vault, "consent")), 403),
        ("post", app_path, call(client, "POST", one.replace("shop", "S"), {}), 400),
        ("get", "/v1/session/{session}", call(client, "GET", sess), 404),
        ("post", "/v1/session/{session}", call(client, "POST", "/v1/session/x", {}), 400),
        ("post", "/v1/sharedrecord/{mode}/{ident}", call(client, "POST", SHARE, {}), 400),
        ("get", "/v1/get/{record}", client.get(f"/v1/get/{SID}"), 404),
        ("post", "/v1/users", call(client, "POST", "/v1/users", token=scoped(vault, "users:read")), 403),
    ]
    for method, path, answer, status in failures:
        assert answer.status_code == status, (path, answer.json)
        _check(spec, _response_schema(spec, method, path, status), answer.json, f"{method} {path} {status}")
