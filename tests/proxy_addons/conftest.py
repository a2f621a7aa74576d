"""Helpers for driving the Tokenbunker mitmproxy addon in-process (taddons, tflow) against a real vault."""

from __future__ import annotations

import asyncio
import json
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    # mitmproxy's addons import ldap3, which trips pyasn1 deprecation warnings (errors under this project's pytest
    # settings) at import time.
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import http
    from mitmproxy.test import taddons, tflow

from proxy_addons.tokenize import Tokenbunker
from vault.core import Vault


class Proxy:
    """One configured addon, its database, and a second Vault handle on that database for checking results."""

    def __init__(self, addon: Tokenbunker, tctx: Any, database_url: str, master_key: bytes) -> None:
        self.addon = addon
        self.tctx = tctx
        self.database_url = database_url
        self.master_key = master_key
        self._vault: Vault | None = None

    @property
    def vault(self) -> Vault:
        if self._vault is None:
            self._vault = Vault.open(self.database_url, self.master_key)
        return self._vault

    def request(self, flow: http.HTTPFlow) -> http.HTTPFlow:
        self.addon.requestheaders(flow)
        asyncio.run(self.addon.request(flow))
        return flow

    def response(self, flow: http.HTTPFlow) -> http.HTTPFlow:
        if flow.response is not None:
            self.addon.responseheaders(flow)
        asyncio.run(self.addon.response(flow))
        return flow

    def close(self) -> None:
        client = self.addon.client
        self.addon.done()
        # done() should have closed the addon's own Vault (test_addon.py::test_done_closes_the_database_connections
        # checks it); closing again is harmless, and should that regress, PostgreSQL connections are not left to be
        # garbage-collected open in some later test (a ResourceWarning, an error under this project's pytest settings).
        leaked = getattr(client, "vault", None)
        if leaked is not None:
            leaked.close()
        if self._vault is not None:
            self._vault.close()


def make_flow(method: str, url: str, content: bytes | str = b"", headers: dict[str, str] | None = None
              ) -> http.HTTPFlow:
    flow = tflow.tflow(resp=False)
    flow.request = http.Request.make(method, url, content, headers or {})
    return flow


def json_flow(url: str, doc: Any, method: str = "POST", content_type: str = "application/json") -> http.HTTPFlow:
    return make_flow(method, url, json.dumps(doc), {"Content-Type": content_type})


def set_response(flow: http.HTTPFlow, content: bytes | str = b"", headers: dict[str, str] | None = None,
                 status: int = 200) -> http.HTTPFlow:
    flow.response = http.Response.make(status, content, headers or {})
    return flow


def set_raw(message: http.Message, raw: bytes) -> None:
    """Put bytes on the wire as they are (make() and .content would encode them with the Content-Encoding)."""
    message.raw_content = raw
    message.headers["content-length"] = str(len(raw))


def set_json_response(flow: http.HTTPFlow, doc: Any) -> http.HTTPFlow:
    return set_response(flow, json.dumps(doc), {"Content-Type": "application/json"})


def body(message: http.Message) -> Any:
    return json.loads(message.get_content(strict=True) or b"")


def error_of(flow: http.HTTPFlow) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a response the addon made itself."""
    assert flow.response is not None, "the addon did not answer the flow"
    assert flow.response.headers["content-type"] == "application/json"
    return flow.response.status_code, json.loads(flow.response.content or b"")


def write_config(directory: Path, database_url: str, rules_text: str, extra_proxy: dict[str, Any] | None = None
                 ) -> Path:
    rules_path = directory / "rules.yaml"
    rules_path.write_text(textwrap.dedent(rules_text).strip() + "\n", encoding="utf-8")
    proxy: dict[str, Any] = {"rules": [str(rules_path)], **(extra_proxy or {})}
    config = directory / "config.yaml"
    # JSON is YAML, and quotes the PostgreSQL URL's query string safely.
    config.write_text(json.dumps({"vault": {"database_url": database_url}, "proxy": proxy}), encoding="utf-8")
    return config


MakeProxy = Callable[..., Proxy]


@pytest.fixture
def make_proxy(database_url: str, master_key: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[MakeProxy]:
    """make_proxy(rules_yaml, **options) -> a configured addon over this test's database (SQLite or PostgreSQL)."""
    monkeypatch.setenv("TOKENBUNKER_MASTER_KEY", master_key.hex())
    # Should anything make the addon fall back to its default config.yaml, it must not be the project's.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENBUNKER_CONFIG", raising=False)
    made: list[tuple[Proxy, Any]] = []

    def make(rules_text: str, extra_proxy: dict[str, Any] | None = None, **options: Any) -> Proxy:
        directory = tmp_path / f"proxy{len(made)}"
        directory.mkdir()
        config = write_config(directory, database_url, rules_text, extra_proxy)
        addon = Tokenbunker()
        context = taddons.context(addon)
        tctx = context.__enter__()
        proxy = Proxy(addon, tctx, database_url, master_key)
        made.append((proxy, context))
        tctx.configure(addon, tokenbunker_config=str(config), tokenbunker_reload=False, **options)
        assert addon.problem is None
        return proxy

    yield make
    for proxy, context in reversed(made):
        proxy.close()
        context.__exit__(None, None, None)
