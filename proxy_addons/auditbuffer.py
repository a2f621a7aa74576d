"""Audit rows of the sidecar's cheap paths (reveals, cache hits), coalesced and written by the writer thread.

A flow that only reads the vault (a reveal, deterministic tokens from the cache) does not wait for a write
transaction of its own: its audit rows go here, rows that differ only in their counts become one row with the
counts added (`vault.core.coalesce_events`), and the writer thread records them at most FLUSH_SECONDS after the
first of them. If a write fails, the rows are kept for the next attempt and `failing` is set: while it is, the
sidecar refuses those flows (fail closed) instead of revealing what it could not record. What a crash of the proxy
process can lose is the last window's counts (docs/sidecar.md, "The audit trail").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from vault.audit import Event
from vault.core import coalesce_events

FLUSH_SECONDS = 0.25
MAX_PENDING = 4096  # rows kept before the writer is asked to flush at once


class AuditBuffer:
    def __init__(self, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.flush_seconds = flush_seconds
        self.failing = False
        self._rows: list[Event] = []
        self._since: float | None = None
        self._lock = threading.Lock()

    def add(self, rows: Sequence[Event]) -> bool:
        """Keep `rows`; True when so many are pending that the writer should flush now."""
        if not rows:
            return False
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
            self._rows.extend(rows)
            return len(self._rows) >= MAX_PENDING

    def wait(self) -> float | None:
        """Seconds until the pending rows are due (0: now), or None when there are none."""
        with self._lock:
            if self._since is None:
                return None
            return max(0.0, self._since + self.flush_seconds - time.monotonic())

    def take(self) -> list[Event]:
        with self._lock:
            rows, self._rows, self._since = self._rows, [], None
        return coalesce_events(rows) if rows else []

    def put_back(self, rows: Sequence[Event]) -> None:
        """A write failed: the rows wait for the next attempt (already coalesced, so they stay few)."""
        with self._lock:
            self._rows[:0] = rows
            if self._since is None:
                self._since = time.monotonic()
