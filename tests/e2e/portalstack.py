"""What the portal's browser test runs against: a real `tokenbunker serve` (portal and API, login codes to an outbox
file, callbacks to a real receiver, forget-me held for a DPO) and a real `tokenbunker proxy` in reverse mode in
front of a recording upstream, on one SQLite vault; and a headless Chromium driven by Playwright, watched.

The sidecar's rules: `signup` makes the person from the email and tokenizes the email (deterministic) and the phone
on the way to the app; `newsletter` is the outbound call that puts the real email back only under the consent
`newsletter` (the purpose the person gives and withdraws in the portal).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, Request, Response

from tests.e2e.helpers import Server, cli_env, new_master_key
from tests.e2e.proxyhelpers import ProxyProcess, RecordingUpstream, leaks, tokenbunker_proxy, write_proxy_config
from tests.e2e.receiver import Receiver

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE_VIEWPORT = {"width": 375, "height": 812}
CALLBACK_SECRET = "portal-e2e-callback-secret-0123456789"
PURPOSE = "newsletter"
CODE = re.compile(r"Your login code is (\d{6})\.")
RULES = """
version: 1
defaults:
  on_error: block
routes:
  - name: signup
    match: {path: "/api/users", methods: [POST]}
    subject: {json: "$.email", index: email}
    request:
      - {json: "$.email", action: tokenize, kind: email, format: email, deterministic: true}
      - {json: "$.phone", action: tokenize, kind: phone}
  - name: newsletter
    match: {path: "/send-newsletter", methods: [POST]}
    request:
      - {json: "$.to", action: detokenize, require_consent: newsletter}
