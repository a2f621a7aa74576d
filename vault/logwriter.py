"""The log scrubber's vault on the embedded SQLite database, without SQLAlchemy.

`tokenbunker scrub` is often a short run over one file, so its start-up counts: loading SQLAlchemy and the vault's
models was two thirds of a second before the first line (bench/scrub_bench.py). The scrubber needs one thing of the
vault, a batch of ownerless tokens with their expiry, so on SQLite it gets exactly that on a bare `sqlite3`
connection: the same rows as `Vault.tokenize_with_expiry` (vault.tokenplan makes both), in the same kind of
transaction (BEGIN IMMEDIATE, retried when another writer made the same deterministic token first).

It opens a vault that is set up (the schema at the head revision, the vault secret and the shared data key stored),
or, with `create`, makes a new one where no file is: the schema from `migrations/sqlite_head.sql` (the migrations'
own result, regenerated with `python -m vault.migrate` and checked against them by the tests), then the vault
secret and the shared key as `Vault.open` makes them. Anything else (an older schema to migrate, a file that is not
a vault, a URL with options, PostgreSQL) is `None`, and the caller opens the full vault, which says what is wrong.
"""

from __future__ import annotations

import logging
import random
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.crypto import new_data_key, unwrap_data_key, wrap_data_key
from vault.errors import BadInput, Conflict, Unavailable
from vault.keys import KeyRing, new_vault_secret, open_vault_secret, seal_vault_secret
from vault.schemahead import SCHEMA_HEAD, VAULT_SECRET_META
from vault.tokenplan import (
    BY_LOOKUP_SQL,
    INSERT_COLUMNS,
    SHARED_KEY_ID,
    Existing,
    TokenRequest,
    lookups_of,
    plan,
    split_found,
)

log = logging.getLogger("tokenbunker.migrate")
SNAPSHOT = Path(__file__).parent / "migrations" / "sqlite_head.sql"
_SQLITE_FILE = re.compile(r"^sqlite(?:\+pysqlite)?:///(?P<path>[^?]+)$")
_RETRIES = 6
_IN_CHUNK = 5000  # parameters per IN (...): far below SQLite's limit of 32766
_INSERT = f"INSERT INTO tb_tokens ({', '.join(INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(INSERT_COLUMNS))})"


def sqlite_path(database_url: str) -> str | None:
    """The file of a plain `sqlite:///FILE` URL (no options, not in memory); None for anything else."""
    m = _SQLITE_FILE.match(database_url)
    if m is None or m["path"] == ":memory:":
        return None
    return m["path"]


