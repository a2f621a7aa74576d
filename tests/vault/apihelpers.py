"""What the API tests share: the root token, a client, calls and their answers, audit rows, raw bytes."""

from __future__ import annotations

import json
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select

from tests.vault.test_no_plaintext import _raw_database
from vault import audit
from vault.api import create_app
from vault.config import Config, parse_config
from vault.core import Vault
from vault.crypto import unseal
from vault.models import audit_table

ROOT = "root-token-for-tests-0123456789"


def make_client(vault: Vault, config: Config | None = None) -> FlaskClient:
    app = create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT), max_body_bytes=64 * 1024,
                     config=config)
    return app.test_client()


def config_with(text: str) -> Config:
    return parse_config(text, "config.yaml", {})


def call(client: FlaskClient, method: str, path: str, body: object = None, token: str | None = ROOT,
         **kwargs: Any) -> Any:
    headers = {"X-Bunker-Token": token} if token is not None else {}
    if body is not None:
        kwargs["json"] = body
    return client.open(path, method=method, headers=headers, **kwargs)


def scoped(vault: Vault, *scopes: str) -> str:
    return vault.create_api_token("tester", list(scopes))[1]


def audit_rows(vault: Vault, action: str | None = None) -> list[Any]:
    query = select(audit_table).order_by(audit_table.c.seq)
    if action is not None:
        query = query.where(audit_table.c.action == action)
    with vault.engine.connect() as conn:
        return list(conn.execute(query))


def audit_detail(vault: Vault, row: Any) -> dict[str, Any] | None:
    """The sealed detail of an audit row, opened (None when its key is gone)."""
    if row.detail is None:
        return None
    with vault.engine.connect() as conn:
        aead = vault.keys.get_many(conn, {row.data_key_id}).get(row.data_key_id)
    if aead is None:
        return None
    detail: dict[str, Any] = json.loads(unseal(aead, row.detail, audit._aad(row.atoken)))
    return detail


def raw_database(database_url: str, vault: Vault) -> bytes:
    return _raw_database(database_url, vault)


def ok(resp: Any) -> dict[str, Any]:
    """A 200 {"status":"ok",...} answer's body."""
    assert resp.status_code == 200, (resp.status_code, resp.get_json())
    body: dict[str, Any] = resp.get_json()
    assert body["status"] == "ok"
    return body


def error(resp: Any, status: int, match: str = "") -> str:
    """An error answer of `status` whose message holds `match`; the message."""
    assert resp.status_code == status, (resp.status_code, resp.get_json())
    body = resp.get_json()
    assert body["status"] == "error" and match in body["message"], body
    return str(body["message"])
