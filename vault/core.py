"""The vault as a library: open it with a master key, then tokenize, reveal, and keep people's records.

Each public method is one transaction. Flask, mitmproxy and the CLI are thin layers over this class.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from vault import (
    apitokens,
    apprecords,
    audit,
    backup,
    callbacks,
    consents,
    dporequests,
    events,
    login,
    metrics,
    people,
    rawsql,
    registry,
    retention,
    selfservice,
    sessions,
    sharedrecords,
    tokens,
)
from vault.config import RetentionSettings
from vault.datakeys import SHARED_KEY_ID, DataKeys
from vault.db import READ_OPTION, WRITE_OPTION, make_engine
from vault.durations import parse_expiry
from vault.errors import BadInput, Conflict, NotFound, RateLimited, Unauthorized, Unavailable, VaultError, WrongKey
from vault.formats import TOKEN_PATTERN
from vault.identity import INDEX_MODES, IdentityError, index_values, normalize
from vault.keys import KeyRing, new_vault_secret, open_vault_secret, seal_vault_secret
from vault.login import Policy as LoginPolicy
from vault.models import data_keys_table, forgotten_table, meta_table, people_table
from vault.patching import PatchError, apply_change
from vault.tokens import TokenInfo, TokenRequest

log = logging.getLogger("tokenbunker.vault")
LIBRARY = "library"  # who acted, in the audit trail, when a caller of the library does not say

_T = TypeVar("_T")
Profile = tuple[str, dict[str, Any]]  # a person's uuid and profile


_BASIS_SHOWN = ("module", "shortdesc", "fulldesc", "basistype")  # a legal basis' fields shown with an agreement
_VAULT_SECRET = "vault_secret"
_RETRIES = 6
GRANT_CACHE_SECONDS = 5.0
# Purges that other parts of the vault provide, run by each retention run when present: (method, retention kind).
PURGE_HOOKS = (("purge_expired_sessions", "sessions"), ("purge_expired_shared_records", "shared_records"))


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
        self._reader = engine.execution_options(**{READ_OPTION: True})
        self._grants: dict[bytes, tuple[apitokens.Grant | None, float]] = {}

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
                    if not _schema_is_current(engine):
                        from vault.migrate import migrate  # Alembic is loaded only when there is work for it

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
        with _db_errors(), self._reader.begin() as conn:
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
        return [token for token, _expiry in self.tokenize_with_expiry(reqs)]

    def tokenize_with_expiry(self, reqs: Sequence[TokenRequest]) -> list[tuple[str, int | None]]:
        """Tokens and when each stops resolving: a deterministic token found again keeps the expiry it was made
        with, which a cache of tokens (the log scrubber's) must not outlive."""
        if not reqs:
            return []

        def work(conn: Connection) -> list[tuple[str, int | None]]:
            expiries: list[int | None] = []
            made = tokens.tokenize(conn, self.keyring, self.keys, reqs, self.now(), expiries=expiries)
            return list(zip(made, expiries, strict=True))

        # An integrity error here means another writer made the same deterministic token first (or a short
        # digits token collided): the next round finds theirs, or draws again.
        return self._run_write(work, retry_integrity=True)

    def tokenize_flows(self, flows: Sequence[FlowTokenize], *, by: str | None = None) -> list[FlowTokens | VaultError]:
        """Several flows' tokens in one transaction (group commit), each flow's values owned by its subject, found
        or created here. A flow whose subject is malformed fails alone; the others go on. With `by`, each flow that
        made tokens is audited (who, the route, the kinds)."""
        results: list[FlowTokens | VaultError] = []
        wanted: list[tuple[int, str | None, str | None]] = []  # flow index, index mode, normalised value
        for i, flow in enumerate(flows):
            results.append(FlowTokens(None, []))
            if flow.subject is None:
                wanted.append((i, None, None))
                continue
            index, value = flow.subject
            if index != "token" and isinstance(value, str) and TOKEN_PATTERN.fullmatch(value):
                wanted.append((i, "token-of", value))  # the app sent back a token: its owner is the subject
                continue
            try:
                wanted.append((i, index, normalize(index, value, self.default_country)))
            except IdentityError as exc:
                results[i] = BadInput(f"subject: {exc}")

        def work(conn: Connection) -> list[FlowTokens | VaultError]:
            now = self.now()
            by_index = {(index, value) for _i, index, value in wanted
                        if index in INDEX_MODES and value is not None}
            created: list[tuple[people.PersonRef, str, str]] = []
            refs = people.resolve_many(conn, self.keyring, self.keys, by_index, now, created) if by_index else {}
            found: dict[tuple[str, str], str | None] = {key: ref.id for key, ref in refs.items()}
            owner_keys = {ref.id: ref.data_key_id for ref in refs.values()}
            reqs: list[TokenRequest] = []
            subjects: list[str | None] = []
            spans: list[tuple[int, str | None, int, int]] = []
            for i, index, value in wanted:
                person: str | None = None
                if index is not None and value is not None:
                    if (index, value) not in found:
                        # Rare: the subject was given as a token of theirs, or as their uuid.
                        found[(index, value)] = (tokens.owner_of(conn, value) if index == "token-of"
                                                 else people.exists(conn, value))
                    person = found[(index, value)]
                start = len(reqs)
                reqs.extend(flows[i].items)
                subjects.extend([person] * len(flows[i].items))
                spans.append((i, person, start, len(reqs)))
            expiries: list[int | None] = []
            owners: list[str | None] = []
            made = tokens.tokenize(conn, self.keyring, self.keys, reqs, now, subjects, owner_keys, expiries,
                                   owners) if reqs else []
            out = list(results)
            for i, person, start, end in spans:
                out[i] = FlowTokens(person, made[start:end], owner_keys.get(person) if person else None,
                                    expiries[start:end], owners[start:end])
            if by is not None:
                self._audit(conn, tokenize_events(flows, spans, owner_keys, conn, by))


            if created:
                self._audit(conn, self._claim_pending(conn, created, by or LIBRARY, now))
            return out

        if not wanted:
            return results
        return self._run_write(work, retry_integrity=True)

    def detokenize(self, token_list: Sequence[str], reveal: str = "plain", purpose: str | None = None) -> list[
        str | None
    ]:
        return self.detokenize_explained(token_list, reveal, purpose)[0]

    def detokenize_explained(
        self, token_list: Sequence[str], reveal: str = "plain", purpose: str | None = None,
        kinds: frozenset[str] | None = None, *, by: str | None = None, route: str | None = None,
    ) -> tuple[list[str | None], list[str | None]]:
        """Values, and for each missing one why: "unknown", "consent" or "scope" (not one of `kinds`).
        With `by`, the reveals (and refusals for consent) are audited: one row per person, the kinds involved."""
        values, reasons, rows = self.reveal(token_list, reveal, purpose, kinds, by=by, route=route)
        if rows:
            self.record_audit(rows)
        return values, reasons

    def reveal(
        self, token_list: Sequence[str], reveal: str | Sequence[str] = "plain", purpose: str | None = None,
        kinds: frozenset[str] | None = None, *, by: str | None = None, route: str | None = None,
    ) -> tuple[list[str | None], list[str | None], list[audit.Event]]:
        """As detokenize_explained, but the audit rows are handed back for the caller to record. `reveal` may
        give one mode per token (plain and masked fields of one message in one call)."""
        if purpose is not None:
            consents.check_brief(purpose)
        if not token_list:
            return [], [], []
        seen: list[tuple[str | None, str, str, bool]] | None = [] if by is not None else None
        modes: list[str] = []
        with self._read() as conn:
            values, reasons = tokens.detokenize(conn, self.keys, token_list, reveal, self.now(), purpose, kinds, seen,
                                                modes)
        rows = reveal_events(seen, by, modes, purpose, route) if seen and by is not None else []
        return values, reasons, rows

    def reveal_flows(self, flows: Sequence[FlowReveal], *, by: str) -> list[
        tuple[list[str | None], list[str | None]] | VaultError
    ]:
        """Several flows' reveals and their audit rows in one write transaction (the sidecar's group commit): each
        value is read in the transaction that records its reveal, so no value leaves before the row recording it
        is committed, at one transaction per group instead of a read and a write per flow. The group's rows for
        the same person, route, outcome, mode and purpose are one row whose detail counts the values and flows.
        A flow with a malformed purpose fails alone."""
        results: list[tuple[list[str | None], list[str | None]] | VaultError] = []
        todo: list[int] = []
        for i, flow in enumerate(flows):
            try:
                if flow.purpose is not None:
                    consents.check_brief(flow.purpose)
                results.append(([], []))
                if flow.tokens:
                    todo.append(i)
            except VaultError as exc:
                results.append(exc)
        if not todo:
            return results

        def work(conn: Connection) -> list[tuple[list[str | None], list[str | None]] | VaultError]:
            now = self.now()
            out = list(results)
            rows: list[audit.Event] = []
            for i in todo:
                flow = flows[i]
                seen: list[tuple[str | None, str, str, bool]] = []
                modes: list[str] = []
                out[i] = tokens.detokenize(conn, self.keys, flow.tokens, flow.reveal, now, flow.purpose, None, seen,
                                           modes)
                rows.extend(reveal_events(seen, by, modes, flow.purpose, flow.route))
            self._audit(conn, coalesce_events(rows))
            return out

        return self._run_write(work)

    def record_audit(self, rows: Sequence[audit.Event]) -> None:
        self._run_write(lambda conn: self._audit(conn, rows))

    def still_there(self, person_ids: Iterable[str], token_list: Iterable[str]) -> tuple[set[str], set[str]]:
        """Which of these people and tokens still exist (not forgotten, deleted or expired): the sidecar drops
        what it has cached of the others, whichever process forgot or deleted them."""
        wanted_people, wanted_tokens = list(set(person_ids)), list(set(token_list))
        with self._read() as conn:
            people_left = {row[0] for row in rawsql.fetchall(
                conn, f"SELECT id FROM {people_table.name} WHERE id IN ({rawsql.marks(conn, len(wanted_people))})",
                wanted_people)} if wanted_people else set()
            tokens_left = {row[0] for row in rawsql.fetchall(
                conn, f"SELECT token FROM tb_tokens WHERE token IN ({rawsql.marks(conn, len(wanted_tokens))}) "
                f"AND (expires_at IS NULL OR expires_at > {int(self.now())})", wanted_tokens)} if wanted_tokens \
                else set()
        return people_left, tokens_left

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

    def _audit(self, conn: Connection, rows: Sequence[audit.Event]) -> None:
        audit.record_many(conn, self.keyring, self.keys, rows, self.now())

    def create_person(self, profile: Any, *, by: str = LIBRARY) -> str:
        def work(conn: Connection) -> str:
            ref = people.create(conn, self.keyring, self.keys, profile, self.default_country, self.now())
            events.enqueue(conn, "profilenew", {"token": ref.id}, self.now())  # before the consents it now has
            indexes = index_values(profile, self.default_country)
            claimed = self._claim_pending(conn, [(ref, m, v) for m, v in indexes.items()], by, self.now())
            self._audit(conn, [audit.Event(by, "create", ref.id, ref.data_key_id,
                                           detail={"fields": sorted(profile)}), *claimed])
            return ref.id

        try:
            return self._run_write(work)
        except IntegrityError:
            raise Conflict("duplicate index") from None

    def person_id_of(self, mode: str, ident: str) -> str | None:
        """The uuid of the person `mode`/`ident` names, or None (no audit row: nothing about them is read)."""
        try:
            with self._read() as conn:
                return people.find(conn, self.keyring, mode, ident, self.default_country).id
        except (BadInput, NotFound):
            return None

    def get_person(self, mode: str, ident: str, *, by: str = LIBRARY) -> tuple[str, dict[str, Any]]:
        def work(conn: Connection) -> tuple[str, dict[str, Any]]:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            profile = people.read(conn, self.keys, ref)
            self._audit(conn, [audit.Event(by, "read", ref.id, ref.data_key_id)])
            return ref.id, profile

        return self._run_write(work)

    def update_person(self, mode: str, ident: str, change: Any, *, by: str = LIBRARY) -> str:
        def work(conn: Connection) -> str:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            before = people.read(conn, self.keys, ref)
            after = people.change(conn, self.keyring, self.keys, ref, change, self.default_country, self.now())
            self._audit(conn, [audit.Event(by, "change", ref.id, ref.data_key_id,
                                           detail={"before": before, "after": after})])
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            events.enqueue(conn, "profilechange", {"token": ref.id, "fields": changed}, self.now())
            return ref.id

        try:
            return self._run_write(work)
        except IntegrityError:
            raise Conflict("duplicate index") from None

    def forget_person(self, mode: str, ident: str, *, by: str = LIBRARY) -> str:
        def work(conn: Connection) -> str:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            removed = people.forget(conn, self.keys, ref, self.now())
            login.close_all(conn, ref.id)
            # Recorded after the key is gone: the row names the person's uuid and counts, nothing readable.
            self._audit(conn, [audit.Event(by, "forget", ref.id, None, detail={"tokens": removed})])
            events.enqueue(conn, "forgetme", {"token": ref.id}, self.now())
            return ref.id

        return self._run_write(work)

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

    # -- DPO requests and retention (vault/requests.py, vault/retention.py) ------------------------------------
    # (issue 4: the requests work adds its methods here)

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
            rows = [audit.Event(by, "retention", person_id, key, detail={"op": "agreement-expired", "brief": brief})
                    for person_id, brief, key in expired]
            if any(counts.values()):
                rows.append(audit.Event(by, "retention", detail={"op": "sweep", **counts}))
            self._audit(conn, rows)
            return counts

        return self._run_write(work)

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

    # -- a person's own view: the portal (vault/selfservice.py) ----------------------------------------------

    def my_data(self, person_id: str, *, by: str = "self", action: str = "read") -> dict[str, Any]:
        """Everything held about a person, values revealed (to that person: the portal checks who is asking)."""
        def work(conn: Connection) -> dict[str, Any]:
            ref = people.find(conn, self.keyring, "token", person_id, self.default_country)
            data = selfservice.overview(conn, self.keys, ref, self.now())
            self._audit(conn, [audit.Event(by, action, ref.id, ref.data_key_id, detail={"via": "portal"})])
            return data

        return self._run_write(work)

    def my_consents(self, person_id: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            ref = people.find(conn, self.keyring, "token", person_id, self.default_country)
            return selfservice.consent_choices(conn, ref, self.now())

    def my_activity(self, person_id: str, limit: int = 200) -> list[dict[str, Any]]:
        with self._read() as conn:
            ref = people.find(conn, self.keyring, "token", person_id, self.default_country)
            return selfservice.trail(conn, self.keys, ref, limit)

    # -- scoped API tokens ------------------------------------------------------------------------------------

    def create_api_token(self, name: str, scopes: object, expires_at: int | None = None) -> tuple[str, str]:
        return self._run_write(lambda conn: apitokens.create(conn, self.keyring, name, scopes, expires_at,
                                                             self.now()))

    def revoke_api_token(self, token_id: str) -> None:
        self._run_write(lambda conn: apitokens.revoke(conn, token_id, self.now()))
        self._grants.clear()

    def api_tokens(self) -> list[dict[str, object]]:
        with self._read() as conn:
            return apitokens.listing(conn)

    def grant_for(self, token_hash: bytes) -> apitokens.Grant | None:
        """The grant of a scoped token; remembered for a few seconds, so a revocation elsewhere takes that long."""
        now = time.monotonic()
        cached = self._grants.get(token_hash)
        if cached is not None and now - cached[1] < GRANT_CACHE_SECONDS:
            return cached[0]
        with self._read() as conn:
            grant = apitokens.find(conn, token_hash, self.now())
        if len(self._grants) > 10_000:
            self._grants.clear()
        self._grants[token_hash] = (grant, now)
        return grant

    # -- passwordless login (vault/login.py) -------------------------------------------------------------------

    def request_login_code(self, mode: str, ident: str, client: str, policy: LoginPolicy) -> tuple[str, str] | None:
        """A one-time code for a known identity: (normalised address, code) for the caller to send; None when the
        identity is unknown. Raises RateLimited past the limits, for known and unknown identities alike."""
        def work(conn: Connection) -> tuple[str, str] | RateLimited | None:
            made = login.request_code(conn, self.keyring, mode, ident, client, self.default_country, policy,
                                      self.now())
            if isinstance(made, tuple):
                person, address, code = made
                key_id = people.data_key_of(conn, person)
                self._audit(conn, [audit.Event(f"login:{mode}", "login", person, key_id, "code-sent")])
                return address, code
            return made

        result = self._run_write(work)
        if isinstance(result, RateLimited):
            raise result
        return result

    def login(self, mode: str, ident: str, code: str, client: str, policy: LoginPolicy) -> tuple[str, str]:
        """Exchange a code for a session: (person uuid, session token)."""
        def work(conn: Connection) -> tuple[str, str] | VaultError:
            person = login.check_code(conn, self.keyring, mode, ident, code, client, self.default_country, policy,
                                      self.now())
            if isinstance(person, VaultError):
                return person
            _session_id, token = login.open_session(conn, self.keyring, person, policy, self.now())
            self._audit(conn, [audit.Event(f"login:{mode}", "login", person, people.data_key_of(conn, person))])
            return person, token

        result = self._run_write(work)
        if isinstance(result, VaultError):
            raise result
        return result

    def person_session(self, token: str, policy: LoginPolicy) -> tuple[str, str] | None:
        """(session id, person uuid) for a live session token, else None (idle, expired, logged out, forgotten)."""
        digest = self.keyring.api_token_hash(token)
        found = self._run_write(lambda conn: login.find_session(conn, digest, policy, self.now()))
        return None if found is None else (found[0], found[1])

    def console_login(self, grant: apitokens.Grant | None, token_hash: bytes, client: str,
                      policy: LoginPolicy) -> str:
        """Open a DPO console session for the API token whose keyed hash is `token_hash`, whose grant the caller
        looked up (None: wrong, revoked, expired or without the scope dpo). Wrong tokens count against `client`
        (vault/login.py: console_failed); raises Unauthorized for a wrong token, RateLimited while locked out."""
        def work(conn: Connection) -> str | VaultError:
            now = self.now()
            if (refused := login.console_locked(conn, self.keyring, client, now)) is not None:
                return refused
            if grant is None:
                locked = login.console_failed(conn, self.keyring, client, now)
                return locked if locked is not None else Unauthorized("that token cannot open the DPO console")
            login.console_succeeded(conn, self.keyring, client)
            _session_id, token = login.open_session(conn, self.keyring, grant.id, policy, now, kind="dpo",
                                                    grant_hash=token_hash)
            self._audit(conn, [audit.Event(f"console:{grant.name}", "login", None, None)])
            return token

        result = self._run_write(work)
        if isinstance(result, VaultError):
            raise result
        return result

    def console_session(self, token: str, policy: LoginPolicy) -> tuple[str, bytes] | None:
        """(session id, the API token's keyed hash) of a live DPO console session."""
        digest = self.keyring.api_token_hash(token)
        found = self._run_write(lambda conn: login.find_session(conn, digest, policy, self.now(), kind="dpo"))
        return None if found is None or found[2] is None else (found[0], found[2])

    def logout(self, token: str) -> bool:
        digest = self.keyring.api_token_hash(token)
        return self._run_write(lambda conn: login.close_session(conn, digest))

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

def tokenize_events(flows: Sequence[FlowTokenize], spans: Sequence[tuple[int, str | None, int, int]],
                    owner_keys: dict[str, str], conn: Connection, by: str) -> list[audit.Event]:
    """One audit row per flow that made tokens: whose, by which route, which kinds (never the values)."""
    rows = []
    for i, person, start, end in spans:
        if end == start:
            continue
        items = flows[i].items
        key_id = owner_keys.get(person) if person else None
        if person and key_id is None:
            key_id = people.data_key_of(conn, person)
        rows.append(audit.Event(by, "tokenize", person, key_id, "ok", items[0].route,
                                {"kinds": sorted({r.kind for r in items}), "count": len(items)}))
    return rows
def reveal_events(seen: Sequence[tuple[str | None, str, str, bool]], by: str, reveal: str | Sequence[str],
                  purpose: str | None, route: str | None) -> list[audit.Event]:
    """One audit row per person, outcome and mode for a batch of reveals: which kinds, how many, under what purpose.
    `reveal` is the mode of every row of `seen`, or one mode per row."""
    modes = [reveal] * len(seen) if isinstance(reveal, str) else reveal
    groups: dict[tuple[str | None, str, bool, str], list[str]] = {}
    for (owner, key_id, kind, revealed), mode in zip(seen, modes, strict=True):
        groups.setdefault((owner, key_id, revealed, mode), []).append(kind)
    return [
        audit.Event(by, "reveal", owner, key_id if owner else None, "ok" if revealed else "refused", route,
                    {"kinds": sorted(set(kinds)), "count": len(kinds), "reveal": mode, "purpose": purpose})
        for (owner, key_id, revealed, mode), kinds in groups.items()
    ]


def coalesce_events(rows: Sequence[audit.Event]) -> list[audit.Event]:
    """Rows of a group commit that differ only in their counts become one row: the kinds joined, the counts added,
    and `flows` saying how many flows it stands for (1 when nothing was joined)."""
    merged: dict[tuple[Any, ...], tuple[audit.Event, set[str], int, int]] = {}
    for row in rows:
        detail = row.detail or {}
        key = (row.actor, row.action, row.person_id, row.data_key_id, row.status, row.route,
               *sorted((k, str(v)) for k, v in detail.items() if k not in ("kinds", "count", "flows")))
        first, kinds, count, flows = merged.get(key, (row, set(), 0, 0))
        merged[key] = (first, kinds | set(detail.get("kinds", ())), count + int(detail.get("count", 1)),
                       flows + int(detail.get("flows", 1)))
    out = []
    for first, kinds, count, flows in merged.values():
        detail = dict(first.detail or {})
        detail.update(kinds=sorted(kinds), count=count, flows=flows)
        out.append(audit.Event(first.actor, first.action, first.person_id, first.data_key_id, first.status,
                               first.route, detail))
    return out


@dataclass(frozen=True, slots=True)
class FlowReveal:
    """One flow's tokens to reveal: a mode for all or one per token, the consent they need, the route asking."""

    tokens: Sequence[str]
    reveal: str | Sequence[str] = "plain"
    purpose: str | None = None
    route: str | None = None


@dataclass(frozen=True, slots=True)
class FlowTokenize:
    """One flow's values to tokenize, and the person they belong to: (index mode, value) or None."""

    subject: tuple[str, str] | None
    items: Sequence[TokenRequest]


@dataclass(frozen=True, slots=True)
class FlowTokens:
    """A flow's tokens and its person. From tokenize_flows also: the person's data key id (when resolved by an
    index), and each token's expiry and owner, for the sidecar's short cache of deterministic tokens."""

    person: str | None
    tokens: list[str]
    person_key: str | None = None
    expires: list[int | None] | None = None
    owners: list[str | None] | None = None


class _Transient(Unavailable):
    """A deadlock or serialization failure: the transaction was rolled back and may simply be run again."""


_TRANSIENT_SQLSTATES = {"40001", "40P01"}


SCHEMA_HEAD = "0009"  # the newest migration; tests/vault/test_migrations.py keeps this in step


def _schema_is_current(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == SCHEMA_HEAD
    except DBAPIError:
        return False  # no table yet: a new database


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


__all__ = ["SHARED_KEY_ID", "FlowReveal", "FlowTokenize", "FlowTokens", "Vault", "rotate_master_key"]
