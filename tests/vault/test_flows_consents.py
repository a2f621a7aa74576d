"""What the sidecar needs from the vault: flows tokenized for their person in one transaction, and consent-gated
reveals that say why a value stays hidden."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from tests.conftest import Clock
from vault.api import create_app
from vault.core import FlowReveal, FlowTokenize, FlowTokens, Vault
from vault.errors import BadInput, NotFound
from vault.tokens import TokenRequest

ROOT = "root-token-for-tests-0123456789"


def test_flows_find_or_create_their_person(vault: Vault) -> None:
    results = vault.tokenize_flows([
        FlowTokenize(("email", "Kim@Example.com"), [TokenRequest("Kim@Example.com", kind="email"),
                                                    TokenRequest("+44 7700 900111", kind="phone")]),
        FlowTokenize(None, [TokenRequest("10.9.8.7", kind="ip")]),
        FlowTokenize(("email", "kim@example.com"), [TokenRequest("Kim", kind="name")]),
        FlowTokenize(("email", "not an email"), [TokenRequest("x")]),
    ])
    first, anon, again, bad = results
    assert isinstance(first, FlowTokens) and isinstance(again, FlowTokens) and isinstance(anon, FlowTokens)
    assert first.person is not None and first.person == again.person and anon.person is None
    assert isinstance(bad, BadInput) and "subject" in bad.message
    assert vault.get_person("email", "kim@example.com")[0] == first.person
    assert vault.token_info(first.tokens[1]).subject == first.person
    assert vault.detokenize(first.tokens + anon.tokens) == ["Kim@Example.com", "+44 7700 900111", "10.9.8.7"]
    # A later flow that carries one of the person's tokens as its subject value belongs to them too.
    [by_token] = vault.tokenize_flows([FlowTokenize(("email", first.tokens[0]), [TokenRequest("v2")])])
    assert isinstance(by_token, FlowTokens) and by_token.person == first.person
    vault.forget_person("email", "kim@example.com")
    assert vault.detokenize(first.tokens + again.tokens + by_token.tokens) == [None] * 4


def test_consent_gates_reveal_and_says_why(vault: Vault, clock: Clock) -> None:
    pid = vault.create_person({"phone": "07700 900222"})
    [owned, loose] = vault.tokenize([TokenRequest("+447700900222", kind="phone", subject=pid),
                                     TokenRequest("+447700900333", kind="phone")])
    assert vault.detokenize_explained([owned, loose, "tbk_x"], purpose="sms") == (
        [None, None, None], ["consent", "consent", "unknown"])
    vault.give_consent("sms", "phone", "+447700900222", expires_at=int(clock.now) + 60)
    assert vault.detokenize([owned, loose], purpose="sms") == ["+447700900222", None]
    assert vault.detokenize([owned], purpose="marketing") == [None]
    assert vault.get_consent("sms", "token", pid).status == "yes"
    clock.advance(61)
    assert vault.detokenize([owned], purpose="sms") == [None]
    assert vault.get_consent("sms", "token", pid).status == "expired"
    vault.give_consent("sms", "token", pid)
    vault.withdraw_consent("sms", "token", pid)
    assert vault.detokenize([owned], purpose="sms") == [None]
    assert vault.get_consent("sms", "token", pid).status == "no"
    with pytest.raises(NotFound):
        vault.withdraw_consent("email", "token", pid)
    with pytest.raises(BadInput):
        vault.detokenize([owned], purpose="Not A Brief")
    vault.forget_person("token", pid)  # consents go with the person


def test_read_flows_answers_as_reveal_flows_and_writes_nothing(vault: Vault) -> None:
    pid = vault.create_person({"phone": "07700 900444"})
    [phone, mail] = vault.tokenize([TokenRequest("+447700900444", kind="phone", subject=pid),
                                    TokenRequest("a@example.com", kind="email", subject=pid)])
    vault.give_consent("sms", "token", pid)
    flows = [FlowReveal([phone, mail], ["masked", "plain"], None, "r1"),
             FlowReveal([phone], "plain", "sms", "r2"),
             FlowReveal([phone], "plain", "marketing", "r3"),  # no such consent: refused, and audited as such
             FlowReveal([phone], "plain", "Not A Brief", "r4"),  # malformed: that flow fails alone
             FlowReveal([], "plain", None, "r5")]
    before = vault.audit_trail(pid, 0, 100)[0]
    read = vault.read_flows(flows, by="sidecar")
    assert vault.audit_trail(pid, 0, 100)[0] == before  # the caller records the rows
    assert isinstance(read[3], BadInput)
    assert read[4] == ([], [], [])
    answers = [r if isinstance(r, BadInput) else r[:2] for r in read]
    assert answers[0] == (vault.detokenize([phone], "masked") + ["a@example.com"], [None, None])
    assert answers[1] == (["+447700900444"], [None])
    assert answers[2] == ([None], ["consent"])
    revealed = vault.reveal_flows(flows, by="sidecar")  # the same answers, recorded in its own transaction
    assert answers[:3] == revealed[:3] and isinstance(revealed[3], BadInput) and revealed[4] == ([], [])
    rows = [row for r in read[:3] if not isinstance(r, BadInput) for row in r[2]]
    assert sorted((e.route, e.status, e.person_id, e.detail["reveal"] if e.detail else None) for e in rows) == [
        ("r1", "ok", pid, "masked"), ("r1", "ok", pid, "plain"), ("r2", "ok", pid, "plain"),
        ("r3", "refused", pid, "plain")]
    after_reveal = vault.audit_trail(pid, 0, 100)[0]
    vault.record_audit(rows)
    assert vault.audit_trail(pid, 0, 100)[0] == after_reveal + 4
    assert vault.verify_audit().intact


@pytest.fixture
def client(vault: Vault) -> Iterator[FlaskClient]:
    yield create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT)).test_client()


def test_api_subject_explain_and_agreements(client: FlaskClient) -> None:
    h = {"X-Bunker-Token": ROOT}
    made = client.post("/v1/tokenize", headers=h, json={
        "subject": {"index": "phone", "value": "07700 900444"},
        "items": [{"value": "07700 900444", "kind": "phone", "format": "digits"}]}).json
    assert made["status"] == "ok" and made["subject"]
    [token] = made["tokens"]
    hidden = client.post("/v1/detokenize", headers=h, json={"tokens": [token], "purpose": "sms", "explain": True})
    assert hidden.json == {"status": "ok", "values": [None], "reasons": ["consent"]}
    assert client.post("/v1/agreement/sms/phone/+447700900444", headers=h,
                       json={"agreementmethod": "web", "expiration": "30d"}).json == {"status": "ok"}
    shown = client.post("/v1/detokenize", headers=h, json={"tokens": [token], "purpose": "sms"})
    assert shown.json == {"status": "ok", "values": ["07700 900444"]}
    got = client.get(f"/v1/agreement/sms/token/{made['subject']}", headers=h).json
    assert got["data"]["status"] == "yes" and got["data"]["agreementmethod"] == "web"
    assert client.delete("/v1/agreement/sms/phone/07700900444", headers=h).json == {"status": "ok"}
    assert client.post("/v1/detokenize", headers=h, json={"tokens": [token], "purpose": "sms"}).json["values"] == [None]
    for body, message in [({"subject": {"index": "nick", "value": "x"}, "items": []}, "'subject' must be"),
                          ({"subject": {"index": "email", "value": "bad"}, "items": [{"value": "v"}]},
                           "subject: invalid"),
                          ({"items": [], "extra": 1}, "unknown key 'extra'")]:
        answer = client.post("/v1/tokenize", headers=h, json=body)
        assert answer.status_code == 400 and message in answer.json["message"]
    assert client.post("/v1/agreement/BAD/phone/+447700900444", headers=h).status_code == 400
    # By email or phone, consent may come before the person (tests/vault/test_agreements.py); by login it may not.
    assert client.post("/v1/agreement/sms/login/nobody", headers=h).status_code == 404


def test_scoped_tokens(client: FlaskClient, vault: Vault) -> None:
    root = {"X-Bunker-Token": ROOT}
    made = client.post("/v1/xtoken", headers=root, json={"name": "sidecar", "scopes": ["tokenize",
                                                                                     "detokenize:email"],
                                                        "expiration": "1h"}).json
    assert made["status"] == "ok" and made["xtoken"].startswith("tbx_")
    side = {"X-Bunker-Token": made["xtoken"]}
    tokens = client.post("/v1/tokenize", headers=side, json={"items": [{"value": "a@example.com", "kind": "email"},
                                                                       {"value": "+447700900555", "kind": "phone"}]})
    assert tokens.status_code == 200
    both = tokens.json["tokens"]
    shown = client.post("/v1/detokenize", headers=side, json={"tokens": both, "explain": True}).json
    assert shown["values"] == ["a@example.com", None] and shown["reasons"] == [None, "scope"]
    for method, path in [("POST", "/v1/user"), ("GET", "/v1/user/email/a@example.com"), ("POST", "/v1/xtoken"),
                         ("GET", f"/v1/token/{both[0]}")]:
        answer = client.open(path, method=method, headers=side, json={"email": "x@example.com"})
        assert answer.status_code == 403 and "lacks the scope" in answer.json["message"], path
    listed = client.get("/v1/xtoken", headers=root).json
    assert listed["total"] == 1 and listed["rows"][0]["name"] == "sidecar" and "xtoken" not in listed["rows"][0]
    assert made["xtoken"] not in str(listed)
    assert client.delete(f"/v1/xtoken/{made['id']}", headers=root).json["result"] == "done"
    assert client.post("/v1/tokenize", headers=side, json={"items": []}).status_code == 401
    assert client.delete(f"/v1/xtoken/{made['id']}", headers=root).status_code == 404
    for body, message in [({"name": "x", "scopes": ["everything"]}, "unknown scope"),
                          ({"name": "", "scopes": ["tokenize"]}, "name"),
                          ({"name": "x", "scopes": []}, "scopes")]:
        answer = client.post("/v1/xtoken", headers=root, json=body)
        assert answer.status_code == 400 and message in answer.json["message"]


def test_expired_scoped_token_is_refused(vault: Vault, clock: Clock) -> None:
    token_id, token = vault.create_api_token("short", ["tokenize"], expires_at=int(clock.now) + 10)
    app = create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT)).test_client()
    assert app.post("/v1/tokenize", headers={"X-Bunker-Token": token}, json={"items": []}).status_code == 200
    clock.advance(11)
    vault._grants.clear()  # the few seconds a grant is remembered
    assert app.post("/v1/tokenize", headers={"X-Bunker-Token": token}, json={"items": []}).status_code == 401
    assert token_id
