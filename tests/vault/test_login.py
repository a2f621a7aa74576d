"""Passwordless login: codes sent (outbox file, real SMTP), single use, expiring, limited; no enumeration; the
session it opens acts on its own person's records only."""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Clock
from vault.api import create_app
from vault.config import parse_config
from vault.core import Vault
from vault.models import login_codes_table, person_sessions_table, rate_limits_table
from vault.notify import Message, Notifier, Smtp

ROOT = "r" * 32
AUTH = {"X-Bunker-Token": ROOT}


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox.jsonl"


@pytest.fixture
def app(vault: Vault, outbox: Path) -> Flask:
    config = parse_config(f"notify:\n  outbox: {outbox}\nlogin:\n  max_attempts: 3\n  codes_per_hour: 4\n",
                          "test.yaml", {})
    built = create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT), config=config)
    yield built
    built.extensions["tokenbunker"].notifier.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _sent(app: Flask, outbox: Path) -> list[dict[str, str]]:
    app.extensions["tokenbunker"].notifier.close()  # wait for the sender thread to write what is queued
    return [json.loads(line) for line in outbox.read_text().splitlines()] if outbox.exists() else []


def _code(message: dict[str, str]) -> str:
    found = re.search(r"\b(\d{6})\b", message["body"])
    assert found is not None
    return found.group(1)


def test_a_known_and_an_unknown_identity_get_the_same_answer(client: FlaskClient, app: Flask, vault: Vault,
                                                             outbox: Path) -> None:
    vault.create_person({"email": "kim@example.com"})
    known = client.get("/v1/prelogin/email/Kim@Example.com/captcha")
    unknown = client.get("/v1/prelogin/email/nobody@example.com/captcha")
    assert (known.status_code, known.get_json()) == (unknown.status_code, unknown.get_json())
    assert known.get_json() == {"status": "ok", "result": "code-sent"}
    [message] = _sent(app, outbox)
    assert message["to"] == "kim@example.com" and message["channel"] == "email"
    assert re.fullmatch(r"\d{6}", _code(message))
    assert Path(outbox).stat().st_mode & 0o077 == 0  # it holds codes: owner only


def test_a_code_logs_in_once_and_expires(client: FlaskClient, app: Flask, vault: Vault, outbox: Path,
                                         clock: Clock) -> None:
    person = vault.create_person({"email": "kim@example.com", "name": "Kim"})
    client.get("/v1/prelogin/email/kim@example.com/x")
    code = _code(_sent(app, outbox)[-1])
    answer = client.get(f"/v1/login/email/kim@example.com/{code}")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["token"] == person and body["xtoken"].startswith("tbs_")
    again = client.get(f"/v1/login/email/kim@example.com/{code}")
    assert again.status_code == 401 and "wrong or has expired" in again.get_json()["message"]
    client.get("/v1/prelogin/email/kim@example.com/x")
    code = _code(_sent(app, outbox)[-1])
    clock.advance(601)
    assert client.get(f"/v1/login/email/kim@example.com/{code}").status_code == 401


def test_wrong_codes_lock_an_identity_known_or_not_alike(client: FlaskClient, app: Flask, vault: Vault,
                                                         outbox: Path, clock: Clock) -> None:
    vault.create_person({"phone": "+447700900123"})
    client.get("/v1/prelogin/phone/07700900123/x")
    code = _code(_sent(app, outbox)[-1])
    answers = {}
    for ident in ("07700900123", "07700900999"):  # known, unknown
        answers[ident] = [client.get(f"/v1/login/phone/{ident}/000000") for _ in range(4)]
    for ident, seen in answers.items():
        assert [a.status_code for a in seen] == [401, 401, 429, 429], ident
        assert "try again in 15 minutes" in seen[-1].get_json()["message"]
    assert [a.get_json() for a in answers["07700900123"]] == [a.get_json() for a in answers["07700900999"]]
    # The right code no longer works once locked (the code died with the tries), nor after the lockout.
    assert client.get(f"/v1/login/phone/07700900123/{code}").status_code == 429
    clock.advance(15 * 60 + 1)
    assert client.get(f"/v1/login/phone/07700900123/{code}").status_code == 401


