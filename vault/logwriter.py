"""The log scrubber's vault on the embedded SQLite database, without SQLAlchemy.

`tokenbunker scrub` is often a short run over one file, so its start-up counts: loading SQLAlchemy and the vault's
models was two thirds of a second before the first line (bench/scrub_bench.py). The scrubber needs one thing of the
vault, a batch of ownerless tokens with their expiry, so on SQLite it gets exactly that on a bare `sqlite3`
connection: the same rows as `Vault.tokenize_with_expiry` (vault.tokenplan makes both), in the same kind of
transaction (BEGIN IMMEDIATE, retried when another writer made the same deterministic token first).

It only ever opens a vault that a full one has set up: the schema at the head revision, the vault secret and the
shared data key stored. Anything else (a new file, an older schema, a URL with options) is `None`, and the caller
opens the full vault, which migrates and sets up as usual.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.crypto import unwrap_data_key
from vault.errors import BadInput, Conflict, Unavailable
from vault.keys import KeyRing, open_vault_secret
from vault.schemahead import SCHEMA_HEAD, VAULT_SECRET_META
from vault.tokenplan import INSERT_COLUMNS, SHARED_KEY_ID, Existing, TokenRequest, lookups_of, plan

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
    def open(cls, database_url: str, master_key: bytes,
             clock: Callable[[], float] = time.time) -> EmbeddedTokenizer | None:
        """The embedded writer, or None when the full vault must open this database (see the module docstring).
        A wrong master key is refused here as the full vault refuses it (WrongKey)."""
        path = sqlite_path(database_url)
        if path is None or not Path(path).is_file():
            return None
        try:
            # mode=rw: never create a file here; isolation_level=None: transactions are begun by hand, as vault.db.
            conn = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=30, isolation_level=None)
        except sqlite3.Error:
            return None
        try:
            ready = _setup(conn, master_key)
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
                rows = conn.execute("SELECT token, lookup, expires_at, owner_id FROM tb_tokens WHERE lookup IN "
                                    f"({', '.join('?' * len(part))})", part)
                for token, lookup, expires_at, owner_id in rows:
                    if expires_at is not None and expires_at <= now:
                        expired.append(token)  # its value is gone; the value gets a new token below
                    else:
                        existing[lookup] = (token, owner_id, expires_at)
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


def _setup(conn: sqlite3.Connection, master_key: bytes) -> tuple[KeyRing, AESGCM] | None:
    try:
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
            conn.execute(f"PRAGMA {pragma}")
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


def _chunks[T](items: list[T]) -> list[list[T]]:
    return [items[i : i + _IN_CHUNK] for i in range(0, len(items), _IN_CHUNK)]
