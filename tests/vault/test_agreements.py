"""Agreements beyond the basics: a person's list (/v1/agreements), revoking a purpose for everyone
(DELETE /v1/agreement/{brief}), and consent given by email or phone before the person exists."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.conftest import Clock
from tests.vault.apihelpers import ROOT, call
from vault.api import create_app
from vault.core import FlowTokenize, FlowTokens, Vault
from vault.errors import BadInput, NotFound
from vault.models import Base, audit_table, outbox_table, pending_agreements_table
from vault.tokens import TokenRequest


@pytest.fixture
def client(vault: Vault) -> Iterator[FlaskClient]:
    yield create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT)).test_client()




def callbacks(vault: Vault) -> list[dict[str, object]]:
    with vault.engine.connect() as conn:
        bodies = conn.execute(select(outbox_table.c.body).where(outbox_table.c.event == "consentchange")
                              .order_by(outbox_table.c.seq)).scalars().all()
    return [{k: v for k, v in json.loads(b).items() if k not in ("event_id", "time", "event")} for b in bodies]


def audit_actions(vault: Vault) -> list[tuple[str, str | None]]:
    with vault.engine.connect() as conn:
        return [(row.action, row.person_id) for row in conn.execute(
            select(audit_table.c.action, audit_table.c.person_id).order_by(audit_table.c.seq))]


def pending_count(vault: Vault) -> int:
    with vault.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(pending_agreements_table)).scalar_one()


def assert_nowhere_in_db(vault: Vault, *needles: str) -> None:
    """No column of any table holds any of `needles`, in any case."""
    with vault.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    text = bytes(value).decode("latin-1") if isinstance(value, bytes | memoryview) else str(value)
                    for needle in needles:
                        assert needle.lower() not in text.lower(), f"{table.name}.{column} holds {needle!r}"


def test_agreements_list_with_statuses_and_descriptions(client: FlaskClient, vault: Vault, clock: Clock) -> None:
    pid = call(client, "POST", "/v1/user", {"email": "ann@example.com"}).json["token"]
    assert call(client, "POST", "/v1/lbasis/sms", {"shortdesc": "Texts", "fulldesc": "Order texts",
                                                   "module": "orders", "basistype": "contract"}).status_code == 200
    url = "/v1/agreement/{}/email/ann@example.com"
    assert call(client, "POST", url.format("sms"), {"agreementmethod": "web", "lastmodifiedby": "support",
                                                    "starttime": int(clock.now) - 3600, "expiration": "1d"}).json \
        == {"status": "ok"}
    assert call(client, "POST", url.format("news"), {"expiration": "10s"}).status_code == 200
    assert call(client, "POST", url.format("calls"), {"status": "no"}).status_code == 200
    clock.advance(11)
    listed = call(client, "GET", "/v1/agreements/email/ann@example.com").json
    assert listed["status"] == "ok" and listed["total"] == 3
    calls, news, sms = listed["rows"]
    assert sms == {"brief": "sms", "status": "yes", "starttime": int(clock.now) - 3611,
                   "expiration": int(clock.now) - 11 + 86400, "agreementmethod": "web", "referencecode": None,
                   "lastmodifiedby": "support", "module": "orders", "shortdesc": "Texts", "fulldesc": "Order texts",
                   "basistype": "contract"}
    assert news["status"] == "expired" and news["shortdesc"] is None and news["basistype"] is None
    assert calls["status"] == "no"
    by_token = call(client, "GET", f"/v1/agreements/token/{pid}?offset=1&limit=1").json
    assert by_token["total"] == 3 and [r["brief"] for r in by_token["rows"]] == ["news"]
    assert call(client, "GET", url.format("sms")).json["data"]["lastmodifiedby"] == "support"
    assert ("consent-read", pid) in audit_actions(vault)


def test_agreements_errors_and_scopes(client: FlaskClient, vault: Vault, clock: Clock) -> None:
    _, outsider = vault.create_api_token("outsider", ["users:read"])
    _, reader = vault.create_api_token("reader", ["consent"])
    assert call(client, "POST", "/v1/user", {"login": "bob", "email": "bob@example.com"}).status_code == 200
    for method, path in [("GET", "/v1/agreements/login/bob"), ("DELETE", "/v1/agreement/sms")]:
        assert call(client, method, path, token=None).status_code == 401
    answer = call(client, "GET", "/v1/agreements/login/bob", token=outsider)
    assert answer.status_code == 403 and "'consent'" in answer.json["message"]
    assert call(client, "GET", "/v1/agreements/login/bob", token=reader).json == {"status": "ok", "total": 0,
                                                                                  "rows": []}
    answer = call(client, "DELETE", "/v1/agreement/sms", token=reader)
    assert answer.status_code == 403 and "'dpo'" in answer.json["message"]
    for method, path, body, message in [
        ("GET", "/v1/agreements/nick/bob", None, "unknown mode"),
        ("GET", "/v1/agreements/email/not-an-email", None, "email"),
        ("GET", "/v1/agreements/login/bob?limit=500", None, "limit"),
        ("DELETE", "/v1/agreement/Not_A_Brief", None, "matches ^[a-z]"),
        ("POST", "/v1/agreement/sms/login/bob", {"starttime": "yesterday"}, "'starttime' must be a unix time"),
        ("POST", "/v1/agreement/sms/login/bob", {"starttime": int(clock.now) + 60}, "not in the future"),
        ("POST", "/v1/agreement/sms/login/bob", {"lastmodifiedby": "x" * 65}, "'lastmodifiedby'"),
        ("POST", "/v1/agreement/sms/login/bob", {"status": "maybe"}, "'status' must be yes or no"),
    ]:
        answer = call(client, method, path, body)
        assert answer.status_code == 400 and message in answer.json["message"], (path, answer.json)
    for method, path in [("GET", "/v1/agreements/login/nobody"), ("GET", "/v1/agreements/token/"
                                                                         "0b9e2a4c-1c1d-4a0e-9f3e-6a2b5c7d8e9f"),
                         ("DELETE", "/v1/agreement/sms"), ("POST", "/v1/agreement/sms/login/nobody")]:
        answer = call(client, method, path)
        assert answer.status_code == 404 and answer.json["status"] == "error", path


def test_revoke_for_everyone_blocks_reveals(client: FlaskClient, vault: Vault) -> None:
    people = [vault.create_person({"phone": f"07700 90010{i}"}) for i in range(3)]
    tokens = vault.tokenize([TokenRequest(f"+4477009001{i:02d}", kind="phone", subject=p)
                             for i, p in enumerate(people)])
    for pid in people[:2]:
        vault.give_consent("sms", "token", pid)
    vault.give_consent("sms", "token", people[2], status="no")
    assert call(client, "POST", "/v1/agreement/sms/email/later@example.com").status_code == 200  # pending
    assert vault.detokenize(tokens, purpose="sms") == ["+447700900100", "+447700900101", None]
    before = len(callbacks(vault))
    assert call(client, "DELETE", "/v1/agreement/sms").json == {"status": "ok", "revoked": 4}
    assert vault.detokenize(tokens, purpose="sms") == [None, None, None]
    assert vault.detokenize(tokens) == ["+447700900100", "+447700900101", "+447700900102"]  # no purpose: as before
    assert call(client, "GET", f"/v1/agreement/sms/token/{people[0]}").json["data"]["status"] == "revoked"
    assert call(client, "GET", "/v1/agreement/sms/email/later@example.com").json["data"]["status"] == "revoked"
    sent = callbacks(vault)[before:]
    assert sorted(sent, key=str) == sorted([{"token": p, "brief": "sms", "status": "revoked"} for p in people]
                                           + [{"mode": "email", "brief": "sms", "status": "revoked"}], key=str)
    revokes = [pid for action, pid in audit_actions(vault) if action == "consent-revoke"]
    assert sorted(revokes, key=str) == sorted([*people, None], key=str)
    # Nothing left to revoke: still ok, and nothing new is sent. A person may consent again.
    assert call(client, "DELETE", "/v1/agreement/sms").json == {"status": "ok", "revoked": 0}
    assert len(callbacks(vault)) == before + 4
    vault.give_consent("sms", "token", people[0])
    assert vault.detokenize(tokens[:1], purpose="sms") == ["+447700900100"]


def test_deleting_a_legal_basis_in_use_revokes_and_refuses_new_agreements(client: FlaskClient, vault: Vault) -> None:
    pid = vault.create_person({"email": "cat@example.com"})
    [token] = vault.tokenize([TokenRequest("cat@example.com", kind="email", subject=pid)])
    assert call(client, "POST", "/v1/lbasis/news", {"shortdesc": "News"}).status_code == 200
    vault.give_consent("news", "token", pid)
    assert vault.detokenize([token], purpose="news") == ["cat@example.com"]
    assert call(client, "DELETE", "/v1/lbasis/news").json == {"status": "ok", "revoked": 1}
    [basis] = call(client, "GET", "/v1/lbasis").json["rows"]
    assert basis["status"] == "deleted" and basis["shortdesc"] == "News"  # kept: agreements name it
    assert vault.detokenize([token], purpose="news") == [None]
    for path in ("/v1/agreement/news/token/" + pid, "/v1/agreement/news/email/new@example.com"):
        answer = call(client, "POST", path)
        assert answer.status_code == 400 and "deleted" in answer.json["message"]
    [row] = call(client, "GET", f"/v1/agreements/token/{pid}").json["rows"]
    assert row["status"] == "revoked" and row["shortdesc"] == "News"
    # Brought back to active, it takes agreements again.
    assert call(client, "POST", "/v1/lbasis/news", {"shortdesc": "News", "status": "active"}).status_code == 200
    assert call(client, "POST", "/v1/agreement/news/token/" + pid).status_code == 200
    assert vault.detokenize([token], purpose="news") == ["cat@example.com"]
    # A brief with no legal basis is fine (the sidecar's purposes need none).
    assert call(client, "POST", "/v1/agreement/undefined-purpose/token/" + pid).status_code == 200


def test_pending_consent_by_email_is_linked_on_create_person(client: FlaskClient, vault: Vault) -> None:
    address = "Pending.Person@Example.com"
    url = f"/v1/agreement/sms/email/{address}"
    assert call(client, "POST", url, {"agreementmethod": "signup-form", "referencecode": "r-9",
                                      "expiration": "30d"}).json == {"status": "ok"}
    assert call(client, "POST", "/v1/agreement/news/email/pending.person@example.com", {"status": "no"}).status_code \
        == 200
    got = call(client, "GET", url).json["data"]
    assert got["status"] == "yes" and got["agreementmethod"] == "signup-form" and got["referencecode"] == "r-9"
    listed = call(client, "GET", f"/v1/agreements/email/{address}").json
    assert listed["total"] == 2 and [r["brief"] for r in listed["rows"]] == ["news", "sms"]
    assert pending_count(vault) == 2
    assert callbacks(vault) == [{"mode": "email", "brief": "sms", "status": "yes"},
                                {"mode": "email", "brief": "news", "status": "no"}]
    assert_nowhere_in_db(vault, "pending.person", "example.com")

    pid = call(client, "POST", "/v1/user", {"email": " pending.person@EXAMPLE.com", "name": "Pat"}).json["token"]
    assert pending_count(vault) == 0
    data = call(client, "GET", f"/v1/agreement/sms/token/{pid}").json["data"]
    assert data["status"] == "yes" and data["agreementmethod"] == "signup-form"
    assert call(client, "GET", f"/v1/agreement/news/token/{pid}").json["data"]["status"] == "no"
    [token] = vault.tokenize([TokenRequest("+447700900999", kind="phone", subject=pid)])
    assert vault.detokenize([token], purpose="sms") == ["+447700900999"]
    assert vault.detokenize([token], purpose="news") == [None]
    assert sorted(callbacks(vault)[2:], key=str) == [{"token": pid, "brief": "news", "status": "no"},
                                                     {"token": pid, "brief": "sms", "status": "yes"}]
    assert ("consent-give", pid) in audit_actions(vault)
    assert_nowhere_in_db(vault, "pending.person", "example.com", "+447700900999")


def test_pending_consent_by_phone_is_linked_through_sidecar_flows(vault: Vault) -> None:
    assert vault.give_consent("sms", "phone", "07700 900777", method="ivr") is None  # pending: no person yet
    [made] = vault.tokenize_flows([FlowTokenize(("phone", "+44 7700 900777"),
                                                [TokenRequest("+44 7700 900777", kind="phone")])])
    assert isinstance(made, FlowTokens) and made.person is not None
    assert pending_count(vault) == 0
    assert vault.get_consent("sms", "token", made.person).method == "ivr"
    assert vault.detokenize(made.tokens, purpose="sms") == ["+44 7700 900777"]
    assert callbacks(vault)[-1] == {"token": made.person, "brief": "sms", "status": "yes"}
    # A flow for a person who already exists claims nothing (and costs no extra query for it).
    [again] = vault.tokenize_flows([FlowTokenize(("phone", "07700900777"), [TokenRequest("x")])])
    assert isinstance(again, FlowTokens) and again.person == made.person
    assert_nowhere_in_db(vault, "7700900777", "7700 900777")


def test_pending_withdraw_get_and_latest_answer_wins(vault: Vault, clock: Clock) -> None:
    vault.give_consent("sms", "email", "dee@example.com")
    clock.advance(5)
    vault.give_consent("sms", "phone", "07700 900555", status="no")
    vault.withdraw_consent("sms", "email", "dee@example.com", modified_by="dee")
    pending = vault.get_consent("sms", "email", "DEE@example.com")
    assert pending.status == "no" and pending.modified_by == "dee"
    with pytest.raises(NotFound):
        vault.withdraw_consent("news", "email", "dee@example.com")
    with pytest.raises(NotFound):
        vault.get_consent("sms", "email", "nobody@example.com")
    with pytest.raises(NotFound):
        vault.give_consent("sms", "login", "dee")  # only email and phone may come first
    with pytest.raises(BadInput):
        vault.give_consent("sms", "email", "not an email")
    clock.advance(5)
    vault.give_consent("sms", "email", "dee@example.com")  # the latest answer: yes
    pid = vault.create_person({"email": "dee@example.com", "phone": "+447700900555"})
    assert vault.get_consent("sms", "token", pid).status == "yes"
    assert pending_count(vault) == 0


def test_api_pending_withdraw_and_not_found(client: FlaskClient) -> None:
    url = "/v1/agreement/sms/phone/07700900666"
    assert call(client, "DELETE", url).status_code == 404
    assert call(client, "GET", url).status_code == 404
    assert call(client, "GET", "/v1/agreements/phone/07700900666").json == {"status": "ok", "total": 0, "rows": []}
    assert call(client, "POST", url, data={"lastmodifiedby": "shop", "starttime": "1700000000"}).status_code == 200
    assert call(client, "DELETE", url).json == {"status": "ok"}
    got = call(client, "GET", url).json["data"]
    assert got["status"] == "no" and got["starttime"] == 1700000000 and got["lastmodifiedby"] == "shop"


def test_profilenew_goes_before_the_consents_a_new_person_takes(vault: Vault) -> None:
    vault.give_consent("sms", "email", "eli@example.com")
    pid = vault.create_person({"email": "eli@example.com"})
    with vault.engine.connect() as conn:
        events = conn.execute(select(outbox_table.c.event).order_by(outbox_table.c.seq)).scalars().all()
    assert events == ["consentchange", "profilenew", "consentchange"]
    assert callbacks(vault)[-1] == {"token": pid, "brief": "sms", "status": "yes"}


def test_a_new_email_on_a_profile_brings_its_pending_consents(vault: Vault, clock: Clock) -> None:
    pid = vault.create_person({"phone": "+447700900123"})
    vault.give_consent("sms", "token", pid)                        # answered already, earlier...
    clock.advance(10)
    assert vault.give_consent("news", "email", "ann@example.com") is None       # pending: no such person yet
    assert vault.give_consent("sms", "email", "ann@example.com", status="no") is None
    clock.advance(10)
    vault.give_consent("sms", "token", pid)                        # ...and again, later than the pending "no"
    vault.update_person("token", pid, {"email": "Ann@Example.com"})
    assert vault.get_consent("news", "token", pid).status == "yes"  # claimed with the address
    assert vault.get_consent("sms", "token", pid).status == "yes"   # the person's newer answer stands
    with vault.engine.connect() as conn:
        assert conn.execute(select(pending_agreements_table)).first() is None
    events = [json.loads(b) for b in _bodies(vault)]
    assert [e["event"] for e in events][-2:] == ["profilechange", "consentchange"]
    assert events[-1]["token"] == pid and events[-1]["brief"] == "news"


def _bodies(vault: Vault) -> list[str]:
    with vault.engine.connect() as conn:
        return list(conn.execute(select(outbox_table.c.body).order_by(outbox_table.c.seq)).scalars())
