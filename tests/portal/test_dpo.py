"""The DPO console (portal/dpo*.py) through Flask's test client, on both backends: logging in with an API token,
refusals and lockout, CSRF, revocation and logout, the requests with their before/after view, approve and cancel,
purposes, the audit search, escaping and the security headers."""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from vault.api import create_app
from vault.config import parse_config
from vault.core import Vault
from vault.login import CONSOLE_PER_HOUR

ROOT = "root-token-for-tests-0123456789"
YAML = """\
approval:
  change_profile: dpo
  forget_me: dpo
  agreement_withdraw: dpo
  change_app_data: ["crm"]
"""
EMAIL = "ann.example@mail.test"
SCRIPT = "<script>alert(1)</script>"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
LINKS = re.compile(r'(?:href|action)="([^"]*)"')


@pytest.fixture
def app(vault: Vault) -> Flask:
    return create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT),
                      config=parse_config(YAML, "config.yaml", {}))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def dpo(client: FlaskClient) -> FlaskClient:
    """A client logged in to the console with the root token."""
    assert login(client, ROOT).status_code == 303
    return client


@pytest.fixture
def person(vault: Vault) -> str:
    return vault.create_person({"email": EMAIL, "name": "Ann", "address": {"city": "Leeds"}}, by="root")


def csrf_of(client: FlaskClient, path: str = "/dpo") -> str:
    found = CSRF.search(client.get(path).get_data(as_text=True))
    assert found is not None
    return found.group(1)


def login(client: FlaskClient, token: str, **kwargs: Any) -> Any:
    csrf = csrf_of(client, "/dpo/login")
    return client.post("/dpo/login", data={"csrf": csrf, "token": token}, **kwargs)


def post(client: FlaskClient, path: str, data: dict[str, str] | None = None) -> Any:
    return client.post(path, data={"csrf": csrf_of(client), **(data or {})})


def text(resp: Any) -> str:
    return str(resp.get_data(as_text=True))


def request_status(vault: Vault, rtoken: str) -> str:
    return str(vault.get_request(rtoken)["request"]["status"])


def audit_actions(vault: Vault, person: str) -> list[tuple[str, str]]:
    return [(r["who"], r["action"]) for r in vault.audit_trail(person, 0, 100)[1]]


# -- logging in ------------------------------------------------------------------------------------------------------


def test_pages_need_a_console_session(client: FlaskClient) -> None:
    for path in ("/dpo", "/dpo/purposes", "/dpo/audit", f"/dpo/requests/{secrets.token_hex(4)}",
                 "/dpo/audit/00000000-0000-0000-0000-000000000000"):
        resp = client.get(path)
        assert resp.status_code == 303 and resp.headers["Location"] == "/dpo/login", path
    page = client.get("/dpo/login")
    assert page.status_code == 200
    assert '<label for="token">' in text(page) and 'type="password"' in text(page)


def test_login_with_root(client: FlaskClient) -> None:
    resp = login(client, ROOT)
    assert resp.status_code == 303 and resp.headers["Location"] == "/dpo"
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("tb_console="))
    assert cookie.startswith("tb_console=tbd_")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert ROOT not in cookie
    home = client.get("/dpo")
    assert home.status_code == 200 and "Requests" in text(home) and "Log out" in text(home)
    assert client.get("/dpo/login").headers["Location"] == "/dpo"  # logged in already


def test_login_with_a_dpo_scoped_token(client: FlaskClient, vault: Vault) -> None:
    _id, token = vault.create_api_token("dpo1", ["dpo"])
    assert login(client, token).status_code == 303
    assert client.get("/dpo").status_code == 200
    rows = vault.audit_trail(None, 0, 10)[1]
    assert ("console:dpo1", "login") in [(r["who"], r["action"]) for r in rows]


