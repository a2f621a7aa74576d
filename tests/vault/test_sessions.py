"""Sessions (/v1/session, /v1/sessions): storage, linking to a person, expiry, purge, scopes and errors."""

from __future__ import annotations

import secrets
import uuid

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.conftest import Clock
from tests.vault.apihelpers import ROOT, audit_detail, audit_rows, call, make_client, raw_database, scoped
from vault import sessions
from vault.core import SHARED_KEY_ID, Vault
from vault.errors import BadInput, NotFound
from vault.models import sessions_table

SID = "7a1f6c2e-0b8d-4f5e-9c3a-2d4b6e8f0a1c"


@pytest.fixture
def client(vault: Vault) -> FlaskClient:
    return make_client(vault)


@pytest.fixture
def ann(client: FlaskClient) -> str:
    token: str = call(client, "POST", "/v1/user", {"email": "ann@example.com"}).json["token"]
    return token


def _count(vault: Vault) -> int:
    with vault.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(sessions_table)).scalar_one()


def test_session_journey(client: FlaskClient, vault: Vault, ann: str, clock: Clock) -> None:
    body = {"ip": "203.0.113.9", "ua": "Firefox", "email": "Ann@Example.com", "expiration": "1h"}
    made = call(client, "POST", f"/v1/session/{SID.upper()}", body)
    assert made.json == {"status": "ok", "session": SID}
    got = call(client, "GET", f"/v1/session/{SID}")
    assert got.json == {"status": "ok", "session": SID, "when": int(clock.now),
                        "data": {"ip": "203.0.113.9", "ua": "Firefox"}}
    with vault.engine.connect() as conn:
        row = conn.execute(select(sessions_table)).one()
    assert row.person_id == ann and row.expires_at == int(clock.now) + 3600

    listed = call(client, "GET", "/v1/sessions/email/ann@example.com")
    row_shape = {k: v for k, v in got.json.items() if k != "status"}
    assert listed.json == {"status": "ok", "total": 1, "rows": [row_shape]}
    assert call(client, "DELETE", f"/v1/session/{SID}").json == {"status": "ok", "result": "done"}
    assert call(client, "GET", f"/v1/session/{SID}").status_code == 404
    assert call(client, "DELETE", f"/v1/session/{SID}").status_code == 404
    actions = [r.action for r in audit_rows(vault) if r.action.startswith("session-")]
    assert actions == ["session-create", "session-read", "session-read", "session-delete"]


def test_a_session_linked_to_no_one_uses_the_shared_key(client: FlaskClient, vault: Vault) -> None:
    assert call(client, "POST", f"/v1/session/{SID}", {"ip": "198.51.100.1"}).status_code == 200
    with vault.engine.connect() as conn:
        row = conn.execute(select(sessions_table)).one()
    assert row.person_id is None and row.data_key_id == SHARED_KEY_ID and row.expires_at is None
    assert call(client, "GET", f"/v1/session/{SID}").json["data"] == {"ip": "198.51.100.1"}
    [made] = audit_rows(vault, "session-create")
    assert made.person_id is None and audit_detail(vault, made)["fields"] == ["ip"]  # type: ignore[index]


def test_a_form_body_and_a_link_by_token(client: FlaskClient, ann: str) -> None:
    made = client.post(f"/v1/session/{SID}", data={"ip": "192.0.2.1", "token": ann, "expiration": "30m"},
                       headers={"X-Bunker-Token": ROOT})
    assert made.status_code == 200
    assert call(client, "GET", f"/v1/session/{SID}").json["data"] == {"ip": "192.0.2.1"}
    assert call(client, "GET", f"/v1/sessions/token/{ann}").json["total"] == 1


def test_posting_again_replaces_the_session(client: FlaskClient, clock: Clock, ann: str) -> None:
    call(client, "POST", f"/v1/session/{SID}", {"ip": "192.0.2.1"})
    clock.advance(5)
    call(client, "POST", f"/v1/session/{SID}", {"ip": "192.0.2.2", "email": "ann@example.com"})
    got = call(client, "GET", f"/v1/session/{SID}").json
    assert got["data"] == {"ip": "192.0.2.2"} and got["when"] == int(clock.now)


def test_expired_sessions_act_as_not_found_and_are_purged(client: FlaskClient, vault: Vault, clock: Clock,
                                                           ann: str) -> None:
    short, long = str(uuid.uuid4()), str(uuid.uuid4())
    call(client, "POST", f"/v1/session/{short}", {"a": 1, "email": "ann@example.com", "expiration": "10s"})
    call(client, "POST", f"/v1/session/{long}", {"a": 2, "email": "ann@example.com",
                                                 "expiration": int(clock.now) + 100})
    assert call(client, "GET", "/v1/sessions/email/ann@example.com").json["total"] == 2
    clock.advance(10)
    assert call(client, "GET", f"/v1/session/{short}").status_code == 404
    assert call(client, "DELETE", f"/v1/session/{short}").status_code == 404
    listed = call(client, "GET", "/v1/sessions/email/ann@example.com").json
    assert listed["total"] == 1 and [r["session"] for r in listed["rows"]] == [long]
    assert vault.purge_expired_sessions() == 1 and _count(vault) == 1
    clock.advance(90)
    assert vault.purge_expired_sessions() == 1 and _count(vault) == 0
    assert vault.purge_expired_sessions() == 0


