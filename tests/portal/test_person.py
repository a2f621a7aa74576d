"""The person's pages under Flask's test client: login (codes, lockout, no enumeration), CSRF on every form, cookies
and headers, my data with tokens revealed, corrections, consents, download, activity in plain words, forget me,
and that a person can only ever see their own data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Clock
from tests.portal.conftest import CODE, MakeApp, csrf_of, form_post, log_in, sent
from vault.core import FlowTokenize, Vault
from vault.models import outbox_table
from vault.tokens import TokenRequest

PERSON_PAGES = ["/me", "/me/edit", "/me/consents", "/me/activity", "/me/forget", "/me/export"]
POSTS = ["/login", "/login/code", "/logout", "/me/edit", "/me/consents/sms", "/me/forget"]


def test_pages_carry_strict_headers_and_cookies(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "Acme privacy" in page.get_data(as_text=True)
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    assert "<script" not in page.get_data(as_text=True)
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("tb_pre=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    with client.get("/portal-static/portal.css") as css:
        assert css.status_code == 200 and css.mimetype == "text/css"


@pytest.mark.parametrize("path", POSTS)
def test_every_form_refuses_a_post_without_its_csrf_token(client: FlaskClient, vault: Vault, path: str) -> None:
    client.get("/")  # a pre-session cookie, but no token in the form
    for data in ({}, {"csrf": "0" * 64}):
        answer = client.post(path, data={**data, "identity": "kim@example.com"})
        assert answer.status_code in (400, 303), path
        if answer.status_code == 400:
            assert "did not come from this site" in answer.get_data(as_text=True)


def test_a_token_from_another_browser_is_refused(app: Flask, vault: Vault, outbox: Path) -> None:
    vault.create_person({"email": "kim@example.com"})
    mallory, kim = app.test_client(), app.test_client()
    stolen = csrf_of(mallory.get("/").get_data(as_text=True))
    kim.get("/")
    assert kim.post("/login", data={"csrf": stolen, "identity": "kim@example.com"}).status_code == 400
    assert sent(app, outbox) == []


def test_known_and_unknown_identities_see_the_same_page(app: Flask, vault: Vault, outbox: Path) -> None:
    vault.create_person({"email": "kim@example.com"})
    pages = []
    for identity in ("kim@example.com", "nobody@example.com"):
        client = app.test_client()
        csrf = csrf_of(client.get("/").get_data(as_text=True))
        answer = client.post("/login", data={"csrf": csrf, "identity": identity})
        html = answer.get_data(as_text=True).replace(identity, "ID")
        pages.append((answer.status_code, CSRF_FREE(html)))
    assert pages[0] == pages[1]
    assert [m["to"] for m in sent(app, outbox)] == ["kim@example.com"]


def CSRF_FREE(html: str) -> str:  # noqa: N802 (reads as a phrase)
    import re

    return re.sub(r'name="csrf" value="[0-9a-f]+"', "", html)


def test_login_then_my_data_shows_tokens_revealed_by_kind_and_route(client: FlaskClient, app: Flask, vault: Vault,
                                                                    outbox: Path) -> None:
    pid = vault.create_person({"email": "kim@example.com", "name": "Kim"})
    vault.tokenize_flows([FlowTokenize(("email", "kim@example.com"), [
        TokenRequest("kim@example.com", "email", route="signup"), TokenRequest("+447700900123", "phone",
                                                                                route="signup")])])
    vault.create_app_record("token", pid, "shop", {"plan": "gold"}, by="t")
    log_in(client, app, outbox, "kim@example.com")
    cookie = next(c for c in client._cookies.values() if c.key == "tb_session")  # type: ignore[attr-defined]
    assert cookie.http_only and cookie.same_site == "Strict"
    html = client.get("/me").get_data(as_text=True)
    for text in ("Kim", "+447700900123", "from signup", "shop", "gold", "Phone number", "Email address"):
        assert text in html, text


def test_wrong_reused_and_expired_codes_and_lockout(client: FlaskClient, app: Flask, vault: Vault, outbox: Path,
                                                    clock: Clock) -> None:
    vault.create_person({"email": "kim@example.com"})
    page = client.post("/login", data={"csrf": csrf_of(client.get("/").get_data(as_text=True)),
                                       "identity": "kim@example.com"}).get_data(as_text=True)
    code = CODE.search(sent(app, outbox)[-1]["body"]).group(1)  # type: ignore[union-attr]

    def attempt(value: str) -> tuple[int, str]:
        answer = client.post("/login/code", data={"csrf": csrf_of(page), "identity": "kim@example.com",
                                                  "code": value})
        return answer.status_code, answer.get_data(as_text=True)

    status, html = attempt("000000" if code != "000000" else "111111")
    assert status == 401 and "wrong or has expired" in html
    assert attempt(code)[0] == 303
    client.post("/logout", data={"csrf": csrf_of(client.get("/me").get_data(as_text=True))})
    page = client.post("/login", data={"csrf": csrf_of(client.get("/").get_data(as_text=True)),
                                       "identity": "kim@example.com"}).get_data(as_text=True)
    assert attempt(code)[0] == 401  # used once already
    code = CODE.search(sent(app, outbox)[-1]["body"]).group(1)  # type: ignore[union-attr]
    clock.advance(11 * 60)
    assert attempt(code)[0] == 401  # expired
    statuses = [attempt("123456")[0] for _ in range(5)]
    assert statuses[-1] == 429 and "try again in" in attempt("123456")[1]


def test_person_pages_need_a_login_and_a_forged_cookie_gets_nothing(client: FlaskClient, vault: Vault) -> None:
    vault.create_person({"email": "kim@example.com", "name": "Kim"})
    for path in PERSON_PAGES:
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["Location"].startswith("/"), path
    client.set_cookie("tb_session", "tbs_" + "A" * 43)
    for path in PERSON_PAGES:
        assert client.get(path).status_code == 303


def test_one_person_never_sees_another(make_app: MakeApp, vault: Vault, outbox: Path) -> None:
    app = make_app()
    vault.create_person({"email": "kim@example.com", "name": "Kim Secret"})
    vault.create_person({"email": "lee@example.com", "name": "Lee"})
    lee = app.test_client()
    log_in(lee, app, outbox, "lee@example.com")
    for path in PERSON_PAGES:
        body = lee.get(path).get_data(as_text=True)
        assert "Kim Secret" not in body and "kim@example.com" not in body, path
    # No page takes a person's id: there is no URL by which Lee could name Kim.
    rules = [r.rule for r in app.url_map.iter_rules()
             if r.endpoint.startswith("portal.") and not r.rule.startswith(("/dpo", "/portal-static"))]
    assert rules and not any("<" in rule and "<brief>" not in rule for rule in rules), rules


def test_correcting_a_profile_self_service_and_with_a_dpo(make_app: MakeApp, vault: Vault, outbox: Path) -> None:
    pid = vault.create_person({"email": "kim@example.com", "name": "Kim", "city": "Leeds"})
    vault.create_person({"email": "lee@example.com"})
    app = make_app()
    client = app.test_client()
    log_in(client, app, outbox, "kim@example.com")
    done = form_post(client, "/me/edit", "/me/edit", {"field.name": "Kim Smith", "field.email": "kim@example.com",
                                                     "field.city": ""})
    assert done.status_code == 303 and "saved=1" in done.headers["Location"]
    assert vault.get_person("token", pid)[1] == {"email": "kim@example.com", "name": "Kim Smith"}
    clash = form_post(client, "/me/edit", "/me/edit", {"field.email": "lee@example.com", "field.name": "Kim Smith"})
    assert clash.status_code == 409 and "already used" in clash.get_data(as_text=True)

    held = make_app("approval:\n  change_profile: dpo\n")
    client = held.test_client()
    log_in(client, held, outbox, "kim@example.com")
    assert "checked by our data protection officer" in client.get("/me/edit").get_data(as_text=True)
    sent_off = form_post(client, "/me/edit", "/me/edit", {"field.name": "K", "field.email": "kim@example.com"})
    assert "sent=1" in sent_off.headers["Location"] and vault.get_person("token", pid)[1]["name"] == "Kim Smith"
    assert vault.requests("open")[0] == 1


def test_consents_given_and_withdrawn_with_callbacks(client: FlaskClient, app: Flask, vault: Vault,
                                                     outbox: Path) -> None:
    vault.set_legal_basis("newsletter", {"shortdesc": "Our monthly newsletter", "fulldesc": "News, once a month.",
                                         "usercontrol": True})
    vault.create_person({"email": "kim@example.com"})
    log_in(client, app, outbox, "kim@example.com")
    page = client.get("/me/consents").get_data(as_text=True)
    assert "Our monthly newsletter" in page and "Not answered" in page
    assert form_post(client, "/me/consents", "/me/consents/newsletter", {"action": "give"}).status_code == 303
    page = client.get("/me/consents").get_data(as_text=True)
    assert "Given" in page and "Withdraw consent" in page
    assert form_post(client, "/me/consents", "/me/consents/newsletter", {"action": "withdraw"}).status_code == 303
    assert vault.get_consent("newsletter", "email", "kim@example.com").status == "no"
    with vault.engine.connect() as conn:
        events = [json.loads(r.body) for r in conn.execute(select(outbox_table)) if r.event == "consentchange"]
    assert [(e["brief"], e["status"]) for e in events] == [("newsletter", "yes"), ("newsletter", "no")]


def test_download_and_activity_in_plain_words(client: FlaskClient, app: Flask, vault: Vault, outbox: Path) -> None:
    pid = vault.create_person({"email": "kim@example.com", "phone": "+447700900123"})
    vault.give_consent("sms", "token", pid)
    [flow] = vault.tokenize_flows([FlowTokenize(("email", "kim@example.com"), [
        TokenRequest("+447700900123", "phone", route="signup")])], by="sidecar")
    assert not isinstance(flow, Exception)
    vault.detokenize_explained(flow.tokens, purpose="sms", by="sidecar", route="sms-gateway")
    log_in(client, app, outbox, "kim@example.com")
    activity = client.get("/me/activity").get_data(as_text=True)
    assert "The sidecar revealed your phone number to route sms-gateway" in activity
    assert "The sidecar stored your phone number as a token for route signup" in activity
    assert "You logged in" in activity
    download = client.get("/me/export")
    assert download.mimetype == "application/json" and "attachment" in download.headers["Content-Disposition"]
    data = download.get_json()
    assert data["profile"]["email"] == "kim@example.com" and data["tokens"][0]["value"] == "+447700900123"
    assert any(row["action"] == "reveal" for row in data["activity"])


def test_forget_me_self_service_ends_everything(client: FlaskClient, app: Flask, vault: Vault, outbox: Path) -> None:
    pid = vault.create_person({"email": "kim@example.com"})
    log_in(client, app, outbox, "kim@example.com")
    refused = form_post(client, "/me/forget", "/me/forget", {})
    assert refused.status_code == 400 and "Tick the box" in refused.get_data(as_text=True)
    done = form_post(client, "/me/forget", "/me/forget", {"confirm": "yes"})
    assert done.status_code == 200 and "Your data is deleted" in done.get_data(as_text=True)
    assert "tb_session=;" in done.headers["Set-Cookie"]
    assert vault.person_id_of("token", pid) is None
    assert client.get("/me").status_code == 303
    before = len(sent(app, outbox))
    csrf = csrf_of(client.get("/").get_data(as_text=True))
    assert client.post("/login", data={"csrf": csrf, "identity": "kim@example.com"}).status_code == 200
    assert len(sent(app, outbox)) == before  # no code for someone forgotten


def test_forget_me_waits_for_a_dpo_when_configured(make_app: MakeApp, vault: Vault, outbox: Path) -> None:
    app = make_app("approval:\n  forget_me: dpo\n")
    client = app.test_client()
    pid = vault.create_person({"email": "kim@example.com"})
    log_in(client, app, outbox, "kim@example.com")
    assert "goes to our data protection officer" in client.get("/me/forget").get_data(as_text=True)
    asked = form_post(client, "/me/forget", "/me/forget", {"confirm": "yes"})
    assert asked.status_code == 303 and "forget-sent=1" in asked.headers["Location"]
    assert "sent to our data protection officer" in client.get(asked.headers["Location"]).get_data(as_text=True)
    assert vault.person_id_of("token", pid) == pid and vault.requests("open")[0] == 1
    page = client.get("/me/forget").get_data(as_text=True)
    assert "you do not need to ask again" in page and "forget_confirm" not in page and 'name="confirm"' not in page
    again = client.post("/me/forget", data={"csrf": csrf_of(client.get("/me").get_data(as_text=True)),
                                            "confirm": "yes"})
    assert again.status_code == 303 and vault.requests("open")[0] == 1  # not asked twice


def test_html_is_escaped_everywhere(client: FlaskClient, app: Flask, vault: Vault, outbox: Path) -> None:
    vault.create_person({"email": "kim@example.com", "name": "<script>alert(1)</script>"})
    log_in(client, app, outbox, "kim@example.com")
    for path in ("/me", "/me/edit"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path


def test_idle_sessions_end_and_logout_works(client: FlaskClient, app: Flask, vault: Vault, outbox: Path,
                                            clock: Clock) -> None:
    vault.create_person({"email": "kim@example.com"})
    log_in(client, app, outbox, "kim@example.com")
    clock.advance(31 * 60)
    ended = client.get("/me")
    assert ended.status_code == 303 and "expired=1" in ended.headers["Location"]
    assert "Your session ended" in client.get(ended.headers["Location"]).get_data(as_text=True)
    log_in(client, app, outbox, "kim@example.com")
    out = form_post(client, "/me", "/logout", {})
    assert out.status_code == 303 and "out=1" in out.headers["Location"]
    assert client.get("/me").status_code == 303


def test_no_personal_data_in_any_url(client: FlaskClient, app: Flask, vault: Vault, outbox: Path) -> None:
    vault.create_person({"email": "kim@example.com", "name": "Kim"})
    log_in(client, app, outbox, "kim@example.com")
    import re

    for path in PERSON_PAGES[:-1]:
        html = client.get(path).get_data(as_text=True)
        for link in re.findall(r'(?:href|action)="([^"]*)"', html):
            assert "kim" not in link.lower() and "@" not in link, (path, link)


def test_behind_a_trusted_tls_proxy_cookies_are_secure_and_limits_count_the_real_client(
        make_app: MakeApp, vault: Vault, outbox: Path) -> None:
    vault.create_person({"email": "kim@example.com"})
    behind = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    untrusted = make_app().test_client()
    assert "Secure" not in untrusted.get("/", headers=behind).headers["Set-Cookie"]  # a forged header is ignored
    app = make_app("api:\n  trusted_proxies: 1\n")
    client = app.test_client()
    page = client.get("/", headers=behind)
    assert "Secure" in page.headers["Set-Cookie"] and page.headers["Strict-Transport-Security"]
    code_page = client.post("/login", headers=behind, data={"csrf": csrf_of(page.get_data(as_text=True)),
                                                            "identity": "kim@example.com"})
    code = CODE.search(sent(app, outbox)[-1]["body"]).group(1)  # type: ignore[union-attr]
    done = client.post("/login/code", headers=behind, data={"csrf": csrf_of(code_page.get_data(as_text=True)),
                                                            "identity": "kim@example.com", "code": code})
    assert done.status_code == 303 and "Secure" in done.headers["Set-Cookie"]
    # The limits count the address the proxy saw, not the proxy's own.
    from vault.login import _limit_key
    from vault.models import rate_limits_table

    with vault.engine.connect() as conn:
        keys = {row.key for row in conn.execute(select(rate_limits_table))}
    assert _limit_key(vault.keyring, "client", "203.0.113.7") in keys
    assert _limit_key(vault.keyring, "client", "127.0.0.1") not in keys
