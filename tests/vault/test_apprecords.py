"""App records (/v1/userapp, /v1/userapps) and the people listing (POST /v1/users), through the API and the library."""

from __future__ import annotations

import secrets

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from tests.conftest import Clock
from tests.vault.apihelpers import (
    ROOT,
    audit_detail,
    audit_rows,
    call,
    config_with,
    make_client,
    raw_database,
    scoped,
)
from vault.core import Vault
from vault.errors import BadInput, NotFound, Tampered
from vault.models import app_records_table

ANN = "/v1/userapp/email/ann@example.com"


@pytest.fixture
def client(vault: Vault) -> FlaskClient:
    return make_client(vault)


@pytest.fixture
def ann(client: FlaskClient) -> str:
    made = call(client, "POST", "/v1/user", {"email": "ann@example.com", "name": "Ann"})
    assert made.status_code == 200
    token: str = made.json["token"]
    return token


def test_app_record_journey(client: FlaskClient, ann: str) -> None:
    made = call(client, "POST", f"{ANN}/shop", {"address": {"city": "Leeds"}, "points": 3})
    assert made.status_code == 200 and made.json == {"status": "ok", "token": ann}
    got = call(client, "GET", f"/v1/userapp/token/{ann}/shop")
    assert got.json == {"status": "ok", "token": ann, "data": {"address": {"city": "Leeds"}, "points": 3}}

    merged = call(client, "PUT", f"{ANN}/shop", {"points": None, "address": {"street": "1 Road"}})
    assert merged.json == {"status": "ok", "token": ann}
    assert call(client, "GET", f"{ANN}/shop").json["data"] == {"address": {"city": "Leeds", "street": "1 Road"}}
    patched = call(client, "PUT", f"{ANN}/shop", [{"op": "replace", "path": "/address/city", "value": "York"}])
    assert patched.status_code == 200
    assert call(client, "GET", f"{ANN}/shop").json["data"]["address"]["city"] == "York"

    assert call(client, "POST", f"{ANN}/game_2", {"level": 9}).status_code == 200
    assert call(client, "GET", ANN).json == {"status": "ok", "token": ann, "apps": ["game_2", "shop"]}
    assert call(client, "GET", "/v1/userapps").json == {"status": "ok", "apps": ["game_2", "shop"]}

    assert call(client, "DELETE", f"{ANN}/shop").json == {"status": "ok", "result": "done"}
    assert call(client, "GET", f"{ANN}/shop").status_code == 404
    assert call(client, "GET", ANN).json["apps"] == ["game_2"]


def test_a_form_body_makes_an_app_record(client: FlaskClient, ann: str) -> None:
    made = client.post(f"{ANN}/crm", data={"tier": "gold"}, headers={"X-Bunker-Token": ROOT})
    assert made.status_code == 200
    assert call(client, "GET", f"{ANN}/crm").json["data"] == {"tier": "gold"}


def test_every_operation_is_audited_with_before_and_after_sealed(client: FlaskClient, vault: Vault, ann: str) -> None:
    call(client, "POST", f"{ANN}/shop", {"points": 1})
    call(client, "GET", f"{ANN}/shop")
    call(client, "PUT", f"{ANN}/shop", {"points": 2})
    call(client, "DELETE", f"{ANN}/shop")
    rows = [r for r in audit_rows(vault) if r.action.startswith("app-")]
    assert [r.action for r in rows] == ["app-create", "app-read", "app-change", "app-delete"]
    assert all(r.actor == "root" and r.person_id == ann and r.status == "ok" for r in rows)
    [change] = [r for r in rows if r.action == "app-change"]
    assert audit_detail(vault, change) == {"app": "shop", "before": {"points": 1}, "after": {"points": 2}}
    assert b"points" not in bytes(change.detail)


def test_the_library_change_that_dpo_approval_calls(vault: Vault) -> None:
    pid = vault.create_person({"login": "bob"}, by="root")
    assert vault.create_app_record("login", "bob", "shop", {"a": 1}, by="root") == pid
    assert vault.change_app_record("login", "bob", "shop", {"b": 2}, by="dpo:alice") == pid
    assert vault.get_app_record("token", pid, "shop", by="root") == (pid, {"a": 1, "b": 2})
    assert vault.list_app_records("login", "bob", by="root") == (pid, ["shop"])
    [row] = audit_rows(vault, "app-change")
    assert row.actor == "dpo:alice"
    with pytest.raises(BadInput, match="app name"):
        vault.change_app_record("login", "bob", "Shop", {}, by="root")
    with pytest.raises(NotFound, match="app record not found"):
        vault.change_app_record("login", "bob", "other", {}, by="root")
    assert vault.delete_app_record("login", "bob", "shop", by="root") == pid
    assert vault.app_names() == []


def test_a_record_cannot_be_moved_to_another_app(vault: Vault) -> None:
    vault.create_person({"login": "bob"}, by="root")
    vault.create_app_record("login", "bob", "one", {"secret": "x"}, by="root")
    vault.create_app_record("login", "bob", "two", {}, by="root")
    with vault.engine.begin() as conn:
        sealed = conn.execute(select(app_records_table.c.data).where(app_records_table.c.app == "one")).scalar()
        conn.execute(update(app_records_table).where(app_records_table.c.app == "two").values(data=sealed))
    with pytest.raises(Tampered):
        vault.get_app_record("login", "bob", "two", by="root")


