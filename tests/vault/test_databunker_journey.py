"""A whole Databunker-style journey with exactly the contract's paths and bodies (shared/contracts/api-v1.md):
legal basis and processing activity, consent by email before the person exists, the person created from a form,
an app record changed, a field shared with a partner until it expires, sessions, consent withdrawn, forget-me
approved by a DPO; then nothing of the person is left but an audit trail that shows it all."""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Clock
from vault.api import create_app
from vault.config import parse_config
from vault.core import Vault
from vault.models import outbox_table

ROOT = "j" * 32
AUTH = {"X-Bunker-Token": ROOT}


def ok(answer: Any) -> dict[str, Any]:
    assert answer.status_code == 200, (answer.status_code, answer.get_data(as_text=True))
    body: dict[str, Any] = answer.get_json()
    assert body["status"] == "ok"
    return body


def test_a_databunker_journey(vault: Vault, clock: Clock) -> None:
    config = parse_config("approval:\n  forget_me: dpo\n", "config.yaml", {})
    client: FlaskClient = create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT),
                                     config=config).test_client()

    # Purposes and processing activities.
    ok(client.post("/v1/lbasis/marketing-email", headers=AUTH, json={
        "module": "newsletter", "shortdesc": "Marketing emails", "fulldesc": "News about our products, monthly.",
        "basistype": "consent", "usercontrol": True, "requiredflag": False, "status": "active"}))
    ok(client.post("/v1/pactivity/newsletter", headers=AUTH, json={"title": "Monthly newsletter",
                                                                   "applicableto": "customers"}))
    ok(client.post("/v1/pactivity/newsletter/marketing-email", headers=AUTH))
    assert [b["brief"] for b in ok(client.get("/v1/lbasis", headers=AUTH))["rows"]] == ["marketing-email"]

    # Consent by email before the person exists, then the person from a form body.
    ok(client.post("/v1/agreement/marketing-email/email/jane@example.com", headers=AUTH,
                   json={"agreementmethod": "web-form", "referencecode": "signup-1"}))
    made = ok(client.post("/v1/user", headers=AUTH, data={"email": "Jane@Example.com", "name": "Jane Doe",
                                                           "phone": "07700 900123"}))
    jane = made["token"]
    agreements = ok(client.get("/v1/agreements/email/jane@example.com", headers=AUTH))
    assert [(a["brief"], a["status"]) for a in agreements["rows"]] == [("marketing-email", "yes")]
    assert ok(client.get("/v1/user/email/jane@example.com", headers=AUTH))["data"]["name"] == "Jane Doe"
    email_token = ok(client.post("/v1/tokenize", headers=AUTH, json={
        "items": [{"value": "jane@example.com", "kind": "email", "format": "email", "subject": jane}]}))["tokens"][0]

    # An app record, changed.
    ok(client.post(f"/v1/userapp/token/{jane}/shop", headers=AUTH, json={"plan": "free", "size": "M"}))
    ok(client.put(f"/v1/userapp/token/{jane}/shop", headers=AUTH, json={"plan": "gold"}))
    assert ok(client.get(f"/v1/userapp/token/{jane}/shop", headers=AUTH))["data"] == {"plan": "gold", "size": "M"}
    assert ok(client.get(f"/v1/userapp/token/{jane}", headers=AUTH))["apps"] == ["shop"]

    # A field shared with a partner, read without a token until it expires.
    record = ok(client.post(f"/v1/sharedrecord/token/{jane}", headers=AUTH,
                            json={"fields": "name", "partner": "acme", "expiration": "10m"}))["record"]
    assert ok(client.get(f"/v1/get/{record}"))["data"] == {"name": "Jane Doe"}

    # Sessions.
    session = str(uuid.uuid4())
    ok(client.post(f"/v1/session/{session}", headers=AUTH,
                   json={"ip": "203.0.113.9", "ua": "Firefox", "email": "jane@example.com", "expiration": "1d"}))
    listed = ok(client.get("/v1/sessions/email/jane@example.com", headers=AUTH))
    assert listed["total"] == 1 and listed["rows"][0]["data"]["ip"] == "203.0.113.9"

    clock.advance(11 * 60)
    assert client.get(f"/v1/get/{record}").status_code == 404

    # Consent withdrawn.
    ok(client.delete("/v1/agreement/marketing-email/email/jane@example.com", headers=AUTH))
    assert ok(client.get("/v1/agreement/marketing-email/email/jane@example.com",
                         headers=AUTH))["data"]["status"] == "no"

    # Forget-me, held for a DPO, approved.
    asked = ok(client.delete("/v1/user/email/jane@example.com", headers=AUTH))
    assert asked["result"] == "request-created"
    assert ok(client.get("/v1/user/email/jane@example.com", headers=AUTH))["token"] == jane  # not yet
    open_rows = ok(client.get("/v1/requests?status=open", headers=AUTH))["rows"]
    assert [(r["rtoken"], r["action"]) for r in open_rows] == [(asked["rtoken"], "forget-me")]
    ok(client.post(f"/v1/request/{asked['rtoken']}", headers=AUTH))

    # Gone: the person, their app records, sessions and tokens.
    assert client.get("/v1/user/email/jane@example.com", headers=AUTH).status_code == 404
    assert client.get(f"/v1/user/token/{jane}", headers=AUTH).status_code == 404
    assert client.get(f"/v1/userapp/token/{jane}/shop", headers=AUTH).status_code == 404
    assert client.get(f"/v1/session/{session}", headers=AUTH).status_code == 404
    assert ok(client.post("/v1/detokenize", headers=AUTH, json={"tokens": [email_token]}))["values"] == [None]

    # The audit trail shows it all, and holds nothing readable of her any more.
    trail = ok(client.get(f"/v1/audit/list/{jane}?limit=100", headers=AUTH))
    actions = {row["action"] for row in trail["rows"]}
    assert {"create", "read", "app-create", "app-change", "share", "shared-read", "session-create",
            "consent-withdraw", "request-create", "request-approve", "forget"} <= actions
    change = next(row for row in trail["rows"] if row["action"] == "app-change")
    detail = ok(client.get(f"/v1/audit/get/{change['atoken']}", headers=AUTH))["event"]
    assert detail["detail"] is None and detail["detail_state"] == "shredded"
    assert "Jane" not in json.dumps(trail) and "jane@" not in json.dumps(trail).lower()
    with vault.engine.connect() as conn:
        events = [(r.event, json.loads(r.body)) for r in conn.execute(select(outbox_table))]
    forgetme = [body for event, body in events if event == "forgetme"]
    assert len(forgetme) == 1 and forgetme[0]["token"] == jane and "jane" not in json.dumps(forgetme).lower()
