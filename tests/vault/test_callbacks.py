"""Callbacks from the outbox to a real local HTTP receiver: signed, retried with backoff, given up after
max_attempts, never sent twice by two replicas."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from tests.conftest import Clock
from tests.e2e.receiver import Receiver
from vault import callbacks
from vault.callbacks import Delivery, Worker, check_signature, sign
from vault.config import ConfigError, parse_config
from vault.core import Vault
from vault.models import outbox_table

SECRET = b"callback-secret-for-tests"
EVENTS = ("profilenew", "profilechange", "forgetme", "consentchange", "requestcreated")


def delivery(url: str, **kwargs: float) -> Delivery:
    settings = {"timeout": 5.0, "max_attempts": 5, "backoff": 0.05, "max_backoff": 0.1, "poll": 0.05, **kwargs}
    return Delivery(dict.fromkeys(EVENTS, url), SECRET, **settings)  # type: ignore[arg-type]


@pytest.fixture
def live_vault(database_url: str, master_key: bytes) -> Iterator[Vault]:
    """On the real clock: the worker's retries fall due as time passes."""
    v = Vault.open(database_url, master_key)
    yield v
    v.close()


def _outbox(vault: Vault) -> list:  # type: ignore[type-arg]
    with vault.engine.connect() as conn:
        return list(conn.execute(select(outbox_table).order_by(outbox_table.c.seq)))


def _journey(vault: Vault) -> str:
    pid = vault.create_person({"email": "cat@example.com", "name": "Cat Hiddenname"})
    vault.update_person("token", pid, {"name": "Catherine Hiddenname"})
    vault.give_consent("sms", "token", pid)
    vault.withdraw_consent("sms", "token", pid)
    vault.forget_person("token", pid)
    return pid


