"""Backup through a real `tokenbunker serve` (streamed by waitress), restored and verified by the real command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import requests

from tests.e2e.helpers import Server, cli_env, new_master_key, run_cli, write_config

ROOT = "e2e-root-token-0123456789"


def test_a_served_backup_restores_and_verifies(start_server: Callable[[Path, dict[str, str], str], Server],
                                               tmp_path: Path, database_url: str) -> None:
    env = cli_env(TOKENBUNKER_MASTER_KEY=new_master_key(), TOKENBUNKER_ROOT_TOKEN=ROOT)
    srv = start_server(write_config(tmp_path / "config.yaml", database_url), env, "backup")
    auth = {"X-Bunker-Token": ROOT}
    person = requests.post(srv.url + "/v1/user", json={"email": "ivy@example.com", "name": "Ivy Plainname"},
                           headers=auth, timeout=10).json()["token"]
    with requests.get(srv.url + "/v1/sys/backup", headers=auth, stream=True, timeout=30) as answer:
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/x-ndjson")
        dump = tmp_path / "served.jsonl"
        dump.write_bytes(b"".join(answer.iter_content(65536)))
    assert srv.stop() == 0, srv.output()
    raw = dump.read_bytes()
    assert b"Plainname" not in raw and b"ivy@example.com" not in raw
    assert json.loads(raw.splitlines()[-1])["end"] is True

    target = write_config(tmp_path / "target.yaml", f"sqlite:///{tmp_path / 'restored.db'}")
    restored = run_cli("restore", "--config", str(target), str(dump), env=env, timeout=60)
    assert restored.returncode == 0, restored.stderr
    again = run_cli("restore", "--config", str(target), str(dump), env=env, timeout=60)
    assert again.returncode == 1 and "not empty" in again.stderr and "Traceback" not in again.stderr
    verified = run_cli("audit", "verify", "--config", str(target), env=env, timeout=60)
    assert verified.returncode == 0 and "chain intact" in verified.stdout, verified.stderr
    backup = run_cli("backup", "--config", str(target), env=env, timeout=60)
    assert backup.returncode == 0 and person in backup.stdout  # uuids are not PII; the values stay sealed
    assert "Plainname" not in backup.stdout + backup.stderr
