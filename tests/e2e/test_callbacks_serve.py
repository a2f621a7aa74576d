"""Callbacks from a real `tokenbunker serve`: pending events survive a stop and a start, and all arrive, signed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import requests
from sqlalchemy import select

from tests.e2e.helpers import Server, cli_env, new_master_key
from tests.e2e.receiver import Receiver
from vault.callbacks import check_signature
from vault.core import Vault
from vault.models import outbox_table

SECRET = "e2e-callback-secret-0123456789"
ROOT = "e2e-root-token-0123456789"


def _config(path: Path, database_url: str, url: str) -> Path:
    path.write_text(f"vault:\n  database_url: {json.dumps(database_url)}\ncallbacks:\n  url: {json.dumps(url)}\n"
                    "  timeout_seconds: 2\n  max_attempts: 50\n  backoff_seconds: 1\n  max_backoff_seconds: 1\n"
                    "  poll_seconds: 1\n", encoding="utf-8")
    return path


def _person(srv: Server, n: int) -> str:
    answer = requests.post(srv.url + "/v1/user", json={"email": f"e2e{n}@example.com", "name": f"Secret {n}"},
                           headers={"X-Bunker-Token": ROOT}, timeout=10)
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def test_pending_events_survive_a_restart_and_all_arrive(
        start_server: Callable[[Path, dict[str, str], str], Server], tmp_path: Path, database_url: str) -> None:
    key = new_master_key()
    env = cli_env(TOKENBUNKER_MASTER_KEY=key, TOKENBUNKER_ROOT_TOKEN=ROOT, TOKENBUNKER_CALLBACKS_SECRET=SECRET)
    with Receiver(fail_first=1000) as receiver:  # the backend is down at first: everything fails
        config = _config(tmp_path / "config.yaml", database_url, receiver.url)
        first = start_server(config, env, "first")
        people = [_person(first, n) for n in range(5)]
        began = time.monotonic()
        assert receiver.wait_for(lambda r: len(r.received) >= 5, timeout=20)
        assert time.monotonic() - began < 20  # the API answered at once; the worker tries in the background
        assert first.stop() == 0, first.output()

        # Events made while no worker runs (a library write, as another replica would) wait in the outbox too.
        vault = Vault.open(database_url, bytes.fromhex(key))
        people.append(vault.create_person({"email": "offline@example.com"}))
        vault.close()

        receiver.fail_first = 0  # the backend is back
        second = start_server(config, env, "second")
        people.append(_person(second, 99))
        assert receiver.wait_for(lambda r: {json.loads(x.body)["token"] for x in r.accepted()} >= set(people),
                                 timeout=30), receiver.received
        assert second.stop() == 0, second.output()

    accepted = receiver.accepted()
    ids = {r.headers["X-Tokenbunker-Event-Id"] for r in accepted}
    assert len(ids) == len(people) == 7  # one profilenew each, none lost
    for r in receiver.received:
        assert check_signature(SECRET.encode(), r.headers, r.body, time.time())
        assert b"Secret" not in r.body and b"example.com" not in r.body
    for srv in (first, second):
        logs = srv.stdout + srv.stderr
        assert "Traceback" not in logs and "Secret " not in logs and SECRET not in logs
    check = Vault.open(database_url, bytes.fromhex(key))
    try:
        with check.engine.connect() as conn:
            rows = list(conn.execute(select(outbox_table)))
        assert len(rows) == 7 and all(r.delivered_at is not None for r in rows)
    finally:
        check.close()
