"""Backup and restore: a consistent, still-encrypted dump taken while traffic flows, restored into an empty
database of either backend; forget-me after a backup stays forgotten after restoring it."""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select

import tokenbunker_cli
from vault.api import create_app
from vault.backup import journal_file
from vault.core import SCHEMA_HEAD, Vault
from vault.models import Base, audit_table, forgotten_table, outbox_table
from vault.tokens import TokenRequest

ROOT = "root-token-for-tests-0123456789"
SECRETS = ("gil@example.com", "Gilbert Uniquename", "+44 7700 900123", "4000 1234 5678 9010", "Hal Otheruniq")


def fresh_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database of `kind`, apart from the test's own."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'target-{secrets.token_hex(3)}.db'}"
    db_url = request.getfixturevalue("pg_database")
    schema = f"r_{secrets.token_hex(6)}"
    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{db_url}?options={urllib.parse.quote('-csearch_path=' + schema)}"


def fill(vault: Vault) -> dict[str, Any]:
    gil = vault.create_person({"email": SECRETS[0], "name": SECRETS[1], "phone": SECRETS[2]})
    hal = vault.create_person({"email": "hal@example.com", "name": SECRETS[4]})
    vault.update_person("token", gil, {"nickname": "G"})
    vault.give_consent("sms", "token", gil)
    tokens = vault.tokenize([TokenRequest(SECRETS[3], "card", "keep-last4", subject=gil),
                             TokenRequest(SECRETS[0], "email", "email", deterministic=True, subject=gil),
                             TokenRequest("shared-value-xyz", "generic")])
    hal_tokens = vault.tokenize([TokenRequest("hal-only-value", "generic", subject=hal)])
    return {"gil": gil, "hal": hal, "tokens": tokens, "hal_tokens": hal_tokens}


def config_for(tmp_path: Path, url: str) -> Path:
    path = tmp_path / f"config-{secrets.token_hex(3)}.yaml"
    path.write_text(f"vault:\n  database_url: {json.dumps(url)}\n")
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = tokenbunker_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def counts(vault: Vault) -> dict[str, int]:
    with vault.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in Base.metadata.sorted_tables}


def parse_dump(path: Path) -> dict[str, list[dict[str, Any]]]:
    tables: dict[str, list[dict[str, Any]]] = {}
    columns: list[str] = []
    name = ""
    for raw in path.read_bytes().splitlines():
        item = json.loads(raw)
        if isinstance(item, dict) and "table" in item:
            name, columns = item["table"], item["columns"]
            tables[name] = []
        elif isinstance(item, list):
            tables[name].append(dict(zip(columns, item, strict=True)))
    return tables


@pytest.fixture
def env_key(master_key: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENBUNKER_MASTER_KEY", master_key.hex())


@pytest.mark.usefixtures("env_key")
def test_the_api_backup_restores_into_an_empty_database(vault: Vault, backend: str, master_key: bytes,
                                                        tmp_path: Path, request: pytest.FixtureRequest,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    made = fill(vault)
    client = create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT)).test_client()
    answer = client.get("/v1/sys/backup", headers={"X-Bunker-Token": ROOT})
    assert answer.status_code == 200 and answer.mimetype == "application/x-ndjson"
    assert "attachment" in answer.headers["Content-Disposition"]
    dump = tmp_path / "backup.jsonl"
    dump.write_bytes(answer.get_data())
    raw = dump.read_bytes()
    for value in SECRETS:  # still encrypted: no value in the clear, nor in base64
        assert value.encode() not in raw and base64.b64encode(value.encode()) not in raw
    header = json.loads(raw.splitlines()[0])
    assert header["format"] == "tokenbunker-backup" and header["schema"] == SCHEMA_HEAD
    assert header["tables"] == [t.name for t in Base.metadata.sorted_tables]
    with vault.engine.connect() as conn:
        actions = list(conn.execute(select(audit_table.c.action, audit_table.c.actor)
                                    .order_by(audit_table.c.seq.desc()).limit(1)))
    assert actions == [("backup", "root")]
    before = counts(vault)

    target = fresh_url(backend, tmp_path, request)
    code, out, err = cli(capsys, "restore", "--config", str(config_for(tmp_path, target)), str(dump))
    assert code == 0, err
    assert "chain intact" in out and f"restored {sum(before.values())} rows" in out
    restored = Vault.open(target, master_key)
    try:
        after = counts(restored)
        assert after["tb_audit"] == before["tb_audit"] + 1  # and the restore's own row
        assert {k: v for k, v in after.items() if k != "tb_audit"} == {k: v for k, v in before.items()
                                                                      if k != "tb_audit"}
        assert restored.get_person("token", made["gil"])[1]["name"] == SECRETS[1]
        assert restored.detokenize(made["tokens"]) == [SECRETS[3], SECRETS[0], "shared-value-xyz"]
        assert restored.tokenize([TokenRequest(SECRETS[0], "email", "email", deterministic=True,
                                               subject=made["gil"])]) == [made["tokens"][1]]
        restored.create_person({"email": "new@example.com"})  # ids (PostgreSQL sequences) go on past the restored
        assert restored.verify_audit().intact
    finally:
        restored.close()


