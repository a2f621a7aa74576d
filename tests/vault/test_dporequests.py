"""DPO requests: the approval policy per operation, the request queue, approving and cancelling, on both backends."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.vault.apihelpers import ROOT, call, error, ok
from vault import dporequests
from vault.api import OPENAPI_PATH, create_app
from vault.config import ApprovalSettings, Config, ConfigError, parse_config
from vault.core import Vault
from vault.errors import BadInput, Conflict, NotFound
from vault.models import audit_table, outbox_table, requests_table

ALL_DPO = """\
approval:
  change_profile: dpo
  forget_me: dpo
  agreement_withdraw: dpo
  change_app_data: ["billing*", "crm"]
"""
SECRET_NAME = "Zebulon-7f3a"


def config(text: str = ALL_DPO) -> Config:
    return parse_config(text, "config.yaml", {})


def make_client(vault: Vault, text: str | None = ALL_DPO) -> FlaskClient:
    app = create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT),
                     config=None if text is None else config(text))
    return app.test_client()


@pytest.fixture
def client(vault: Vault) -> Iterator[FlaskClient]:
    yield make_client(vault)








def outbox(vault: Vault, event: str) -> list[dict[str, Any]]:
    with vault.engine.connect() as conn:
        return [json.loads(b) for b in conn.execute(select(outbox_table.c.body).where(outbox_table.c.event == event))
                .scalars()]


def audit_actions(vault: Vault) -> list[tuple[str, str]]:
    with vault.engine.connect() as conn:
        return [(r.actor, r.action) for r in conn.execute(select(audit_table).order_by(audit_table.c.seq))]


# -- the policy ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "app", "expected"), [
    ("change-profile", None, True), ("forget-me", None, True), ("agreement-withdraw", None, True),
    ("change-app-data", "billing", True), ("change-app-data", "billing_eu", True), ("change-app-data", "crm", True),
    ("change-app-data", "crm2", False), ("change-app-data", "shop", False), ("change-app-data", None, False),
])
def test_needs_approval_follows_the_policy(action: str, app: str | None, expected: bool) -> None:
    assert dporequests.needs_approval(config().approval, action, app) is expected
    assert dporequests.needs_approval(ApprovalSettings(), action, app) is False  # the default: self-service
    assert dporequests.needs_approval(None, action, app) is False


def test_an_unknown_action_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown request action"):
        dporequests.needs_approval(None, "delete-everything")


@pytest.mark.parametrize(("text", "match"), [
    ("approval:\n  forget_me: maybe\n", "approval.forget_me: invalid value (expected self or dpo"),
    ("approval:\n  change_app_data: billing\n", "approval.change_app_data: wrong type"),
    ("approval:\n  colour: dpo\n", "approval.colour: unknown key"),
])
def test_bad_approval_config_is_reported(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(match)):
        config(text)


def test_without_a_policy_every_call_is_self_service(vault: Vault) -> None:
    client = make_client(vault, None)
    pid = ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))["token"]
    assert ok(call(client, "PUT", f"/v1/user/token/{pid}", {"name": "Ann"})) == {"status": "ok", "token": pid}
    ok(call(client, "POST", f"/v1/agreement/sms/token/{pid}", {}))
    assert ok(call(client, "DELETE", f"/v1/agreement/sms/token/{pid}")) == {"status": "ok"}
    assert ok(call(client, "DELETE", f"/v1/user/token/{pid}")) == {"status": "ok", "result": "done"}
    assert ok(call(client, "GET", "/v1/requests"))["total"] == 0


# -- change-profile ------------------------------------------------------------------------------------------------


def test_a_profile_change_waits_for_a_dpo_then_applies(vault: Vault, client: FlaskClient) -> None:
    pid = ok(call(client, "POST", "/v1/user", {"email": "ann@example.com", "name": "Ann"}))["token"]
    made = ok(call(client, "PUT", "/v1/user/email/ann@example.com", {"name": SECRET_NAME}))
    assert made["result"] == "request-created" and set(made) == {"status", "result", "rtoken"}
    rtoken = made["rtoken"]
    assert vault.get_person("token", pid)[1]["name"] == "Ann"  # nothing applied yet

    # Stored sealed: the new value is nowhere in the row, nor in the callback.
    with vault.engine.connect() as conn:
        row = conn.execute(select(requests_table).where(requests_table.c.rtoken == rtoken)).one()
    assert row.action == "change-profile" and row.person_id == pid and row.status == "open"
    assert row.requested_by == "root" and SECRET_NAME.encode() not in bytes(row.change)
    [event] = outbox(vault, "requestcreated")
    assert event["token"] == pid and event["rtoken"] == rtoken and event["action"] == "change-profile"
    assert SECRET_NAME not in json.dumps(event)
    assert ("root", "request-create") in audit_actions(vault)

    listed = ok(call(client, "GET", "/v1/requests?status=open"))
    assert listed["total"] == 1 and listed["rows"][0]["rtoken"] == rtoken
    assert SECRET_NAME not in json.dumps(listed)
    assert ok(call(client, "GET", "/v1/requests"))["total"] == 1  # open is the default filter
    assert ok(call(client, "GET", "/v1/requests/email/ann@example.com"))["rows"][0]["rtoken"] == rtoken

    one = ok(call(client, "GET", f"/v1/request/{rtoken}"))
    assert one["request"] == listed["rows"][0] | {"reason": None}
    assert one["change"] == {"name": SECRET_NAME} and one["request"]["status"] == "open"
    assert one["request"]["token"] == pid and one["request"]["action"] == "change-profile"
    assert one["before"] == {"email": "ann@example.com", "name": "Ann"}
    assert one["after"] == {"email": "ann@example.com", "name": SECRET_NAME}

    assert ok(call(client, "POST", f"/v1/request/{rtoken}")) == {"status": "ok", "result": "done"}
    assert vault.get_person("token", pid)[1]["name"] == SECRET_NAME
    assert ok(call(client, "GET", f"/v1/request/{rtoken}"))["request"]["status"] == "approved"
    assert ok(call(client, "GET", "/v1/requests?status=approved"))["rows"][0]["decidedby"] == "root"
    assert ok(call(client, "GET", "/v1/requests?status=open"))["total"] == 0
    actions = audit_actions(vault)
    assert ("root", "change") in actions and ("root", "request-approve") in actions
    assert len(outbox(vault, "profilechange")) == 1

    error(call(client, "POST", f"/v1/request/{rtoken}"), 409, "already approved")
    error(call(client, "DELETE", f"/v1/request/{rtoken}"), 409, "already approved")


def test_the_same_open_request_answers_the_same_rtoken(vault: Vault, client: FlaskClient) -> None:
    ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))
    first = ok(call(client, "PUT", "/v1/user/email/ann@example.com", {"name": "A"}))["rtoken"]
    assert ok(call(client, "PUT", "/v1/user/email/ann@example.com", {"name": "A"}))["rtoken"] == first
    other = ok(call(client, "PUT", "/v1/user/email/ann@example.com", {"name": "B"}))["rtoken"]
    assert other != first
    assert ok(call(client, "DELETE", "/v1/user/email/ann@example.com"))["rtoken"] not in (first, other)
    assert ok(call(client, "GET", "/v1/requests"))["total"] == 3
    assert len(outbox(vault, "requestcreated")) == 3


def test_a_change_that_cannot_apply_is_refused_at_once(client: FlaskClient) -> None:
    ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))
    error(call(client, "PUT", "/v1/user/email/ann@example.com", [{"op": "remove", "path": "/nothing"}]), 400)
    error(call(client, "PUT", "/v1/user/email/nobody@example.com", {"name": "A"}), 404, "person not found")
    assert ok(call(client, "GET", "/v1/requests"))["total"] == 0


def test_an_approval_that_fails_leaves_the_request_open(vault: Vault, client: FlaskClient) -> None:
    ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))
    rtoken = ok(call(client, "PUT", "/v1/user/email/ann@example.com", {"email": "bob@example.com"}))["rtoken"]
    ok(call(client, "POST", "/v1/user", {"email": "bob@example.com"}))  # the new address is taken meanwhile
    error(call(client, "POST", f"/v1/request/{rtoken}"), 409, "duplicate index")
    assert ok(call(client, "GET", f"/v1/request/{rtoken}"))["request"]["status"] == "open"
    bob = ok(call(client, "DELETE", "/v1/user/email/bob@example.com"))["rtoken"]  # forget-me needs a DPO too
    ok(call(client, "POST", f"/v1/request/{bob}"))
    ok(call(client, "POST", f"/v1/request/{rtoken}"))
    assert vault.get_person("email", "bob@example.com")[1] == {"email": "bob@example.com"}


# -- forget-me and agreement-withdraw --------------------------------------------------------------------------------


def test_forget_me_waits_for_a_dpo_then_forgets(vault: Vault, client: FlaskClient) -> None:
    pid = ok(call(client, "POST", "/v1/user", {"email": "ann@example.com", "name": SECRET_NAME}))["token"]
    made = ok(call(client, "DELETE", f"/v1/user/token/{pid}"))
    assert made["result"] == "request-created"
    assert vault.get_person("token", pid)[0] == pid
    one = ok(call(client, "GET", f"/v1/request/{made['rtoken']}"))
    assert one["request"]["action"] == "forget-me" and one["change"] is None and one["after"] is None
    assert one["before"]["name"] == SECRET_NAME

    dpo = vault.create_api_token("dpo-desk", ["dpo"])[1]
    ok(call(client, "POST", f"/v1/request/{made['rtoken']}", token=dpo))
    with pytest.raises(NotFound):
        vault.get_person("token", pid)
    assert [e["token"] for e in outbox(vault, "forgetme")] == [pid]
    actor = [a for a, action in audit_actions(vault) if action == "forget"]
    assert len(actor) == 1 and actor[0].startswith("xtoken:dpo-desk:")
    # The request stays, as the record of what was asked; its before view is gone with the key.
    after = ok(call(client, "GET", f"/v1/request/{made['rtoken']}"))
    assert after["request"]["status"] == "approved" and after["before"] is None
    assert ok(call(client, "GET", "/v1/requests?status=approved"))["total"] == 1


def test_an_agreement_withdrawal_waits_for_a_dpo_then_withdraws(vault: Vault, client: FlaskClient) -> None:
    pid = ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))["token"]
    ok(call(client, "POST", "/v1/agreement/sms/email/ann@example.com", {}))
    made = ok(call(client, "DELETE", "/v1/agreement/sms/email/ann@example.com"))
    assert made["result"] == "request-created"
    assert vault.get_consent("sms", "token", pid).status == "yes"
    one = ok(call(client, "GET", f"/v1/request/{made['rtoken']}"))
    assert one["request"]["brief"] == "sms" and one["before"]["status"] == "yes" and one["after"]["status"] == "no"
    ok(call(client, "POST", f"/v1/request/{made['rtoken']}"))
    assert vault.get_consent("sms", "token", pid).status == "no"
    assert [e["status"] for e in outbox(vault, "consentchange")] == ["yes", "no"]
    error(call(client, "DELETE", "/v1/agreement/news/email/ann@example.com"), 404, "no such consent")
    error(call(client, "DELETE", "/v1/agreement/Not-A-Brief/email/ann@example.com"), 400)


# -- change-app-data (the app-records work provides Vault.change_app_record) -------------------------------------------


def test_app_data_changes_follow_the_app_patterns(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, str, Any, str]] = []

    def change_app_record(mode: str, ident: str, app: str, change: Any, *, by: str) -> str:
        calls.append((mode, ident, app, change, by))
        return ident

    # A stand-in for the app-records work's Vault.change_app_record (the same signature), real or not yet merged.
    monkeypatch.setattr(vault, "change_app_record", change_app_record, raising=False)
    policy = config().approval
    pid = vault.create_person({"email": "ann@example.com"})
    assert vault.apply_or_request(policy, "change-app-data", "token", pid, {"plan": "gold"}, app="shop",
                                  by="root") == ("done", pid)
    assert calls == [("token", pid, "shop", {"plan": "gold"}, "root")]
    result, rtoken = vault.apply_or_request(policy, "change-app-data", "email", "ann@example.com", {"iban": "x"},
                                            app="billing_eu", by="root")
    assert result == "request-created" and len(calls) == 1
    found = vault.get_request(rtoken, by="dpo")
    assert found["request"]["app"] == "billing_eu"
    assert found["change"] == {"iban": "x"} and found["after"] == {"iban": "x"}
    vault.approve_request(rtoken, by="dpo")
    assert calls[1] == ("token", pid, "billing_eu", {"iban": "x"}, "dpo")
    with pytest.raises(Conflict):
        vault.approve_request(rtoken, by="dpo")
    with pytest.raises(BadInput, match="app name"):
        vault.create_request("change-app-data", "token", pid, {}, app="Bad App")


def test_the_library_applies_at_once_when_the_policy_allows(vault: Vault) -> None:
    pid = vault.create_person({"email": "ann@example.com"})
    assert vault.apply_or_request(None, "change-profile", "token", pid, {"name": "A"}) == ("done", pid)
    assert vault.get_person("token", pid)[1]["name"] == "A"
    result, rtoken = vault.apply_or_request(config().approval, "change-profile", "token", pid, {"name": "B"})
    assert result == "request-created"
    assert vault.requests("open") == (1, [vault.requests(None, mode="token", ident=pid)[1][0]])


# -- cancel --------------------------------------------------------------------------------------------------------


def test_cancel_records_the_reason_and_closes_the_request(vault: Vault, client: FlaskClient) -> None:
    pid = ok(call(client, "POST", "/v1/user", {"email": "ann@example.com", "name": "Ann"}))["token"]
    rtoken = ok(call(client, "PUT", f"/v1/user/token/{pid}", {"name": "X"}))["rtoken"]
    assert ok(call(client, "DELETE", f"/v1/request/{rtoken}", {"reason": "not the person's wish"})) == {
        "status": "ok", "result": "done"}
    one = ok(call(client, "GET", f"/v1/request/{rtoken}"))["request"]
    assert one["status"] == "canceled" and one["reason"] == "not the person's wish" and one["decidedby"] == "root"
    with vault.engine.connect() as conn:
        stored = conn.execute(select(requests_table.c.reason)).scalar_one()
    assert b"wish" not in bytes(stored)  # sealed too
    assert vault.get_person("token", pid)[1]["name"] == "Ann"
    assert ("root", "request-cancel") in audit_actions(vault)
    error(call(client, "POST", f"/v1/request/{rtoken}"), 409, "already canceled")
    error(call(client, "DELETE", f"/v1/request/{rtoken}"), 409, "already canceled")
    assert ok(call(client, "GET", "/v1/requests?status=canceled"))["total"] == 1
    # Without a body, too.
    other = ok(call(client, "PUT", f"/v1/user/token/{pid}", {"name": "Y"}))["rtoken"]
    ok(call(client, "DELETE", f"/v1/request/{other}"))
    assert ok(call(client, "GET", f"/v1/request/{other}"))["request"]["reason"] is None


# -- errors ---------------------------------------------------------------------------------------------------------


RTOKEN = "00000000-0000-4000-8000-000000000000"
ENDPOINTS = [("GET", "/v1/requests"), ("GET", "/v1/requests/email/ann@example.com"),
             ("GET", f"/v1/request/{RTOKEN}"), ("POST", f"/v1/request/{RTOKEN}"), ("DELETE", f"/v1/request/{RTOKEN}")]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_auth_is_required_and_the_dpo_scope_too(vault: Vault, client: FlaskClient, method: str, path: str) -> None:
    error(call(client, method, path, token=None), 401)
    error(call(client, method, path, token="wrong-token-0123456789"), 401)
    reader = vault.create_api_token("reader", ["users:read", "users:write", "consent"])[1]
    error(call(client, method, path, token=reader), 403, "lacks the scope 'dpo'")


@pytest.mark.parametrize(("method", "path", "body", "match"), [
    ("GET", "/v1/requests?status=pending", None, "status must be one of open, approved, canceled"),
    ("GET", "/v1/requests?limit=1000", None, "limit"),
    ("GET", "/v1/requests/email/ann@example.com?status=x", None, "status must be one of"),
    ("GET", "/v1/requests/nick/ann", None, ""),
    ("GET", "/v1/request/not-a-uuid", None, "an rtoken is a request's uuid"),
    ("POST", "/v1/request/not-a-uuid", None, "an rtoken is a request's uuid"),
    ("DELETE", "/v1/request/not-a-uuid", None, "an rtoken is a request's uuid"),
    ("DELETE", f"/v1/request/{RTOKEN}", {"reason": 5}, ""),
    ("DELETE", f"/v1/request/{RTOKEN}", {"colour": "red"}, "only"),
    ("DELETE", f"/v1/request/{RTOKEN}", [1], "only"),
])
def test_bad_input_is_a_400_with_a_message(client: FlaskClient, method: str, path: str, body: object,
                                           match: str) -> None:
    ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))
    if body == {"reason": 5}:  # a real open request, so the reason is what is wrong
        path = "/v1/request/" + ok(call(client, "DELETE", "/v1/user/email/ann@example.com"))["rtoken"]
    error(call(client, method, path, body), 400, match)


@pytest.mark.parametrize(("method", "path"), [*ENDPOINTS[1:], ("GET", "/v1/requests/token/" + RTOKEN)])
def test_unknown_requests_and_people_are_404(client: FlaskClient, method: str, path: str) -> None:
    error(call(client, method, path), 404)


def test_a_request_of_someone_forgotten_meanwhile_cannot_be_approved(vault: Vault, client: FlaskClient) -> None:
    pid = ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))["token"]
    rtoken = ok(call(client, "PUT", f"/v1/user/token/{pid}", {"name": "X"}))["rtoken"]
    vault.forget_person("token", pid)
    error(call(client, "POST", f"/v1/request/{rtoken}"), 404, "forgotten")
    assert ok(call(client, "GET", f"/v1/request/{rtoken}"))["change"] is None  # the key is gone
    ok(call(client, "DELETE", f"/v1/request/{rtoken}", {"reason": "gone"}))


def test_lists_page_with_offset_and_limit(client: FlaskClient) -> None:
    for i in range(3):
        ok(call(client, "POST", "/v1/user", {"email": f"p{i}@example.com"}))
        ok(call(client, "DELETE", f"/v1/user/email/p{i}@example.com"))
    page = ok(call(client, "GET", "/v1/requests?offset=1&limit=1"))
    assert page["total"] == 3 and len(page["rows"]) == 1
    everyone = ok(call(client, "GET", "/v1/requests?limit=100"))["rows"]
    assert page["rows"][0] == everyone[1]


def test_answers_match_the_openapi_document(vault: Vault, client: FlaskClient) -> None:
    from tests.vault.test_openapi import _check, _response_schema

    spec = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))

    def check(method: str, path: str, resp: Any, status: int = 200) -> dict[str, Any]:
        assert resp.status_code == status, resp.get_json()
        _check(spec, _response_schema(spec, method, path, status), resp.get_json())
        return resp.get_json()  # type: ignore[no-any-return]

    user, one = "/v1/user/{mode}/{ident}", "/v1/request/{rtoken}"
    pid = ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))["token"]
    ok(call(client, "POST", "/v1/agreement/sms/token/" + pid, {}))
    change = check("put", user, call(client, "PUT", f"/v1/user/token/{pid}", {"name": "A"}))["rtoken"]
    check("delete", "/v1/agreement/{brief}/{mode}/{ident}", call(client, "DELETE", f"/v1/agreement/sms/token/{pid}"))
    forget = check("delete", user, call(client, "DELETE", f"/v1/user/token/{pid}"))["rtoken"]
    check("get", "/v1/requests", call(client, "GET", "/v1/requests"))
    check("get", "/v1/requests", call(client, "GET", "/v1/requests?status=x"), 400)
    check("get", "/v1/requests/{mode}/{ident}", call(client, "GET", f"/v1/requests/token/{pid}"))
    check("get", one, call(client, "GET", f"/v1/request/{change}"))
    check("post", one, call(client, "POST", f"/v1/request/{change}"))
    check("post", one, call(client, "POST", f"/v1/request/{change}"), 409)
    check("delete", one, call(client, "DELETE", f"/v1/request/{forget}", {"reason": "no"}))
    check("get", one, call(client, "GET", f"/v1/request/{forget}"))
    check("get", one, call(client, "GET", f"/v1/request/{RTOKEN}"), 404)
    check("get", one, call(client, "GET", f"/v1/request/{RTOKEN}", token=None), 401)
    check("get", one, call(client, "GET", f"/v1/request/{RTOKEN}",
                           token=vault.create_api_token("r", ["users:read"])[1]), 403)
    plain = make_client(vault, None)
    check("put", user, call(plain, "PUT", f"/v1/user/token/{pid}", {"name": "B"}))
    check("delete", "/v1/agreement/{brief}/{mode}/{ident}", call(plain, "DELETE", f"/v1/agreement/sms/token/{pid}"))
    check("delete", user, call(plain, "DELETE", f"/v1/user/token/{pid}"))


def test_the_api_holds_app_changes_and_consent_refusals_for_a_dpo(vault: Vault, client: FlaskClient) -> None:
    """The real app records behind PUT /v1/userapp, and POST /v1/agreement with status no, under ALL_DPO."""
    pid = vault.create_person({"email": "ann@example.com"})
    ok(call(client, "POST", f"/v1/userapp/token/{pid}/billing", {"iban": "GB00 0000"}))
    held = ok(call(client, "PUT", f"/v1/userapp/token/{pid}/billing", {"iban": "GB11 1111"}))
    assert held["result"] == "request-created"
    assert vault.get_app_record("token", pid, "billing", by="t")[1] == {"iban": "GB00 0000"}
    ok(call(client, "POST", f"/v1/request/{held['rtoken']}"))
    assert vault.get_app_record("token", pid, "billing", by="t")[1] == {"iban": "GB11 1111"}
    ok(call(client, "POST", f"/v1/userapp/token/{pid}/shop", {"plan": "free"}))  # not a held app: at once
    assert ok(call(client, "PUT", f"/v1/userapp/token/{pid}/shop", {"plan": "gold"}))["token"] == pid

    ok(call(client, "POST", f"/v1/agreement/sms/token/{pid}", {"status": "yes"}))
    held = ok(call(client, "POST", f"/v1/agreement/sms/token/{pid}", {"status": "no"}))
    assert held["result"] == "request-created" and vault.get_consent("sms", "token", pid).status == "yes"
    ok(call(client, "POST", f"/v1/request/{held['rtoken']}"))
    assert vault.get_consent("sms", "token", pid).status == "no"
    # A refusal with nothing to withdraw is recorded at once, for a person or before one exists.
    assert ok(call(client, "POST", f"/v1/agreement/news/token/{pid}", {"status": "no"})) == {"status": "ok"}
    assert ok(call(client, "POST", "/v1/agreement/news/email/new@example.com", {"status": "no"})) == {"status": "ok"}
