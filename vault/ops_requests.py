"""DPO requests under the approval policy, and retention (vault/dporequests.py, vault/retention.py). Mixed into
vault.core.Vault: each method is one transaction, as there.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from sqlalchemy import Connection, select

from vault import (
    audit,
    consents,
    dporequests,
    events,
    people,
    retention,
    tokens,
)
from vault.audit import LIBRARY
from vault.config import RetentionSettings
from vault.db import db_errors as _db_errors
from vault.errors import BadInput, Conflict, NotFound, Unavailable, VaultError
from vault.models import people_table
from vault.patching import PatchError, apply_change
from vault.vaultbase import VaultBase

log = logging.getLogger("tokenbunker.vault")
# Purges that other parts of the vault provide, run by each retention run when present: (method, retention kind).
PURGE_HOOKS = (("purge_expired_sessions", "sessions"), ("purge_expired_shared_records", "shared_records"))


class RequestsOps(VaultBase):
    # -- DPO requests and retention (vault/requests.py, vault/retention.py) ------------------------------------

    def create_request(self, action: str, mode: str, ident: str, change: Any = None, *, app: str | None = None,
                       brief: str | None = None, by: str = LIBRARY) -> str:
        """Store a change for a DPO to approve (vault/dporequests.py); its rtoken. The same open request asked
        again answers the first one's rtoken. A change that could never apply is refused now, not at approval."""

        def work(conn: Connection) -> str:
            now = self.now()
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            if action == "change-profile":
                try:
                    apply_change(people.read(conn, self.keys, ref), change)
                except PatchError as exc:
                    raise BadInput(str(exc)) from None
            elif action == "agreement-withdraw":
                consents.get(conn, ref.id, consents.check_brief(brief or ""), now)  # NotFound: nothing to withdraw
            elif action == "change-app-data" and app is None:
                raise BadInput("a change of app data names its app")
            rtoken, new = dporequests.create(conn, self.keys, ref.id, ref.data_key_id, action, change, app, brief,
                                             by, now)
            if new:
                self._audit(conn, [audit.Event(by, "request-create", ref.id, ref.data_key_id,
                                               detail={"rtoken": rtoken, "action": action, "app": app,
                                                       "brief": brief, "change": change})])
                events.enqueue(conn, "requestcreated", {"token": ref.id, "rtoken": rtoken, "action": action},
                               now)
            return rtoken

        return self._run_write(work)

    def apply_or_request(self, policy: dporequests.Policy | None, action: str, mode: str, ident: str,
                         change: Any = None, *, app: str | None = None, brief: str | None = None,
                         by: str = LIBRARY) -> tuple[str, str]:
        """("request-created", rtoken) when `policy` says a DPO must approve `action`, else apply it now:
        ("done", the person's uuid). The library's entry for every caller that honours the approval policy."""
        if dporequests.needs_approval(policy, action, app):
            return "request-created", self.create_request(action, mode, ident, change, app=app, brief=brief, by=by)
        return "done", self._apply_action(action, mode, ident, change, app, brief, by)

    def _apply_action(self, action: str, mode: str, ident: str, change: Any, app: str | None, brief: str | None,
                      by: str) -> str:
        if action == "change-profile":
            return self.update_person(mode, ident, change, by=by)
        if action == "forget-me":
            return self.forget_person(mode, ident, by=by)
        if action == "agreement-withdraw":
            withdrawn = self.withdraw_consent(brief or "", mode, ident, by=by)
            if withdrawn is None:  # a pending agreement: no person yet (requests always have one)
                raise NotFound("person not found")
            return withdrawn
        if action == "change-app-data":
            # Written by the app-records work (vault/records.py); looked up so that either merge order works.
            change_app_record = getattr(self, "change_app_record", None)
            if change_app_record is None:
                raise Unavailable("app records are not available in this build")
            return str(change_app_record(mode, ident, app, change, by=by))
        raise BadInput(f"action must be one of {', '.join(dporequests.ACTIONS)}")

    def requests(self, status: str | None = "open", offset: int = 0, limit: int = 10, *, mode: str | None = None,
                 ident: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """The approval queue (or one person's requests, by mode and ident): (total, rows); no change values."""
        with self._read() as conn:
            person_id = None
            if mode is not None:
                person_id = people.find(conn, self.keyring, mode, ident or "", self.default_country).id
            return dporequests.listing(conn, status, offset, limit, person_id)

    def get_request(self, rtoken: str, *, by: str = LIBRARY) -> dict[str, Any]:
        """One request for the DPO: {"request": as listed plus its reason, "change", "before", "after"}, the views
        of the person's data now and once approved (None where unknown). Audited as a read."""

        def work(conn: Connection) -> dict[str, Any]:
            found, req = dporequests.pending(conn, self.keys, rtoken)
            before, after = self._request_views(conn, req)
            alive = people.exists(conn, req.person_id) is not None
            self._audit(conn, [audit.Event(by, "read", req.person_id, req.data_key_id if alive else None,
                                           detail={"rtoken": req.rtoken, "action": req.action})])
            return {"request": found, "change": req.change, "before": before, "after": after}

        return self._run_write(work)

    def _request_views(self, conn: Connection, req: dporequests.Pending) -> tuple[Any, Any]:
        """What the request's subject looks like now, and would look like once it is approved (None: unknown)."""
        if people.exists(conn, req.person_id) is None:
            return None, None
        ref = people.PersonRef(req.person_id, req.data_key_id)
        if req.action in ("change-profile", "forget-me"):
            before = people.read(conn, self.keys, ref)
            if req.action == "forget-me":
                return before, None
            try:
                return before, apply_change(before, req.change)
            except PatchError:
                return before, None
        if req.action == "agreement-withdraw":
            try:
                consent = consents.get(conn, req.person_id, req.brief or "", self.now())
            except NotFound:
                return None, None
            return consent.as_dict(), {**consent.as_dict(), "status": "no"}
        return None, req.change  # app data: the app-records work owns its reads

    def approve_request(self, rtoken: str, *, by: str = LIBRARY) -> str:
        """Apply an open request's change through the vault's own operation, as `by`; the person's uuid.
        The request is claimed first (so it is applied once), and opened again if the change fails."""
        req = self._run_write(lambda conn: dporequests.claim(conn, self.keys, rtoken, by, self.now()))
        try:
            self._apply_action(req.action, "token", req.person_id, req.change, req.app, req.brief, by)
        except BaseException:
            self._run_write(lambda conn: dporequests.reopen(conn, rtoken))
            raise
        key = None if req.action == "forget-me" else req.data_key_id  # forgotten: the shared key seals the detail
        self._run_write(lambda conn: self._audit(conn, [audit.Event(
            by, "request-approve", req.person_id, key, detail={"rtoken": rtoken, "action": req.action})]))
        return req.person_id

    def cancel_request(self, rtoken: str, reason: str | None = None, *, by: str = LIBRARY) -> str:
        def work(conn: Connection) -> str:
            req = dporequests.cancel(conn, self.keys, rtoken, reason, by, self.now())
            alive = people.exists(conn, req.person_id) is not None
            self._audit(conn, [audit.Event(by, "request-cancel", req.person_id, req.data_key_id if alive else None,
                                           detail={"rtoken": rtoken, "action": req.action,
                                                   "reason": reason if alive else None})])
            return req.person_id

        return self._run_write(work)

    def start_expiration(self, mode: str, ident: str, expires_at: int, status: str = "wait", *,
                         by: str = LIBRARY) -> str:
        """The person's record is forgotten at `expires_at` (unix time) unless retained; the new exptoken."""

        def work(conn: Connection) -> str:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            exptoken = retention.start(conn, ref.id, expires_at, status, self.now())
            self._audit(conn, [audit.Event(by, "retention", ref.id, ref.data_key_id,
                                           detail={"op": "start", "exptime": expires_at, "expstatus": status})])
            return exptoken

        return self._run_write(work)

    def expiration_status(self, mode: str, ident: str) -> dict[str, Any]:
        with self._read() as conn:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            return retention.status(conn, ref.id)

    def cancel_expiration(self, mode: str, ident: str, *, by: str = LIBRARY) -> str:
        def work(conn: Connection) -> str:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            retention.cancel(conn, ref.id, self.now())
            self._audit(conn, [audit.Event(by, "retention", ref.id, ref.data_key_id, detail={"op": "cancel"})])
            return ref.id

        return self._run_write(work)

    def retain_by_exptoken(self, exptoken: str, *, by: str = "exptoken") -> str:
        """The person's own link: keep the record (the scheduler leaves it alone)."""

        def work(conn: Connection) -> str:
            person_id = retention.retain(conn, exptoken, self.now())
            key = conn.execute(select(people_table.c.data_key_id).where(people_table.c.id == person_id)).scalar()
            self._audit(conn, [audit.Event(by, "retention", person_id, key, detail={"op": "retain"})])
            return person_id

        return self._run_write(work)

    def delete_by_exptoken(self, exptoken: str, *, by: str = "exptoken") -> str:
        """The person's own link: forget the record now."""
        with self._read() as conn:
            person_id, status = retention.owner(conn, exptoken)
        if status == "expired":
            raise Conflict("this record has already expired")
        self._expire(person_id, by, claim=True)
        return person_id

    def _expire(self, person_id: str, by: str, *, claim: bool) -> bool:
        """Forget one person whose record expired (idempotent: someone already gone counts as done)."""
        if claim and not self._run_write(lambda conn: retention.claim(conn, person_id, self.now())):
            raise Conflict("this record has already expired")
        try:
            self.forget_person("token", person_id, by=by)
            forgot = True
        except NotFound:
            forgot = False
        self._run_write(lambda conn: retention.mark_expired(conn, person_id, self.now()))
        return forgot

    def run_retention(self, settings: RetentionSettings | None = None, *,
                      by: str = "retention") -> dict[str, int] | None:
        """One run of the retention scheduler: None when another replica is running one (PostgreSQL), else the
        counts of what was done. Never values; every step idempotent, so a run cut short is simply run again."""
        settings = settings or RetentionSettings()
        with _db_errors(), self.engine.connect() as lock:  # held open for the whole run, then rolled back
            if not retention.try_lock(lock):
                return None
            counts = self._retention_sweep(settings, by)
            due = self._run_write(lambda conn: retention.claim_due(conn, self.now()))
            counts["people"] = 0
            for person_id in due:
                try:
                    counts["people"] += self._expire(person_id, by, claim=False)
                except VaultError as exc:  # left "expiring": the next run tries again
                    log.warning("retention: could not forget one expired person (%s)", type(exc).__name__)
            for hook, kind in PURGE_HOOKS:
                purge = getattr(self, hook, None)
                if purge is not None:
                    max_age = settings.seconds(kind) if hasattr(settings, kind) else None
                    takes_age = "max_age" in inspect.signature(purge).parameters
                    counts[kind] = int(purge(max_age=max_age) if takes_age else purge())
        return counts

    def _retention_sweep(self, settings: RetentionSettings, by: str) -> dict[str, int]:
        """Tokens, agreements and requests past their time, in one transaction."""

        def work(conn: Connection) -> dict[str, int]:
            now = self.now()
            counts = {"tokens": tokens.purge_expired(conn, now)}
            if (max_tokens := settings.seconds("tokens")) is not None:
                counts["tokens"] += retention.purge_old_tokens(conn, now - max_tokens)
            expired = retention.expire_agreements(conn, now)
            counts["agreements_expired"] = len(expired)
            for person_id, brief, _key in expired:
                events.enqueue(conn, "consentchange", {"token": person_id, "brief": brief, "status": "expired"}, now)
            if (max_agreements := settings.seconds("agreements")) is not None:
                counts["agreements_deleted"] = retention.purge_agreements(conn, now - max_agreements)
            if (max_requests := settings.seconds("requests")) is not None:
                counts["requests"] = dporequests.purge_decided(conn, now - max_requests)
            if (max_outbox := settings.seconds("outbox")) is not None:
                counts["outbox"] = retention.purge_outbox(conn, now - max_outbox)
            rows = [audit.Event(by, "retention", person_id, key, detail={"op": "agreement-expired", "brief": brief})
                    for person_id, brief, key in expired]
            if any(counts.values()):
                rows.append(audit.Event(by, "retention", detail={"op": "sweep", **counts}))
            self._audit(conn, rows)
            return counts

        return self._run_write(work)

