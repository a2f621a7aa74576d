"""Consents: legal bases, processing activities, agreements, consent before the person exists (vault/consents.py,
vault/registry.py). Mixed into vault.core.Vault: each method is one transaction, as there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from vault import (
    audit,
    consents,
    events,
    people,
    registry,
)
from vault.audit import LIBRARY
from vault.errors import BadInput, NotFound
from vault.identity import normalize
from vault.vaultbase import VaultBase

_BASIS_SHOWN = ("module", "shortdesc", "fulldesc", "basistype")  # a legal basis' fields shown with an agreement


class ConsentOps(VaultBase):
    # -- legal bases, processing activities, consent registry (vault/consents.py, vault/registry.py) -----------

    def set_legal_basis(self, brief: str, body: dict[str, Any], *, by: str = LIBRARY) -> bool:
        """Create or replace a legal basis (Databunker's fields); True when it is new."""
        consents.check_brief(brief)
        values = registry.parse_basis(body)

        def work(conn: Connection) -> bool:
            new = registry.set_basis(conn, brief, values, self.now())
            self._audit(conn, [audit.Event(by, "lbasis", detail={"brief": brief, "op": "create" if new else "update",
                                                                 "status": values["status"]})])
            return new

        return self._run_write(work, retry_integrity=True)

    def delete_legal_basis(self, brief: str, *, by: str = LIBRARY) -> int:
        """Unlink a legal basis from every activity and drop it; when agreements name it, keep it marked deleted
        and revoke them (as Databunker does). Answers how many agreements were revoked."""
        consents.check_brief(brief)

        def work(conn: Connection) -> int:
            if registry.basis_status(conn, brief) is None:
                raise NotFound("no such legal basis")
            used = consents.in_use(conn, brief)
            revoked, rows = self._revoke(conn, brief, by) if used else (0, [])
            registry.delete_basis(conn, brief, used)
            self._audit(conn, [*rows, audit.Event(by, "lbasis", detail={"brief": brief, "op": "delete",
                                                                        "revoked": revoked})])
            return revoked

        return self._run_write(work)

    def legal_bases(self, offset: int = 0, limit: int = 10) -> tuple[int, list[dict[str, Any]]]:
        with self._read() as conn:
            return registry.list_bases(conn, offset, limit)

    def set_activity(self, activity: str, body: dict[str, Any], *, by: str = LIBRARY) -> bool:
        registry.check_activity(activity)
        values = registry.parse_activity(body)

        def work(conn: Connection) -> bool:
            new = registry.set_activity(conn, activity, values, self.now())
            self._audit(conn, [audit.Event(by, "pactivity", detail={"activity": activity,
                                                                    "op": "create" if new else "update"})])
            return new

        return self._run_write(work, retry_integrity=True)

    def delete_activity(self, activity: str, *, by: str = LIBRARY) -> None:
        def work(conn: Connection) -> None:
            registry.delete_activity(conn, activity)
            self._audit(conn, [audit.Event(by, "pactivity", detail={"activity": activity, "op": "delete"})])

        self._run_write(work)

    def link_activity(self, activity: str, brief: str, *, by: str = LIBRARY) -> bool:
        def work(conn: Connection) -> bool:
            new = registry.link(conn, activity, brief, self.now())
            self._audit(conn, [audit.Event(by, "pactivity", detail={"activity": activity, "op": "link",
                                                                    "brief": brief})])
            return new

        return self._run_write(work, retry_integrity=True)

    def unlink_activity(self, activity: str, brief: str, *, by: str = LIBRARY) -> None:
        def work(conn: Connection) -> None:
            registry.unlink(conn, activity, brief)
            self._audit(conn, [audit.Event(by, "pactivity", detail={"activity": activity, "op": "unlink",
                                                                    "brief": brief})])

        self._run_write(work)

    def activities(self, offset: int = 0, limit: int = 10) -> tuple[int, list[dict[str, Any]]]:
        with self._read() as conn:
            return registry.list_activities(conn, offset, limit)

    def agreements(self, mode: str, ident: str, *, by: str = LIBRARY) -> list[dict[str, Any]]:
        """All of a person's agreements (or, for an email or phone no one has yet, the pending ones), each with the
        descriptions of its legal basis where one is defined."""

        def work(conn: Connection) -> list[dict[str, Any]]:
            now = self.now()
            ref, key = self._locate(conn, mode, ident)
            found = consents.listing(conn, ref.id, now) if ref else consents.listing_pending(conn, key or b"", now)
            bases = registry.describe(conn, {c.brief for c in found})
            rows = []
            for consent in found:
                basis = bases.get(consent.brief, {})
                rows.append({**consent.as_dict(), **{name: basis.get(name) for name in _BASIS_SHOWN}})
            self._audit(conn, [self._consent_event(by, "consent-read", ref, mode, {"count": len(rows)})])
            return rows

        return self._run_write(work)

    def revoke_consent_all(self, brief: str, *, by: str = LIBRARY) -> int:
        """Revoke a purpose for everyone: every agreement to it reads "revoked" and reveals under it stop. 404 when
        nothing names it (no legal basis, no agreement). Answers how many agreements changed."""
        consents.check_brief(brief)

        def work(conn: Connection) -> int:
            if registry.basis_status(conn, brief) is None and not consents.in_use(conn, brief):
                raise NotFound("no legal basis or agreement has that brief")
            revoked, rows = self._revoke(conn, brief, by)
            self._audit(conn, rows)
            return revoked

        return self._run_write(work)

    def _revoke(self, conn: Connection, brief: str, by: str) -> tuple[int, list[audit.Event]]:
        """Revoke every agreement to `brief` and queue one consentchange per person (or pending address) affected;
        answers how many changed, and the audit rows to record at the end of the transaction."""
        now = self.now()
        affected, modes = consents.revoke_all(conn, brief, now)
        for person_id, _key_id in affected:
            events.enqueue(conn, "consentchange", {"token": person_id, "brief": brief, "status": "revoked"}, now)
        for mode in modes:
            events.enqueue(conn, "consentchange", {"mode": mode, "brief": brief, "status": "revoked"}, now)
        rows = [audit.Event(by, "consent-revoke", person_id, key_id, detail={"brief": brief})
                for person_id, key_id in affected]
        if modes:
            rows.append(audit.Event(by, "consent-revoke", detail={"brief": brief, "pending": len(modes)}))
        return len(affected) + len(modes), rows

    def _locate(self, conn: Connection, mode: str, ident: str) -> tuple[people.PersonRef | None, bytes | None]:
        """The person `ident` names, or, for an email or phone no one has yet, the key of their pending
        agreements."""
        try:
            return people.find(conn, self.keyring, mode, ident, self.default_country), None
        except NotFound:
            if mode not in consents.PENDING_MODES:
                raise
        return None, consents.pending_key(self.keyring, mode, normalize(mode, ident, self.default_country))

    @staticmethod
    def _consent_event(by: str, action: str, ref: people.PersonRef | None, mode: str,
                       detail: dict[str, Any]) -> audit.Event:
        if ref is not None:
            return audit.Event(by, action, ref.id, ref.data_key_id, detail=detail)
        return audit.Event(by, action, detail={**detail, "pending": mode})  # no person yet: never the address

    def _claim_pending(self, conn: Connection, made: Sequence[tuple[people.PersonRef, str, str]], by: str,
                       now: int) -> list[audit.Event]:
        """Give new people the agreements that waited for their email or phone; the audit rows to record."""
        claims = [(ref.id, consents.pending_key(self.keyring, mode, value))
                  for ref, mode, value in made if mode in consents.PENDING_MODES]
        moved = consents.claim_pending(conn, claims, now) if claims else []
        keys = {ref.id: ref.data_key_id for ref, _mode, _value in made}
        for person_id, brief, status in moved:
            events.enqueue(conn, "consentchange", {"token": person_id, "brief": brief, "status": status}, now)
        return [audit.Event(by, "consent-give", person_id, keys[person_id],
                            detail={"brief": brief, "status": status, "from": "pending"})
                for person_id, brief, status in moved]

    # -- consents ---------------------------------------------------------------------------------------------

    def give_consent(self, brief: str, mode: str, ident: str, expires_at: int | None = None,
                     method: str | None = None, reference: str | None = None, *, by: str = LIBRARY,
                     status: str = "yes", given_at: int | None = None, modified_by: str | None = None) -> str | None:
        """Record a person's answer to a purpose. By email or phone before the person exists, it waits for them
        (answers None then). A brief need not be a defined legal basis, but one marked deleted takes no more."""
        consents.check_brief(brief)

        def work(conn: Connection) -> str | None:
            now = self.now()
            if registry.basis_status(conn, brief) == "deleted":
                raise BadInput("that legal basis is deleted: it takes no new agreements")
            ref, key = self._locate(conn, mode, ident)
            terms: dict[str, Any] = {"status": status, "given_at": given_at, "modified_by": modified_by}
            if ref is not None:
                consents.give(conn, ref.id, brief, now, expires_at, method, reference, **terms)
                events.enqueue(conn, "consentchange", {"token": ref.id, "brief": brief, "status": status}, now)
            else:
                consents.give_pending(conn, mode, key or b"", brief, now, expires_at, method, reference, **terms)
                events.enqueue(conn, "consentchange", {"mode": mode, "brief": brief, "status": status}, now)
            self._audit(conn, [self._consent_event(by, "consent-give" if status == "yes" else "consent-withdraw",
                                                   ref, mode, {"brief": brief, "status": status,
                                                               "expires": expires_at})])
            return ref.id if ref else None

        return self._run_write(work, retry_integrity=True)

    def withdraw_consent(self, brief: str, mode: str, ident: str, *, by: str = LIBRARY,
                         modified_by: str | None = None) -> str | None:
        consents.check_brief(brief)

        def work(conn: Connection) -> str | None:
            now = self.now()
            ref, key = self._locate(conn, mode, ident)
            if ref is not None:
                consents.withdraw(conn, ref.id, brief, now, modified_by)
                events.enqueue(conn, "consentchange", {"token": ref.id, "brief": brief, "status": "no"}, now)
            else:
                consents.withdraw_pending(conn, key or b"", brief, now, modified_by)
                events.enqueue(conn, "consentchange", {"mode": mode, "brief": brief, "status": "no"}, now)
            self._audit(conn, [self._consent_event(by, "consent-withdraw", ref, mode, {"brief": brief})])
            return ref.id if ref else None

        return self._run_write(work)

    def get_consent(self, brief: str, mode: str, ident: str, *, by: str = LIBRARY) -> consents.Consent:
        consents.check_brief(brief)

        def work(conn: Connection) -> consents.Consent:
            ref, key = self._locate(conn, mode, ident)
            now = self.now()
            found = consents.get(conn, ref.id, brief, now) if ref else consents.get_pending(conn, key or b"", brief,
                                                                                           now)
            self._audit(conn, [self._consent_event(by, "consent-read", ref, mode, {"brief": brief})])
            return found

        return self._run_write(work)

