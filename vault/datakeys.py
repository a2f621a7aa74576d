"""Per-person data keys: created, unwrapped on demand, cached in memory, destroyed on forget-me."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import IntegrityError

from vault import rawsql
from vault.crypto import new_data_key, unwrap_data_key, wrap_data_key
from vault.keys import KeyRing
from vault.models import data_keys_table as dk
from vault.tokenplan import SHARED_KEY_ID  # noqa: F401  (defined with the token rows; imported from here too)


class DataKeys:
    """Unwrapped keys are kept in a bounded LRU so the hot path does not unwrap on every batch."""

    def __init__(self, keyring: KeyRing, capacity: int) -> None:
        self._keyring = keyring
        self._capacity = capacity
        self._cache: OrderedDict[str, AESGCM] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, conn: Connection, ids: set[str]) -> dict[str, AESGCM]:
        """The keys that still exist; a destroyed key is simply absent."""
        found: dict[str, AESGCM] = {}
        with self._lock:
            for key_id in ids:
                aead = self._cache.get(key_id)
                if aead is not None:
                    self._cache.move_to_end(key_id)
                    found[key_id] = aead
        missing = ids - found.keys()
        if missing:
            rows = conn.execute(select(dk.c.id, dk.c.wrapped).where(dk.c.id.in_(missing))).all()
            for key_id, wrapped in rows:
                found[key_id] = unwrap_data_key(self._keyring.wrap, key_id, wrapped)
                self._remember(key_id, found[key_id])
        return found

    def create(self, conn: Connection, now: int, key_id: str | None = None) -> tuple[str, AESGCM]:
        key_id = key_id or str(uuid.uuid4())
        raw = new_data_key()
        conn.execute(
            insert(dk).values(id=key_id, wrapped=wrap_data_key(self._keyring.wrap, key_id, raw), created_at=now)
        )
        aead = AESGCM(raw)
        self._remember(key_id, aead)
        return key_id, aead

    def create_many(self, conn: Connection, count: int, now: int) -> list[tuple[str, AESGCM]]:
        """`count` new data keys in one executemany (a group of flows that bring new people)."""
        made = [(str(uuid.uuid4()), new_data_key()) for _ in range(count)]
        # The driver's cursor (vault/rawsql.py): the sidecar makes one of these for every new person.
        rawsql.executemany(conn, f"INSERT INTO {dk.name} (id, wrapped, created_at) VALUES ({rawsql.marks(conn, 3)})",
                           [(key_id, wrap_data_key(self._keyring.wrap, key_id, raw), now) for key_id, raw in made])
        out = [(key_id, AESGCM(raw)) for key_id, raw in made]
        for key_id, aead in out:
            self._remember(key_id, aead)
        return out

    def ensure_shared(self, conn: Connection, now: int) -> None:
        if conn.execute(select(dk.c.id).where(dk.c.id == SHARED_KEY_ID)).first() is None:
            try:
                with conn.begin_nested():
                    self.create(conn, now, SHARED_KEY_ID)
            except IntegrityError:
                self.drop(SHARED_KEY_ID)  # another process made it first; use theirs

    def destroy(self, conn: Connection, key_id: str) -> None:
        conn.execute(delete(dk).where(dk.c.id == key_id))
        self.drop(key_id)

    def drop(self, key_id: str) -> None:
        with self._lock:
            self._cache.pop(key_id, None)

    def _remember(self, key_id: str, aead: AESGCM) -> None:
        if self._capacity <= 0:
            return
        with self._lock:
            self._cache[key_id] = aead
            self._cache.move_to_end(key_id)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
