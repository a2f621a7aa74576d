"""What every part of the Vault shares: its engine, keys and clock, and how a transaction is run (one per public
method, retried when the database says a retry will do) and audited. vault.core.Vault is this plus one mixin per
area (vault/ops_*.py)."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from vault import apitokens, audit
from vault.datakeys import DataKeys
from vault.db import READ_OPTION, WRITE_OPTION, Transient, db_errors
from vault.errors import Conflict
from vault.keys import KeyRing

_T = TypeVar("_T")
_RETRIES = 6
PIN_IDLE_SECONDS = 10.0


def _busy(exc: DBAPIError) -> bool:
    """SQLite's write lock was held elsewhere (a no-wait BEGIN): the connection itself is fine, keep it."""
    return getattr(exc.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY


class _Pin:
    """A thread's kept connections, and when each last began a transaction (time.monotonic)."""

    __slots__ = ("no_wait", "read", "read_used", "write", "write_used")

    def __init__(self, no_wait: bool = False) -> None:
        self.no_wait = no_wait
        self.write: Connection | None = None
        self.read: Connection | None = None
        self.write_used = 0.0
        self.read_used = 0.0


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
        self._local = threading.local()
        self._pins: set[Connection] = set()
        self._no_wait: set[Connection] = set()  # kept connections with busy_timeout 0 (pin_thread)
        self._pins_lock = threading.Lock()

    def now(self) -> int:
        return int(self._clock())

    def _read(self) -> AbstractContextManager[Connection]:
        return self._transaction(write=False)

    def _write(self) -> AbstractContextManager[Connection]:
        return self._transaction(write=True)

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """A transaction on this thread's kept connection (pin_thread), else on one from the pool."""
        with db_errors():
            pinned = self._pinned(write)
            if pinned is None:
                with (self._writer if write else self._reader).begin() as conn:
                    yield conn
            else:
                with self._on_pinned(pinned):
                    yield pinned

    # -- connections kept by a thread ---------------------------------------------------------------------------

    def pin_thread(self, *, no_wait: bool = False) -> None:
        """Keep this thread's connections (one for writes, one for reads) between its transactions instead of
        taking one from the pool for each: for a thread that does nothing else (the sidecar's writer and readers),
        the checkout, its reset and the pool's bookkeeping cost as much as the statements of a small transaction.
        A connection idle for PIN_IDLE_SECONDS goes back to the pool and the next transaction takes a fresh one (the
        pool's pre-ping then checks it, as it checks every other); an invalidated one is replaced the same way.

        `no_wait` (SQLite): this thread's transactions never wait for a lock; when another writer holds the write
        lock, BEGIN fails at once (Unavailable), and so does a read in the rare moments WAL makes readers wait. For a
        thread that must not block (the sidecar's event loop, which then hands the work to its writer or reader
        thread). Such connections are discarded, never pooled again."""
        self._local.pin = _Pin(no_wait and self.engine.dialect.name == "sqlite")

    def unpin_thread(self) -> None:
        pin: _Pin | None = getattr(self._local, "pin", None)
        self._local.pin = None
        if pin is not None:
            for conn in (pin.write, pin.read):
                if conn is not None:
                    self._drop_pinned(conn)

    def _pinned(self, write: bool) -> Connection | None:
        pin: _Pin | None = getattr(self._local, "pin", None)
        if pin is None:
            return None
        conn = pin.write if write else pin.read
        if conn is not None and conn.in_transaction():
            return None  # a transaction inside another on this thread: a connection of its own, as without pins
        now = time.monotonic()
        last = pin.write_used if write else pin.read_used
        if conn is not None and (conn.closed or conn.invalidated or now - last > PIN_IDLE_SECONDS):
            self._drop_pinned(conn)
            conn = None
        if conn is None:
            conn = (self._writer if write else self._reader).connect()
            with self._pins_lock:
                self._pins.add(conn)
            if pin.no_wait:
                self._no_wait.add(conn)
                conn.connection.driver_connection.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
        if write:
            pin.write, pin.write_used = conn, now
        else:
            pin.read, pin.read_used = conn, now
        return conn

    @contextmanager
    def _on_pinned(self, conn: Connection) -> Iterator[None]:
        """A transaction on a kept connection. When the database fails under it (down, restarted, a broken link), the
        connection is let go: the next transaction takes a fresh one from the pool, which checks it first."""
        try:
            with conn.begin():
                yield
        except DBAPIError as exc:
            if not isinstance(exc, IntegrityError) and not _busy(exc):
                pin: _Pin | None = getattr(self._local, "pin", None)
                if pin is not None:
                    if pin.write is conn:
                        pin.write = None
                    if pin.read is conn:
                        pin.read = None
                self._drop_pinned(conn)
            raise

    def _drop_pinned(self, conn: Connection) -> None:
        with self._pins_lock:
            self._pins.discard(conn)
        try:
            if conn in self._no_wait:
                self._no_wait.discard(conn)
                conn.invalidate()  # its busy_timeout of 0 must not reach another thread through the pool
            conn.close()
        except Exception:  # noqa: BLE001 - a broken connection is being let go anyway
            pass

    def _close_pins(self) -> None:
        with self._pins_lock:
            pins, self._pins = list(self._pins), set()
        for conn in pins:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing the vault: nothing more to do with it
                pass

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
