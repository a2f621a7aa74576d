"""Many values of every kind go in; the raw database and every log line captured meanwhile hold none of them."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import psycopg
import pytest

from vault.api import create_app
from vault.core import Vault
from vault.tokens import TokenRequest

ROOT = "root-token-for-tests-0123456789"


def _values() -> list[tuple[str, str, str]]:
    """(value, kind, format): distinctive plaintexts, so a hit in the raw bytes is never a coincidence."""
    tag = secrets.token_hex(4)
    out = []
    for i in range(60):
        out += [
            (f"person{i}.{tag}@example.com", "email", "email"),
            (f"+44 7700 9{i:05d}", "phone", "digits"),
            (f"4{i:03d}{tag[:4].translate(str.maketrans('abcdef', '123456'))}00001234", "card", "keep-last4"),
            (f"Name{i}{tag} Surname", "name", "opaque"),
            (f"{i + 1} Long Road {tag}, Leeds", "address", "uuid"),
            (f"203.0.{i}.{i + 7}", "ip", "opaque"),
        ]
    return out


def _raw_database(database_url: str, vault: Vault) -> bytes:
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    # PostgreSQL: every table of the test's schema, as the server sends it.
    dump = bytearray()
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url.replace("?options=", "?options=")) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        assert "tb_tokens" in tables
        for table in tables:
            with conn.cursor().copy(f"COPY {table} TO STDOUT") as copy:
                for block in copy:
                    dump += bytes(block)
    return bytes(dump)


def test_no_plaintext_in_the_database_or_logs(vault: Vault, database_url: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    values = _values()
    client = create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT)).test_client()
    headers = {"X-Bunker-Token": ROOT}

    people = []
    for i in range(20):
        email, phone = values[i * 6][0], values[i * 6 + 1][0]
        made = client.post("/v1/user", json={"email": email, "phone": phone, "name": values[i * 6 + 3][0],
                                             "address": values[i * 6 + 4][0]}, headers=headers)
        assert made.status_code == 200
        people.append(made.json["token"])
    items = [{"value": v, "kind": k, "format": f, "deterministic": n % 2 == 0,
              "subject": people[n % 20] if n % 3 == 0 else None}
             for n, (v, k, f) in enumerate(values)]
    items = [{k: v for k, v in item.items() if v is not None} for item in items]
    tokens = client.post("/v1/tokenize", json={"items": items}, headers=headers).json["tokens"]
    vault.tokenize([TokenRequest(v, kind=k, format=f) for v, k, f in values])  # the library path too
    revealed = client.post("/v1/detokenize", json={"tokens": tokens}, headers=headers).json["values"]
    assert revealed == [v for v, _, _ in values]
    client.put(f"/v1/user/token/{people[0]}", json={"note": "changed"}, headers=headers)
    client.post("/v1/user", json={"email": values[0][0]}, headers=headers)  # a 409 on a PII index
    client.post("/v1/tokenize", json={"items": [{"value": values[3][0], "format": "digits"}]}, headers=headers)

    raw = _raw_database(database_url, vault)
    assert len(raw) > 10_000
    logs = caplog.text.encode()
    for value, _kind, fmt in values:
        needle = value.encode()
        assert needle not in raw, f"a {_kind} value is stored in plaintext"
        assert needle not in logs, f"a {_kind} value appears in the logs"
        if fmt == "keep-last4":
            continue
        assert value.lower().encode() not in raw