@pytest.mark.pg_only
@pytest.mark.usefixtures("env_key")
def test_sqlite_restores_into_postgresql(database_url: str, master_key: bytes, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    source = Vault.open(source_url, master_key)
    made = fill(source)
    source.close()
    dump = tmp_path / "sqlite.jsonl"
    code, _out, err = cli(capsys, "backup", "--config", str(config_for(tmp_path, source_url)), "--out", str(dump))
    assert code == 0 and "wrote" in err
    assert stat.S_IMODE(os.stat(dump).st_mode) == 0o600
    code, out, err = cli(capsys, "restore", "--config", str(config_for(tmp_path, database_url)), str(dump))
    assert code == 0, err
    target = Vault.open(database_url, master_key)
    try:
        assert target.engine.dialect.name == "postgresql"
        assert target.detokenize(made["tokens"] + made["hal_tokens"]) == [SECRETS[3], SECRETS[0],
                                                                          "shared-value-xyz", "hal-only-value"]
        target.update_person("token", made["hal"], {"name": "Hal Changed"})
        assert target.verify_audit().intact
    finally:
        target.close()


@pytest.mark.usefixtures("env_key")
def test_forget_me_after_a_backup_stays_forgotten_after_restoring_it(
        vault: Vault, database_url: str, backend: str, master_key: bytes, tmp_path: Path,
        request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> None:
    made = fill(vault)
    dump = tmp_path / "before-forget.jsonl"
    dump.write_bytes(b"".join(vault.backup_lines(by="test")))
    vault.forget_person("token", made["gil"])
    # What the backend received: the forgetme callback bodies (a journal that survives the database).
    with vault.engine.connect() as conn:
        bodies = [r.body for r in conn.execute(select(outbox_table).where(outbox_table.c.event == "forgetme"))]
    journal = tmp_path / "forgetme.jsonl"
    journal.write_text("# received by the backend\n" + "\n".join(bodies) + "\n")
    assert journal_file(journal) == {made["gil"]}

    # Without a journal the old backup brings Gil back: that is what the journal is for.
    plain = fresh_url(backend, tmp_path, request)
    assert cli(capsys, "restore", "--config", str(config_for(tmp_path, plain)), str(dump))[0] == 0
    back = Vault.open(plain, master_key)
    assert back.get_person("token", made["gil"])[0] == made["gil"]
    back.close()

    for option, source in (("--forgotten", str(journal)), ("--forgotten-from", database_url)):
        target = fresh_url(backend, tmp_path, request)
        code, out, err = cli(capsys, "restore", "--config", str(config_for(tmp_path, target)), option, source,
                             str(dump))
        assert code == 0, err
        assert "1 forgotten again" in out and "chain intact" in out
        restored = Vault.open(target, master_key)
        try:
            assert restored.detokenize(made["tokens"]) == [None, None, "shared-value-xyz"]
            assert restored.detokenize(made["hal_tokens"]) == ["hal-only-value"]
            with pytest.raises(Exception, match="person not found"):
                restored.get_person("token", made["gil"])
            with restored.engine.connect() as conn:
                gone = conn.execute(select(forgotten_table.c.person_id)).scalars().all()
                last = conn.execute(select(audit_table.c.action, audit_table.c.person_id)
                                    .order_by(audit_table.c.seq.desc()).limit(2)).all()
            assert gone == [made["gil"]]
            assert [a for a, _ in last] == ["restore", "forget"] and last[1][1] == made["gil"]
            assert restored.verify_audit().intact
        finally:
            restored.close()
        # A backup of the restored vault carries the journal on.
        again = tmp_path / "again.jsonl"
        code, _out, _err = cli(capsys, "backup", "--config", str(config_for(tmp_path, target)), "--out", str(again))
        assert code == 0 and [r["person_id"] for r in parse_dump(again)["tb_forgotten"]] == [made["gil"]]


@pytest.mark.usefixtures("env_key")
def test_restore_refuses_what_it_cannot_restore_safely(vault: Vault, database_url: str, backend: str,
                                                       master_key: bytes, tmp_path: Path,
                                                       request: pytest.FixtureRequest,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fill(vault)
    dump = tmp_path / "b.jsonl"
    dump.write_bytes(b"".join(vault.backup_lines()))
    code, _out, err = cli(capsys, "restore", "--config", str(config_for(tmp_path, database_url)), str(dump))
    assert code == 1 and "not empty" in err and "tb_people (2 rows)" in err and "Traceback" not in err

    target = fresh_url(backend, tmp_path, request)
    config = str(config_for(tmp_path, target))
    lines = dump.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:-3]))
    code, _out, err = cli(capsys, "restore", "--config", config, str(cut))
    assert code == 1 and "cut short" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"".join(lines[:-1]) + b'{"end":true,"rows":{}}\n')
    assert "do not match" in cli(capsys, "restore", "--config", config, str(broken))[2]
    other = tmp_path / "other.txt"
    other.write_text("hello\n")
    assert "not a JSON line" in cli(capsys, "restore", "--config", config, str(other))[2]
    assert "no such backup file" in cli(capsys, "restore", "--config", config, str(tmp_path / "none"))[2]
    bad_journal = tmp_path / "j.txt"
    bad_journal.write_text("not-a-uuid\n")
    assert "j.txt:1: not a person uuid" in cli(capsys, "restore", "--config", config, "--forgotten",
                                               str(bad_journal), str(dump))[2]

    monkeypatch.setenv("TOKENBUNKER_MASTER_KEY", os.urandom(32).hex())
    code, _out, err = cli(capsys, "restore", "--config", config, str(dump))
    assert code == 1 and "master key does not open" in err
    # Nothing was written by any refusal: the target is still empty, and takes the backup with the right key.
    from vault.backup import rows_in
    from vault.db import make_engine

    engine = make_engine(target)
    assert rows_in(engine) == {}
    engine.dispose()
    monkeypatch.setenv("TOKENBUNKER_MASTER_KEY", master_key.hex())
    assert cli(capsys, "migrate", "--config", config)[0] == 0  # migrated but empty is still empty
    code, out, err = cli(capsys, "restore", "--config", config, str(dump))
    assert code == 0 and "chain intact" in out, err


