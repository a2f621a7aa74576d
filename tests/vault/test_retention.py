"""Retention: /v1/exp, and the scheduler's runs (people at their expiry, ttl tokens, agreements, old requests, the
purges other parts provide), idempotent and single-runner with several vaults on one PostgreSQL."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, text

from tests.conftest import Clock
from tests.vault.apihelpers import ROOT, call, error, ok
from vault.api import OPENAPI_PATH, create_app
from vault.config import ConfigError, RetentionSettings, parse_config
from vault.core import Vault
from vault.errors import Conflict, NotFound
from vault.models import agreements_table, audit_table, expirations_table, outbox_table, requests_table, tokens_table
from vault.scheduler import RetentionScheduler
from vault.tokens import TokenRequest

DAY = 86400


@pytest.fixture
def client(vault: Vault) -> FlaskClient:
    return create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT)).test_client()








def count(vault: Vault, table: Any, *where: Any) -> int:
    with vault.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def forgetme_events(vault: Vault) -> int:
    return count(vault, outbox_table, outbox_table.c.event == "forgetme")


# -- /v1/exp ---------------------------------------------------------------------------------------------------------


def test_an_expiration_is_started_read_retained_and_cancelled(vault: Vault, client: FlaskClient,
                                                               clock: Clock) -> None:
    pid = ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))["token"]
    assert ok(call(client, "GET", f"/v1/exp/status/token/{pid}")) == {
        "status": "ok", "exptime": None, "expstatus": None, "exptoken": None}
    started = ok(call(client, "POST", "/v1/exp/start/email/ann@example.com", {"expiration": "30d"}))
    assert set(started) == {"status", "exptoken"}
    status = ok(call(client, "GET", "/v1/exp/status/email/ann@example.com"))
    assert status == {"status": "ok", "exptime": int(clock.now) + 30 * DAY, "expstatus": "wait",
                      "exptoken": started["exptoken"]}

    # The person's own link needs no token.
    assert ok(call(client, "GET", f"/v1/exp/retain/{started['exptoken']}", token=None)) == {
        "status": "ok", "result": "done"}
    assert ok(call(client, "GET", f"/v1/exp/status/token/{pid}"))["expstatus"] == "retain"
    assert ok(call(client, "DELETE", f"/v1/exp/cancel/token/{pid}")) == {"status": "ok"}
    assert ok(call(client, "GET", f"/v1/exp/status/token/{pid}"))["expstatus"] == "canceled"

    # Started again, by a unix time and as a form: a new exptoken; the old link stops working.
    again = client.post(f"/v1/exp/start/token/{pid}", data={"expiration": str(int(clock.now) + 3600)},
                        headers={"X-Bunker-Token": ROOT})
    fresh = ok(again)["exptoken"]
    assert fresh != started["exptoken"]
    error(call(client, "GET", f"/v1/exp/retain/{started['exptoken']}", token=None), 404, "no such exptoken")
    assert ok(call(client, "GET", f"/v1/exp/status/token/{pid}"))["exptime"] == int(clock.now) + 3600
    with vault.engine.connect() as conn:
        actions = conn.execute(select(audit_table.c.action).where(audit_table.c.person_id == pid)).scalars().all()
    assert actions.count("retention") == 4  # start, retain, cancel, start


def test_the_delete_link_forgets_now(vault: Vault, client: FlaskClient) -> None:
    pid = ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))["token"]
    exptoken = ok(call(client, "POST", f"/v1/exp/start/token/{pid}", {"expiration": "30d"}))["exptoken"]
    assert ok(call(client, "GET", f"/v1/exp/delete/{exptoken}", token=None)) == {"status": "ok", "result": "done"}
    with pytest.raises(NotFound):
        vault.get_person("token", pid)
    assert forgetme_events(vault) == 1
    error(call(client, "GET", f"/v1/exp/delete/{exptoken}", token=None), 409, "already expired")
    error(call(client, "GET", f"/v1/exp/retain/{exptoken}", token=None), 409, "expired")
    assert forgetme_events(vault) == 1
    with vault.engine.connect() as conn:
        row = conn.execute(select(audit_table).where(audit_table.c.action == "forget")).one()
    assert row.actor == "exptoken" and row.person_id == pid


EXP = [("POST", "/v1/exp/start/email/ann@example.com", {"expiration": "1d"}, "users:write"),
       ("GET", "/v1/exp/status/email/ann@example.com", None, "users:read"),
       ("DELETE", "/v1/exp/cancel/email/ann@example.com", None, "users:write")]


@pytest.mark.parametrize(("method", "path", "body", "scope"), EXP)
def test_exp_calls_need_a_token_with_their_scope(vault: Vault, client: FlaskClient, method: str, path: str,
                                                 body: object, scope: str) -> None:
    ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))
    error(call(client, method, path, body, token=None), 401)
    other = "users:read" if scope == "users:write" else "users:write"
    error(call(client, method, path, body, token=vault.create_api_token("t", [other, "dpo"])[1]), 403, scope)
    ok(call(client, "POST", "/v1/exp/start/email/ann@example.com", {"expiration": "1d"}))
    ok(call(client, method, path, body, token=vault.create_api_token("u", [scope])[1]))


@pytest.mark.parametrize(("method", "path", "body", "status", "match"), [
    ("POST", "/v1/exp/start/email/ann@example.com", {}, 400, "expiration"),
    ("POST", "/v1/exp/start/email/ann@example.com", {"expiration": "soon"}, 400, "expiration: invalid duration"),
    ("POST", "/v1/exp/start/email/ann@example.com", {"expiration": 1000}, 400, "in the past"),
    ("POST", "/v1/exp/start/email/ann@example.com", {"expiration": "1d", "status": "later"}, 400, "wait or retain"),
    ("POST", "/v1/exp/start/email/ann@example.com", {"expiration": "1d", "colour": "red"}, 400, "the body is"),
    ("POST", "/v1/exp/start/email/ann@example.com", [1], 400, "JSON object"),
    ("POST", "/v1/exp/start/nick/ann", {"expiration": "1d"}, 400, ""),
    ("POST", "/v1/exp/start/email/nobody@example.com", {"expiration": "1d"}, 404, "person not found"),
    ("GET", "/v1/exp/status/email/nobody@example.com", None, 404, "person not found"),
    ("DELETE", "/v1/exp/cancel/email/nobody@example.com", None, 404, "person not found"),
    ("DELETE", "/v1/exp/cancel/email/ann@example.com", None, 404, "no expiration was started"),
    ("GET", "/v1/exp/retain/not-a-uuid", None, 400, "exptoken"),
    ("GET", "/v1/exp/delete/not-a-uuid", None, 400, "exptoken"),
    ("GET", "/v1/exp/retain/00000000-0000-4000-8000-000000000000", None, 404, "no such exptoken"),
    ("GET", "/v1/exp/delete/00000000-0000-4000-8000-000000000000", None, 404, "no such exptoken"),
])
def test_exp_errors(client: FlaskClient, method: str, path: str, body: object, status: int, match: str) -> None:
    ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))
    error(call(client, method, path, body), status, match)


# -- the scheduler's run -------------------------------------------------------------------------------------------


def test_a_run_forgets_people_whose_expiry_passed_once(vault: Vault, clock: Clock) -> None:
    ann = vault.create_person({"email": "ann@example.com"})
    bob = vault.create_person({"email": "bob@example.com"})
    token = vault.tokenize([TokenRequest("ann's secret", subject=ann)])[0]
    vault.start_expiration("token", ann, vault.now() + 60)
    vault.start_expiration("token", bob, vault.now() + 3600)
    assert vault.run_retention()["people"] == 0  # type: ignore[index]
    clock.advance(61)
    counts = vault.run_retention()
    assert counts is not None and counts["people"] == 1
    with pytest.raises(NotFound):
        vault.get_person("token", ann)
    assert vault.detokenize([token]) == [None]
    assert vault.get_person("token", bob)[0] == bob
    assert vault.expiration_status("token", bob)["expstatus"] == "wait"
    assert count(vault, expirations_table, expirations_table.c.status == "expired") == 1
    assert vault.run_retention()["people"] == 0  # type: ignore[index]
    assert forgetme_events(vault) == 1
    with vault.engine.connect() as conn:
        actor = conn.execute(select(audit_table.c.actor).where(audit_table.c.action == "forget")).scalar_one()
    assert actor == "retention"


def test_retained_and_cancelled_people_are_kept(vault: Vault, clock: Clock) -> None:
    ann = vault.create_person({"email": "ann@example.com"})
    bob = vault.create_person({"email": "bob@example.com"})
    exptoken = vault.start_expiration("token", ann, vault.now() + 60)
    vault.start_expiration("token", bob, vault.now() + 60)
    vault.retain_by_exptoken(exptoken)
    vault.cancel_expiration("email", "bob@example.com")
    clock.advance(3600)
    assert vault.run_retention()["people"] == 0  # type: ignore[index]
    assert vault.get_person("token", ann)[0] == ann and vault.get_person("token", bob)[0] == bob
    assert vault.expiration_status("token", ann)["expstatus"] == "retain"
    assert forgetme_events(vault) == 0


def test_someone_forgotten_otherwise_is_simply_marked_expired(vault: Vault, clock: Clock) -> None:
    ann = vault.create_person({"email": "ann@example.com"})
    vault.start_expiration("token", ann, vault.now() + 60)
    vault.forget_person("token", ann)
    clock.advance(61)
    assert vault.run_retention()["people"] == 0  # type: ignore[index]
    assert count(vault, expirations_table, expirations_table.c.status == "expired") == 1
    assert forgetme_events(vault) == 1


def test_a_run_that_was_cut_short_is_finished_by_the_next(vault: Vault, clock: Clock) -> None:
    ann = vault.create_person({"email": "ann@example.com"})
    vault.start_expiration("token", ann, vault.now() + 60)
    clock.advance(61)
    with vault.engine.begin() as conn:  # claimed, then the process died before forgetting
        conn.execute(expirations_table.update().values(status="expiring"))
    with pytest.raises(Conflict):
        vault.start_expiration("token", ann, vault.now() + 60)
    assert vault.expiration_status("token", ann)["expstatus"] == "wait"
    assert vault.run_retention()["people"] == 1  # type: ignore[index]
    assert forgetme_events(vault) == 1


def test_ttl_tokens_agreements_and_old_requests_are_purged(vault: Vault, clock: Clock) -> None:
    ann = vault.create_person({"email": "ann@example.com"})
    vault.tokenize([TokenRequest("short", ttl=60), TokenRequest("long")])
    vault.give_consent("sms", "token", ann, expires_at=vault.now() + 60)
    vault.give_consent("news", "token", ann)
    vault.withdraw_consent("news", "token", ann)
    rtoken = vault.create_request("change-profile", "token", ann, {"name": "A"})
    vault.cancel_request(rtoken, "no")
    open_one = vault.create_request("forget-me", "token", ann)
    clock.advance(61)
    settings = RetentionSettings(tokens=None, requests="1d", agreements="2d")
    counts = vault.run_retention(settings)
    assert counts is not None and counts["tokens"] == 1 and counts["agreements_expired"] == 1
    assert counts["agreements_deleted"] == 0 and counts["requests"] == 0
    assert vault.get_consent("sms", "token", ann).status == "expired"
    with vault.engine.connect() as conn:
        bodies = [json.loads(b) for b in conn.execute(select(outbox_table.c.body)
                                                      .where(outbox_table.c.event == "consentchange")).scalars()]
    assert [b["status"] for b in bodies] == ["yes", "yes", "no", "expired"] and bodies[-1]["brief"] == "sms"
    assert vault.run_retention(settings)["agreements_expired"] == 0  # type: ignore[index]

    clock.advance(DAY)  # the canceled request is a day old; open ones wait for a DPO
    assert vault.run_retention(settings)["requests"] == 1  # type: ignore[index]
    assert vault.requests(None) == (1, [vault.requests("open")[1][0]])
    assert vault.requests("open")[1][0]["rtoken"] == open_one
    clock.advance(DAY + 1)  # withdrawn and expired agreements are over two days old
    assert vault.run_retention(settings)["agreements_deleted"] == 2  # type: ignore[index]
    assert count(vault, agreements_table) == 0
    assert count(vault, tokens_table) == 1
    assert vault.run_retention(RetentionSettings(tokens="1d"))["tokens"] == 1  # type: ignore[index]
    assert count(vault, tokens_table) == 0
    assert count(vault, requests_table) == 1


def test_delivered_and_given_up_callbacks_leave_the_outbox(vault: Vault, clock: Clock) -> None:
    from sqlalchemy import update

    for name in ("delivered", "failed", "pending"):
        vault.create_person({"email": f"{name}@example.com"})  # one profilenew event each
    with vault.engine.begin() as conn:
        seqs = list(conn.execute(select(outbox_table.c.seq).order_by(outbox_table.c.seq)).scalars())
        conn.execute(update(outbox_table).where(outbox_table.c.seq == seqs[0]).values(delivered_at=vault.now()))
        conn.execute(update(outbox_table).where(outbox_table.c.seq == seqs[1]).values(failed_at=vault.now()))
    assert vault.run_retention(RetentionSettings())["outbox"] == 0  # type: ignore[index]
    clock.advance(7 * DAY + 1)
    assert vault.run_retention(RetentionSettings())["outbox"] == 2  # type: ignore[index]
    with vault.engine.connect() as conn:
        assert list(conn.execute(select(outbox_table.c.seq)).scalars()) == [seqs[2]]  # pending: kept
    assert vault.run_retention(RetentionSettings(outbox=None)).get("outbox") is None  # type: ignore[union-attr]


def test_purges_other_parts_provide_are_run(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int | None] = []

    def purge_expired_sessions(max_age: int | None = None) -> int:
        seen.append(max_age)
        return 3

    monkeypatch.setattr(vault, "purge_expired_sessions", purge_expired_sessions, raising=False)
    monkeypatch.setattr(vault, "purge_expired_shared_records", lambda: 2, raising=False)
    counts = vault.run_retention(RetentionSettings(sessions="7d"))
    assert counts is not None and counts["sessions"] == 3 and counts["shared_records"] == 2
    assert seen == [7 * DAY]


def test_a_run_logs_counts_in_the_audit_trail_without_values(vault: Vault, clock: Clock) -> None:
    vault.tokenize([TokenRequest("secret-value-77", ttl=60)])
    clock.advance(61)
    vault.run_retention()
    with vault.engine.connect() as conn:
        row = conn.execute(select(audit_table).where(audit_table.c.action == "retention")).one()
    assert row.actor == "retention" and row.person_id is None and b"secret-value-77" not in bytes(row.detail)


@pytest.mark.pg_only
def test_one_replica_runs_at_a_time_on_postgresql(vault: Vault, database_url: str, master_key: bytes,
                                                  clock: Clock) -> None:
    people = [vault.create_person({"email": f"p{i}@example.com"}) for i in range(20)]
    for pid in people:
        vault.start_expiration("token", pid, vault.now() + 60)
    clock.advance(61)
    # A run under way elsewhere holds the lock: this one does nothing.
    with vault.engine.connect() as other:
        assert other.execute(text("SELECT pg_try_advisory_xact_lock(31501)")).scalar() is True  # 0x7B0D
        assert vault.run_retention() is None
    replicas = [Vault.open(database_url, master_key, clock=clock) for _ in range(3)]
    try:
        results: list[dict[str, int] | None] = []
        barrier = threading.Barrier(len(replicas))

        def run(replica: Vault) -> None:
            barrier.wait()
            for _ in range(3):
                results.append(replica.run_retention())

        threads = [threading.Thread(target=run, args=(r,)) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for r in replicas:
            r.close()
    assert sum(r["people"] for r in results if r is not None) == 20
    assert forgetme_events(vault) == 20
    with vault.engine.connect() as conn:
        forgets = conn.execute(select(func.count()).select_from(audit_table)
                               .where(audit_table.c.action == "forget")).scalar_one()
    assert forgets == 20


# -- the scheduler thread and its config ------------------------------------------------------------------------------


def test_the_scheduler_runs_every_interval_and_stops(vault: Vault, clock: Clock) -> None:
    ann = vault.create_person({"email": "ann@example.com"})
    vault.start_expiration("token", ann, vault.now() + 60)
    clock.advance(61)
    scheduler = RetentionScheduler(vault, RetentionSettings(interval="1s")).start()
    try:
        deadline = time.monotonic() + 10
        while scheduler.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        started = time.monotonic()
        scheduler.stop()
        assert time.monotonic() - started < 2
    assert scheduler.runs >= 2
    with pytest.raises(NotFound):
        vault.get_person("token", ann)
    assert forgetme_events(vault) == 1


def test_a_failed_run_is_logged_without_values(vault: Vault, caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("ann@example.com")

    monkeypatch.setattr(vault, "run_retention", boom)
    assert RetentionScheduler(vault, RetentionSettings()).run_once() is None
    assert "RuntimeError" in caplog.text and "ann@example.com" not in caplog.text


def test_retention_config() -> None:
    parsed = parse_config("retention:\n  interval: 5s\n  sessions: null\n  tokens: 90d\n", "config.yaml", {})
    assert parsed.retention == RetentionSettings("5s", "90d", None, "365d", None, "7d")
    assert parsed.retention.seconds("interval") == 5 and parsed.retention.seconds("sessions") is None
    with pytest.raises(ConfigError, match=re.escape("retention.interval: invalid value (expected a duration")):
        parse_config("retention:\n  interval: often\n", "config.yaml", {})
    with pytest.raises(ConfigError, match="retention.requests"):
        parse_config("retention:\n  requests: 0d\n", "config.yaml", {})


def test_answers_match_the_openapi_document(vault: Vault, client: FlaskClient, clock: Clock) -> None:
    from tests.vault.test_openapi import _check, _response_schema

    spec = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))

    def check(method: str, path: str, resp: Any, status: int = 200) -> dict[str, Any]:
        assert resp.status_code == status, resp.get_json()
        _check(spec, _response_schema(spec, method, path, status), resp.get_json())
        return resp.get_json()  # type: ignore[no-any-return]

    pid = ok(call(client, "POST", "/v1/user", {"email": "ann@example.com"}))["token"]
    start, status = "/v1/exp/start/{mode}/{ident}", "/v1/exp/status/{mode}/{ident}"
    check("get", status, call(client, "GET", f"/v1/exp/status/token/{pid}"))
    exptoken = check("post", start, call(client, "POST", f"/v1/exp/start/token/{pid}", {"expiration": "1d"}))[
        "exptoken"]
    check("post", start, call(client, "POST", f"/v1/exp/start/token/{pid}", {"expiration": "x"}), 400)
    check("get", status, call(client, "GET", f"/v1/exp/status/token/{pid}"))
    check("get", "/v1/exp/retain/{exptoken}", call(client, "GET", f"/v1/exp/retain/{exptoken}", token=None))
    check("delete", "/v1/exp/cancel/{mode}/{ident}", call(client, "DELETE", f"/v1/exp/cancel/token/{pid}"))
    check("delete", "/v1/exp/cancel/{mode}/{ident}", call(client, "DELETE", f"/v1/exp/cancel/token/{pid}",
                                                          token=None), 401)
    check("get", "/v1/exp/delete/{exptoken}", call(client, "GET", f"/v1/exp/delete/{exptoken}", token=None))
    check("get", "/v1/exp/delete/{exptoken}", call(client, "GET", f"/v1/exp/delete/{exptoken}", token=None), 409)
    check("get", "/v1/exp/retain/{exptoken}", call(client, "GET", "/v1/exp/retain/x", token=None), 400)
    check("get", status, call(client, "GET", f"/v1/exp/status/token/{pid}"), 404)
