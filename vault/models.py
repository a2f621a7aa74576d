"""The vault's tables. Values are only ever stored sealed; lookups go through keyed hashes.

The hot paths (batch tokenize/detokenize) use these tables through SQLAlchemy Core; the ORM classes serve the
schema, Alembic and the colder paths.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, LargeBinary, MetaData, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    # Named constraints, so later migrations can alter them on SQLite (batch mode) and PostgreSQL alike.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Meta(Base):
    """Small facts about this vault: the key check value, the root API token's hash."""

    __tablename__ = "tb_meta"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DataKey(Base):
    """A data key wrapped by the master key: one per person, plus one shared by tokens that belong to no one.

    Forgetting a person deletes their row here: every value sealed under it is gone for good (crypto-shredding).
    """

    __tablename__ = "tb_data_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Person(Base):
    __tablename__ = "tb_people"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    data_key_id: Mapped[str] = mapped_column(String(36), ForeignKey("tb_data_keys.id"))
    profile: Mapped[bytes] = mapped_column(LargeBinary)
    login_idx: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    email_idx: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    phone_idx: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    custom_idx: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class Token(Base):
    """A token and its sealed value. What the token is (kind, format, owner, expiry, route) is known here,
    never from the token string itself."""

    __tablename__ = "tb_tokens"
    token: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(16))
    value: Mapped[bytes] = mapped_column(LargeBinary)
    # Keyed hash of (kind, format, value) for deterministic tokens; unique, so two writers racing on the same
    # value end with one token. NULL for random tokens (NULLs never collide).
    lookup: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    owner_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("tb_people.id"), index=True)
    data_key_id: Mapped[str] = mapped_column(String(36), ForeignKey("tb_data_keys.id"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, index=True)
    route: Mapped[str | None] = mapped_column(String(128))


class Forgotten(Base):
    """People who were forgotten, so that a restore of an older backup can forget them again."""

    __tablename__ = "tb_forgotten"
    person_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    forgotten_at: Mapped[int] = mapped_column(BigInteger)


tokens_table = cast(Table, Token.__table__)
people_table = cast(Table, Person.__table__)
data_keys_table = cast(Table, DataKey.__table__)
meta_table = cast(Table, Meta.__table__)
forgotten_table = cast(Table, Forgotten.__table__)


class Agreement(Base):
    """A person's consent to one purpose (Databunker: agreement on a legal basis, named by its brief)."""

    __tablename__ = "tb_agreements"
    person_id: Mapped[str] = mapped_column(String(36), ForeignKey("tb_people.id"), primary_key=True)
    brief: Mapped[str] = mapped_column(String(65), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # yes, no, revoked
    given_at: Mapped[int | None] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    method: Mapped[str | None] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(128))
    modified_by: Mapped[str | None] = mapped_column(String(64))  # Databunker's lastmodifiedby


agreements_table = cast(Table, Agreement.__table__)


class ApiToken(Base):
    """A scoped access token for the API (the sidecar's, an app's): only its keyed hash is kept."""

    __tablename__ = "tb_api_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    scopes: Mapped[str] = mapped_column(Text)  # space-separated
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


api_tokens_table = cast(Table, ApiToken.__table__)


class AuditEvent(Base):
    """One operation on personal data: who (the token that acted), when, what, result. `detail` (before/after,
    the fields involved) is sealed under the person's data key, so forget-me leaves a row that proves what was
    done without readable PII. Rows are chained: `row_hash` is a keyed hash over this row and the previous
    row's hash, so an edit or a deletion anywhere breaks every later link (`tokenbunker audit verify`)."""

    __tablename__ = "tb_audit"
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    atoken: Mapped[str] = mapped_column(String(36), unique=True)
    at: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    person_id: Mapped[str | None] = mapped_column(String(36), index=True)  # no FK: rows outlive the person
    route: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    data_key_id: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[bytes | None] = mapped_column(LargeBinary)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    row_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


audit_table = cast(Table, AuditEvent.__table__)


class OutboxEvent(Base):
    """A callback to the backend (profilenew, forgetme, ...), written in the same transaction as the change it
    reports, then delivered by a worker with retries: an API call never waits on the backend. Bodies carry
    person tokens (uuids), never profile values."""

    __tablename__ = "tb_outbox"
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    event: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[int] = mapped_column(BigInteger)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(String(200))
    failed_at: Mapped[int | None] = mapped_column(BigInteger)  # given up after callbacks.max_attempts (0008)


outbox_table = cast(Table, OutboxEvent.__table__)


class LegalBasis(Base):
    """A purpose people can agree to (Databunker: legal basis, named by its brief). Not personal data."""

    __tablename__ = "tb_legal_bases"
    brief: Mapped[str] = mapped_column(String(65), primary_key=True)
    module: Mapped[str] = mapped_column(String(64))
    shortdesc: Mapped[str] = mapped_column(String(256))
    fulldesc: Mapped[str] = mapped_column(Text)
    basistype: Mapped[str] = mapped_column(String(32))  # consent, contract, legal-requirement, ...
    requiredmsg: Mapped[str] = mapped_column(Text)
    usercontrol: Mapped[bool] = mapped_column(Boolean)
    requiredflag: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))  # active, deleted
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class ProcessingActivity(Base):
    """What the organisation does with personal data (Databunker: processing activity). Not personal data."""

    __tablename__ = "tb_processing_activities"
    activity: Mapped[str] = mapped_column(String(65), primary_key=True)
    title: Mapped[str] = mapped_column(String(256))
    script: Mapped[str] = mapped_column(Text)
    fulldesc: Mapped[str] = mapped_column(Text)
    applicableto: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class ActivityBasis(Base):
    """A processing activity's link to a legal basis it relies on."""

    __tablename__ = "tb_activity_bases"
    activity: Mapped[str] = mapped_column(String(65), ForeignKey("tb_processing_activities.activity"),
                                          primary_key=True)
    brief: Mapped[str] = mapped_column(String(65), ForeignKey("tb_legal_bases.brief"), primary_key=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class PendingAgreement(Base):
    """Consent given by email or phone before that person exists. Keyed by the keyed hash of the normalised
    address (the people table's index hash; never the address), and moved to tb_agreements in the transaction that
    creates the person."""

    __tablename__ = "tb_pending_agreements"
    index_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    brief: Mapped[str] = mapped_column(String(65), primary_key=True)
    index_mode: Mapped[str] = mapped_column(String(16))  # email or phone
    status: Mapped[str] = mapped_column(String(16))  # yes, no, revoked
    given_at: Mapped[int | None] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    method: Mapped[str | None] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(128))
    modified_by: Mapped[str | None] = mapped_column(String(64))


