"""A person's app records, sessions and shared records (vault/apprecords.py, vault/sessions.py,
vault/sharedrecords.py). Mixed into vault.core.Vault: each method is one transaction, as there.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from vault import (
    apprecords,
    audit,
    people,
    sessions,
    sharedrecords,
)
from vault.datakeys import SHARED_KEY_ID
from vault.durations import parse_expiry
from vault.errors import BadInput, NotFound
from vault.vaultbase import VaultBase

Profile = tuple[str, dict[str, Any]]  # a person's uuid and profile


class RecordsOps(VaultBase):
    # -- app records, sessions, shared records (vault/apprecords.py, vault/sessions.py, vault/sharedrecords.py) ---

    def create_app_record(self, mode: str, ident: str, app: str, data: Any, *, by: str) -> str:
        apprecords.check_app(app)

        def work(conn: Connection) -> str:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            apprecords.create(conn, self.keys, ref.id, ref.data_key_id, app, data, self.now())
            self._audit(conn, [audit.Event(by, "app-create", ref.id, ref.data_key_id,
                                           detail={"app": app, "fields": sorted(data)})])
            return ref.id

        return self._run_write(work)

    def get_app_record(self, mode: str, ident: str, app: str, *, by: str) -> tuple[str, dict[str, Any]]:
        apprecords.check_app(app)

        def work(conn: Connection) -> tuple[str, dict[str, Any]]:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            data = apprecords.read(conn, self.keys, ref.id, ref.data_key_id, app)
            self._audit(conn, [audit.Event(by, "app-read", ref.id, ref.data_key_id, detail={"app": app})])
            return ref.id, data

        return self._run_write(work)

    def change_app_record(self, mode: str, ident: str, app: str, change: Any, *, by: str) -> str:
        """Apply a merge patch (object) or JSON Patch (array) to a person's app record; the person's uuid. The
        DPO approval of a "change-app-data" request calls this too."""
        apprecords.check_app(app)

        def work(conn: Connection) -> str:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            before, after = apprecords.change(conn, self.keys, ref.id, ref.data_key_id, app, change, self.now())
            self._audit(conn, [audit.Event(by, "app-change", ref.id, ref.data_key_id,
                                           detail={"app": app, "before": before, "after": after})])
            return ref.id

        return self._run_write(work)

    def delete_app_record(self, mode: str, ident: str, app: str, *, by: str) -> str:
        apprecords.check_app(app)

        def work(conn: Connection) -> str:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            apprecords.remove(conn, ref.id, app)
            self._audit(conn, [audit.Event(by, "app-delete", ref.id, ref.data_key_id, detail={"app": app})])
            return ref.id

        return self._run_write(work)

    def list_app_records(self, mode: str, ident: str, *, by: str) -> tuple[str, list[str]]:
        """The names of the apps a person has records for (audited as a read of them, values untouched)."""
        def work(conn: Connection) -> tuple[str, list[str]]:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            apps = apprecords.apps_of(conn, ref.id)
            self._audit(conn, [audit.Event(by, "app-read", ref.id, ref.data_key_id, detail={"apps": apps})])
            return ref.id, apps

        return self._run_write(work)

    def app_names(self) -> list[str]:
        """Every app that has a record for someone (names only: nothing personal)."""
        with self._read() as conn:
            return apprecords.all_apps(conn)

    def create_session(self, session_id: str, data: dict[str, Any], *, link: tuple[str, str] | None = None,
                       expiration: object = None, by: str) -> str:
        """Store a session (replacing one under the same uuid), linked to the person `link` = (mode, identity)
        names, sealed under their key (else the shared key); `expiration` a duration or unix time. Its uuid."""
        session_id = sessions.check_id(session_id)
        if not isinstance(data, dict):
            raise BadInput("session data is a JSON object")

        def work(conn: Connection) -> str:
            now = self.now()
            expires_at = None if expiration is None else now + parse_expiry(expiration, now, "expiration")
            ref = None if link is None else people.find(conn, self.keyring, link[0], link[1], self.default_country)
            person_id, key_id = (None, SHARED_KEY_ID) if ref is None else (ref.id, ref.data_key_id)
            sessions.store(conn, self.keys, session_id, person_id, key_id, data, expires_at, now)
            self._audit(conn, [audit.Event(by, "session-create", person_id, person_id and key_id, detail={
                "session": session_id, "expires": expires_at, "fields": sorted(data)})])
            return session_id

        return self._run_write(work)

    def get_session(self, session_id: str, *, by: str) -> sessions.Session:
        def work(conn: Connection) -> sessions.Session:
            found = sessions.read(conn, self.keys, session_id, self.now())
            key_id = found.data_key_id if found.person_id else None
            self._audit(conn, [audit.Event(by, "session-read", found.person_id, key_id,
                                           detail={"session": found.id})])
            return found

        return self._run_write(work)

    def delete_session(self, session_id: str, *, by: str) -> None:
        def work(conn: Connection) -> None:
            person_id, key_id = sessions.remove(conn, session_id, self.now())
            self._audit(conn, [audit.Event(by, "session-delete", person_id, key_id if person_id else None,
                                           detail={"session": sessions.check_id(session_id)})])

        self._run_write(work)

    def list_sessions(self, mode: str, ident: str, offset: int = 0, limit: int = 10, *,
                      by: str) -> tuple[str, int, list[sessions.Session]]:
        """A person's live sessions, newest first: (their uuid, how many in all, this page)."""
        def work(conn: Connection) -> tuple[str, int, list[sessions.Session]]:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            total, page = sessions.list_for(conn, self.keys, ref.id, self.now(), offset, limit)
            self._audit(conn, [audit.Event(by, "session-read", ref.id, ref.data_key_id,
                                           detail={"sessions": [s.id for s in page]})])
            return ref.id, total, page

        return self._run_write(work)

    def purge_expired_sessions(self) -> int:
        """Delete expired sessions (the retention scheduler's job); how many."""
        return self._run_write(lambda conn: sessions.purge_expired_sessions(conn, self.now()))

    def share_record(self, mode: str, ident: str, fields: object, *, app: str | None = None,
                     session: str | None = None, partner: str | None = None, expiration: object = None,
                     by: str) -> str:
        """A shared record: `fields` (dotted paths) of the person's profile, or of their record for `app`, or
        of their `session`, readable without a token until `expiration` (default 1 day). Its uuid."""
        paths = sharedrecords.parse_fields(fields)
        partner = sharedrecords.check_partner(partner)
        if app not in (None, "") and session not in (None, ""):
            raise BadInput("share fields of an app record or of a session, not both")
        app = None if app in (None, "") else apprecords.check_app(app)
        session = None if session in (None, "") else sessions.check_id(session)

        def work(conn: Connection) -> str:
            now = self.now()
            expires_at = now + parse_expiry(sharedrecords.DEFAULT_EXPIRATION if expiration in (None, "")
                                            else expiration, now, "expiration")
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            if app is not None:
                apprecords.read(conn, self.keys, ref.id, ref.data_key_id, app)  # NotFound when there is none
            if session is not None and sessions.owner(conn, session, now)[0] != ref.id:
                raise NotFound("session not found")
            record = sharedrecords.create(conn, ref.id, paths, app, session, partner, expires_at, now)
            self._audit(conn, [audit.Event(by, "share", ref.id, ref.data_key_id, detail={
                "record": record, "fields": paths, "app": app, "session": session, "partner": partner,
                "expires": expires_at})])
            return record

        return self._run_write(work)

    def read_shared_record(self, record_id: str) -> dict[str, Any]:
        """The shared fields of a live shared record, as they are now (GET /v1/get/{record}: no token)."""
        def work(conn: Connection) -> dict[str, Any]:
            now = self.now()
            record = sharedrecords.find(conn, record_id, now)
            try:
                ref = people.find(conn, self.keyring, "token", record.person_id, self.default_country)
                if record.app is not None:
                    doc = apprecords.read(conn, self.keys, ref.id, ref.data_key_id, record.app)
                elif record.session_id is not None:
                    found = sessions.read(conn, self.keys, record.session_id, now)
                    if found.person_id != ref.id:
                        raise NotFound("session not found")
                    doc = found.data
                else:
                    doc = people.read(conn, self.keys, ref)
            except NotFound:
                raise NotFound("shared record not found") from None
            self._audit(conn, [audit.Event(record.reader, "shared-read", ref.id, ref.data_key_id,
                                           detail={"record": record.id, "fields": record.fields})])
            return sharedrecords.extract(doc, record.fields)

        return self._run_write(work)

    def purge_expired_shared_records(self) -> int:
        """Delete expired shared records (the retention scheduler's job); how many."""
        return self._run_write(lambda conn: sharedrecords.purge_expired_shared_records(conn, self.now()))

    def list_people(self, offset: int = 0, limit: int = 10, *, by: str) -> tuple[int, list[Profile]]:
        """People, oldest first, as (uuid, profile), and how many in all (POST /v1/users); each one listed is
        audited as read."""
        def work(conn: Connection) -> tuple[int, list[Profile]]:
            total, refs = people.page(conn, offset, limit)
            rows = [(ref.id, people.read(conn, self.keys, ref)) for ref in refs]
            self._audit(conn, [audit.Event(by, "read", ref.id, ref.data_key_id, detail={"via": "list"})
                               for ref in refs])
            return total, rows

        return self._run_write(work)

