"""The consent registry: legal bases (/v1/lbasis) and processing activities (/v1/pactivity), through the API and the
library, on both backends."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.vault.apihelpers import ROOT, call
from vault.api import OPENAPI_PATH, create_app
from vault.core import Vault
from vault.errors import BadInput, NotFound
from vault.models import audit_table

BASIS = {"module": "signup", "shortdesc": "Text messages", "fulldesc": "We text you about your orders.",
         "basistype": "consent", "requiredmsg": "", "usercontrol": True, "requiredflag": False, "status": "active"}


@pytest.fixture
def client(vault: Vault) -> Iterator[FlaskClient]:
    yield create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT)).test_client()




def test_legal_basis_create_update_list_delete(client: FlaskClient, vault: Vault) -> None:
    assert call(client, "GET", "/v1/lbasis").json == {"status": "ok", "total": 0, "rows": []}
    assert call(client, "POST", "/v1/lbasis/sms", BASIS).json == {"status": "ok"}
    assert call(client, "POST", "/v1/lbasis/contract-terms", {"basistype": "contract"}).json == {"status": "ok"}
    listed = call(client, "GET", "/v1/lbasis").json
    assert listed["status"] == "ok" and listed["total"] == 2
    contract, sms = listed["rows"]
    assert sms == {**BASIS, "brief": "sms", "creationtime": sms["creationtime"]}
    assert contract["basistype"] == "contract" and contract["status"] == "active" and contract["usercontrol"] is False
    # POST again replaces the record; a required one keeps its message.
    changed = {"shortdesc": "SMS", "requiredflag": True, "requiredmsg": "Needed for delivery updates"}
    assert call(client, "POST", "/v1/lbasis/sms", changed).status_code == 200
    sms = call(client, "GET", "/v1/lbasis?offset=1&limit=1").json["rows"][0]
    assert sms["shortdesc"] == "SMS" and sms["requiredflag"] is True and sms["requiredmsg"] == changed["requiredmsg"]
    assert sms["fulldesc"] == "" and sms["module"] == ""
    # Unused: deleting drops it.
    assert call(client, "DELETE", "/v1/lbasis/contract-terms").json == {"status": "ok", "revoked": 0}
    assert [r["brief"] for r in call(client, "GET", "/v1/lbasis").json["rows"]] == ["sms"]
    assert call(client, "DELETE", "/v1/lbasis/contract-terms").status_code == 404
    with vault.engine.connect() as conn:
        actions = [row.action for row in conn.execute(select(audit_table.c.action))]
    assert actions.count("lbasis") == 4  # three writes and one delete; the 404 changed nothing


def test_legal_basis_form_body_and_empty_body(client: FlaskClient) -> None:
    form = {"shortdesc": "News", "basistype": "legitimate-interest", "usercontrol": "true", "requiredflag": "0"}
    assert client.post("/v1/lbasis/news", data=form, headers={"X-Bunker-Token": ROOT}).status_code == 200
    assert call(client, "POST", "/v1/lbasis/plain").status_code == 200  # every field is optional
    news, plain = call(client, "GET", "/v1/lbasis").json["rows"]
    assert news["usercontrol"] is True and news["requiredflag"] is False and news["basistype"] == "legitimate-interest"
    assert plain["basistype"] == "consent" and plain["status"] == "active"


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/v1/lbasis/Bad_Brief", {}, "matches ^[a-z]"),
    ("/v1/lbasis/x", {}, "matches ^[a-z]"),
    ("/v1/lbasis/sms", {"basistype": "whim"}, "'basistype' must be one of consent, contract"),
    ("/v1/lbasis/sms", {"status": "gone"}, "'status' must be active or deleted"),
    ("/v1/lbasis/sms", {"usercontrol": "maybe"}, "'usercontrol' must be true or false"),
    ("/v1/lbasis/sms", {"shortdesc": 5}, "'shortdesc' must be a string of at most 256"),
    ("/v1/lbasis/sms", {"module": "m" * 65}, "'module' must be a string of at most 64"),
    ("/v1/lbasis/sms", {"colour": "red"}, "unknown key 'colour'"),
    ("/v1/lbasis/sms", [1], "must be a JSON object"),
    ("/v1/pactivity/Bad", {}, "processing activity's name matches"),
    ("/v1/pactivity/crm", {"title": ["x"]}, "'title' must be a string"),
    ("/v1/pactivity/crm", {"legalbasis": "sms"}, "unknown key 'legalbasis'"),
])
def test_registry_bad_input(client: FlaskClient, path: str, body: object, message: str) -> None:
    answer = call(client, "POST", path, body)
    assert answer.status_code == 400 and message in answer.json["message"], answer.json
    assert answer.json["status"] == "error"


def test_registry_auth_and_scopes(client: FlaskClient, vault: Vault) -> None:
    _, reader = vault.create_api_token("reader", ["consent"])
    _, outsider = vault.create_api_token("outsider", ["tokenize"])
    _, dpo = vault.create_api_token("dpo", ["dpo"])
    writes = [("POST", "/v1/lbasis/sms"), ("DELETE", "/v1/lbasis/sms"), ("POST", "/v1/pactivity/crm"),
              ("DELETE", "/v1/pactivity/crm"), ("POST", "/v1/pactivity/crm/sms"), ("DELETE", "/v1/pactivity/crm/sms")]
    reads = [("GET", "/v1/lbasis"), ("GET", "/v1/pactivity")]
    for method, path in writes + reads:
        assert call(client, method, path, token=None).status_code == 401, path
        assert call(client, method, path, token="tbx_wrong").status_code == 401, path
    for method, path in writes:
        answer = call(client, method, path, {}, token=reader)
        assert answer.status_code == 403 and "lacks the scope 'dpo'" in answer.json["message"], path
    for method, path in reads:
        answer = call(client, method, path, token=outsider)
        assert answer.status_code == 403 and "lacks the scope 'consent'" in answer.json["message"], path
        assert call(client, method, path, token=reader).status_code == 200
    assert call(client, "POST", "/v1/lbasis/sms", {}, token=dpo).status_code == 200
    with vault.engine.connect() as conn:
        actor = conn.execute(select(audit_table.c.actor).where(audit_table.c.action == "lbasis")).scalar_one()
    assert actor.startswith("xtoken:dpo:")


def test_processing_activities_and_links(client: FlaskClient) -> None:
    assert call(client, "GET", "/v1/pactivity").json == {"status": "ok", "total": 0, "rows": []}
    for brief in ("sms", "analytics"):
        assert call(client, "POST", f"/v1/lbasis/{brief}", {"shortdesc": brief.upper()}).status_code == 200
    activity = {"title": "Order updates", "script": "<script></script>", "fulldesc": "Texts about orders",
                "applicableto": "customers"}
    assert call(client, "POST", "/v1/pactivity/order-updates", activity).json == {"status": "ok"}
    assert call(client, "POST", "/v1/pactivity/order-updates/sms").json == {"status": "ok"}
    assert call(client, "POST", "/v1/pactivity/order-updates/analytics").json == {"status": "ok"}
    assert call(client, "POST", "/v1/pactivity/order-updates/sms").json == {"status": "ok"}  # linked already: fine
    assert call(client, "POST", "/v1/pactivity/reporting", {"title": "Reports"}).status_code == 200
    listed = call(client, "GET", "/v1/pactivity").json
    assert listed["total"] == 2
    order, reporting = listed["rows"]
    assert {k: order[k] for k in activity} == activity and order["activity"] == "order-updates"
    assert order["legalbasis"] == "analytics,sms"
    assert [b["brief"] for b in order["briefs"]] == ["analytics", "sms"] and order["briefs"][1]["shortdesc"] == "SMS"
    assert reporting["legalbasis"] == "" and reporting["briefs"] == []
    # Update keeps the links; unlink one; deleting the legal basis unlinks it everywhere.
    assert call(client, "POST", "/v1/pactivity/order-updates", {"title": "Order texts"}).status_code == 200
    assert call(client, "DELETE", "/v1/pactivity/order-updates/analytics").json == {"status": "ok"}
    order = call(client, "GET", "/v1/pactivity?limit=1").json["rows"][0]
    assert order["title"] == "Order texts" and order["script"] == "" and order["legalbasis"] == "sms"
    assert call(client, "DELETE", "/v1/lbasis/sms").status_code == 200
    assert call(client, "GET", "/v1/pactivity?limit=1").json["rows"][0]["legalbasis"] == ""
    assert call(client, "DELETE", "/v1/pactivity/order-updates").json == {"status": "ok"}
    assert [r["activity"] for r in call(client, "GET", "/v1/pactivity").json["rows"]] == ["reporting"]


def test_processing_activity_not_found(client: FlaskClient) -> None:
    assert call(client, "POST", "/v1/lbasis/sms").status_code == 200
    assert call(client, "POST", "/v1/pactivity/crm").status_code == 200
    for method, path, message in [("DELETE", "/v1/pactivity/nothing", "no such processing activity"),
                                  ("POST", "/v1/pactivity/nothing/sms", "no such processing activity"),
                                  ("POST", "/v1/pactivity/crm/nothing", "no such legal basis"),
                                  ("DELETE", "/v1/pactivity/crm/sms", "not linked"),
                                  ("DELETE", "/v1/lbasis/nothing", "no such legal basis")]:
        answer = call(client, method, path)
        assert answer.status_code == 404 and message in answer.json["message"], path
    assert call(client, "POST", "/v1/pactivity/crm/Bad").status_code == 400
    assert call(client, "POST", "/v1/lbasis/gone", {"status": "deleted"}).status_code == 200
    answer = call(client, "POST", "/v1/pactivity/crm/gone")
    assert answer.status_code == 400 and "deleted" in answer.json["message"]


def test_list_paging_and_bad_paging(client: FlaskClient) -> None:
    for i in range(12):
        assert call(client, "POST", f"/v1/lbasis/b{i:02d}").status_code == 200
    first = call(client, "GET", "/v1/lbasis").json
    assert first["total"] == 12 and len(first["rows"]) == 10 and first["rows"][0]["brief"] == "b00"
    assert [r["brief"] for r in call(client, "GET", "/v1/lbasis?offset=10").json["rows"]] == ["b10", "b11"]
    for path in ("/v1/lbasis?limit=0", "/v1/pactivity?limit=101", "/v1/pactivity?offset=x"):
        answer = call(client, "GET", path)
        assert answer.status_code == 400 and "limit" in answer.json["message"]


def test_library_registry(vault: Vault) -> None:
    assert vault.set_legal_basis("sms", {"shortdesc": "Texts"}) is True
    assert vault.set_legal_basis("sms", {"shortdesc": "SMS"}) is False
    assert vault.set_activity("crm", {"title": "CRM"}) is True
    assert vault.link_activity("crm", "sms") is True
    assert vault.link_activity("crm", "sms") is False
    total, rows = vault.activities()
    assert total == 1 and rows[0]["legalbasis"] == "sms"
    vault.unlink_activity("crm", "sms")
    with pytest.raises(NotFound):
        vault.unlink_activity("crm", "sms")
    with pytest.raises(BadInput, match="basistype"):
        vault.set_legal_basis("sms", {"basistype": "because"})
    vault.delete_activity("crm")
    with pytest.raises(NotFound):
        vault.delete_activity("crm")
    assert vault.delete_legal_basis("sms") == 0
    assert vault.legal_bases() == (0, [])
    with vault.engine.connect() as conn:
        details = [row.detail for row in conn.execute(select(audit_table.c.detail)) if row.detail is not None]
    assert details and all(b"crm" not in bytes(d) for d in details)  # details are sealed


def test_answers_match_the_documented_schemas(client: FlaskClient, vault: Vault) -> None:
    from tests.vault.test_openapi import _check, _response_schema

    doc = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    _, reader = vault.create_api_token("reader", ["consent"])
    pid = vault.create_person({"email": "eve@example.com"})
    calls = [("post", "/v1/lbasis/{brief}", "/v1/lbasis/sms", BASIS, 200),
             ("get", "/v1/lbasis", "/v1/lbasis", None, 200),
             ("post", "/v1/pactivity/{activity}", "/v1/pactivity/crm", {"title": "CRM"}, 200),
             ("post", "/v1/pactivity/{activity}/{brief}", "/v1/pactivity/crm/sms", None, 200),
             ("get", "/v1/pactivity", "/v1/pactivity", None, 200),
             ("post", "/v1/agreement/{brief}/{mode}/{ident}", "/v1/agreement/sms/token/" + pid,
              {"lastmodifiedby": "me", "starttime": 1_700_000_000}, 200),
             ("post", "/v1/agreement/{brief}/{mode}/{ident}", "/v1/agreement/sms/email/new@example.com", None, 200),
             ("get", "/v1/agreement/{brief}/{mode}/{ident}", "/v1/agreement/sms/email/new@example.com", None, 200),
             ("get", "/v1/agreements/{mode}/{ident}", "/v1/agreements/token/" + pid, None, 200),
             ("get", "/v1/agreements/{mode}/{ident}", "/v1/agreements/email/new@example.com", None, 200),
             ("delete", "/v1/agreement/{brief}", "/v1/agreement/sms", None, 200),
             ("get", "/v1/agreement/{brief}/{mode}/{ident}", "/v1/agreement/sms/token/" + pid, None, 200),
             ("delete", "/v1/pactivity/{activity}/{brief}", "/v1/pactivity/crm/sms", None, 200),
             ("delete", "/v1/pactivity/{activity}", "/v1/pactivity/crm", None, 200),
             ("delete", "/v1/lbasis/{brief}", "/v1/lbasis/sms", None, 200),
             ("delete", "/v1/lbasis/{brief}", "/v1/lbasis/sms", None, 200),  # kept as deleted: agreements
             ("delete", "/v1/lbasis/{brief}", "/v1/lbasis/never", None, 404),
             ("post", "/v1/lbasis/{brief}", "/v1/lbasis/sms", {"basistype": "x"}, 400),
             ("get", "/v1/agreements/{mode}/{ident}", "/v1/agreements/login/nobody", None, 404),
             ("delete", "/v1/agreement/{brief}", "/v1/agreement/nothing", None, 404)]
    for method, template, path, body, status in calls:
        answer = call(client, method.upper(), path, body)
        assert answer.status_code == status, (path, answer.json)
        _check(doc, _response_schema(doc, method, template, status), answer.get_json())
    for method, template, path in [("post", "/v1/lbasis/{brief}", "/v1/lbasis/sms"),
                                   ("delete", "/v1/agreement/{brief}", "/v1/agreement/sms")]:
        answer = call(client, method.upper(), path, token=reader)
        assert answer.status_code == 403
        _check(doc, _response_schema(doc, method, template, 403), answer.get_json())
        refused = call(client, method.upper(), path, token=None)
        _check(doc, _response_schema(doc, method, template, 401), refused.get_json())
    rows = call(client, "GET", "/v1/agreements/token/" + pid).json["rows"]
    assert rows[0]["status"] == "revoked" and rows[0]["shortdesc"] == BASIS["shortdesc"]
