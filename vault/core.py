"""The vault as a library: open it with a master key, then tokenize, reveal, and keep people's records.

Each public method is one transaction. Flask, mitmproxy and the CLI are thin layers over this class.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from vault import apitokens, audit, backup, callbacks, consents, events, metrics, people, tokens
from vault.datakeys import SHARED_KEY_ID, DataKeys
from vault.db import READ_OPTION, WRITE_OPTION, make_engine
from vault.errors import BadInput, Conflict, Unavailable, VaultError, WrongKey
from vault.formats import TOKEN_PATTERN
from vault.identity import INDEX_MODES, IdentityError, normalize
from vault.keys import KeyRing, new_vault_secret, open_vault_secret, seal_vault_secret
from vault.models import data_keys_table, forgotten_table, meta_table
from vault.tokens import TokenInfo, TokenRequest

LIBRARY = "library"  # who acted, in the audit trail, when a caller of the library does not say

_T = TypeVar("_T")
_VAULT_SECRET = "vault_secret"
_RETRIES = 6
GRANT_CACHE_SECONDS = 5.0


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

    def tokenize_flows(self, flows: Sequence[FlowTokenize]) -> list[FlowTokens | VaultError]:
        """Several flows' tokens in one transaction (group commit), each flow's values owned by its subject, found
        or created here. A flow whose subject is malformed fails alone; the others go on."""
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
            refs = people.resolve_many(conn, self.keyring, self.keys, by_index, now) if by_index else {}
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
            made = tokens.tokenize(conn, self.keyring, self.keys, reqs, now, subjects, owner_keys) if reqs else []
            out = list(results)
            for i, person, start, end in spans:
                out[i] = FlowTokens(person, made[start:end])
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
        if purpose is not None:
            consents.check_brief(purpose)
        if not token_list:
            return [], []
        seen: list[tuple[str | None, str, str, bool]] | None = [] if by is not None else None
        with self._read() as conn:
            out = tokens.detokenize(conn, self.keys, token_list, reveal, self.now(), purpose, kinds, seen)
        if seen:
            self._run_write(lambda conn: self._audit(conn, reveal_events(seen, by or LIBRARY, reveal, purpose,
                                                                         route)))
        return out

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
            self._audit(conn, [audit.Event(by, "create", ref.id, ref.data_key_id,
                                           detail={"fields": sorted(profile)})])
            events.enqueue(conn, "profilenew", {"token": ref.id}, self.now())
            return ref.id

        try:
            return self._run_write(work)
        except IntegrityError:
            raise Conflict("duplicate index") from None

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
            # Recorded after the key is gone: the row names the person's uuid and counts, nothing readable.
            self._audit(conn, [audit.Event(by, "forget", ref.id, None, detail={"tokens": removed})])
            events.enqueue(conn, "forgetme", {"token": ref.id}, self.now())
            return ref.id

        return self._run_write(work)

    # -- app records, sessions, shared records (vault/records.py) ----------------------------------------------
    # (issue 4: the records work adds its methods here)

    # -- legal bases, processing activities, consent registry (vault/consents.py, vault/registry.py) -----------
    # (issue 4: the consent work adds its methods here)

    # -- DPO requests and retention (vault/requests.py, vault/retention.py) ------------------------------------
    # (issue 4: the requests work adds its methods here)

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

    # -- consents ---------------------------------------------------------------------------------------------

    def give_consent(self, brief: str, mode: str, ident: str, expires_at: int | None = None,
                     method: str | None = None, reference: str | None = None, *, by: str = LIBRARY) -> str:
        def work(conn: Connection) -> str:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            consents.give(conn, ref.id, brief, self.now(), expires_at, method, reference)
            self._audit(conn, [audit.Event(by, "consent-give", ref.id, ref.data_key_id,
                                           detail={"brief": brief, "expires": expires_at})])
            events.enqueue(conn, "consentchange", {"token": ref.id, "brief": brief, "status": "yes"}, self.now())
            return ref.id

        return self._run_write(work)

    def withdraw_consent(self, brief: str, mode: str, ident: str, *, by: str = LIBRARY) -> str:
        def work(conn: Connection) -> str:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            consents.withdraw(conn, ref.id, brief, self.now())
            self._audit(conn, [audit.Event(by, "consent-withdraw", ref.id, ref.data_key_id,
                                           detail={"brief": brief})])
            events.enqueue(conn, "consentchange", {"token": ref.id, "brief": brief, "status": "no"}, self.now())
            return ref.id

        return self._run_write(work)

    def get_consent(self, brief: str, mode: str, ident: str) -> consents.Consent:
        with self._read() as conn:
            ref = people.find(conn, self.keyring, mode, ident, self.default_country)
            return consents.get(conn, ref.id, brief, self.now())


def reveal_events(seen: Sequence[tuple[str | None, str, str, bool]], by: str, reveal: str, purpose: str | None,
                  route: str | None) -> list[audit.Event]:
    """One audit row per person and outcome for a batch of reveals: which kinds, how many, under what purpose."""
    groups: dict[tuple[str | None, str, bool], list[str]] = {}
    for owner, key_id, kind, revealed in seen:
        groups.setdefault((owner, key_id, revealed), []).append(kind)
    return [
        audit.Event(by, "reveal", owner, key_id if owner else None, "ok" if revealed else "refused", route,
                    {"kinds": sorted(set(kinds)), "count": len(kinds), "reveal": reveal, "purpose": purpose})
        for (owner, key_id, revealed), kinds in groups.items()
    ]


@dataclass(frozen=True, slots=True)
class FlowTokenize:
    """One flow's values to tokenize, and the person they belong to: (index mode, value) or None."""

    subject: tuple[str, str] | None
    items: Sequence[TokenRequest]


@dataclass(frozen=True, slots=True)
class FlowTokens:
    person: str | None
    tokens: list[str]


class _Transient(Unavailable):
    """A deadlock or serialization failure: the transaction was rolled back and may simply be run again."""


_TRANSIENT_SQLSTATES = {"40001", "40P01"}


SCHEMA_HEAD = "0008"  # the newest migration; tests/vault/test_migrations.py keeps this in step


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


__all__ = ["SHARED_KEY_ID", "FlowTokenize", "FlowTokens", "Vault", "rotate_master_key"]