def test_every_event_arrives_signed_after_two_failures(live_vault: Vault, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pid = _journey(live_vault)
    with Receiver(fail_first=2) as receiver:
        worker = Worker(live_vault, delivery(receiver.url)).start()
        try:
            assert receiver.wait_for(lambda r: len(r.accepted()) == 5, timeout=30), receiver.received
        finally:
            worker.stop()
    got = receiver.accepted()
    ids = [r.headers["X-Tokenbunker-Event-Id"] for r in got]
    assert len(set(ids)) == 5
    assert sorted(r.headers["X-Tokenbunker-Event"] for r in got) == sorted(
        ["profilenew", "profilechange", "consentchange", "consentchange", "forgetme"])
    assert len(receiver.received) == 15  # two failures each, then success
    for r in receiver.received:
        assert check_signature(SECRET, r.headers, r.body, time.time()), r.headers
        body = json.loads(r.body)
        assert body["event_id"] == r.headers["X-Tokenbunker-Event-Id"] and body["token"] == pid
        assert r.headers["Content-Type"] == "application/json"
        assert b"Hiddenname" not in r.body and b"cat@example.com" not in r.body
    forget = next(json.loads(r.body) for r in got if r.headers["X-Tokenbunker-Event"] == "forgetme")
    assert set(forget) == {"event_id", "event", "time", "token"}  # the token, not the profile
    rows = _outbox(live_vault)
    assert all(row.delivered_at is not None and row.attempts == 3 and row.failed_at is None for row in rows)
    logged = caplog.text
    assert "HTTP 500" in logged and "Hiddenname" not in logged and "cat@example.com" not in logged


def test_backoff_grows_and_the_event_is_failed_after_max_attempts(vault: Vault, clock: Clock) -> None:
    vault.create_person({"email": "dan@example.com"})
    sent: list[float] = []

    def refuse(_url: str, _body: bytes, _headers: dict[str, str], _timeout: float) -> str | None:
        sent.append(clock.now)
        return "HTTP 503"

    d = Delivery(dict.fromkeys(EVENTS, "http://127.0.0.1:9/x"), SECRET, 1.0, 4, 10.0, 25.0, 0.05)
    worker = Worker(vault, d, send=refuse, clock=clock)
    delays = []
    for _ in range(4):
        assert worker.run_once() == 1
        assert worker.run_once() == 0  # not due again yet
        [row] = _outbox(vault)
        if row.failed_at is None:
            delays.append(row.next_attempt_at - vault.now())
            clock.advance(row.next_attempt_at - vault.now())
    [row] = _outbox(vault)
    assert row.attempts == 4 and row.failed_at == vault.now() and row.delivered_at is None
    assert row.last_error == "HTTP 503"
    assert 5 <= delays[0] <= 10 and 10 <= delays[1] <= 20 and 13 <= delays[2] <= 25  # doubled, jittered, capped
    clock.advance(10_000)
    assert worker.run_once() == 0  # a failed event is never claimed again
    samples = {(s.name, s.labels): s.value for s in vault.metrics()}
    assert samples[("tokenbunker_outbox_events", (("state", "failed"),))] == 1
    assert samples[("tokenbunker_outbox_events", (("state", "pending"),))] == 0


def test_redirects_and_errors_are_not_success(live_vault: Vault) -> None:
    for status in (302, 404):
        with Receiver(fail_first=10, status=status) as receiver:
            assert callbacks.http_send(receiver.url, b"{}", {}, 5) == f"HTTP {status}"
    assert callbacks.http_send("http://127.0.0.1:1/none", b"{}", {}, 2).startswith("unreachable")


def test_a_stopping_worker_hands_its_claims_back(vault: Vault) -> None:
    for n in range(3):
        vault.create_person({"email": f"e{n}@example.com"})
    worker: Worker

    def send_and_stop(_url: str, _body: bytes, _headers: dict[str, str], _timeout: float) -> str | None:
        worker.stop(0)
        return None

    worker = Worker(vault, delivery("http://127.0.0.1:9/x"), send=send_and_stop)
    assert worker.run_once() == 1
    rows = _outbox(vault)
    assert [r.delivered_at is not None for r in rows] == [True, False, False]
    assert all(r.next_attempt_at <= vault.now() for r in rows[1:])  # due again at once, for the next worker


def test_signatures_reject_stale_or_altered_requests() -> None:
    body = b'{"event":"profilenew"}'
    now = 1_800_000_000
    headers = {"X-Tokenbunker-Timestamp": str(now), "X-Tokenbunker-Signature": sign(SECRET, now, body)}
    assert check_signature(SECRET, headers, body, now + 10)
    assert not check_signature(SECRET, headers, body, now + 301)  # replayed later
    assert not check_signature(SECRET, headers, body + b" ", now)
    assert not check_signature(b"another-secret-000000", headers, body, now)
    assert not check_signature(SECRET, {**headers, "X-Tokenbunker-Timestamp": str(now + 1)}, body, now)


def test_config_no_url_means_no_worker_and_a_url_needs_the_secret() -> None:
    assert Delivery.from_config(parse_config("", "c.yaml", {}).callbacks, {}) is None
    text = "callbacks:\n  url: http://127.0.0.1:9000/hook\n  forgetme: https://other.example/forget\n"
    settings = parse_config(text, "c.yaml", {}).callbacks
    with pytest.raises(ConfigError, match="TOKENBUNKER_CALLBACKS_SECRET"):
        Delivery.from_config(settings, {"TOKENBUNKER_CALLBACKS_SECRET": "short"})
    made = Delivery.from_config(settings, {"TOKENBUNKER_CALLBACKS_SECRET": "s" * 20})
    assert made is not None and made.urls["forgetme"] == "https://other.example/forget"
    assert made.urls["profilenew"] == "http://127.0.0.1:9000/hook" and "s" * 20 not in repr(made)
    with pytest.raises(ConfigError, match=r"c.yaml:2: callbacks.url: invalid value"):
        parse_config("callbacks:\n  url: ftp://x\n", "c.yaml", {})
    with pytest.raises(ConfigError, match=r"callbacks.secret: unknown key"):
        parse_config("callbacks:\n  secret: abc\n", "c.yaml", {})


def test_events_without_a_url_stay_queued(vault: Vault) -> None:
    pid = vault.create_person({"email": "fay@example.com"})
    vault.forget_person("token", pid)
    sent: list[str] = []
    d = Delivery({"forgetme": "http://127.0.0.1:9/x"}, SECRET)
    worker = Worker(vault, d, send=lambda _u, body, _h, _t: sent.append(json.loads(body)["event"]))  # type: ignore[func-returns-value]
    worker.run_once()
    assert sent == ["forgetme"]
    assert [(r.event, r.delivered_at is not None) for r in _outbox(vault)] == [("profilenew", False),
                                                                              ("forgetme", True)]


@pytest.mark.pg_only
def test_two_replicas_never_send_an_event_twice(database_url: str, master_key: bytes) -> None:
    replicas = [Vault.open(database_url, master_key) for _ in range(2)]
    try:
        for n in range(40):
            replicas[n % 2].create_person({"email": f"r{n}@example.com"})
        with Receiver(delay=0.01) as receiver:
            workers = [Worker(v, delivery(receiver.url, poll=0.01)) for v in replicas]
            for w in workers:
                w.start()
            try:
                assert receiver.wait_for(lambda r: len(r.received) >= 40, timeout=30)
                time.sleep(0.3)  # room for a double send to show
            finally:
                for w in workers:
                    w.stop()
        ids = [r.headers["X-Tokenbunker-Event-Id"] for r in receiver.received]
        assert len(ids) == 40 and len(set(ids)) == 40
        assert all(r.delivered_at is not None for r in _outbox(replicas[0]))
        by_thread = {t.name for t in threading.enumerate()}
        assert "tokenbunker-callbacks" not in by_thread
    finally:
        for v in replicas:
            v.close()
