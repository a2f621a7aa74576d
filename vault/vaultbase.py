"""What every part of the Vault shares: its engine, keys and clock, and how a transaction is run (one per public
method, retried when the database says a retry will do) and audited. vault.core.Vault is this plus one mixin per
area (vault/ops_*.py)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from vault import apitokens, audit
from vault.datakeys import DataKeys
from vault.db import READ_OPTION, WRITE_OPTION, Transient, db_errors
from vault.errors import Conflict
from vault.keys import KeyRing

_T = TypeVar("_T")
_RETRIES = 6


class VaultBase:
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
        self._reader = engine.execution_options(**{READ_OPTION: True})
        self._grants: dict[bytes, tuple[apitokens.Grant | None, float]] = {}

    def now(self) -> int:
        return int(self._clock())

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with db_errors(), self._reader.begin() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with db_errors(), self._writer.begin() as conn:
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
            except Transient:
                if attempt == _RETRIES - 1:
                    raise
            time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    def _audit(self, conn: Connection, rows: Sequence[audit.Event]) -> None:
        audit.record_many(conn, self.keyring, self.keys, rows, self.now())

    if TYPE_CHECKING:  # what the areas call of one another; vault.core.Vault defines them
        def update_person(self, mode: str, ident: str, change: Any, *, by: str = ...) -> str: ...
        def forget_person(self, mode: str, ident: str, *, by: str = ...) -> str: ...
        def withdraw_consent(self, brief: str, mode: str, ident: str, *, by: str = ...,
                             modified_by: str | None = ...) -> str | None: ...