def test_codes_per_identity_are_limited(client: FlaskClient, vault: Vault) -> None:
    vault.create_person({"email": "kim@example.com"})
    statuses = [client.get("/v1/prelogin/email/kim@example.com/x").status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert [client.get("/v1/prelogin/email/other@example.com/x").status_code for _ in range(6)] == statuses


def test_bad_input_and_no_sender(vault: Vault, client: FlaskClient) -> None:
    bad = client.get("/v1/prelogin/email/not-an-email/x")
    assert bad.status_code == 400 and "not-an-email" not in bad.get_data(as_text=True)
    assert client.get("/v1/prelogin/login/jdoe/x").status_code == 400
    bare = create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT)).test_client()
    answer = bare.get("/v1/prelogin/email/kim@example.com/x")
    assert answer.status_code == 503 and "no email sender" in answer.get_json()["message"]


def _login(client: FlaskClient, app: Flask, outbox: Path, email: str) -> str:
    client.get(f"/v1/prelogin/email/{email}/x")
    token: str = client.get(f"/v1/login/email/{email}/{_code(_sent(app, outbox)[-1])}").get_json()["xtoken"]
    return token


def test_a_session_acts_on_its_own_person_only(client: FlaskClient, app: Flask, vault: Vault, outbox: Path,
                                               clock: Clock) -> None:
    kim = vault.create_person({"email": "kim@example.com", "name": "Kim"})
    lee = vault.create_person({"email": "lee@example.com", "name": "Lee"})
    xtoken = _login(client, app, outbox, "kim@example.com")
    mine = {"X-Bunker-Token": xtoken}
    assert client.get(f"/v1/user/token/{kim}", headers=mine).get_json()["data"]["name"] == "Kim"
    assert client.get("/v1/user/email/kim@example.com", headers=mine).status_code == 200
    for path in (f"/v1/user/token/{lee}", "/v1/user/email/lee@example.com", "/v1/user/email/none@example.com"):
        answer = client.get(path, headers=mine)
        assert answer.status_code == 403 and "Lee" not in answer.get_data(as_text=True), path
    assert client.put(f"/v1/user/token/{lee}", json={"name": "X"}, headers=mine).status_code == 403
    assert client.put(f"/v1/user/token/{kim}", json={"nick": "K"}, headers=mine).status_code == 200
    assert client.post("/v1/tokenize", json={"items": []}, headers=mine).status_code == 403
    assert client.post("/v1/xtoken", json={"name": "x", "scopes": ["tokenize"]}, headers=mine).status_code == 403
    # Idle too long: the session is gone.
    clock.advance(31 * 60)
    assert client.get(f"/v1/user/token/{kim}", headers=mine).status_code == 401


def test_logout_and_forget_end_sessions(client: FlaskClient, app: Flask, vault: Vault, outbox: Path) -> None:
    kim = vault.create_person({"email": "kim@example.com"})
    first = _login(client, app, outbox, "kim@example.com")
    second = _login(client, app, outbox, "kim@example.com")
    assert client.post("/v1/logout", headers={"X-Bunker-Token": first}).status_code == 200
    assert client.get(f"/v1/user/token/{kim}", headers={"X-Bunker-Token": first}).status_code == 401
    assert client.post("/v1/logout", headers={"X-Bunker-Token": first}).status_code == 401
    assert client.get(f"/v1/user/token/{kim}", headers={"X-Bunker-Token": second}).status_code == 200
    vault.forget_person("token", kim)
    assert client.get(f"/v1/user/token/{kim}", headers={"X-Bunker-Token": second}).status_code == 401


