"""The portal under Flask's test client: an app over the test vault, the outbox file its codes go to, and helpers
to read forms' CSRF tokens and log a person in."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from vault.api import create_app
from vault.config import parse_config
from vault.core import Vault

ROOT = "p" * 32
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
CODE = re.compile(r"\b(\d{6})\b")

MakeApp = Callable[..., Flask]


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox.jsonl"


@pytest.fixture
def make_app(vault: Vault, outbox: Path) -> Iterator[MakeApp]:
    made: list[Flask] = []

    def make(extra: str = "") -> Flask:
        config = parse_config(f"notify:\n  outbox: {outbox}\nportal:\n  title: Acme privacy\n{extra}",
                              "config.yaml", {})
        app = create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT), config=config)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["tokenbunker"].notifier.close()


@pytest.fixture
def app(make_app: MakeApp) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


def sent(app: Flask, outbox: Path) -> list[dict[str, str]]:
    app.extensions["tokenbunker"].notifier.close()  # let the sender thread write what is queued
    return [json.loads(line) for line in outbox.read_text().splitlines()] if outbox.exists() else []


def log_in(client: FlaskClient, app: Flask, outbox: Path, identity: str) -> None:
    page = client.get("/").get_data(as_text=True)
    code_page = client.post("/login", data={"csrf": csrf_of(page), "identity": identity})
    assert code_page.status_code == 200
    found = CODE.search(sent(app, outbox)[-1]["body"])
    assert found is not None
    done = client.post("/login/code", data={"csrf": csrf_of(code_page.get_data(as_text=True)),
                                            "identity": identity, "code": found.group(1)})
    assert done.status_code == 303 and done.headers["Location"].endswith("/me")


def form_post(client: FlaskClient, page_path: str, action: str, data: dict[str, str]):  # type: ignore[no-untyped-def]
    """POST `data` to `action` with the CSRF token of the form on `page_path`, as a browser would."""
    page = client.get(page_path)
    assert page.status_code == 200, page_path
    return client.post(action, data={"csrf": csrf_of(page.get_data(as_text=True)), **data})