def test_no_app_record_value_in_the_database(client: FlaskClient, vault: Vault, database_url: str, ann: str) -> None:
    secret = f"street-{secrets.token_hex(6)}"
    changed = f"town-{secrets.token_hex(6)}"
    call(client, "POST", f"{ANN}/shop", {"street": secret})
    call(client, "PUT", f"{ANN}/shop", {"town": changed})
    call(client, "GET", f"{ANN}/shop")
    raw = raw_database(database_url, vault)
    assert secret.encode() not in raw and changed.encode() not in raw


APP_CALLS = [("POST", f"{ANN}/shop"), ("GET", f"{ANN}/shop"), ("PUT", f"{ANN}/shop"), ("DELETE", f"{ANN}/shop"),
             ("GET", ANN), ("GET", "/v1/userapps")]


@pytest.mark.parametrize(("method", "path"), APP_CALLS)
def test_app_endpoints_need_a_token(client: FlaskClient, method: str, path: str) -> None:
    answer = call(client, method, path, {"a": 1}, token=None)
    assert answer.status_code == 401 and answer.json["status"] == "error"
    assert call(client, method, path, {"a": 1}, token="wrong-token-wrong-token").status_code == 401


@pytest.mark.parametrize(("method", "path", "needed"), [
    ("POST", f"{ANN}/shop", "users:write"), ("PUT", f"{ANN}/shop", "users:write"),
    ("DELETE", f"{ANN}/shop", "users:write"), ("GET", f"{ANN}/shop", "users:read"), ("GET", ANN, "users:read"),
    ("GET", "/v1/userapps", "users:read"),
])
def test_app_endpoints_check_the_scope(client: FlaskClient, vault: Vault, ann: str, method: str, path: str,
                                       needed: str) -> None:
    other = "users:read" if needed == "users:write" else "consent"
    answer = call(client, method, path, {"a": 1}, token=scoped(vault, other))
    assert answer.status_code == 403
    assert answer.json == {"status": "error", "message": f"this token lacks the scope '{needed}'"}


def test_scoped_tokens_with_the_scope_may_act(client: FlaskClient, vault: Vault, ann: str) -> None:
    writer, reader = scoped(vault, "users:write"), scoped(vault, "users:read")
    assert call(client, "POST", f"{ANN}/shop", {"a": 1}, token=writer).status_code == 200
    assert call(client, "GET", f"{ANN}/shop", token=reader).json["data"] == {"a": 1}
    [row] = audit_rows(vault, "app-read")
    assert row.actor.startswith("xtoken:tester:")


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", f"{ANN}/Shop", {"a": 1}, 400, "app name"),
    ("POST", f"{ANN}/s", {"a": 1}, 400, "app name"),
    ("POST", f"{ANN}/{'a' * 32}", {"a": 1}, 400, "app name"),
    ("GET", f"{ANN}/1shop", None, 400, "app name"),
    ("POST", "/v1/userapp/nick/ann/shop", {"a": 1}, 400, "unknown mode"),
    ("POST", f"{ANN}/shop", [1, 2], 400, "JSON object"),
    ("POST", f"{ANN}/shop", "not json", 400, "not valid JSON"),
    ("PUT", f"{ANN}/shop", [{"op": "remove", "path": "/nope"}], 400, "does not exist"),
    ("PUT", f"{ANN}/shop", "7", 400, "merge patch"),
    ("GET", "/v1/userapp/email/nobody@example.com/shop", None, 404, "person not found"),
    ("GET", ANN + "/other", None, 404, "app record not found"),
    ("DELETE", ANN + "/other", None, 404, "app record not found"),
    ("GET", "/v1/userapp/email/nobody@example.com", None, 404, "person not found"),
    ("POST", f"{ANN}/shop", {"b": 1}, 409, "already has a record"),
])
def test_app_errors(client: FlaskClient, ann: str, method: str, path: str, body: object, status: int,
                    message: str) -> None:
    call(client, "POST", f"{ANN}/shop", {"a": 1})
    kwargs = {"data": body, "content_type": "application/json"} if isinstance(body, str) else {"body": body}
    answer = call(client, method, path, **kwargs)
    assert answer.status_code == status, answer.json
    assert answer.json["status"] == "error" and message in answer.json["message"]


# -- POST /v1/users ------------------------------------------------------------------------------------------

def test_listing_people_is_off_unless_configured(vault: Vault) -> None:
    for client in (make_client(vault), make_client(vault, config_with("api:\n  list_users: false\n"))):
        answer = call(client, "POST", "/v1/users")
        assert answer.status_code == 403
        assert "api.list_users: true" in answer.json["message"]


def test_listing_people_when_enabled(vault: Vault, clock: Clock) -> None:
    client = make_client(vault, config_with("api:\n  list_users: true\n"))
    made = []
    for i in range(3):
        made.append(call(client, "POST", "/v1/user", {"login": f"user{i}", "n": i}).json["token"])
        clock.advance(1)  # oldest first
    listed = call(client, "POST", "/v1/users")
    assert listed.json == {"status": "ok", "total": 3, "rows": [
        {"token": made[i], "data": {"login": f"user{i}", "n": i}} for i in range(3)]}
    page = call(client, "POST", "/v1/users?offset=1&limit=1").json
    assert page["total"] == 3 and [r["token"] for r in page["rows"]] == [made[1]]
    reads = audit_rows(vault, "read")
    assert [r.person_id for r in reads] == [*made, made[1]]
    assert call(client, "POST", "/v1/users?limit=0").status_code == 400
    assert call(client, "POST", "/v1/users", token=None).status_code == 401
    refused = call(client, "POST", "/v1/users", token=scoped(vault, "users:read", "users:write"))
    assert refused.status_code == 403 and refused.json["message"] == "this token lacks the scope 'root'"