def test_codes_sessions_and_identities_are_stored_as_keyed_hashes_only(client: FlaskClient, app: Flask,
                                                                       vault: Vault, outbox: Path) -> None:
    vault.create_person({"email": "kim@example.com"})
    client.get("/v1/prelogin/email/kim@example.com/x")
    code = _code(_sent(app, outbox)[-1])
    with vault.engine.connect() as conn:
        stored = [tuple(r) for t in (login_codes_table, rate_limits_table) for r in conn.execute(select(t))]
    raw = repr(stored).encode()
    assert code.encode() not in raw and b"kim@example.com" not in raw and b"127.0.0.1" not in raw
    token = client.get(f"/v1/login/email/kim@example.com/{code}").get_json()["xtoken"]
    with vault.engine.connect() as conn:
        sessions = repr([tuple(r) for r in conn.execute(select(person_sessions_table))])
    assert token not in sessions


def test_codes_go_out_through_a_real_smtp_server() -> None:
    from aiosmtpd.controller import Controller

    received: list[bytes] = []
    arrived = threading.Event()

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]  # noqa: N802
            received.append(envelope.content)
            arrived.set()
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = parse_config(f"notify:\n  smtp_host: 127.0.0.1\n  smtp_port: {port}\n  smtp_security: none\n"
                                "  email_from: Portal <portal@example.org>\n", "t.yaml", {}).notify
        notifier = Notifier(Smtp(settings), None)
        notifier.send(Message("kim@example.com", "email", "Your login code", "Your login code is 123456."))
        assert arrived.wait(10)
        notifier.close()
    finally:
        controller.stop()
    text = received[0].decode()
    assert "To: kim@example.com" in text and "From: Portal <portal@example.org>" in text and "123456" in text


def test_a_session_reaches_its_own_records_through_every_family(client: FlaskClient, app: Flask, vault: Vault,
                                                                outbox: Path) -> None:
    kim = vault.create_person({"email": "kim@example.com"})
    lee = vault.create_person({"email": "lee@example.com"})
    for pid in (kim, lee):
        vault.create_app_record("token", pid, "shop", {"plan": "gold"}, by="t")
        vault.give_consent("news", "token", pid)
    mine = {"X-Bunker-Token": _login(client, app, outbox, "kim@example.com")}
    for path in (f"/v1/userapp/token/{kim}/shop", f"/v1/userapp/token/{kim}", f"/v1/agreements/token/{kim}",
                 f"/v1/agreement/news/token/{kim}", f"/v1/sessions/token/{kim}", f"/v1/audit/list/{kim}"):
        assert client.get(path, headers=mine).status_code == 200, path
        other = path.replace(kim, lee)
        assert client.get(other, headers=mine).status_code == 403, other
    for path in ("/v1/audit/admin", "/v1/requests", "/v1/userapps", "/v1/metrics", "/v1/lbasis"):
        assert client.get(path, headers=mine).status_code == 403, path
    assert client.delete(f"/v1/agreement/news/token/{lee}", headers=mine).status_code == 403
    assert client.delete(f"/v1/agreement/news/token/{kim}", headers=mine).status_code == 200
    assert vault.get_consent("news", "token", lee).status == "yes"


def test_codes_go_out_through_an_sms_gateway_over_http() -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from vault.notify import SmsGateway

    received: list[tuple[str, str, bytes]] = []
    arrived = threading.Event()

    class Gateway(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Content-Type"], self.headers.get("Authorization", ""), body))
            self.send_response(202)
            self.end_headers()
            arrived.set()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/send"
        settings = parse_config(f"notify:\n  sms_url: {url}\n", "t.yaml",
                                {"TOKENBUNKER_NOTIFY_SMS_AUTH_HEADER": "Authorization: Bearer s3cret"}).notify
        notifier = Notifier(None, SmsGateway(settings))
        notifier.send(Message("+447700900123", "sms", "code", 'Your login code is 123456. "Quoted"'))
        assert arrived.wait(10)
        notifier.close()
    finally:
        server.shutdown()
        server.server_close()
    content_type, auth, body = received[0]
    assert content_type == "application/json" and auth == "Bearer s3cret"
    assert json.loads(body) == {"to": "+447700900123", "text": 'Your login code is 123456. "Quoted"'}