def test_listing_pages_newest_first(client: FlaskClient, clock: Clock, ann: str) -> None:
    ids = []
    for i in range(4):
        ids.append(str(uuid.uuid4()))
        call(client, "POST", f"/v1/session/{ids[-1]}", {"n": i, "email": "ann@example.com"})
        clock.advance(1)
    call(client, "POST", f"/v1/session/{uuid.uuid4()}", {"n": 9})  # no one's
    page = call(client, "GET", "/v1/sessions/email/ann@example.com?offset=1&limit=2").json
    assert page["total"] == 4 and [r["session"] for r in page["rows"]] == [ids[2], ids[1]]
    assert call(client, "GET", "/v1/sessions/email/ann@example.com?limit=101").status_code == 400


def test_the_library(vault: Vault, clock: Clock) -> None:
    pid = vault.create_person({"login": "bob"}, by="root")
    made = vault.create_session(SID, {"ua": "x"}, link=("login", "bob"), expiration="1d", by="root")
    found = vault.get_session(made, by="root")
    assert (found.person_id, found.data, found.expires_at) == (pid, {"ua": "x"}, int(clock.now) + 86400)
    assert vault.list_sessions("token", pid, by="root")[1] == 1
    with pytest.raises(BadInput, match="UUID"):
        vault.create_session("not-a-uuid", {}, by="root")
    with pytest.raises(NotFound):
        vault.create_session(SID, {}, link=("login", "nobody"), by="root")
    vault.delete_session(SID, by="root")
    with pytest.raises(NotFound):
        vault.get_session(SID, by="root")
    assert sessions.split_body({"email": "a@b.c", "expiration": "1h", "ip": "x"}) == (
        {"ip": "x"}, ("email", "a@b.c"), "1h")


def test_no_session_value_in_the_database(client: FlaskClient, vault: Vault, database_url: str, ann: str) -> None:
    agent = f"agent-{secrets.token_hex(6)}"
    loose = f"loose-{secrets.token_hex(6)}"
    call(client, "POST", f"/v1/session/{SID}", {"ua": agent, "email": "ann@example.com"})
    call(client, "POST", f"/v1/session/{uuid.uuid4()}", {"ua": loose})
    call(client, "GET", "/v1/sessions/email/ann@example.com")
    raw = raw_database(database_url, vault)
    assert agent.encode() not in raw and loose.encode() not in raw


SESSION_CALLS = [("POST", f"/v1/session/{SID}", "users:write"), ("GET", f"/v1/session/{SID}", "users:read"),
                 ("DELETE", f"/v1/session/{SID}", "users:write"),
                 ("GET", "/v1/sessions/email/ann@example.com", "users:read")]


@pytest.mark.parametrize(("method", "path", "needed"), SESSION_CALLS)
def test_session_endpoints_need_a_token_and_the_scope(client: FlaskClient, vault: Vault, method: str, path: str,
                                                      needed: str) -> None:
    assert call(client, method, path, {"a": 1}, token=None).status_code == 401
    other = "users:read" if needed == "users:write" else "tokenize"
    refused = call(client, method, path, {"a": 1}, token=scoped(vault, other))
    assert refused.status_code == 403 and needed in refused.json["message"]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", "/v1/session/not-a-uuid", {"a": 1}, 400, "UUID"),
    ("POST", f"/v1/session/{SID}x", {"a": 1}, 400, "UUID"),
    ("GET", "/v1/session/123", None, 400, "UUID"),
    ("POST", f"/v1/session/{SID}", [1], 400, "JSON object"),
    ("POST", f"/v1/session/{SID}", {"expiration": "3 days"}, 400, "expiration"),
    ("POST", f"/v1/session/{SID}", {"expiration": 5}, 400, "in the past"),
    ("POST", f"/v1/session/{SID}", {"email": "a@example.com", "login": "ann"}, 400, "one person"),
    ("POST", f"/v1/session/{SID}", {"email": 7}, 400, "'email' must be a non-empty string"),
    ("POST", f"/v1/session/{SID}", {"email": "not an email"}, 400, "email"),
    ("POST", f"/v1/session/{SID}", {"email": "nobody@example.com"}, 404, "person not found"),
    ("GET", f"/v1/session/{SID}", None, 404, "session not found"),
    ("DELETE", f"/v1/session/{SID}", None, 404, "session not found"),
    ("GET", "/v1/sessions/email/nobody@example.com", None, 404, "person not found"),
    ("GET", "/v1/sessions/nick/ann", None, 400, "unknown mode"),
])
def test_session_errors(client: FlaskClient, ann: str, method: str, path: str, body: object, status: int,
                        message: str) -> None:
    answer = call(client, method, path, body)
    assert answer.status_code == status, answer.json
    assert answer.json["status"] == "error" and message in answer.json["message"]
    assert "nobody" not in answer.json["message"]


def test_an_empty_body_stores_an_empty_session(client: FlaskClient) -> None:
    assert call(client, "POST", f"/v1/session/{SID}").status_code == 200
    assert call(client, "GET", f"/v1/session/{SID}").json["data"] == {}
