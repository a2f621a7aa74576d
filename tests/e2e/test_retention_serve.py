"""The retention scheduler in real `tokenbunker serve` processes: two replicas on one database forget each expired
person once, log counts without values, and stop cleanly on SIGTERM."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from tests.e2e.helpers import Server, cli_env, new_master_key
from vault.db import make_engine
from vault.models import expirations_table, outbox_table

ROOT = "root-token-for-e2e-" + secrets.token_hex(8)


def test_two_replicas_forget_expired_people_once(tmp_path: Path, database_url: str,
                                                 start_server: Callable[[Path, dict[str, str], str], Server]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"vault:\n  database_url: {json.dumps(database_url)}\nretention:\n  interval: 1s\n",
                      encoding="utf-8")
    env = cli_env(TOKENBUNKER_MASTER_KEY=new_master_key(), TOKENBUNKER_ROOT_TOKEN=ROOT)
    first = start_server(config, env, "first")
    second = start_server(config, env, "second")
    emails = [f"expiring-{secrets.token_hex(4)}@example.com" for _ in range(5)]
    for i, email in enumerate(emails):
        srv = (first, second)[i % 2]
        assert srv.call("POST", "/v1/user", ROOT, {"email": email}).status_code == 200
        started = srv.call("POST", f"/v1/exp/start/email/{email}", ROOT, {"expiration": "2s"})
        assert started.status_code == 200, started.text
    kept = "kept-" + secrets.token_hex(4) + "@example.com"
    assert first.call("POST", "/v1/user", ROOT, {"email": kept}).status_code == 200
    exptoken = first.call("POST", f"/v1/exp/start/email/{kept}", ROOT, {"expiration": "2s"}).json()["exptoken"]
    assert second.call("GET", f"/v1/exp/retain/{exptoken}", None).status_code == 200

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(first.call("GET", f"/v1/user/email/{e}", ROOT).status_code == 404 for e in emails):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"expired people were not forgotten in time\n{first.output()}\n{second.output()}")
    time.sleep(2.5)  # a few more runs of both replicas: nothing is done twice
    assert first.call("GET", f"/v1/user/email/{kept}", ROOT).status_code == 200

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            forgetme = conn.execute(select(func.count()).select_from(outbox_table)
                                    .where(outbox_table.c.event == "forgetme")).scalar_one()
            expired = conn.execute(select(func.count()).select_from(expirations_table)
                                   .where(expirations_table.c.status == "expired")).scalar_one()
    finally:
        engine.dispose()
    assert forgetme == 5 and expired == 5

    for srv in (first, second):
        assert srv.stop() == 0, srv.output()
        assert "tokenbunker: stopped" in srv.stdout and "Traceback" not in srv.stderr, srv.output()
    logs = first.stderr + second.stderr
    assert "retention: " in logs and "people " in logs, logs
    assert not any(e in logs for e in [*emails, kept])
