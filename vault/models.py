"""The vault's tables. Values are only ever stored sealed; lookups go through keyed hashes.

The hot paths (batch tokenize/detokenize) use these tables through SQLAlchemy Core; the ORM classes serve the
schema, Alembic and the colder paths.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, MetaData, String, Table, Text
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
    brief: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # yes, no, revoked
    given_at: Mapped[int | None] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    method: Mapped[str | None] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(128))


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
