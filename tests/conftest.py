"""Shared fixtures. `--db=sqlite,postgresql` runs every database-backed test on each backend."""

from __future__ import annotations

import os
import secrets
import urllib.parse
from collections.abc import Iterator

import psycopg
import pytest

from vault.core import Vault

PG_URL = os.environ.get("TOKENBUNKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--db", default="sqlite", help="comma-separated backends to test: sqlite, postgresql")


def selected_backends(config: pytest.Config) -> list[str]:
    chosen = [b.strip() for b in config.getoption("--db").split(",") if b.strip()]
    unknown = set(chosen) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"--db: unknown backend(s) {sorted(unknown)}; use {', '.join(BACKENDS)}")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = selected_backends(metafunc.config)
        if "pg_only" in metafunc.definition.keywords:
            backends = [b for b in backends if b == "postgresql"] or ["postgresql"]
        if "sqlite_only" in metafunc.definition.keywords:
            backends = ["sqlite"]
        metafunc.parametrize("backend", backends, scope="session")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pg_only: the test needs PostgreSQL (runs on it whatever --db says)")
    config.addinivalue_line("markers", "sqlite_only: the test is about SQLite (runs on it whatever --db says)")


def _plain_pg(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of our own for this test session, dropped at the end."""
    name = f"tb_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        admin = psycopg.connect(_plain_pg(PG_URL), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({type(exc).__name__}); start it or set "
                    "TOKENBUNKER_TEST_PG_URL", pytrace=False)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(_plain_pg(PG_URL), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(backend: str, tmp_path, request: pytest.FixtureRequest) -> str:  # type: ignore[no-untyped-def]
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'vault.db'}"
    db_url = request.getfixturevalue("pg_database")
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(_plain_pg(db_url), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    # Every connection of this test sees only its own schema, so tests never share rows.
    return f"{db_url}?options={urllib.parse.quote('-csearch_path=' + schema)}"


class Clock:
    """A clock the tests move by hand (ttl, expiry)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def master_key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def vault(database_url: str, master_key: bytes, clock: Clock) -> Iterator[Vault]:
    v = Vault.open(database_url, master_key, clock=clock)
    yield v
    v.close()
