"""`tokenbunker serve` as operators run it: a real process, a real port, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.helpers import (
    Server,
    cli_env,
    free_port,
    new_master_key,
    run_cli,
    write_config,
)
from vault.core import Vault

StartServer = Callable[[Path, dict[str, str], str], Server]
UNKNOWN_TOKEN = "tbk_" + "a" * 26
OPAQUE = re.compile(r"^tbk_[a-z2-7]{26}$")
EMAIL_TOKEN = re.compile(r"^tbk_[a-z2-7]{20}@token\.invalid$")


def assert_json_error(resp: requests.Response, status: int) -> None:
    assert resp.status_code == status, (resp.status_code, resp.headers.get("Content-Type"), resp.text[:300])
    assert resp.headers.get("Content-Type", "").startswith("application/json"), (
        resp.headers.get("Content-Type"), resp.text[:300])
    body = resp.json()
    assert body["status"] == "error" and isinstance(body["message"], str) and body["message"], body


def ok(resp: requests.Response) -> dict[str, Any]:
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    body: dict[str, Any] = resp.json()
    assert body["status"] == "ok", body
    return body


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


@pytest.fixture
def master_key_hex() -> str:
    return new_master_key()


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    return write_config(tmp_path / "config.yaml", database_url)


@pytest.fixture
def env(master_key_hex: str) -> dict[str, str]:
    return cli_env(TOKENBUNKER_MASTER_KEY=master_key_hex)


# -- the values a journey sends: distinctive, so a hit in the server's output is never a coincidence ---------------


class Plaintexts:
    def __init__(self) -> None:
        self.tag = secrets.token_hex(4)
        self.digits = f"{secrets.randbelow(10_000):04d}"
        self.phone_n = f"{secrets.randbelow(1000):03d}"
        self.sent: set[str] = set()

    def __call__(self, value: str) -> str:
        self.sent.add(value)
        return value


def batch_items(pt: Plaintexts, owner: str) -> list[dict[str, Any]]:
    """100 items of every kind and format; some deterministic ones repeat, some belong to `owner`."""
    t, d = pt.tag, pt.digits
    items: list[dict[str, Any]] = []
    for i in range(100):
        match i % 8:
            case 0:
                items.append({"value": pt(f"det{i % 3}.{t}@example.com"), "kind": "email", "format": "email",
                              "deterministic": True})
            case 1:
                items.append({"value": pt(f"+44 7700 9{d[:2]}{i:03d}"), "kind": "phone", "format": "digits"})
            case 2:
                items.append({"value": pt(f"4000 {d} 0000 {i:04d}"), "kind": "card", "format": "keep-last4"})
            case 3:
                items.append({"value": pt(f"Name{i} {t}"), "kind": "name"})  # format defaults to opaque
            case 4:
                items.append({"value": pt(f"{i} Long Road {t}, Leeds"), "kind": "address", "format": "uuid"})
            case 5:
                items.append({"value": pt(f"198.51.{int(d[:2])}.{(i // 8) % 3}"), "kind": "ip",
                              "format": "opaque", "deterministic": True})
            case 6:
                items.append({"value": pt(f"owned{i}.{t}@example.com"), "kind": "email", "format": "email",
                              "deterministic": True, "subject": owner})
            case _:
                items.append({"value": pt(f"Owned Name{i} {t}"), "kind": "name", "format": "opaque",
                              "subject": owner, "ttl": "30d"})
    return items


def check_token_shapes(items: list[dict[str, Any]], tokens: list[str]) -> None:
    assert len(tokens) == len(items)
    by_key: dict[tuple[str, str, str], str] = {}
    for item, token in zip(items, tokens, strict=True):
        value, fmt = item["value"], item.get("format", "opaque")
        assert token != value
        if item.get("deterministic"):
            key = (item["kind"], fmt, value)
            assert by_key.setdefault(key, token) == token, "a deterministic value got two tokens"
        if fmt == "opaque":
            assert OPAQUE.match(token), token
        elif fmt == "email":
            assert EMAIL_TOKEN.match(token), token
        elif fmt == "uuid":
            assert uuid.UUID(token).version == 4
        else:  # digits, keep-last4: same length, separators where they were
            assert len(token) == len(value)
            assert [c.isdigit() for c in token] == [c.isdigit() for c in value]
            assert [c for c in token if not c.isdigit()] == [c for c in value if not c.isdigit()]
            if fmt == "keep-last4":
                assert token[-4:] == value[-4:]
    deterministic = sum(1 for item in items if item.get("deterministic"))
    assert len(set(tokens)) == len(items) - deterministic + len(by_key), "tokens of different values collided"


# -- the journey --------------------------------------------------------------------------------------------------


def test_serve_journey_restart_and_root_token_rotation(
    start_server: StartServer, config: Path, env: dict[str, str], database_url: str
) -> None:
    pt = Plaintexts()
    servers: list[Server] = []
    outputs: list[str] = []

    # First start: no TOKENBUNKER_ROOT_TOKEN, so one is generated and shown exactly once.
    srv = start_server(config, env, "first")
    servers.append(srv)
    shown = srv.root_tokens_shown()
    assert len(shown) == 1, srv.output()
    root = shown[0]
    assert len(root) >= 16
    assert srv.stdout.count(root) == 1 and root not in srv.stderr

    assert ok(srv.call("GET", "/health", None)) == {"status": "ok"}
    assert ok(srv.call("GET", "/ready", None)) == {"status": "ok"}

    # Missing or wrong token: 401 JSON, and nothing happens.
    intruder = pt(f"intruder.{pt.tag}@example.com")
    guarded: list[tuple[str, str, Any]] = [
        ("POST", "/v1/user", {"email": intruder}),
        ("GET", f"/v1/user/email/{intruder}", None),
        ("POST", "/v1/tokenize", {"items": [{"value": intruder}]}),
        ("POST", "/v1/detokenize", {"tokens": [UNKNOWN_TOKEN]}),
        ("GET", f"/v1/token/{UNKNOWN_TOKEN}", None),
    ]
    for method, path, body in guarded:
        for token in (None, "", "not-the-root-token-at-all", root + "x", root[:-1]):
            assert_json_error(srv.call(method, path, token, body), 401)
    assert_json_error(srv.call("GET", f"/v1/user/email/{intruder}", root), 404)

    # People: a JSON body and a form body.
    email1, phone1, name1 = pt(f"ann.{pt.tag}@example.com"), pt(f"+44 7700 900{pt.phone_n}"), pt(f"Ann {pt.tag}")
    pid1 = ok(srv.call("POST", "/v1/user", root, {"email": email1, "phone": phone1, "name": name1}))["token"]
    assert uuid.UUID(pid1)
    email2, login2, name2 = pt(f"bob.{pt.tag}@example.com"), pt(f"bob{pt.tag}"), pt(f"Bob {pt.tag}")
    form = srv.call("POST", "/v1/user", root, data={"login": login2, "email": email2, "name": name2})
    pid2 = ok(form)["token"]
    assert pid2 != pid1
    assert_json_error(srv.call("POST", "/v1/user", root, {"email": email1}), 409)

    shouted = pt(email1.upper())  # email identities are compared lowercased
    got = ok(srv.call("GET", f"/v1/user/email/{shouted}", root))
    assert got == {"status": "ok", "token": pid1, "data": {"email": email1, "phone": phone1, "name": name1}}
    got = ok(srv.call("GET", f"/v1/user/phone/{pt(phone1.replace(' ', ''))}", root))
    assert got["token"] == pid1
    got = ok(srv.call("GET", f"/v1/user/email/{email2}", root))
    assert got == {"status": "ok", "token": pid2, "data": {"login": login2, "email": email2, "name": name2}}
    assert ok(srv.call("GET", f"/v1/user/login/{login2}", root))["token"] == pid2

    # A JSON merge patch: change one key, delete another (null).
    renamed = pt(f"Anne {pt.tag}")
    assert ok(srv.call("PUT", f"/v1/user/token/{pid1}", root, {"name": renamed, "phone": None})) == {
        "status": "ok", "token": pid1}
    assert ok(srv.call("GET", f"/v1/user/token/{pid1}", root))["data"] == {"email": email1, "name": renamed}
    assert_json_error(srv.call("GET", f"/v1/user/phone/{phone1}", root), 404)

    # A batch of 100 of every kind and format, deterministic ones included.
    items = batch_items(pt, owner=pid1)
    tokens = ok(srv.call("POST", "/v1/tokenize", root, {"items": items}))["tokens"]
    check_token_shapes(items, tokens)
    det = [(item, tok) for item, tok in zip(items, tokens, strict=True) if item.get("deterministic")]
    again = ok(srv.call("POST", "/v1/tokenize", root, {"items": [item for item, _ in det]}))["tokens"]
    assert again == [tok for _, tok in det], "deterministic tokens differ between calls"

    values: list[str | None] = [item["value"] for item in items]
    plain = ok(srv.call("POST", "/v1/detokenize", root, {"tokens": [*tokens, UNKNOWN_TOKEN]}))["values"]
    assert plain == [*values, None]
    masked = ok(srv.call("POST", "/v1/detokenize", root, {"tokens": tokens, "reveal": "masked"}))["values"]
    for item, shown_value in zip(items, masked, strict=True):
        value = item["value"]
        assert isinstance(shown_value, str) and shown_value != value and "*" in shown_value
        if item["kind"] == "email":
            assert shown_value == f"{value[0]}***@example.com"
        elif item["kind"] == "card":
            assert shown_value.endswith(value[-4:]) and value[:-4].strip() not in shown_value
        elif item["kind"] == "name":
            assert shown_value == f"{value[0]}***"
    assert_json_error(srv.call("POST", "/v1/detokenize", root, {"tokens": tokens[:2], "reveal": "all"}), 400)

    # One token's metadata: never its value.
    owned_name = next(i for i, item in enumerate(items) if item.get("ttl"))
    meta_resp = srv.call("GET", f"/v1/token/{tokens[owned_name]}", root)
    meta = ok(meta_resp)
    assert meta["token"] == tokens[owned_name]
    assert (meta["kind"], meta["format"], meta["subject"]) == ("name", "opaque", pid1)
    assert meta["expires"] == meta["created"] + 30 * 86400
    assert abs(meta["created"] - time.time()) < 300
    assert items[owned_name]["value"] not in meta_resp.text
    unowned_ip = next(i for i, item in enumerate(items) if item["kind"] == "ip")
    assert ok(srv.call("GET", f"/v1/token/{tokens[unowned_ip]}", root))["subject"] is None
    assert_json_error(srv.call("GET", f"/v1/token/{UNKNOWN_TOKEN}", root), 404)

    # Deleting one token.
    doomed = next(i for i, item in enumerate(items) if item["kind"] == "address")
    assert ok(srv.call("DELETE", f"/v1/token/{tokens[doomed]}", root)) == {"status": "ok", "result": "done"}
    assert_json_error(srv.call("GET", f"/v1/token/{tokens[doomed]}", root), 404)
    values[doomed] = None

    # Forget-me: the person's tokens reveal nothing any more; the others still do.
    assert ok(srv.call("DELETE", f"/v1/user/email/{email1}", root)) == {"status": "ok", "result": "done"}
    assert_json_error(srv.call("GET", f"/v1/user/token/{pid1}", root), 404)
    after = ok(srv.call("POST", "/v1/detokenize", root, {"tokens": tokens}))["values"]
    owned = [item.get("subject") == pid1 for item in items]
    assert any(owned)
    assert after == [None if mine else value for mine, value in zip(owned, values, strict=True)]
    assert_json_error(srv.call("GET", f"/v1/token/{tokens[owned_name]}", root), 404)

    # Restart with the same key: no new root token, the old one still works, the data is still there.
    assert srv.stop() == 0, srv.output()
    assert "tokenbunker: stopped" in srv.stdout
    srv = start_server(config, env, "second")
    servers.append(srv)
    assert srv.root_tokens_shown() == [], srv.output()
    assert root not in srv.stdout
    assert "generated earlier" in srv.stdout
    assert ok(srv.call("GET", f"/v1/user/email/{email2}", root))["token"] == pid2
    assert ok(srv.call("POST", "/v1/detokenize", root, {"tokens": tokens}))["values"] == after
    shared = [(item, tok) for item, tok in det if "subject" not in item]
    assert ok(srv.call("POST", "/v1/tokenize", root, {"items": [item for item, _ in shared]}))["tokens"] == [
        tok for _, tok in shared]

    # `root-token rotate`: a new token, shown once on stdout; after a restart it works and the old one does not.
    rotated = run_cli("root-token", "rotate", "--config", str(config), env=env)
    outputs += [rotated.stdout, rotated.stderr]
    assert rotated.returncode == 0, rotated.stderr
    no_traceback(rotated.stdout, rotated.stderr)
    new_root = rotated.stdout.strip()
    assert "\n" not in new_root and len(new_root) >= 16 and new_root != root
    assert srv.stop() == 0, srv.output()
    srv = start_server(config, env, "third")
    servers.append(srv)
    assert srv.root_tokens_shown() == [], srv.output()
    assert new_root not in srv.stdout
    assert ok(srv.call("GET", f"/v1/user/email/{email2}", new_root))["token"] == pid2
    assert_json_error(srv.call("GET", f"/v1/user/email/{email2}", root), 401)
    assert_json_error(srv.call("POST", "/v1/tokenize", root, {"items": [{"value": "x"}]}), 401)
    assert srv.stop() == 0, srv.output()

    # Nothing that was sent in plain ever shows up in what the processes printed.
    outputs += [s.stdout + s.stderr for s in servers]
    everything = "\n".join(outputs)
    no_traceback(everything)
    leaked = sorted(v for v in pt.sent if v in everything)
    assert not leaked, f"plaintext values in the server output: {len(leaked)} of {len(pt.sent)}"
    assert new_root not in "\n".join(s.stdout + s.stderr for s in servers)


# -- refusing to start --------------------------------------------------------------------------------------------


def test_wrong_master_key_refuses_to_start(config: Path, database_url: str, master_key_hex: str) -> None:
    Vault.open(database_url, bytes.fromhex(master_key_hex)).close()  # the vault is made with this key
    other = new_master_key()
    began = time.monotonic()
    result = run_cli("serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}",
                     env=cli_env(TOKENBUNKER_MASTER_KEY=other), timeout=30)
    elapsed = time.monotonic() - began
    assert result.returncode != 0, result.stdout + result.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s to refuse"
    no_traceback(result.stdout, result.stderr)
    mentions = [line for line in result.stderr.splitlines() if "master key" in line]
    assert len(mentions) == 1, result.stderr
    assert other not in result.stdout + result.stderr and master_key_hex not in result.stdout + result.stderr
    assert "root token" not in result.stdout
    # Nothing was damaged: the right key still opens the vault.
    Vault.open(database_url, bytes.fromhex(master_key_hex)).close()


def test_missing_master_key_is_a_clear_error(config: Path) -> None:
    result = run_cli("serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}",
                     env=cli_env(), timeout=30)
    assert result.returncode != 0, result.stdout + result.stderr
    no_traceback(result.stdout, result.stderr)
    assert "TOKENBUNKER_MASTER_KEY" in result.stderr, result.stderr
    assert "root token" not in result.stdout


def test_bad_config_names_file_and_line(tmp_path: Path, database_url: str, env: dict[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"vault:\n  database_url: {json.dumps(database_url)}\n  no_such_key: true\n", encoding="utf-8")
    result = run_cli("serve", "--config", str(bad), "--listen", f"127.0.0.1:{free_port()}", env=env, timeout=30)
    assert result.returncode != 0, result.stdout + result.stderr
    no_traceback(result.stdout, result.stderr)
    assert f"{bad}:3:" in result.stderr, result.stderr
    assert "no_such_key" in result.stderr


# -- stopping -----------------------------------------------------------------------------------------------------


def test_sigterm_stops_cleanly(start_server: StartServer, config: Path, env: dict[str, str]) -> None:
    srv = start_server(config, env, "sigterm")
    root = srv.root_tokens_shown()[0]
    ok(srv.call("POST", "/v1/tokenize", root, {"items": [{"value": "something"}]}))
    began = time.monotonic()
    assert srv.stop() == 0, srv.output()  # stop() fails the test after 5 s
    assert time.monotonic() - began < 5
    assert "tokenbunker: stopped" in srv.stdout
    no_traceback(srv.stdout, srv.stderr)


# -- limits and bad bodies ----------------------------------------------------------------------------------------

SMALL_BODY = 32768


@pytest.fixture
def limited(start_server: StartServer, tmp_path: Path, database_url: str, env: dict[str, str]) -> Iterator[
    tuple[Server, str]
]:
    config = write_config(tmp_path / "limited.yaml", database_url, api={"max_body_bytes": SMALL_BODY})
    srv = start_server(config, env, "limited")
    yield srv, srv.root_tokens_shown()[0]
    assert srv.stop() == 0, srv.output()
    no_traceback(srv.stdout, srv.stderr)


def test_oversized_body_is_413_json(limited: tuple[Server, str]) -> None:
    srv, root = limited
    big = {"items": [{"value": "x" * (SMALL_BODY + 1000)}]}
    assert_json_error(srv.call("POST", "/v1/tokenize", root, big), 413)
    assert_json_error(srv.call("POST", "/v1/user", root, {"email": "a@example.com", "pad": "x" * SMALL_BODY}), 413)
    chunks = (b'{"items": [{"value": "' + b"x" * 4096 if i == 0 else b"x" * 4096 for i in range(10))
    chunked = srv.call("POST", "/v1/tokenize", root, data=chunks, headers={"Content-Type": "application/json"})
    assert_json_error(chunked, 413)
    assert ok(srv.call("GET", "/health", None))


def test_batch_limit_and_malformed_bodies(limited: tuple[Server, str]) -> None:
    srv, root = limited
    just = ok(srv.call("POST", "/v1/tokenize", root, {"items": [{"value": "v"}] * 1000}))["tokens"]
    assert len(just) == 1000
    assert_json_error(srv.call("POST", "/v1/tokenize", root, {"items": [{"value": "v"}] * 1001}), 413)
    assert_json_error(srv.call("POST", "/v1/detokenize", root, {"tokens": ["t"] * 1001}), 413)

    as_json = {"Content-Type": "application/json"}
    for method, path in (("POST", "/v1/tokenize"), ("POST", "/v1/detokenize"), ("POST", "/v1/user"),
                         ("PUT", f"/v1/user/token/{uuid.uuid4()}")):
        for raw in (b'{"items": [', b"{bad json}", b"\xff\xfe", b""):
            assert_json_error(srv.call(method, path, root, data=raw, headers=as_json), 400)
    assert_json_error(srv.call("POST", "/v1/tokenize", root, [1, 2]), 400)
    assert_json_error(srv.call("POST", "/v1/tokenize", root, {"items": "nope"}), 400)
    assert_json_error(srv.call("POST", "/v1/tokenize", root, {"items": [{"value": ""}]}), 400)
    assert ok(srv.call("GET", "/ready", None)) == {"status": "ok"}