"""


@dataclass
class PortalStack:
    server: Server
    root: str
    upstream: RecordingUpstream
    proxy: ProxyProcess
    receiver: Receiver
    outbox: Path

    def api(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """A root API call that must succeed."""
        answer = self.server.call(method, path, self.root, body)
        assert answer.status_code == 200, (method, path, answer.status_code, answer.text[:300])
        out: dict[str, Any] = answer.json()
        assert out["status"] == "ok", out
        return out

    def through_sidecar(self, path: str, body: Any) -> requests.Response:
        return requests.post(self.proxy.url + path, json=body, timeout=30)

    def messages(self) -> list[dict[str, str]]:
        """Everything the portal has "sent" so far, in order (the outbox file's JSON lines)."""
        if not self.outbox.exists():
            return []
        return [json.loads(line) for line in self.outbox.read_text(encoding="utf-8").splitlines() if line]

    def wait_for_code(self, to: str, seen: int, timeout: float = 10.0) -> str:
        """The code in the first message to `to` after the first `seen` messages (sending is on a thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages()[seen:]:
                if message["to"] == to:
                    match = CODE.search(message["body"])
                    assert match, message["body"]
                    return match.group(1)
            time.sleep(0.05)
        raise AssertionError(f"no login code for the person within {timeout} s")

    def callbacks(self, event: str) -> list[tuple[dict[str, str], bytes]]:
        return [(r.headers, r.body) for r in self.receiver.accepted()
                if r.headers.get("X-Tokenbunker-Event") == event]


@contextmanager
def portal_stack(work: Path) -> Iterator[PortalStack]:
    """Start everything; stop everything on the way out, whatever happened."""
    key, root = new_master_key(), secrets.token_urlsafe(24)
    database_url = f"sqlite:///{work / 'vault.db'}"
    outbox = work / "outbox.jsonl"
    with ExitStack() as stack:
        receiver = stack.enter_context(Receiver())
        config = work / "serve.yaml"
        config.write_text("\n".join([
            "vault:", f"  database_url: {json.dumps(database_url)}",
            "notify:", f"  outbox: {json.dumps(str(outbox))}",
            "approval:", "  forget_me: dpo",
            "callbacks:", f"  url: {json.dumps(receiver.url)}", "  poll_seconds: 1", "  timeout_seconds: 2",
            "  backoff_seconds: 1", "  max_backoff_seconds: 1",
        ]) + "\n", encoding="utf-8")
        server = Server(config, cli_env(TOKENBUNKER_MASTER_KEY=key, TOKENBUNKER_ROOT_TOKEN=root,
                                        TOKENBUNKER_CALLBACKS_SECRET=CALLBACK_SECRET), work, "serve")
        stack.callback(server.kill)
        server.start()

        upstream = RecordingUpstream().start()
        stack.callback(upstream.stop)
        upstream.set_fixed("/send-newsletter", {"status": "queued"})
        rules = work / "rules.yaml"
        rules.write_text(RULES, encoding="utf-8")
        # The sidecar opens the same vault in-process: the portal's consent changes are what it reads.
        proxy = tokenbunker_proxy(write_proxy_config(work / "proxy.yaml", database_url, [rules]),
                                  cli_env(TOKENBUNKER_MASTER_KEY=key), work, "proxy", f"reverse:{upstream.url}")
        stack.callback(proxy.stop)
        proxy.start()
        yield PortalStack(server, root, upstream, proxy, receiver, outbox)


# -- the browser -----------------------------------------------------------------------------------------------


def launch_chromium(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=20_000)


@dataclass
class Watch:
    """Every URL the browser asked for or showed, and every portal page it got (headers and HTML), for the
    checks that must hold on all of them."""

    base: str
    urls: list[str] = field(default_factory=list)
    documents: list[Response] = field(default_factory=list)
    console: list[str] = field(default_factory=list)  # what pages logged: a CSP refusal shows up here
    failed: list[str] = field(default_factory=list)  # a stylesheet, image or icon that did not load
    checked: int = 0

    def attach(self, context: BrowserContext) -> None:
        context.on("request", self._request)
        context.on("response", self._response)
        context.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        where = message.location.get("url", "")
        if where == f"{self.base}/favicon.ico" and "404" in message.text:
            return  # the browser asks for an icon the portal does not have (and no page names one): harmless
        self.console.append(f"{message.type}: {message.text} ({where})")

    def _request(self, request: Request) -> None:
        self.urls.append(request.url)

    def _response(self, response: Response) -> None:
        if response.request.resource_type == "document":
            self.documents.append(response)
        elif response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")

    def check_pages(self, page: Page, status: int = 200) -> None:
        """The pages received since the last call: the one shown answered `status` (redirects before it are 303),
        a CSP that allows no script at all, no <script> in the HTML (as sent, and in the DOM now shown), and the
        other hardening headers. Called while on the page, so its body is still there to read."""
        self.urls.append(page.url)
        new = self._new()
        assert [r.status for r in new] == [303] * (len(new) - 1) + [status], [(r.url, r.status) for r in new]
        for response in new:
            headers = self._hardened(response)
            if response.status == 200:
                assert headers.get("content-type", "").startswith("text/html"), (response.url, headers)
                html = response.text()
                assert "<html" in html and "<script" not in html.lower(), response.url
        assert page.locator("script").count() == 0, page.url
        expected = f"error: Failed to load resource: the server responded with a status of {status} "
        self.console = [m for m in self.console if not (status != 200 and m.startswith(expected)
                                                        and m.endswith(f"({page.url})"))]  # the page we asked for
        assert self.console == [] and self.failed == [], (page.url, self.console, self.failed)

    def check_download(self, filename: str) -> None:
        """The one answer received since the last check was a file to save, not a page, hardened all the same."""
        [response] = self._new()
        headers = self._hardened(response)
        assert response.status == 200, response.url
        assert headers.get("content-disposition") == f'attachment; filename="{filename}"', headers

    def _new(self) -> list[Response]:
        new, self.checked = self.documents[self.checked:], len(self.documents)
        assert new, "no portal page was received"
        return new

    @staticmethod
    def _hardened(response: Response) -> dict[str, str]:
        headers = response.all_headers()
        csp = headers.get("content-security-policy", "")
        assert "default-src 'none'" in csp, (response.url, csp)
        assert "script-src" not in csp and "unsafe-inline" not in csp, (response.url, csp)
        assert headers.get("x-frame-options") == "DENY", response.url
        assert headers.get("cache-control") == "no-store", response.url
        return headers

    def urls_with(self, values: list[str]) -> list[str]:
        """The URLs that hold one of `values` in any spelling (percent-encoded too)."""
        return [url for url in self.urls if leaks(url.encode(), values)]
