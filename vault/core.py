"""The vault as a library: open it with a master key, then tokenize, reveal, and keep people's records.

Each public method is one transaction. Flask, mitmproxy and the CLI are thin layers over this class.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from vault import people, tokens
from vault.datakeys import SHARED_KEY_ID, DataKeys
from vault.db import WRITE_OPTION, make_engine
from vault.errors import Conflict, Unavailable, WrongKey
from vault.keys import KeyRing, new_vault_secret, open_vault_secret, seal_vault_secret
from vault.migrate import migrate
from vault.models import data_keys_table, meta_table
from vault.tokens import TokenInfo, TokenRequest

_T = TypeVar("_T")
_VAULT_SECRET = "vault_secret"
_RETRIES = 6


class Vault:
    def __init__(
        self,
        engine: Engine,
        keyring: KeyRing,
        *,
        default_country: str = "GB",
        data_key_cache: int = 10000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.keyring = keyring
        self.default_country = default_country
        self.keys = DataKeys(keyring, data_key_cache)
        self._clock = clock
        self._writer = engine.execution_options(**{WRITE_OPTION: True})

    @classmethod
    def open(
        cls,
        database_url: str,
        master_key: bytes,
        *,
        auto_migrate: bool = True,
        pool_size: int = 5,
        default_country: str = "GB",
        data_key_cache: int = 10000,
        clock: Callable[[], float] = time.time,
    ) -> Vault:
        engine = make_engine(database_url, pool_size)
        try:
            if auto_migrate:
                with _db_errors():
                    migrate(engine)
            vault = cls(
                engine,
                KeyRing.from_secret(_unlock(engine, master_key)),
                default_country=default_country,
                data_key_cache=data_key_cache,
                clock=clock,
            )
            with vault._write() as conn:
                vault.keys.ensure_shared(conn, vault.now())
        except BaseException:
            engine.dispose()
            raise
        return vault

    def close(self) -> None:
        self.engine.dispose()

    def now(self) -> int:
        return int(self._clock())

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with _db_errors(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with _db_errors(), self._writer.begin() as conn:
            yield conn

    def _run_write(self, work: Callable[[Connection], _T], *, retry_integrity: bool = False) -> _T:
        """One write transaction, run again when the database says a retry will do (deadlock, serialization)."""
        for attempt in range(_RETRIES):
            try:
                with self._write() as conn:
                    return work(conn)
            except IntegrityError:
                if not retry_integrity:
                    raise
                if attempt == _RETRIES - 1:
                    raise Conflict("could not store the tokens after several attempts; try again") from None
            except _Transient:
                if attempt == _RETRIES - 1:
                    raise
            time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    # -- start-up ---------------------------------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except DBAPIError:
            return False

    def get_meta(self, name: str) -> str | None:
        with self._read() as conn:
            return conn.execute(select(meta_table.c.value).where(meta_table.c.name == name)).scalar()

    def set_meta_once(self, name: str, value: str) -> bool:
        """Store a fact if it is not there yet; False when another process stored one first."""
        try:
            with self._write() as conn:
                if conn.execute(select(meta_table.c.name).where(meta_table.c.name == name)).first():
                    return False
                conn.execute(insert(meta_table).values(name=name, value=value))
                return True
        except IntegrityError:
            return False

    def replace_meta(self, name: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(delete(meta_table).where(meta_table.c.name == name))
            conn.execute(insert(meta_table).values(name=name, value=value))

    # -- tokens -----------------------------------------------------------------------------------------------

    def tokenize(self, reqs: Sequence[TokenRequest]) -> list[str]:
        if not reqs:
            return []
        # An integrity error here means another writer made the same deterministic token first (or a short
        # digits token collided): the next round finds theirs, or draws again.
        return self._run_write(
            lambda conn: tokens.tokenize(conn, self.keyring, self.keys, reqs, self.now()), retry_integrity=True
        )

    def detokenize(self, token_list: Sequence[str], reveal: str = "plain", purpose: str | None = None) -> list[
        str | None
    ]:
        if not token_list:
            return []
        with self._read() as conn:
            # Consents (agreements) come with the privacy-rights API; until a purpose can be consented to,
            # nothing is revealed under one: fail closed.
            allowed: dict[str, bool] | None = {} if purpose is not None else None
            return tokens.detokenize(conn, self.keys, token_list, reveal, self.now(), allowed)

    def token_info(self, token: str) -> TokenInfo:
        with self._read() as conn:
            return tokens.token_info(conn, token, self.now())

    def delete_token(self, token: str) -> None:
        with self._write() as conn:
            tokens.delete_token(conn, token)

    def purge_expired(self) -> int:
        with self._write() as conn:
            return tokens.purge_expired(conn, self.now())

    # -- people -----------------------------------------------------------------------------------------------

    def create_person(self, profile: Any) -> str:
        try:
            return self._run_write(
                lambda conn: people.create(conn, self.keyring, self.keys, profile, self.default_country, self.now())
            )
        except IntegrityError:
            raise Conflict("duplicate index") from None

    def get_person(self, mode: str, ident: str) -> tuple[str, dict[str, Any]]:
        with self._read() as conn:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            return ref.id, people.read(conn, self.keys, ref)

    def update_person(self, mode: str, ident: str, change: Any) -> str:
        def work(conn: Connection) -> str:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            people.change(conn, self.keyring, self.keys, ref, change, self.default_country, self.now())
            return ref.id

        try:
            return self._run_write(work)
        except IntegrityError:
            raise Conflict("duplicate index") from None

    def forget_person(self, mode: str, ident: str) -> str:
        def work(conn: Connection) -> str:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            people.forget(conn, self.keys, ref, self.now())
            return ref.id

        return self._run_write(work)


class _Transient(Unavailable):
    """A deadlock or serialization failure: the transaction was rolled back and may simply be run again."""


_TRANSIENT_SQLSTATES = {"40001", "40P01"}


def _unlock(engine: Engine, master_key: bytes) -> bytes:
    """The vault secret, opened with the master key; made and sealed on the first start of an empty vault."""
    with _db_errors(), engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        sealed = conn.execute(select(meta_table.c.value).where(meta_table.c.name == _VAULT_SECRET)).scalar()
        if sealed is not None:
            return open_vault_secret(master_key, bytes.fromhex(sealed))
        if conn.execute(select(func.count()).select_from(data_keys_table)).scalar():
            raise WrongKey("this vault holds data keys but no sealed vault secret; refusing to guess")
        secret = new_vault_secret()
        conn.execute(
            insert(meta_table).values(name=_VAULT_SECRET, value=seal_vault_secret(master_key, secret).hex())
        )
        return secret


def rotate_master_key(database_url: str, old_key: bytes, new_key: bytes) -> None:
    """Re-seal the vault secret under a new master key. Data keys, lookup hashes and tokens stay as they are;
    running servers keep working, and need the new key when they next start."""
    engine = make_engine(database_url)
    try:
        with _db_errors(), engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
            sealed = conn.execute(select(meta_table.c.value).where(meta_table.c.name == _VAULT_SECRET)).scalar()
            if sealed is None:
                raise WrongKey("this vault has no sealed vault secret yet: start it once before rotating")
            secret = open_vault_secret(old_key, bytes.fromhex(sealed))
            conn.execute(
                update(meta_table)
                .where(meta_table.c.name == _VAULT_SECRET)
                .values(value=seal_vault_secret(new_key, secret).hex())
            )
    finally:
        engine.dispose()


@contextmanager
def _db_errors() -> Iterator[None]:
    """A database that is down or locked is the client's 503, never a stack trace; integrity errors go up."""
    try:
        yield
    except IntegrityError:
        raise
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) in _TRANSIENT_SQLSTATES:
            raise _Transient("database busy (concurrent writers); try again") from None
        raise Unavailable(f"database unavailable ({type(exc.orig).__name__})") from None


__all__ = ["SHARED_KEY_ID", "Vault"]
