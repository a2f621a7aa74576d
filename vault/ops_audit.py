"""Audit reads and verification, the callback outbox, backup and restore, metrics (vault/audit.py, vault/callbacks.py,
vault/backup.py, vault/metrics.py). Mixed into vault.core.Vault: each method is one transaction, as there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, text

from vault import (
    audit,
    backup,
    callbacks,
    metrics,
    people,
)
from vault.audit import LIBRARY
from vault.db import db_errors as _db_errors
from vault.models import forgotten_table
from vault.vaultbase import VaultBase


class AuditOps(VaultBase):
    # -- audit reads, callbacks, backup (vault/audit.py, vault/callbacks.py, vault/backup.py) ------------------

    def audit_trail(self, person_id: str | None, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """Audit rows, newest first: everyone's or one person's. Lists never open a detail."""
        with self._read() as conn:
            return audit.listing(conn, person_id, offset, limit)

    def person_known(self, person_id: str) -> bool:
        """Whether this uuid is a person, or was one (forgotten)."""
        with self._read() as conn:
            return people.exists(conn, person_id) is not None or conn.execute(
                select(forgotten_table.c.person_id).where(forgotten_table.c.person_id == person_id)).first() is not None

    def audit_event(self, atoken: str, *, by: str = LIBRARY) -> dict[str, Any]:
        """One audit row with its detail opened (before/after of a change); opening a person's detail is itself
        recorded, as "audit-read"."""
        def work(conn: Connection) -> dict[str, Any]:
            found = audit.get(conn, self.keys, atoken)
            if found["detail_state"] == "open" and found["token"] is not None:
                self._audit(conn, [audit.Event(by, "audit-read", found["token"], None, detail={"atoken": atoken})])
            return found

        return self._run_write(work)

    def verify_audit(self) -> audit.Verdict:
        with self._read() as conn:
            return audit.verify(conn, self.keyring)

    def claim_callbacks(self, event_names: Sequence[str], lease: int, batch: int) -> list[callbacks.Claimed]:
        return self._run_write(lambda conn: callbacks.claim(conn, event_names, self.now(), lease, batch))

    def settle_callback(self, seq: int, attempts: int, error: str | None, next_at: int | None) -> None:
        self._run_write(lambda conn: callbacks.settle(conn, seq, attempts, self.now(), error, next_at))

    def release_callbacks(self, seqs: list[int]) -> None:
        self._run_write(lambda conn: callbacks.release(conn, seqs, self.now()))

    def backup_lines(self, *, by: str = LIBRARY) -> Iterator[bytes]:
        """Record the backup in the audit trail now, then stream the dump from one snapshot as it is read."""
        self._run_write(lambda conn: self._audit(conn, [audit.Event(by, "backup")]))
        return self._dump()

    def _dump(self) -> Iterator[bytes]:
        with _db_errors(), self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():  # SQLite: one deferred read transaction, so one snapshot (WAL)
                schema = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                yield from backup.dump(conn, schema, self.now())

    def reapply_forgotten(self, person_ids: Iterable[str], *, by: str = LIBRARY) -> int:
        """Forget again everyone in a forget-me journal who a restored backup brought back; remember the others
        in tb_forgotten, so the next backup carries the journal. How many were forgotten again."""
        again = 0
        for person_id in sorted(set(person_ids)):
            with self._read() as conn:
                present = people.exists(conn, person_id) is not None
            if present:
                self.forget_person("token", person_id, by=by)
                again += 1
                continue

            def remember(conn: Connection, pid: str = person_id) -> None:
                if conn.execute(select(forgotten_table.c.person_id)
                                .where(forgotten_table.c.person_id == pid)).first() is None:
                    conn.execute(insert(forgotten_table).values(person_id=pid, forgotten_at=self.now()))

            self._run_write(remember)
        return again

    def record_restore(self, detail: dict[str, Any], *, by: str = LIBRARY) -> None:
        self._run_write(lambda conn: self._audit(conn, [audit.Event(by, "restore", detail=detail)]))

    def metrics(self) -> list[metrics.Sample]:
        with self._read() as conn:
            return metrics.gather(conn)