def test_a_backup_taken_while_traffic_flows_is_consistent(vault: Vault, backend: str, master_key: bytes,
                                                         tmp_path: Path, request: pytest.FixtureRequest,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    for n in range(20):
        vault.create_person({"email": f"p{n}@example.com"})
    stop = threading.Event()
    written: list[int] = []
    failures: list[BaseException] = []

    def traffic() -> None:
        n = 0
        try:
            while not stop.is_set():
                pid = vault.create_person({"email": f"w{n}@example.com", "name": f"Writer {n}"})
                vault.tokenize([TokenRequest(f"v{n}", "generic", subject=pid)])
                if n % 3 == 0:
                    vault.forget_person("token", pid)
                n += 1
                written.append(n)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    writer = threading.Thread(target=traffic)
    writer.start()
    try:
        while len(written) < 3:
            time.sleep(0.01)
        dump = tmp_path / "live.jsonl"
        with dump.open("wb") as out:
            for line in vault.backup_lines():
                out.write(line)
                time.sleep(0.002)  # a slow reader: the writer goes on meanwhile
        during = len(written)
        time.sleep(0.05)
    finally:
        stop.set()
        writer.join(30)
    assert not failures, failures
    assert len(written) > during - 1 and during > 3
    tables = parse_dump(dump)
    keys = {r["id"] for r in tables["tb_data_keys"]}
    people = {r["id"]: r for r in tables["tb_people"]}
    assert all(p["data_key_id"] in keys for p in people.values())
    assert all(t["data_key_id"] in keys and (t["owner_id"] is None or t["owner_id"] in people)
               for t in tables["tb_tokens"])
    assert not {r["person_id"] for r in tables["tb_forgotten"]} & set(people)
    seqs = [r["seq"] for r in tables["tb_audit"]]
    assert seqs == sorted(seqs)

    monkeypatch.setenv("TOKENBUNKER_MASTER_KEY", master_key.hex())
    target = fresh_url(backend, tmp_path, request)
    code, out, err = cli(capsys, "restore", "--config", str(config_for(tmp_path, target)), str(dump))
    assert code == 0 and "chain intact" in out, (out, err)
    restored = Vault.open(target, master_key)
    try:
        owned = [t["token"] for t in tables["tb_tokens"] if t["owner_id"] is not None]
        assert owned and None not in restored.detokenize(owned)
    finally:
        restored.close()