def test_the_cookie_is_secure_under_tls(app: Flask) -> None:
    with app.test_client() as c:
        csrf = CSRF.search(text(c.get("/dpo/login", base_url="https://portal.test"))).group(1)  # type: ignore[union-attr]
        resp = c.post("/dpo/login", data={"csrf": csrf, "token": ROOT}, base_url="https://portal.test")
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("tb_console="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")


def test_wrong_tokens_all_get_the_same_answer(client: FlaskClient, vault: Vault,
                                              caplog: pytest.LogCaptureFixture) -> None:
    _id, unscoped = vault.create_api_token("reader", ["users:read", "audit:read"])
    revoked_id, revoked = vault.create_api_token("old-dpo", ["dpo"])
    vault.revoke_api_token(revoked_id)
    expired_id, expired = vault.create_api_token("late-dpo", ["dpo"], expires_at=int(vault.now()) - 1)
    caplog.set_level(logging.DEBUG)
    answers = []
    for token in (unscoped, revoked, expired, "tbx_" + secrets.token_urlsafe(32), ROOT + "x"):
        resp = login(client, token)
        assert resp.status_code == 401
        assert token not in text(resp) and "tb_console" not in resp.headers.get("Set-Cookie", "")
        assert token not in caplog.text
        answers.append(text(resp))
    assert len(set(answers)) == 1
    assert "That token cannot open the DPO console" in answers[0]
    assert client.get("/dpo").status_code == 303


def test_an_empty_token_is_asked_for(client: FlaskClient) -> None:
    resp = login(client, "   ")
    assert resp.status_code == 400 and "Paste your API token" in text(resp)


def test_lockout_after_repeated_wrong_tokens(app: Flask, clock: Any) -> None:
    client = app.test_client()
    for n in range(1, CONSOLE_PER_HOUR):
        assert login(client, f"wrong-{n}").status_code == 401
    locked = login(client, "wrong-last")
    assert locked.status_code == 429 and "Too many wrong tokens" in text(locked)
    # Locked means locked: even the right token is refused now, so guessing cannot go on.
    assert login(client, ROOT).status_code == 429
    # Another address is not locked out.
    assert login(app.test_client(), ROOT, environ_overrides={"REMOTE_ADDR": "10.9.8.7"}).status_code == 303
    clock.advance(3601)
    assert login(app.test_client(), ROOT).status_code == 303


def test_a_good_login_resets_the_count(app: Flask) -> None:
    for n in range(CONSOLE_PER_HOUR - 1):
        assert login(app.test_client(), f"wrong-{n}").status_code == 401
    assert login(app.test_client(), ROOT).status_code == 303
    for n in range(CONSOLE_PER_HOUR - 1):
        assert login(app.test_client(), f"again-{n}").status_code == 401
    assert login(app.test_client(), ROOT).status_code == 303


def test_forms_refuse_a_missing_or_wrong_csrf_token(client: FlaskClient, vault: Vault, person: str) -> None:
    client.get("/dpo/login")
    assert client.post("/dpo/login", data={"token": ROOT}).status_code == 400
    assert client.post("/dpo/login", data={"token": ROOT, "csrf": "0" * 64}).status_code == 400
    assert login(client, ROOT).status_code == 303
    rtoken = vault.create_request("forget-me", "token", person, by="self")
    for data in ({}, {"csrf": "f" * 64}, {"csrf": ""}):
        assert client.post(f"/dpo/requests/{rtoken}/approve", data=data).status_code == 400
        assert client.post(f"/dpo/requests/{rtoken}/cancel", data={**data, "reason": "no"}).status_code == 400
        assert client.post("/dpo/purposes/bases", data={**data, "brief": "marketing"}).status_code == 400
        assert client.post("/dpo/audit", data={**data, "mode": "email", "ident": EMAIL}).status_code == 400
        assert client.post("/dpo/logout", data=data).status_code == 400
    assert request_status(vault, rtoken) == "open"
    assert vault.person_id_of("token", person) == person
    assert vault.legal_bases(0, 10)[0] == 0
    assert client.get("/dpo").status_code == 200  # still logged in
    # A CSRF token from before login (the pre-session cookie) does not work in the session.
    other = client.application.test_client()
    stale = csrf_of(other, "/dpo/login")
    assert client.post(f"/dpo/requests/{rtoken}/approve", data={"csrf": stale}).status_code == 400


def test_revoking_the_api_token_ends_the_console_session(client: FlaskClient, vault: Vault) -> None:
    token_id, token = vault.create_api_token("dpo1", ["dpo"])
    assert login(client, token).status_code == 303
    assert client.get("/dpo").status_code == 200
    # revoke_api_token clears this process's grant cache itself (vault._grants); another replica's cache would
    # hold the grant for at most GRANT_CACHE_SECONDS (5 s, on the monotonic clock).
    vault.revoke_api_token(token_id)
    resp = client.get("/dpo")
    assert resp.status_code == 303 and resp.headers["Location"] == "/dpo/login"
    assert client.get("/dpo/purposes").status_code == 303


def test_logout(dpo: FlaskClient, vault: Vault) -> None:
    session = dpo.get_cookie("tb_console")
    assert session is not None and session.value.startswith("tbd_")
    resp = post(dpo, "/dpo/logout")
    assert resp.status_code == 303 and resp.headers["Location"] == "/dpo/login?out=1"
    assert dpo.get_cookie("tb_console") is None
    assert "logged out" in text(dpo.get("/dpo/login?out=1"))
    assert vault.console_session(session.value, vault_policy()) is None
    dpo.set_cookie("tb_console", session.value)  # the old cookie, replayed
    assert dpo.get("/dpo").status_code == 303


def vault_policy() -> Any:
    from vault.login import Policy

    return Policy()


# -- requests --------------------------------------------------------------------------------------------------------


def test_the_queue_lists_open_requests(dpo: FlaskClient, vault: Vault, person: str) -> None:
    rtoken = vault.create_request("change-profile", "token", person, {"name": "Anne"}, by="self")
    home = text(dpo.get("/dpo"))
    assert "Change their profile" in home and person in home and "The person" in home
    assert f'href="/dpo/requests/{rtoken}"' in home
    for status in ("open", "approved", "canceled"):
        assert f'href="/dpo?status={status}"' in home
    assert rtoken not in text(dpo.get("/dpo?status=approved"))
    assert "Nothing waits for you" not in home


def test_change_profile_before_after_escaped_and_approved(dpo: FlaskClient, vault: Vault, person: str) -> None:
    rtoken = vault.create_request("change-profile", "token", person,
                                  {"name": SCRIPT, "address": {"city": "York"}, "phone": None}, by="self")
    page = dpo.get(f"/dpo/requests/{rtoken}")
    body = text(page)
    assert page.status_code == 200
    assert SCRIPT not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    rows = re.findall(r"<tr><th scope=\"row\">(.*?)</th><td>(.*?)</td>\s*<td>(.*?)</td></tr>", body, re.S)
    assert [(f, b.strip(), a.strip()) for f, b, a in rows] == [
        ("address.city", "Leeds", "York"), ("name", "Ann", "&lt;script&gt;alert(1)&lt;/script&gt;")]
    assert "Approve" in body and '<label for="reason">' in body
    resp = post(dpo, f"/dpo/requests/{rtoken}/approve")
    assert resp.status_code == 303 and resp.headers["Location"] == "/dpo?approved=1"
    assert "the change is applied" in text(dpo.get("/dpo?approved=1"))
    _id, profile = vault.get_person("token", person)
    assert profile["name"] == SCRIPT and profile["address"] == {"city": "York"}
    assert request_status(vault, rtoken) == "approved"
    assert ("dpo:root", "request-approve") in audit_actions(vault, person)
    assert rtoken in text(dpo.get("/dpo?status=approved"))
    again = post(dpo, f"/dpo/requests/{rtoken}/approve")
    assert again.status_code == 409 and "already decided" in text(again)


def test_a_profile_with_script_is_escaped_in_the_forget_me_view(dpo: FlaskClient, vault: Vault) -> None:
    victim = vault.create_person({"email": "x@mail.test", "name": SCRIPT, "note": {"html": "<b onclick=x>"}})
    rtoken = vault.create_request("forget-me", "token", victim, by="self")
    body = text(dpo.get(f"/dpo/requests/{rtoken}"))
    assert "<script>" not in body and "<b onclick" not in body
    assert "&lt;script&gt;" in body and "cannot be undone" in body


def test_cancel_with_a_reason(dpo: FlaskClient, vault: Vault, person: str) -> None:
    rtoken = vault.create_request("forget-me", "token", person, by="self")
    body = text(dpo.get(f"/dpo/requests/{rtoken}"))
    assert "Approve: forget this person" in body and "cannot be undone" in body
    missing = post(dpo, f"/dpo/requests/{rtoken}/cancel", {"reason": "  "})
    assert missing.status_code == 400 and "Write the reason" in text(missing)
    assert request_status(vault, rtoken) == "open"
    resp = post(dpo, f"/dpo/requests/{rtoken}/cancel", {"reason": "We must keep invoices for 6 years <b>"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/dpo?canceled=1"
    found = vault.get_request(rtoken)["request"]
    assert found["status"] == "canceled" and found["reason"] == "We must keep invoices for 6 years <b>"
    assert found["decidedby"] == "dpo:root"
    assert vault.person_id_of("token", person) == person  # nothing was forgotten
    page = text(dpo.get(f"/dpo/requests/{rtoken}"))
    assert "We must keep invoices for 6 years &lt;b&gt;" in page and "Cancel the request" not in page
    cancel_row = next(r for r in vault.audit_trail(person, 0, 50)[1] if r["action"] == "request-cancel")
    assert vault.audit_event(cancel_row["atoken"])["detail"]["reason"] == "We must keep invoices for 6 years <b>"
    assert post(dpo, f"/dpo/requests/{rtoken}/approve").status_code == 409


def test_approving_forget_me_forgets(dpo: FlaskClient, vault: Vault, person: str) -> None:
    rtoken = vault.create_request("forget-me", "token", person, by="self")
    assert post(dpo, f"/dpo/requests/{rtoken}/approve").status_code == 303
    assert vault.person_id_of("token", person) is None
    page = text(dpo.get(f"/dpo/requests/{rtoken}"))
    assert "This person was forgotten" in page and "Your decision" not in page


def test_a_request_whose_person_was_forgotten(dpo: FlaskClient, vault: Vault, person: str) -> None:
    rtoken = vault.create_request("change-profile", "token", person, {"name": "Anne"}, by="self")
    vault.forget_person("token", person, by="root")
    page = text(dpo.get(f"/dpo/requests/{rtoken}"))
    assert "has been forgotten" in page
    failed = post(dpo, f"/dpo/requests/{rtoken}/approve")
    assert failed.status_code == 404 and "That did not work" in text(failed)
    assert request_status(vault, rtoken) == "open"
    assert post(dpo, f"/dpo/requests/{rtoken}/cancel", {"reason": "gone"}).status_code == 303


def test_a_change_that_fails_leaves_the_request_open(dpo: FlaskClient, vault: Vault, person: str) -> None:
    vault.create_person({"email": "taken@mail.test"})
    rtoken = vault.create_request("change-profile", "token", person, {"email": "taken@mail.test"}, by="self")
    failed = post(dpo, f"/dpo/requests/{rtoken}/approve")
    assert failed.status_code == 409 and "That did not work: duplicate index" in text(failed)
    assert request_status(vault, rtoken) == "open"


def test_change_app_data_shows_the_record(dpo: FlaskClient, vault: Vault, person: str) -> None:
    vault.create_app_record("token", person, "crm", {"tier": "gold", "notes": SCRIPT}, by="root")
    rtoken = vault.create_request("change-app-data", "token", person, {"tier": "silver", "notes": None},
                                  app="crm", by="self")
    body = text(dpo.get(f"/dpo/requests/{rtoken}"))
    assert "Change their app data" in body and "crm record" in body
    assert "gold" in body and "silver" in body and "(removed)" in body
    assert SCRIPT not in body and "&lt;script&gt;" in body
    assert post(dpo, f"/dpo/requests/{rtoken}/approve").status_code == 303
    assert vault.get_app_record("token", person, "crm", by="root")[1] == {"tier": "silver"}


def test_agreement_withdraw_names_the_purpose(dpo: FlaskClient, vault: Vault, person: str) -> None:
    vault.set_legal_basis("newsletter", {"shortdesc": "Our monthly newsletter", "usercontrol": True})
    vault.give_consent("newsletter", "token", person, by="self")
    rtoken = vault.create_request("agreement-withdraw", "token", person, brief="newsletter", by="self")
    body = text(dpo.get(f"/dpo/requests/{rtoken}"))
    assert "Withdraw a consent" in body and "newsletter" in body and "Our monthly newsletter" in body
    assert "(withdrawn)" in body
    assert post(dpo, f"/dpo/requests/{rtoken}/approve").status_code == 303
    assert vault.get_consent("newsletter", "token", person).status == "no"


def test_unknown_or_malformed_requests_are_not_found(dpo: FlaskClient) -> None:
    assert dpo.get("/dpo/requests/not-a-uuid").status_code == 404
    assert dpo.get("/dpo/requests/00000000-0000-4000-8000-000000000000").status_code == 404
    assert post(dpo, "/dpo/requests/not-a-uuid/approve").status_code == 404


# -- purposes --------------------------------------------------------------------------------------------------------


def test_legal_bases_add_replace_delete(dpo: FlaskClient, vault: Vault) -> None:
    page = text(dpo.get("/dpo/purposes"))
    for field in ("brief", "shortdesc", "fulldesc", "basistype", "module", "requiredmsg", "bstatus"):
        assert f'<label for="{field}">' in page
    assert 'name="usercontrol"' in page and 'name="requiredflag"' in page
    form = {"brief": "marketing", "shortdesc": f"Offers {SCRIPT}", "fulldesc": "By email", "basistype": "consent",
            "module": "shop", "requiredmsg": "", "usercontrol": "yes", "status": "active"}
    resp = post(dpo, "/dpo/purposes/bases", form)
    assert resp.status_code == 303 and resp.headers["Location"] == "/dpo/purposes?saved=1"
    basis = vault.legal_bases(0, 10)[1][0]
    assert basis["shortdesc"] == f"Offers {SCRIPT}" and basis["usercontrol"] and not basis["requiredflag"]
    page = text(dpo.get("/dpo/purposes"))
    assert "marketing" in page and SCRIPT not in page and "&lt;script&gt;" in page
    edit = text(dpo.get("/dpo/purposes?edit=marketing"))
    assert 'value="marketing"' in edit and "Replace a legal basis" in edit
    post(dpo, "/dpo/purposes/bases", {**form, "shortdesc": "Offers", "usercontrol": "", "requiredflag": "yes",
                                      "requiredmsg": "Needed", "basistype": "contract"})
    total, rows = vault.legal_bases(0, 10)
    assert total == 1 and rows[0]["shortdesc"] == "Offers" and rows[0]["basistype"] == "contract"
    assert not rows[0]["usercontrol"] and rows[0]["requiredflag"] and rows[0]["requiredmsg"] == "Needed"
    bad = post(dpo, "/dpo/purposes/bases", {**form, "brief": "Not Valid"})
    assert bad.status_code == 400 and "That did not work" in text(bad) and 'value="Not Valid"' in text(bad)
    assert vault.legal_bases(0, 10)[0] == 1
    assert post(dpo, "/dpo/purposes/bases/marketing/delete").headers["Location"] == "/dpo/purposes?deleted=1"
    assert vault.legal_bases(0, 10)[0] == 0
    assert post(dpo, "/dpo/purposes/bases/marketing/delete").status_code == 404


def test_deleting_a_basis_in_use_says_what_was_revoked(dpo: FlaskClient, vault: Vault, person: str) -> None:
    vault.set_legal_basis("marketing", {"shortdesc": "Offers"})
    vault.give_consent("marketing", "token", person, by="self")
    resp = post(dpo, "/dpo/purposes/bases/marketing/delete")
    assert resp.status_code == 200 and "1 consent" in text(resp)
    assert vault.get_consent("marketing", "token", person).status == "revoked"


def test_activities_add_link_unlink_delete(dpo: FlaskClient, vault: Vault) -> None:
    vault.set_legal_basis("marketing", {"shortdesc": "Offers"})
    vault.set_legal_basis("analytics", {"shortdesc": "Stats"})
    resp = post(dpo, "/dpo/purposes/activities", {"activity": "newsletter", "title": "Newsletter",
                                                  "fulldesc": "Monthly", "applicableto": "customers", "script": ""})
    assert resp.status_code == 303
    assert vault.activities(0, 10)[1][0]["title"] == "Newsletter"
    assert post(dpo, "/dpo/purposes/activities/newsletter/link", {"brief": "marketing"}).status_code == 303
    assert vault.activities(0, 10)[1][0]["legalbasis"] == "marketing"
    page = text(dpo.get("/dpo/purposes"))
    assert 'aria-label="Unlink marketing from newsletter"' in page
    assert '<option value="analytics">' in page and '<option value="marketing">' not in page.split("newsletter")[-1]
    assert post(dpo, "/dpo/purposes/activities/newsletter/link", {"brief": "nope"}).status_code == 404
    assert post(dpo, "/dpo/purposes/activities/newsletter/unlink", {"brief": "marketing"}).status_code == 303
    assert vault.activities(0, 10)[1][0]["legalbasis"] == ""
    bad = post(dpo, "/dpo/purposes/activities", {"activity": "Bad Name"})
    assert bad.status_code == 400 and 'value="Bad Name"' in text(bad)
    assert post(dpo, "/dpo/purposes/activities/newsletter/delete").status_code == 303
    assert vault.activities(0, 10)[0] == 0
    assert post(dpo, "/dpo/purposes/activities/newsletter/delete").status_code == 404


# -- audit -----------------------------------------------------------------------------------------------------------


def test_audit_search_and_detail(dpo: FlaskClient, vault: Vault, person: str) -> None:
    vault.update_person("token", person, {"name": SCRIPT}, by="root")
    page = text(dpo.get("/dpo/audit"))
    assert '<label for="mode">' in page and '<label for="ident">' in page
    for mode, ident in (("email", EMAIL.upper()), ("token", person)):
        found = post(dpo, "/dpo/audit", {"mode": mode, "ident": ident})
        body = text(found)
        assert found.status_code == 200 and person in body
        actions = re.findall(r"<strong>([a-z-]+)</strong>", body)
        assert actions[:2] == ["change", "create"]  # newest first
    change_row = vault.audit_trail(person, 0, 10)[1][0]
    assert f'href="/dpo/audit/{change_row["atoken"]}"' in body
    detail = dpo.get(f"/dpo/audit/{change_row['atoken']}")
    assert detail.status_code == 200
    assert SCRIPT not in text(detail) and "&lt;script&gt;" in text(detail)
    assert audit_actions(vault, person)[0] == ("dpo:root", "audit-read")
    assert dpo.get("/dpo/audit/not-a-uuid").status_code == 404
    assert dpo.get("/dpo/audit/00000000-0000-4000-8000-000000000000").status_code == 404


def test_audit_search_for_nobody(dpo: FlaskClient, vault: Vault, person: str) -> None:
    for mode, ident in (("email", "nobody@mail.test"), ("phone", "+44 7700 900123"), ("login", "ghost"),
                        ("token", "00000000-0000-4000-8000-000000000000"), ("token", "nonsense"), ("email", "x")):
        resp = post(dpo, "/dpo/audit", {"mode": mode, "ident": ident})
        assert resp.status_code == 404 and "No person found" in text(resp), (mode, ident)
    empty = post(dpo, "/dpo/audit", {"mode": "email", "ident": ""})
    assert empty.status_code == 400


def test_audit_of_a_forgotten_person_by_uuid(dpo: FlaskClient, vault: Vault, person: str) -> None:
    vault.forget_person("token", person, by="root")
    body = text(post(dpo, "/dpo/audit", {"mode": "token", "ident": person}))
    assert "This person was forgotten" in body and "<strong>forget</strong>" in body
    assert "No person found" in text(post(dpo, "/dpo/audit", {"mode": "email", "ident": EMAIL}))


# -- safety ----------------------------------------------------------------------------------------------------------


def test_headers_and_urls_of_every_page(dpo: FlaskClient, vault: Vault, person: str) -> None:
    vault.set_legal_basis("marketing", {"shortdesc": "Offers"})
    vault.set_activity("newsletter", {"title": "Newsletter"})
    vault.link_activity("newsletter", "marketing")
    rtoken = vault.create_request("change-profile", "token", person, {"name": "Anne"}, by="self")
    atoken = vault.audit_trail(person, 0, 1)[1][0]["atoken"]
    session = dpo.get_cookie("tb_console")
    assert session is not None
    pages = [dpo.get(path) for path in ("/dpo", "/dpo?status=canceled", f"/dpo/requests/{rtoken}", "/dpo/purposes",
                                        "/dpo/audit", f"/dpo/audit/{atoken}")]
    pages.append(post(dpo, "/dpo/audit", {"mode": "email", "ident": EMAIL}))
    anonymous = dpo.application.test_client()
    pages.append(anonymous.get("/dpo/login"))
    pages.append(login(anonymous, "wrong-token-value"))
    for resp in pages:
        assert resp.status_code in (200, 401), resp.request.path
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script" not in csp.replace("default-src", "")
        assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer" and resp.headers["Cache-Control"] == "no-store"
        body = text(resp)
        assert "<script" not in body and " style=" not in body
        for url in LINKS.findall(body):
            assert "@" not in url and "tbd_" not in url and "tbx_" not in url and ROOT not in url, url
            assert session.value not in url and "wrong-token-value" not in url
        assert ROOT not in body and session.value not in body and "wrong-token-value" not in body


def test_labels_for_every_input(dpo: FlaskClient, vault: Vault, person: str) -> None:
    vault.set_legal_basis("marketing", {"shortdesc": "Offers"})
    vault.set_activity("newsletter", {"title": "Newsletter"})
    rtoken = vault.create_request("forget-me", "token", person, by="self")
    for path in ("/dpo/login", f"/dpo/requests/{rtoken}", "/dpo/purposes", "/dpo/audit"):
        body = text(dpo.get(path) if path != "/dpo/login" else dpo.application.test_client().get(path))
        for field in re.findall(r"<(?:input|select|textarea)\b([^>]*)>", body):
            if 'type="hidden"' in field:
                continue
            found = re.search(r'id="([^"]+)"', field)
            if found is None:  # a checkbox inside its <label>
                assert 'type="checkbox"' in field, (path, field)
                continue
            assert f'for="{found.group(1)}"' in body, (path, field)
