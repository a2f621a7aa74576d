"""The vault as a library: open it with a master key, then tokenize, reveal, and keep people's records.

Each public method is one transaction. Flask, mitmproxy and the CLI are thin layers over this class. This module
holds opening the vault, tokens and people; the other areas are mixins, one module each: vault/ops_records.py
(app records, sessions, shared records), ops_consent.py, ops_requests.py (DPO requests, retention), ops_audit.py
(audit, callbacks, backup, metrics) and ops_portal.py (self-service, login); vault/vaultbase.py runs transactions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from vault import (
    apitokens,
    audit,
    consents,
    events,
    login,
    people,
    rawsql,
    tokens,
)
from vault.audit import LIBRARY
from vault.datakeys import SHARED_KEY_ID
from vault.db import WRITE_OPTION, make_engine
from vault.db import db_errors as _db_errors
from vault.errors import BadInput, Conflict, NotFound, VaultError, WrongKey
from vault.formats import TOKEN_PATTERN
from vault.identity import INDEX_MODES, IdentityError, index_values, normalize
from vault.keys import KeyRing, new_vault_secret, open_vault_secret, seal_vault_secret
from vault.models import data_keys_table, meta_table, people_table
from vault.ops_audit import AuditOps
from vault.ops_consent import ConsentOps
from vault.ops_portal import PortalOps
from vault.ops_records import RecordsOps
from vault.ops_requests import RequestsOps
from vault.schemahead import SCHEMA_HEAD, VAULT_SECRET_META
from vault.tokens import TokenInfo, TokenRequest
from vault.vaultbase import VaultBase

_T = TypeVar("_T")


_RETRIES = 6
GRANT_CACHE_SECONDS = 5.0


class Vault(RecordsOps, ConsentOps, RequestsOps, AuditOps, PortalOps, VaultBase):
    """The vault: VaultBase (transactions) and one mixin per area; see each vault/ops_*.py."""

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
        self._close_pins()
        self.engine.dispose()

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
            rows = tokenize_events(flows, spans, owner_keys, conn, by) if by is not None else []
            if created:
                rows.extend(self._claim_pending(conn, created, by or LIBRARY, now))
            self._audit(conn, rows)  # one append to the chain for the whole group
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
        results: list[tuple[list[str | None], list[str | None]] | VaultError]
        results, todo = _reveals_to_do(flows, lambda: ([], []))
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

    def read_flows(self, flows: Sequence[FlowReveal], *, by: str) -> list[
        tuple[list[str | None], list[str | None], list[audit.Event]] | VaultError
    ]:
        """As reveal_flows, but in one read and no write: each flow's values and reasons, and the audit rows of its
        reveals for the caller to record (the sidecar's buffered audit). A flow with a malformed purpose fails
        alone."""
        results: list[tuple[list[str | None], list[str | None], list[audit.Event]] | VaultError]
        results, todo = _reveals_to_do(flows, lambda: ([], [], []))
        if not todo:
            return results
        now = self.now()
        out = list(results)
        with self._read() as conn:
            for i in todo:
                flow = flows[i]
                seen: list[tuple[str | None, str, str, bool]] = []
                modes: list[str] = []
                values, reasons = tokens.detokenize(conn, self.keys, flow.tokens, flow.reveal, now, flow.purpose,
                                                    None, seen, modes)
                out[i] = (values, reasons, reveal_events(seen, by, modes, flow.purpose, flow.route))
        return out

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

    def delete_token(self, token: str, *, by: str = LIBRARY) -> None:
        def work(conn: Connection) -> None:
            owner, key_id, kind = tokens.delete_token(conn, token)
            self._audit(conn, [audit.Event(by, "token-delete", owner, key_id if owner else None,
                                           detail={"kinds": [kind], "count": 1})])

        self._run_write(work)

    def purge_expired(self) -> int:
        with self._write() as conn:
            return tokens.purge_expired(conn, self.now())

    # -- people -----------------------------------------------------------------------------------------------

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
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            events.enqueue(conn, "profilechange", {"token": ref.id, "fields": changed}, self.now())
            # A new email or phone brings the consents given under it before it was theirs.
            old_indexes = index_values(before, self.default_country)
            added = [(ref, m, v) for m, v in index_values(after, self.default_country).items()
                     if old_indexes.get(m) != v]
            claimed = self._claim_pending(conn, added, by, self.now()) if added else []
            self._audit(conn, [audit.Event(by, "change", ref.id, ref.data_key_id,
                                           detail={"before": before, "after": after}), *claimed])
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


def _reveals_to_do[R](flows: Sequence[FlowReveal], empty: Callable[[], R]) -> tuple[list[R | VaultError], list[int]]:
    """Each flow's answer so far (a new `empty()`, or the error of a malformed purpose), and the flows with tokens."""
    results: list[R | VaultError] = []
    todo: list[int] = []
    for i, flow in enumerate(flows):
        try:
            if flow.purpose is not None:
                consents.check_brief(flow.purpose)
        except VaultError as exc:
            results.append(exc)
            continue
        results.append(empty())
        if flow.tokens:
            todo.append(i)
    return results, todo


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


def _schema_is_current(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == SCHEMA_HEAD
    except DBAPIError:
        return False  # no table yet: a new database


def _unlock(engine: Engine, master_key: bytes) -> bytes:
    """The vault secret, opened with the master key; made and sealed on the first start of an empty vault."""
    with _db_errors(), engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        sealed = conn.execute(select(meta_table.c.value).where(meta_table.c.name == VAULT_SECRET_META)).scalar()
        if sealed is not None:
            return open_vault_secret(master_key, bytes.fromhex(sealed))
        if conn.execute(select(func.count()).select_from(data_keys_table)).scalar():
            raise WrongKey("this vault holds data keys but no sealed vault secret; refusing to guess")
        secret = new_vault_secret()
        conn.execute(
            insert(meta_table).values(name=VAULT_SECRET_META, value=seal_vault_secret(master_key, secret).hex())
        )
        return secret


def rotate_master_key(database_url: str, old_key: bytes, new_key: bytes) -> None:
    """Re-seal the vault secret under a new master key. Data keys, lookup hashes and tokens stay as they are;
    running servers keep working, and need the new key when they next start."""
    engine = make_engine(database_url)
    try:
        with _db_errors(), engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
            sealed = conn.execute(select(meta_table.c.value).where(meta_table.c.name == VAULT_SECRET_META)).scalar()
            if sealed is None:
                raise WrongKey("this vault has no sealed vault secret yet: start it once before rotating")
            secret = open_vault_secret(old_key, bytes.fromhex(sealed))
            conn.execute(
                update(meta_table)
                .where(meta_table.c.name == VAULT_SECRET_META)
                .values(value=seal_vault_secret(new_key, secret).hex())
            )
    finally:
        engine.dispose()


__all__ = ["SHARED_KEY_ID", "FlowReveal", "FlowTokenize", "FlowTokens", "Vault", "rotate_master_key"]
