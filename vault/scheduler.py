"""The retention scheduler inside `tokenbunker serve`: a background thread that runs the vault's retention every
`retention.interval` (forgets expired people, purges ttl tokens, expires agreements, drops old requests, and runs
the purges other parts provide). Several replicas may run it on one PostgreSQL: each run takes a lock, and every
step is idempotent. It logs counts, never values, and stops at shutdown (the run under way finishes first).
"""

from __future__ import annotations

import logging
import threading

from vault.config import RetentionSettings
from vault.core import Vault
from vault.errors import VaultError

log = logging.getLogger("tokenbunker.retention")


class RetentionScheduler:
    def __init__(self, vault: Vault, settings: RetentionSettings) -> None:
        self.vault = vault
        self.settings = settings
        self.interval = float(settings.seconds("interval") or 60)
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RetentionScheduler:
        self._thread = threading.Thread(target=self._loop, name="tokenbunker-retention", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)

    def run_once(self) -> dict[str, int] | None:
        try:
            counts = self.vault.run_retention(self.settings)
        except VaultError as exc:  # the database is down, say: the next run tries again
            log.warning("retention run failed: %s", exc.message)
            return None
        except Exception as exc:  # never a value in the log: the type only
            log.error("retention run failed unexpectedly (%s)", type(exc).__name__)
            return None
        self.runs += 1
        if counts is None:
            log.debug("retention: another replica is running it")
        elif any(counts.values()):
            log.info("retention: %s", ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()) if n))
        return counts
