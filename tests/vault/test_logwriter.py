"""vault.logwriter: the scrubber's SQLAlchemy-free writer makes the same tokens as the full vault, in its database."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import Clock
from vault.core import Vault
from vault.errors import BadInput, WrongKey
from vault.logwriter import EmbeddedTokenizer, sqlite_path
from vault.tokens import TokenRequest

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def _sqlite(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to look inside the file: committed and closed after (sqlite3's own `with` only commits)."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def ip(value: str, ttl: int | None = 3600, deterministic: bool = True) -> TokenRequest:
    return TokenRequest(value, kind="ip", deterministic=deterministic, ttl=ttl)


@pytest.fixture
def url(tmp_path: Path, master_key: bytes, clock: Clock) -> str:
    """A SQLite vault that a full vault has opened once (schema, vault secret, shared key)."""
    url = f"sqlite:///{tmp_path / 'v.db'}"
    Vault.open(url, master_key, clock=clock).close()
    return url


def test_sqlite_path() -> None:
    assert sqlite_path("sqlite:////var/lib/tb/v.db") == "/var/lib/tb/v.db"
    assert sqlite_path("sqlite:///rel/v.db") == "rel/v.db"
    assert sqlite_path("sqlite+pysqlite:////a.db") == "/a.db"
    for other in ("sqlite:///:memory:", "sqlite://", "sqlite:////a.db?mode=ro", "postgresql://u@h/db"):
        assert sqlite_path(other) is None


def test_same_tokens_as_the_full_vault(url: str, master_key: bytes, clock: Clock) -> None:
    writer = EmbeddedTokenizer.open(url, master_key, clock=clock)
    assert writer is not None
    made = writer.tokenize_with_expiry([ip("203.0.113.5"), ip("2001:db8::5"), ip("203.0.113.5"),
                                        ip("198.51.100.7", ttl=None, deterministic=False)])
    now = int(clock())
    assert made[0] == made[2] and made[0][1] == now + 3600
    assert made[3][1] is None
    writer.close()
    vault = Vault.open(url, master_key, clock=clock)
    try:
        tokens = [t for t, _ in made]
        assert vault.detokenize(tokens) == ["203.0.113.5", "2001:db8::5", "203.0.113.5", "198.51.100.7"]
        # Deterministic both ways: the full vault finds the writer's token, and the writer finds the vault's.
        assert vault.tokenize_with_expiry([ip("2001:db8::5")]) == [made[1]]
        (theirs, _), = vault.tokenize_with_expiry([ip("192.0.2.99")])
    finally:
        vault.close()
    writer = EmbeddedTokenizer.open(url, master_key, clock=clock)
    assert writer is not None
    assert writer.tokenize_with_expiry([ip("192.0.2.99")])[0][0] == theirs
    writer.close()


def test_an_expired_token_is_replaced_and_gone(url: str, master_key: bytes, clock: Clock) -> None:
    writer = EmbeddedTokenizer.open(url, master_key, clock=clock)
    assert writer is not None
    (old, expires), = writer.tokenize_with_expiry([ip("203.0.113.5", ttl=60)])
    clock.advance(61)
    (new, _), = writer.tokenize_with_expiry([ip("203.0.113.5", ttl=60)])
    writer.close()
    assert new != old
    with _sqlite(sqlite_path(url)) as conn:  # type: ignore[arg-type]
        assert conn.execute("SELECT count(*) FROM tb_tokens WHERE token = ?", (old,)).fetchone() == (0,)
        row = conn.execute("SELECT value, owner_id, data_key_id FROM tb_tokens WHERE token = ?", (new,)).fetchone()
    assert b"203.0.113.5" not in row[0] and row[1:] == (None, "shared")  # sealed, ownerless, the shared key


def test_not_for_databases_the_full_vault_must_open(tmp_path: Path, master_key: bytes) -> None:
    missing = tmp_path / "new.db"
    assert EmbeddedTokenizer.open(f"sqlite:///{missing}", master_key) is None
    assert not missing.exists()  # never created here
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert EmbeddedTokenizer.open(f"sqlite:///{empty}", master_key) is None
    old = tmp_path / "old.db"
    Vault.open(f"sqlite:///{old}", master_key).close()
    with _sqlite(old) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    assert EmbeddedTokenizer.open(f"sqlite:///{old}", master_key) is None
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    assert EmbeddedTokenizer.open(f"sqlite:///{garbage}", master_key) is None
    assert EmbeddedTokenizer.open("postgresql://postgres@127.0.0.1/test", master_key) is None


def test_a_wrong_key_is_refused(url: str) -> None:
    with pytest.raises(WrongKey):
        EmbeddedTokenizer.open(url, b"\x01" * 32)


def test_ownerless_only(url: str, master_key: bytes) -> None:
    writer = EmbeddedTokenizer.open(url, master_key)
    assert writer is not None
    with pytest.raises(BadInput):
        writer.tokenize_with_expiry([TokenRequest("x", subject="00000000-0000-0000-0000-000000000000")])
    writer.close()


def test_racing_writers_agree_on_each_token(url: str, master_key: bytes) -> None:
    values = [f"10.0.{i // 250}.{i % 250}" for i in range(2000)]
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run(order: list[str]) -> None:
        try:
            writer = EmbeddedTokenizer.open(url, master_key)
            assert writer is not None
            got = {}
            for start in range(0, len(order), 100):
                batch = order[start : start + 100]
                got.update(zip(batch, (t for t, _ in writer.tokenize_with_expiry([ip(v) for v in batch])),
                               strict=True))
            writer.close()
            results.append([got[v] for v in values])
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(values[::step],)) for step in (1, -1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results[0] == results[1]
    with _sqlite(sqlite_path(url)) as conn:  # type: ignore[arg-type]
        assert conn.execute("SELECT count(*) FROM tb_tokens").fetchone() == (len(values),)


def test_scrub_starts_without_sqlalchemy_on_a_vault_set_up(url: str, master_key: bytes, tmp_path: Path) -> None:
    """The point of the writer: `tokenbunker scrub` on an embedded vault that exists loads no SQLAlchemy."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nlogs:\n  - {detect: [ipv4], action: tokenize, kind: ip, deterministic: true}\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"vault:\n  database_url: {url}\nscrub:\n  rules: [{rules}]\n")
    code = ("import sys, tokenbunker_cli\n"
            "code = tokenbunker_cli.main(['scrub', '--config', sys.argv[1]])\n"
            "print('sqlalchemy' in sys.modules, file=sys.stderr)\n"
            "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(config)], input=b"from 203.0.113.5\n", capture_output=True,
                          cwd=REPO, env={"TOKENBUNKER_MASTER_KEY": master_key.hex(), "PATH": "/usr/bin:/bin"},
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode().strip().splitlines()[-1] == "False"
    assert b"203.0.113.5" not in proc.stdout and proc.stdout.startswith(b"from tbk_")
    vault = Vault.open(url, master_key)
    try:
        assert vault.detokenize([proc.stdout.split()[1].decode()]) == ["203.0.113.5"]
    finally:
        vault.close()


def test_the_snapshot_is_what_the_migrations_make(tmp_path: Path) -> None:
    """vault/migrations/sqlite_head.sql is regenerated by `python -m vault.migrate` after a new migration."""
    from vault.db import make_engine
    from vault.migrate import SQLITE_SNAPSHOT, migrate, sqlite_snapshot

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        migrate(engine)
        assert sqlite_snapshot(engine) == SQLITE_SNAPSHOT.read_text(encoding="utf-8"), (
            "vault/migrations/sqlite_head.sql is stale: run `.venv/bin/python -m vault.migrate`")
    finally:
        engine.dispose()


def _schema(path: Path) -> list[tuple[str, str, str | None]]:
    with _sqlite(path) as conn:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY rowid").fetchall()


def test_a_new_vault_made_here_is_the_full_vaults(tmp_path: Path, master_key: bytes, clock: Clock) -> None:
    made = tmp_path / "sub" / "made.db"
    writer = EmbeddedTokenizer.open(f"sqlite:///{made}", master_key, create=True, clock=clock)
    assert writer is not None
    (token, _), = writer.tokenize_with_expiry([ip("203.0.113.5")])
    writer.close()
    migrated = tmp_path / "migrated.db"
    Vault.open(f"sqlite:///{migrated}", master_key).close()
    assert _schema(made) == _schema(migrated)
    vault = Vault.open(f"sqlite:///{made}", master_key, clock=clock)  # nothing to migrate, the key opens it
    try:
        assert vault.detokenize([token]) == ["203.0.113.5"]
        assert vault.tokenize_with_expiry([ip("203.0.113.5")])[0][0] == token
    finally:
        vault.close()
    with pytest.raises(WrongKey):
        EmbeddedTokenizer.open(f"sqlite:///{made}", b"\x02" * 32)


def test_processes_making_the_same_new_vault_share_it(tmp_path: Path, master_key: bytes) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    got: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            writer = EmbeddedTokenizer.open(url, master_key, create=True)
            assert writer is not None
            got.append(writer.tokenize_with_expiry([ip("203.0.113.5")])[0][0])
            writer.close()
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(got)) == 1
    with _sqlite(tmp_path / "race.db") as conn:
        assert conn.execute("SELECT count(*) FROM tb_meta").fetchone() == (1,)


def test_create_leaves_other_databases_to_the_full_vault(tmp_path: Path, master_key: bytes) -> None:
    old = tmp_path / "old.db"
    Vault.open(f"sqlite:///{old}", master_key).close()
    with _sqlite(old) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    before = _schema(old)
    assert EmbeddedTokenizer.open(f"sqlite:///{old}", master_key, create=True) is None
    assert _schema(old) == before
    other = tmp_path / "other.db"
    with _sqlite(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert EmbeddedTokenizer.open(f"sqlite:///{other}", master_key, create=True) is None
    assert [row[1] for row in _schema(other)] == ["t"]