legal_bases_table = cast(Table, LegalBasis.__table__)
activities_table = cast(Table, ProcessingActivity.__table__)
activity_bases_table = cast(Table, ActivityBasis.__table__)
pending_agreements_table = cast(Table, PendingAgreement.__table__)


class LoginCode(Base):
    """The one-time login code waiting for an identity (email or phone, by keyed hash): only a keyed hash of the
    code is kept, it expires in minutes, is used once, and dies after a few wrong tries."""

    __tablename__ = "tb_login_codes"
    identity: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    person_id: Mapped[str] = mapped_column(String(36))
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    expires_at: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer)


class RateLimit(Base):
    """Counters for login attempts per identity and per client (keyed hashes), shared by every replica."""

    __tablename__ = "tb_rate_limits"
    key: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[int | None] = mapped_column(BigInteger)


class PersonSession(Base):
    """A logged-in session (the portal's cookie, the xtoken /v1/login answers, a DPO's console): only its keyed
    hash is kept. It ends when idle too long, at its absolute expiry, or at logout."""

    __tablename__ = "tb_person_sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    # "person": person_id is the person's uuid; "dpo": a DPO console session, person_id names the API token
    # (its id, or "root") and grant_hash its keyed hash, checked again on every request (revocation ends it).
    kind: Mapped[str] = mapped_column(String(8))
    person_id: Mapped[str] = mapped_column(String(36), index=True)
    grant_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    last_seen: Mapped[int] = mapped_column(BigInteger)


login_codes_table = cast(Table, LoginCode.__table__)
rate_limits_table = cast(Table, RateLimit.__table__)
person_sessions_table = cast(Table, PersonSession.__table__)


class AppRecord(Base):
    """A person's record for one app (Databunker: userapp): a JSON object sealed under the person's data key,
    with associated data binding it to the person and the app."""

    __tablename__ = "tb_app_records"
    person_id: Mapped[str] = mapped_column(String(36), ForeignKey("tb_people.id"), primary_key=True)
    app: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


app_records_table = cast(Table, AppRecord.__table__)


class Session(Base):
    """Session data (IP, user agent, ...) under a client-chosen uuid: sealed under the linked person's data key,
    or the shared key when it is linked to no one. Expired sessions read as missing until they are purged."""

    __tablename__ = "tb_sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    person_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("tb_people.id"), index=True)
    data_key_id: Mapped[str] = mapped_column(String(36), ForeignKey("tb_data_keys.id"))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, index=True)


sessions_table = cast(Table, Session.__table__)


class SharedRecord(Base):
    """A time-limited share of some fields of a person's profile, app record or session (Databunker: shared
    record). It holds the field names, never their values: GET /v1/get/{record} reads them when asked."""

    __tablename__ = "tb_shared_records"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    person_id: Mapped[str] = mapped_column(String(36), ForeignKey("tb_people.id"), index=True)
    fields: Mapped[str] = mapped_column(Text)  # JSON array of dotted paths
    app: Mapped[str | None] = mapped_column(String(32))
    session_id: Mapped[str | None] = mapped_column(String(36))
    partner: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


shared_records_table = cast(Table, SharedRecord.__table__)


class DpoRequest(Base):
    """A change that waits for a DPO's approval (forget-me, change-profile, change-app-data, agreement-withdraw).
    The change itself is sealed under the person's data key (so forget-me shreds it too); so is a cancel reason.
    No FK to the person: a decided request is the record of what was asked, after the person is gone."""

    __tablename__ = "tb_requests"
    rtoken: Mapped[str] = mapped_column(String(36), primary_key=True)
    action: Mapped[str] = mapped_column(String(32))
    person_id: Mapped[str] = mapped_column(String(36), index=True)
    app: Mapped[str | None] = mapped_column(String(64))
    brief: Mapped[str | None] = mapped_column(String(64))
    data_key_id: Mapped[str] = mapped_column(String(36))
    change: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), index=True)  # open, approved, canceled
    requested_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[bytes | None] = mapped_column(LargeBinary)


requests_table = cast(Table, DpoRequest.__table__)


class Expiration(Base):
    """When a person's record expires (is forgotten) unless retained (Databunker's /v1/exp). `exptoken` is the
    person's own link to retain or delete. No FK: the row stays, status expired, after the person is forgotten."""

    __tablename__ = "tb_expirations"
    person_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    exptoken: Mapped[str] = mapped_column(String(36), unique=True)
    exptime: Mapped[int] = mapped_column(BigInteger, index=True)
    status: Mapped[str] = mapped_column(String(16))  # wait, expiring, retain, canceled, expired
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


expirations_table = cast(Table, Expiration.__table__)
