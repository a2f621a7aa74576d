"""The REST API through Flask's test client: success shapes, auth, and bad input that never gives a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from vault.api import create_app
from vault.core import Vault
from vault.models import people_table, tokens_table

ROOT = "root-token-for-tests-0123456789"


@pytest.fixture
def client(vault: Vault) -> Iterator[FlaskClient]:
    app = create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT), max_body_bytes=64 * 1024,
                     max_batch=1000)
    yield app.test_client()


def call(client: FlaskClient, method: str, path: str, body: object = None, token: str | None = ROOT,
         **kwargs: object):  # type: ignore[no-untyped-def]
    headers = {"X-Bunker-Token": token} if token is not None else {}
    if body is not None:
        kwargs["json"] = body
    return client.open(path, method=method, headers=headers, **kwargs)  # type: ignore[arg-type]


def rows(vault: Vault) -> tuple[int, int]:
    with vault.engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(people_table)).scalar_one(),
                conn.execute(select(func.count()).select_from(tokens_table)).scalar_one())


def test_people_journey(client: FlaskClient) -> None:
    made = call(client, "POST", "/v1/user", {"email": "ann@example.com", "name": "Ann"})
    assert made.status_code == 200 and made.json["status"] == "ok"
    pid = made.json["token"]
    got = call(client, "GET", "/v1/user/email/ann@example.com")
    assert got.json == {"status": "ok", "token": pid, "data": {"email": "ann@example.com", "name": "Ann"}}
    assert call(client, "PUT", f"/v1/user/token/{pid}", {"name": "Anne"}).json == {"status": "ok", "token": pid}
    assert call(client, "GET", f"/v1/user/token/{pid}").json["data"]["name"] == "Anne"
    assert call(client, "DELETE", "/v1/user/email/ann@example.com").json == {"status": "ok", "result": "done"}
    assert call(client, "GET", f"/v1/user/token/{pid}").status_code == 404


def test_form_bodies_become_top_level_fields(client: FlaskClient) -> None:
    made = client.post("/v1/user", data={"login": "formuser", "phone": "07700 900456"},
                       headers={"X-Bunker-Token": ROOT})
    assert made.status_code == 200
    got = call(client, "GET", "/v1/user/phone/+447700900456")
    assert got.json["data"] == {"login": "formuser", "phone": "07700 900456"}


def test_tokenize_detokenize_and_token_metadata(client: FlaskClient) -> None:
    items = [{"value": "zoe@example.com", "kind": "email", "format": "email", "deterministic": True, "ttl": "30d"},
             {"value": "+44 7700 900789", "kind": "phone", "format": "digits"},
             {"value": "Zoe", "kind": "name"}]
    made = call(client, "POST", "/v1/tokenize", {"items": items})
    assert made.status_code == 200
    tokens = made.json["tokens"]
    assert len(tokens) == 3
    plain = call(client, "POST", "/v1/detokenize", {"tokens": [*tokens, "tbk_unknown"]})
    assert plain.json == {"status": "ok", "values": ["zoe@example.com", "+44 7700 900789", "Zoe", None]}
    masked = call(client, "POST", "/v1/detokenize", {"tokens": tokens, "reveal": "masked"})
    assert masked.json["values"] == ["z***@example.com", "+** **** **0789", "Z***"]
    meta = call(client, "GET", f"/v1/token/{tokens[0]}").json
    assert meta["kind"] == "email" and meta["format"] == "email" and meta["expires"] == meta["created"] + 30 * 86400
    assert "zoe" not in json.dumps(meta)
    assert call(client, "DELETE", f"/v1/token/{tokens[0]}").json["result"] == "done"
    assert call(client, "GET", f"/v1/token/{tokens[0]}").status_code == 404


def test_tokens_owned_by_a_subject_die_with_them(client: FlaskClient) -> None:
    pid = call(client, "POST", "/v1/user", {"email": "owner@example.com"}).json["token"]
    [token] = call(client, "POST", "/v1/tokenize",
                   {"items": [{"value": "secret", "kind": "ssn", "subject": pid}]}).json["tokens"]
    call(client, "DELETE", f"/v1/user/token/{pid}")
    assert call(client, "POST", "/v1/detokenize", {"tokens": [token]}).json["values"] == [None]


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/tokenize"), ("POST", "/v1/detokenize"), ("GET", "/v1/token/tbk_x"), ("POST", "/v1/user"),
     ("GET", "/v1/user/email/a@example.com"), ("PUT", "/v1/user/email/a@example.com"),
     ("DELETE", "/v1/user/email/a@example.com"), ("DELETE", "/v1/token/tbk_x")],
)
@pytest.mark.parametrize("token", [None, "", "wrong-token-wrong-token", ROOT + "x"])
def test_every_endpoint_needs_the_token(client: FlaskClient, method: str, path: str, token: str | None) -> None:
    answer = call(client, method, path, {"items": []}, token=token)
    assert answer.status_code == 401
    assert answer.json == {"status": "error", "message": "missing or invalid X-Bunker-Token"}


def test_probes_need_no_token(client: FlaskClient) -> None:
    assert client.get("/health").json == {"status": "ok"}
    assert client.get("/ready").status_code == 200


BAD = [
    ("POST", "/v1/tokenize", "{not json", 400, "not valid JSON"),
    ("POST", "/v1/tokenize", "", 400, "empty"),
    ("POST", "/v1/tokenize", "[]", 400, "JSON object"),
    ("POST", "/v1/tokenize", {"items": "x"}, 400, "'items' must be a JSON array"),
    ("POST", "/v1/tokenize", {"items": [{"value": 1}]}, 400, r"items\[0\]: value must be a non-empty string"),
    ("POST", "/v1/tokenize", {"items": [{"value": "v"}, {"value": "w", "kind": 3}]}, 400, r"items\[1\]: kind"),
    ("POST", "/v1/tokenize", {"items": [{"value": "v", "colour": "red"}]}, 400, "unknown key 'colour'"),
    ("POST", "/v1/tokenize", {"items": [{"value": "v", "ttl": "3 days"}]}, 400, "ttl"),
    ("POST", "/v1/tokenize", {"items": [{"value": "v", "ttl": 5}]}, 400, "in the past"),
    ("POST", "/v1/tokenize", {"items": [{"value": "v", "format": "base64"}]}, 400, "unknown token format"),
    ("POST", "/v1/tokenize", {"items": [{"value": "v"}] * 1001}, 413, "too many items: 1001 > 1000"),
    ("POST", "/v1/tokenize", {"items": [{"value": "v", "subject": "00000000-0000-4000-8000-000000000000"}]}, 404,
     "unknown subject"),
    ("POST", "/v1/detokenize", {"tokens": [1]}, 400, "array of strings"),
    ("POST", "/v1/detokenize", {"tokens": ["a"], "reveal": "all"}, 400, "plain or masked"),
    ("POST", "/v1/detokenize", {"tokens": ["a"] * 1001}, 413, "too many tokens"),
    ("POST", "/v1/user", {"name": "x"}, 400, "at least one of"),
    ("POST", "/v1/user", {"email": "nope"}, 400, "invalid email address"),
    ("POST", "/v1/user", {"phone": "12"}, 400, "invalid phone number"),
    ("POST", "/v1/user", '"a string"', 400, "JSON object"),
    ("GET", "/v1/user/nickname/x", None, 400, "unknown mode"),
    ("GET", "/v1/user/email/nobody@example.com", None, 404, "person not found"),
    ("PUT", "/v1/user/email/nobody@example.com", {"a": 1}, 404, "person not found"),
    ("DELETE", "/v1/user/token/not-a-uuid", None, 400, "invalid person token"),
    ("GET", "/v1/nothing-here", None, 404, "not found"),
    ("PATCH", "/v1/tokenize", None, 405, "method not allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD)
def test_bad_input_gets_a_clear_4xx_and_writes_nothing(client: FlaskClient, vault: Vault, method: str, path: str,
                                                       body: object, status: int, message: str) -> None:
    before = rows(vault)
    if isinstance(body, str):
        answer = client.open(path, method=method, data=body, content_type="application/json",
                             headers={"X-Bunker-Token": ROOT})
    else:
        answer = call(client, method, path, body)
    assert answer.status_code == status, answer.json
    assert answer.json["status"] == "error"
    import re

    assert re.search(message, answer.json["message"]), answer.json["message"]
    assert rows(vault) == before


def test_body_over_the_limit_is_413(client: FlaskClient) -> None:
    answer = call(client, "POST", "/v1/tokenize", {"items": [{"value": "x" * 70000}]})
    assert answer.status_code == 413 and "too large" in answer.json["message"]


def test_a_conflict_is_409_and_the_message_holds_no_value(client: FlaskClient) -> None:
    call(client, "POST", "/v1/user", {"email": "dup@example.com"})
    answer = call(client, "POST", "/v1/user", {"email": "DUP@example.com"})
    assert answer.status_code == 409 and answer.json["message"] == "duplicate index: email"


def test_database_down_is_503_without_detail(vault: Vault, client: FlaskClient) -> None:
    from sqlalchemy import create_engine

    vault.engine.dispose()
    broken = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", hide_parameters=True)
    vault.engine = broken
    vault._writer = vault._reader = broken  # both share the engine's pool in real use
    answer = call(client, "POST", "/v1/tokenize", {"items": [{"value": "v"}]})
    assert answer.status_code == 503 and answer.json["message"].startswith("database unavailable")
    assert client.get("/ready").status_code == 503
    broken.dispose()


def test_json_sent_with_curls_form_label_is_read_as_json(client: FlaskClient) -> None:
    answer = client.post("/v1/tokenize", data='{"items": [{"value": "curl@example.com"}]}',
                         content_type="application/x-www-form-urlencoded", headers={"X-Bunker-Token": ROOT})
    assert answer.status_code == 200 and len(answer.json["tokens"]) == 1
