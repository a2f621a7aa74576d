"""The audit trail's reads (/v1/audit/...), its verification (library and `tokenbunker audit verify`), and
/v1/metrics, on both backends."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete, select, update

import tokenbunker_cli
from vault import audit
from vault.api import create_app
from vault.core import Vault
from vault.models import audit_table

ROOT = "root-token-for-tests-0123456789"


@pytest.fixture
def client(vault: Vault) -> Iterator[FlaskClient]:
    yield create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT)).test_client()


def get(client: FlaskClient, path: str, token: str | None = ROOT):  # type: ignore[no-untyped-def]
    return client.get(path, headers={"X-Bunker-Token": token} if token else {})


def _journey(vault: Vault) -> str:
    pid = vault.create_person({"email": "ann@example.com", "name": "Ann Secretname"}, by="root")
    vault.get_person("token", pid, by="xtoken:crm:1")
    vault.update_person("token", pid, {"name": "Anna Othername"}, by="root")
    vault.give_consent("sms", "token", pid, by="root")
    return pid


def test_admin_lists_every_row_newest_first_with_paging(vault: Vault, client: FlaskClient) -> None:
    pid = _journey(vault)
    other = vault.create_person({"email": "bo@example.com"}, by="root")
    answer = get(client, "/v1/audit/admin?limit=3")
    assert answer.status_code == 200
    body = answer.json
    assert body["status"] == "ok" and body["total"] == 5 and len(body["rows"]) == 3
    assert [r["action"] for r in body["rows"]] == ["create", "consent-give", "change"]
    first = body["rows"][0]
    assert set(first) == {"atoken", "seq", "when", "who", "action", "mode", "token", "route", "status", "has_detail"}
    assert first["token"] == other and first["who"] == "root" and first["status"] == "ok" and first["mode"] == "token"
    rest = get(client, "/v1/audit/admin?offset=3&limit=10").json["rows"]
    assert [r["action"] for r in rest] == ["read", "create"] and rest[0]["who"] == "xtoken:crm:1"
    assert rest[1]["token"] == pid
    assert "Secretname" not in answer.get_data(as_text=True) and "ann@example.com" not in json.dumps(rest)
    assert get(client, "/v1/audit/admin?limit=101").status_code == 400
    assert "limit" in get(client, "/v1/audit/admin?offset=x").json["message"]


def test_list_is_one_persons_rows(vault: Vault, client: FlaskClient) -> None:
    pid = _journey(vault)
    vault.create_person({"email": "bo@example.com"})
    body = get(client, f"/v1/audit/list/{pid}").json
    assert body["total"] == 4 and {r["token"] for r in body["rows"]} == {pid}
    assert get(client, f"/v1/audit/list/{uuid.uuid4()}").status_code == 404
    bad = get(client, "/v1/audit/list/not-a-uuid")
    assert bad.status_code == 400 and "uuid" in bad.json["message"]


def test_get_opens_before_and_after_until_the_person_is_forgotten(vault: Vault, client: FlaskClient) -> None:
    pid = _journey(vault)
    change = next(r for r in get(client, f"/v1/audit/list/{pid}").json["rows"] if r["action"] == "change")
    answer = get(client, f"/v1/audit/get/{change['atoken']}")
    assert answer.status_code == 200 and answer.json["status"] == "ok"
    event = answer.json["event"]
    assert event["detail_state"] == "open" and event["token"] == pid and event["action"] == "change"
    assert event["detail"]["before"]["name"] == "Ann Secretname"
    assert event["detail"]["after"]["name"] == "Anna Othername"
    # Opening a person's detail is itself on the record.
    newest = get(client, "/v1/audit/admin?limit=1").json["rows"][0]
    assert (newest["action"], newest["who"], newest["token"]) == ("audit-read", "root", pid)

    vault.forget_person("token", pid, by="root")
    after = get(client, f"/v1/audit/get/{change['atoken']}").json["event"]
    assert after["detail"] is None and after["detail_state"] == "shredded" and after["has_detail"] is True
    assert get(client, f"/v1/audit/list/{pid}").json["total"] >= 5  # the rows stay, the proof of what was done
    forget = next(r for r in get(client, f"/v1/audit/list/{pid}").json["rows"] if r["action"] == "forget")
    opened = get(client, f"/v1/audit/get/{forget['atoken']}").json["event"]
    assert opened["detail_state"] == "open" and opened["detail"] == {"tokens": 0}  # counts only, under the shared key
    read = next(r for r in get(client, f"/v1/audit/list/{pid}").json["rows"] if r["action"] == "read")
    assert get(client, f"/v1/audit/get/{read['atoken']}").json["event"]["detail_state"] == "none"

    assert get(client, f"/v1/audit/get/{uuid.uuid4()}").status_code == 404
    assert get(client, "/v1/audit/get/nope").status_code == 400


@pytest.mark.parametrize("path", ["/v1/audit/admin", f"/v1/audit/list/{uuid.uuid4()}",
                                  f"/v1/audit/get/{uuid.uuid4()}", "/v1/sys/backup", "/v1/metrics"])
def test_auth(vault: Vault, client: FlaskClient, path: str) -> None:
    assert get(client, path, None).status_code == 401
    assert get(client, path, "wrong-token-0123456789").status_code == 401
    _id, scoped = vault.create_api_token("app", ["tokenize", "users:read"])
    refused = get(client, path, scoped)
    assert refused.status_code == 403 and refused.json["status"] == "error"
    _id, auditor = vault.create_api_token("auditor", ["audit:read", "metrics"])
    assert get(client, path, auditor).status_code == (403 if path == "/v1/sys/backup" else
                                                      404 if "/list/" in path or "/get/" in path else 200)


def test_metrics_are_prometheus_text_without_pii(vault: Vault, client: FlaskClient) -> None:
    pid = _journey(vault)
    vault.tokenize_flows([])
    from vault.tokens import TokenRequest

    vault.tokenize([TokenRequest("secret-value@example.com", "email", "email"), TokenRequest("x1", "ip")])
    get(client, f"/v1/audit/list/{pid}")
    get(client, "/v1/audit/admin", None)
    answer = get(client, "/v1/metrics")
    assert answer.status_code == 200 and answer.content_type.startswith("text/plain; version=0.0.4")
    text = answer.get_data(as_text=True)
    assert "tokenbunker_people 1\n" in text
    assert 'tokenbunker_tokens{kind="email"} 1\n' in text and 'tokenbunker_tokens{kind="ip"} 1\n' in text
    assert 'tokenbunker_outbox_events{state="pending"} 3\n' in text  # profilenew, profilechange, consentchange
    assert 'tokenbunker_outbox_events{state="failed"} 0\n' in text
    assert "tokenbunker_audit_rows 4\n" in text
    assert "# TYPE tokenbunker_api_requests_total counter" in text
    assert 'tokenbunker_api_requests_total{rule="/v1/audit/list/<token>",method="GET",status="200"} 1' in text
    assert 'rule="/v1/audit/admin",method="GET",status="401"} 1' in text
    assert pid not in text and "example.com" not in text and "Ann" not in text
    for line in text.splitlines():  # every sample line is NAME{labels} VALUE
        assert line.startswith("#") or line.rsplit(" ", 1)[1].replace(".", "").isdigit(), line


# -- verification ---------------------------------------------------------------------------------------------


def _seqs(vault: Vault) -> list[int]:
    with vault.engine.connect() as conn:
        return list(conn.execute(select(audit_table.c.seq).order_by(audit_table.c.seq)).scalars())


def _tamper(vault: Vault, statement) -> None:  # type: ignore[no-untyped-def]
    with vault.engine.begin() as conn:
        conn.execute(statement)


def test_an_intact_chain_verifies(vault: Vault) -> None:
    _journey(vault)
    verdict = vault.verify_audit()
    assert verdict.intact and verdict.rows == 4 and verdict.summary().startswith("4 rows, chain intact")
    with vault.engine.connect() as conn:
        assert audit.verify(conn, vault.keyring).head == conn.execute(
            select(audit_table.c.row_hash).order_by(audit_table.c.seq.desc()).limit(1)).scalar()


def test_an_empty_chain_verifies(vault: Vault) -> None:
    assert vault.verify_audit().summary().startswith("0 rows, chain intact")


def test_an_edited_row_is_found(vault: Vault) -> None:
    _journey(vault)
    seqs = _seqs(vault)
    _tamper(vault, update(audit_table).where(audit_table.c.seq == seqs[2]).values(status="refused"))
    verdict = vault.verify_audit()
    assert not verdict.intact and verdict.broken_seq == seqs[2] and verdict.rows == 2
    assert "edited row" in verdict.summary() and f"seq {seqs[2]}" in verdict.summary()


def test_a_deleted_row_is_found_at_the_next_one(vault: Vault) -> None:
    _journey(vault)
    seqs = _seqs(vault)
    _tamper(vault, delete(audit_table).where(audit_table.c.seq == seqs[1]))
    verdict = vault.verify_audit()
    assert verdict.broken_seq == seqs[2] and "deleted row or missing link" in verdict.summary()


def test_a_deleted_first_row_and_an_edited_link_are_found(vault: Vault) -> None:
    _journey(vault)
    seqs = _seqs(vault)
    _tamper(vault, update(audit_table).where(audit_table.c.seq == seqs[3]).values(prev_hash=b"\x01" * 32))
    assert "bad prev" in vault.verify_audit().summary()
    _tamper(vault, delete(audit_table).where(audit_table.c.seq == seqs[0]))
    verdict = vault.verify_audit()
    assert verdict.broken_seq == seqs[1] and "does not start" in verdict.summary()


def test_the_cli_verifies_and_names_the_first_broken_link(vault: Vault, database_url: str, master_key: bytes,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _journey(vault)
    config = tmp_path / "config.yaml"
    config.write_text(f"vault:\n  database_url: {json.dumps(database_url)}\n")
    monkeypatch.setenv("TOKENBUNKER_MASTER_KEY", master_key.hex())
    assert tokenbunker_cli.main(["audit", "verify", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("4 rows, chain intact") and out.count("\n") == 1
    seqs = _seqs(vault)
    with vault.engine.begin() as conn:  # by hand, as an intruder with SQL access would
        conn.exec_driver_sql(f"UPDATE tb_audit SET actor = 'nobody' WHERE seq = {seqs[1]}")
    assert tokenbunker_cli.main(["audit", "verify", "--config", str(config)]) == 1
    out, _err = capsys.readouterr()
    atoken = _row_atoken(vault, seqs[1])
    assert f"seq {seqs[1]}" in out and atoken in out and "edited row" in out
    with vault.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE tb_audit SET actor = 'xtoken:crm:1' WHERE seq = {seqs[1]}")
        conn.exec_driver_sql(f"DELETE FROM tb_audit WHERE seq = {seqs[2]}")
    assert tokenbunker_cli.main(["audit", "verify", "--config", str(config)]) == 1
    out, _err = capsys.readouterr()
    assert f"seq {seqs[3]}" in out and "deleted row" in out and "Traceback" not in out


def _row_atoken(vault: Vault, seq: int) -> str:
    with vault.engine.connect() as conn:
        return str(conn.execute(select(audit_table.c.atoken).where(audit_table.c.seq == seq)).scalar_one())


def test_answers_match_the_openapi_document(vault: Vault, client: FlaskClient) -> None:
    from tests.vault.test_openapi import _check, _response_schema

    spec = json.loads(Path("vault/openapi.json").read_text(encoding="utf-8"))
    pid = _journey(vault)
    listed = get(client, "/v1/audit/admin")
    _check(spec, _response_schema(spec, "get", "/v1/audit/admin", 200), listed.json)
    mine = get(client, f"/v1/audit/list/{pid}")
    _check(spec, _response_schema(spec, "get", "/v1/audit/list/{token}", 200), mine.json)
    for row in mine.json["rows"]:
        one = get(client, f"/v1/audit/get/{row['atoken']}")
        _check(spec, _response_schema(spec, "get", "/v1/audit/get/{atoken}", 200), one.json)
    for path, status in [(f"/v1/audit/list/{uuid.uuid4()}", 404), ("/v1/audit/list/x", 400)]:
        _check(spec, _response_schema(spec, "get", "/v1/audit/list/{token}", status), get(client, path).json)
    _check(spec, _response_schema(spec, "get", "/v1/audit/get/{atoken}", 404),
           get(client, f"/v1/audit/get/{uuid.uuid4()}").json)
