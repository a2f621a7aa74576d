"""The privacy portal in a real headless Chromium (Playwright), on a phone-sized screen, against real processes.

A person is created through the sidecar (the app behind it stores only tokens); they log in with the code from the
outbox, see their email revealed and the route it came from, give and withdraw a consent (the sidecar's outbound
route follows it, and the callback receiver gets both changes, signed), download their data, and ask to be
forgotten; the DPO approves; then their session is gone, no code is sent to them any more, and their tokens
resolve to nothing, in the API and in the sidecar. On every page: a CSP that allows no script, no script in the
HTML, HttpOnly SameSite=Strict cookies, no email in any URL. A profile holding `<script>` renders as text.
Screenshots of the main pages (375 px wide) go to docs/screenshots/ when TOKENBUNKER_SCREENSHOTS is set.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.e2e.helpers import REPO
from tests.e2e.portalstack import (
    CALLBACK_SECRET,
    PHONE_VIEWPORT,
    PURPOSE,
    PortalStack,
    Watch,
    launch_chromium,
    portal_stack,
)
from tests.e2e.proxyhelpers import ANY_TOKEN, EMAIL_TOKEN, OPAQUE_TOKEN, assert_refused, leaks
from vault.callbacks import check_signature

# The committed screenshots are refreshed on demand (TOKENBUNKER_SCREENSHOTS=1 make test, or this file alone);
# otherwise a run writes them to a temporary folder, so that tests leave the work tree as they found it.
SHOTS = REPO / "docs" / "screenshots" if os.environ.get("TOKENBUNKER_SCREENSHOTS") else None
STEP_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortalStack]:
    with portal_stack(tmp_path_factory.mktemp("portal-browser")) as started:
        yield started


def shot(page: Page, name: str) -> None:
    folder = SHOTS or Path(tempfile.gettempdir()) / "tokenbunker-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def log_in(page: Page, watch: Watch, stack: PortalStack, identity: str) -> str:
    """Ask for a code and come back with the one-time code sent; the code page is left on screen."""
    page.goto(stack.server.url + "/")
    watch.check_pages(page)
    page.get_by_label("Your email address or mobile phone number").fill(identity)
    seen = len(stack.messages())
    page.get_by_role("button", name="Send me a code").click()
    page.wait_for_url(stack.server.url + "/login")
    watch.check_pages(page)
    return stack.wait_for_code(identity, seen)


def test_a_person_from_the_sidecar_to_forgotten(stack: PortalStack) -> None:
    # Fixed values (the vault is new on every run), so the screenshots change only where the time or the code does.
    email, phone = "ada.lovelace.e2e@example.org", "+44 7700 900461"
    base = stack.server.url

    # A purpose people can agree to, defined by the operator (root API).
    stack.api("POST", f"/v1/lbasis/{PURPOSE}", {
        "module": "marketing", "shortdesc": "Our monthly newsletter", "basistype": "consent",
        "fulldesc": "News about our products, by email, once a month.", "usercontrol": True, "status": "active"})

    # The person is created through the sidecar: the app records tokens only.
    mark = stack.upstream.count()
    made = stack.through_sidecar("/api/users", {"email": email, "phone": phone, "plan": "basic"})
    assert made.status_code == 200, made.text[:300]
    [signup] = stack.upstream.since(mark)
    assert not leaks(signup.searchable(), [email, phone]), signup.raw[:400]
    stored = signup.json()
    assert EMAIL_TOKEN.match(stored["email"]) and OPAQUE_TOKEN.match(stored["phone"]), stored
    email_token, phone_token = stored["email"], stored["phone"]
    person = stack.api("GET", f"/v1/user/email/{email}")["token"]

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context(viewport=PHONE_VIEWPORT, accept_downloads=True)
            context.set_default_timeout(STEP_TIMEOUT_MS)
            watch = Watch(base)
            watch.attach(context)
            page = context.new_page()

            # Log in with the code from the outbox.
            page.goto(base + "/")
            watch.check_pages(page)
            shot(page, "01-login")
            page.get_by_label("Your email address or mobile phone number").fill(email)
            seen = len(stack.messages())
            page.get_by_role("button", name="Send me a code").click()
            page.wait_for_url(base + "/login")
            watch.check_pages(page)
            code_page = page.locator("main").inner_text()
            assert "Check your email" in code_page and email in code_page
            code = stack.wait_for_code(email, seen)
            page.get_by_label("Your code").fill(code)
            shot(page, "02-code")
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(base + "/me")
            watch.check_pages(page)
            cookies = context.cookies()
            assert {c["name"] for c in cookies} >= {"tb_session"}, cookies
            for cookie in cookies:
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie

            # My data: the email revealed, grouped by kind and by the route it came from.
            tokens_card = page.locator("section", has=page.get_by_role("heading", name="Data our applications hold"))
            assert email in tokens_card.inner_text() and phone in tokens_card.inner_text()
            assert "from signup" in tokens_card.inner_text()
            assert page.locator("h3", has_text="email").count() == 1
            assert page.get_by_text(email_token).count() == 0  # values shown, not tokens
            shot(page, "03-my-data")

            # Consents: give, and the sidecar may now reveal the email to the newsletter sender; withdraw, and not.
            page.get_by_role("link", name="Consents").click()
            page.wait_for_url(base + "/me/consents")
            watch.check_pages(page)
            purpose = page.locator("section.card", has_text="Our monthly newsletter")
            assert "Not answered" in purpose.inner_text()
            purpose.get_by_role("button", name="Give consent").click()
            page.wait_for_url(base + "/me/consents?given=1")
            watch.check_pages(page)
            assert "Given" in purpose.inner_text()
            assert page.get_by_role("status").first.inner_text() == "Thank you: your consent is recorded."
            shot(page, "04-consents")

            mark = stack.upstream.count()
            sent = stack.through_sidecar("/send-newsletter", {"to": email_token, "issue": 7})
            assert sent.status_code == 200, sent.text[:300]
            assert stack.upstream.since(mark)[0].json() == {"to": email, "issue": 7}

            purpose.get_by_role("button", name="Withdraw consent").click()
            page.wait_for_url(base + "/me/consents?withdrawn=1")
            watch.check_pages(page)
            assert "Not given" in purpose.inner_text()
            assert purpose.get_by_role("button", name="Give consent").count() == 1
            mark = stack.upstream.count()
            assert_refused(stack.through_sidecar("/send-newsletter", {"to": email_token}), 403, "newsletter")
            assert stack.upstream.count() == mark

            # The receiver gets both changes, signed with the shared secret.
            assert stack.receiver.wait_for(lambda _r: len(stack.callbacks("consentchange")) >= 2, timeout=15)
            changes = stack.callbacks("consentchange")
            for headers, body in changes:
                assert check_signature(CALLBACK_SECRET.encode(), headers, body, time.time()), headers
                assert not leaks(body, [email, phone]), body
            assert [(json.loads(b)["token"], json.loads(b)["brief"], json.loads(b)["status"])
                    for _h, b in changes] == [(person, PURPOSE, "yes"), (person, PURPOSE, "no")]

            # Who used my data, in plain words.
            page.get_by_role("link", name="Who used my data").click()
            page.wait_for_url(base + "/me/activity")
            watch.check_pages(page)
            trail = page.locator("main").inner_text()
            assert "The sidecar stored your email address and phone number as tokens for route signup" in trail, trail
            assert "The sidecar revealed your email address to route newsletter" in trail, trail
            assert "your consent was not given" in trail, trail
            assert f"You gave consent to “{PURPOSE}”" in trail and f"You withdrew consent to “{PURPOSE}”" in trail
            assert "You logged in" in trail
            shot(page, "05-activity")

            # Download my data: a JSON file with the email and the tokens.
            with page.expect_download() as download_info:
                page.get_by_role("link", name="Download my data").first.click()
            download = download_info.value
            watch.check_download("my-data.json")
            assert download.suggested_filename == "my-data.json"
            exported = json.loads(Path(download.path()).read_text(encoding="utf-8"))
            assert exported["format"] == "tokenbunker-personal-data" and exported["token"] == person
            assert exported["profile"]["email"] == email
            held = {(t["token"], t["kind"], t["route"], t["value"]) for t in exported["tokens"]}
            assert held == {(email_token, "email", "signup", email), (phone_token, "phone", "signup", phone)}
            assert any(row["action"] == "reveal" for row in exported["activity"])

            # Forget me: the confirmation is needed, then the request goes to the DPO.
            page.get_by_role("link", name="Forget me").click()
            page.wait_for_url(base + "/me/forget")
            watch.check_pages(page)
            assert "goes to our data protection officer" in page.locator("main").inner_text()
            shot(page, "06-forget")
            page.get_by_role("button", name="Ask to be forgotten").click()
            page.wait_for_url(base + "/me/forget")
            watch.check_pages(page, 400)
            assert "Tick the box" in page.get_by_role("alert").inner_text()
            page.get_by_label("I understand: delete all my data.").check()
            page.get_by_role("button", name="Ask to be forgotten").click()
            page.wait_for_url(base + "/me?forget-sent=1")
            watch.check_pages(page)
            assert "sent to our data protection officer" in page.get_by_role("status").first.inner_text()
            assert email in page.locator("main").inner_text()  # nothing is deleted before the DPO decides
            shot(page, "07-forget-sent")

            # The DPO approves in the console, in a browser of their own: log in with the root token, open the
            # forget-me request, read what approving does, click Approve.
            dpo = browser.new_context(viewport=PHONE_VIEWPORT)
            watch.attach(dpo)
            console = dpo.new_page()
            console.goto(base + "/dpo")
            console.wait_for_url(base + "/dpo/login")
            watch.check_pages(console)
            console.get_by_label("Your API token").fill(stack.root)
            console.get_by_role("button", name="Open the console").click()
            console.wait_for_url(base + "/dpo")
            watch.check_pages(console)
            console.get_by_role("link", name=re.compile("Forget")).first.click()
            console.wait_for_load_state()
            watch.check_pages(console)
            assert email in console.locator("main").inner_text()  # the profile that goes, shown to the DPO
            shot(console, "09-dpo-request")
            console.get_by_role("button", name="Approve: forget this person").click()
            console.wait_for_load_state()
            watch.check_pages(console)
            assert stack.api("GET", "/v1/requests?status=open")["total"] == 0
            assert watch.urls_with([stack.root]) == []  # the token went in a form body, never a URL
            dpo.close()

            # The person's next page load finds them logged out.
            page.reload()
            page.wait_for_url(base + "/?expired=1")
            watch.check_pages(page)
            assert page.get_by_role("status").first.inner_text() == "Your session ended. Please log in again."
            assert page.get_by_role("navigation").count() == 0
            shot(page, "08-after-forget")

            # Asking for a code again: the very same page, and no code goes out to them.
            seen = len(stack.messages())
            page.get_by_label("Your email address or mobile phone number").fill(email)
            page.get_by_role("button", name="Send me a code").click()
            page.wait_for_url(base + "/login")
            watch.check_pages(page)
            assert page.locator("main").inner_text() == code_page
            page.get_by_label("Your code").fill(code)  # the code that once worked
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(base + "/login/code")
            watch.check_pages(page, 401)
            assert "That code is wrong or has expired" in page.get_by_role("alert").inner_text()

            # The <script> profile: another person, another browser; their code also shows that the notifier has
            # sent everything asked before it (one queue, in order), so none went to the forgotten person.
            other = "Grace <script>document.title='owned'</script> Hopper"
            other_email = "grace.hopper.e2e@example.org"
            stack.api("POST", "/v1/user", {"email": other_email, "name": other})
            second = browser.new_context(viewport=PHONE_VIEWPORT)
            second.set_default_timeout(STEP_TIMEOUT_MS)
            watch.attach(second)
            page2 = second.new_page()
            code2 = log_in(page2, watch, stack, other_email)
            assert [m for m in stack.messages()[seen:] if m["to"] == email] == []
            page2.get_by_label("Your code").fill(code2)
            page2.get_by_role("button", name="Log in").click()
            page2.wait_for_url(base + "/me")
            watch.check_pages(page2)  # no <script> element in the DOM: it was escaped
            assert page2.get_by_text(other).count() == 1  # shown as the text it is
            assert page2.title() != "owned"
            assert email not in page2.content()  # and nothing of the first person
            for cookie in context.cookies() + second.cookies():
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
            second.close()
            assert watch.urls_with([email, other_email, phone]) == [], watch.urls_with([email, other_email, phone])
            assert all(not ANY_TOKEN.search(url) for url in watch.urls), watch.urls
            context.close()
        finally:
            browser.close()

    # Their tokens resolve to nothing now: in the API, and through the sidecar (blocked, nothing upstream).
    assert stack.api("POST", "/v1/detokenize", {"tokens": [email_token, phone_token]})["values"] == [None, None]
    mark = stack.upstream.count()
    assert_refused(stack.through_sidecar("/send-newsletter", {"to": email_token}), 502, "newsletter")
    assert stack.upstream.count() == mark
    assert stack.server.call("GET", f"/v1/user/token/{person}", stack.root).status_code == 404
    assert stack.receiver.wait_for(lambda _r: len(stack.callbacks("forgetme")) == 1, timeout=15)
    logs = stack.server.output() + stack.proxy.output()
    assert "Traceback" not in logs and not leaks(logs.encode(), [email, phone, other_email]), logs[-2000:]