class EmbeddedTokenizer:
    """tokenize_with_expiry and close, as the scrubber calls them, on one SQLite connection of this thread."""

    def __init__(self, conn: sqlite3.Connection, keyring: KeyRing, shared: AESGCM,
                 clock: Callable[[], float]) -> None:
        self._conn = conn
        self._keyring = keyring
        self._aeads = {SHARED_KEY_ID: shared}
        self._clock = clock

    @classmethod
    def open(cls, database_url: str, master_key: bytes, *, create: bool = False,
             clock: Callable[[], float] = time.time) -> EmbeddedTokenizer | None:
        """The embedded writer, or None when the full vault must open this database (see the module docstring).
        A wrong master key is refused here as the full vault refuses it (WrongKey)."""
        path = sqlite_path(database_url)
        if path is None:
            return None
        if not create and not Path(path).is_file():
            return None
        if create:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # mode=rw(c): a file is made only when asked to; isolation_level=None: transactions begun by hand.
            conn = sqlite3.connect(f"file:{quote(path)}?mode={'rwc' if create else 'rw'}", uri=True, timeout=30,
                                   isolation_level=None)
        except sqlite3.Error:
            return None
        try:
            ready = _setup(conn, master_key, int(clock()) if create else None)
        except BaseException:
            conn.close()
            raise
        if ready is None:
            conn.close()
            return None
        keyring, shared = ready
        return cls(conn, keyring, shared, clock)

    def close(self) -> None:
        self._conn.close()

    def tokenize_with_expiry(self, reqs: Sequence[TokenRequest]) -> list[tuple[str, int | None]]:
        if not reqs:
            return []
        if any(r.subject for r in reqs):
            raise BadInput("the embedded log writer makes ownerless tokens only")
        for attempt in range(_RETRIES):
            try:
                return self._tokenize_once(reqs)
            except sqlite3.IntegrityError:
                # Another writer made the same deterministic token first: the next round finds theirs.
                if attempt == _RETRIES - 1:
                    raise Conflict("could not store the tokens after several attempts; try again") from None
            except sqlite3.Error as exc:
                raise Unavailable(f"database unavailable ({type(exc).__name__})") from None
            time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    def _tokenize_once(self, reqs: Sequence[TokenRequest]) -> list[tuple[str, int | None]]:
        conn = self._conn
        now = int(self._clock())
        lookups = lookups_of(self._keyring, reqs)
        conn.execute("BEGIN IMMEDIATE")
        try:
            existing: Existing = {}
            expired: list[str] = []
            wanted = list({lk for lk in lookups if lk is not None})
            for part in _chunks(wanted):
                split_found(conn.execute(BY_LOOKUP_SQL.format(marks=", ".join("?" * len(part))), part), now,
                            existing, expired)
            expiries: list[int | None] = []
            made = plan(reqs, lookups, [None] * len(reqs), {}, self._aeads, existing, now, expiries)
            for gone in _chunks(expired):
                conn.execute(f"DELETE FROM tb_tokens WHERE token IN ({', '.join('?' * len(gone))})", gone)
            if made.new_rows:
                conn.executemany(_INSERT, made.new_rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return list(zip(made.tokens, expiries, strict=True))


def _setup(conn: sqlite3.Connection, master_key: bytes, create_at: int | None) -> tuple[KeyRing, AESGCM] | None:
    try:
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
            conn.execute(f"PRAGMA {pragma}")
        if create_at is not None and not _create(conn, master_key, create_at):
            return None  # the snapshot is not at this code's head: the full vault migrates
        head = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        if head is None or head[0] != SCHEMA_HEAD:
            return None
        sealed = conn.execute("SELECT value FROM tb_meta WHERE name = ?", (VAULT_SECRET_META,)).fetchone()
        wrapped = conn.execute("SELECT wrapped FROM tb_data_keys WHERE id = ?", (SHARED_KEY_ID,)).fetchone()
    except sqlite3.Error:
        return None  # no such table, not a database...: the full vault says what is wrong
    if sealed is None or wrapped is None:
        return None
    keyring = KeyRing.from_secret(open_vault_secret(master_key, bytes.fromhex(sealed[0])))
    return keyring, unwrap_data_key(keyring.wrap, SHARED_KEY_ID, bytes(wrapped[0]))


def _create(conn: sqlite3.Connection, master_key: bytes, now: int) -> bool:
    """A new vault in an empty database file: schema, vault secret, shared data key, in one transaction; a file that
    holds anything (a vault another process just made, say) is left as it is. False when the snapshot is not at
    this code's head revision (the full vault migrates instead)."""
    header, _, body = SNAPSHOT.read_text(encoding="utf-8").partition("\n")
    if header != f"-- revision {SCHEMA_HEAD}":
        return False
    conn.execute("BEGIN IMMEDIATE")  # another process creating the same file waits here, then finds it made
    try:
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            conn.execute("ROLLBACK")
            return True
        # One statement at a time: executescript would commit the transaction first.
        ddl = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
        for statement in ddl.split(";\n\n"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (SCHEMA_HEAD,))
        secret = new_vault_secret()
        conn.execute("INSERT INTO tb_meta (name, value) VALUES (?, ?)",
                     (VAULT_SECRET_META, seal_vault_secret(master_key, secret).hex()))
        wrap = KeyRing.from_secret(secret).wrap
        conn.execute("INSERT INTO tb_data_keys (id, wrapped, created_at) VALUES (?, ?, ?)",
                     (SHARED_KEY_ID, wrap_data_key(wrap, SHARED_KEY_ID, new_data_key()), now))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    log.info("new database made at schema revision %s", SCHEMA_HEAD)
    return True


def _chunks[T](items: list[T]) -> list[list[T]]:
    return [items[i : i + _IN_CHUNK] for i in range(0, len(items), _IN_CHUNK)]
