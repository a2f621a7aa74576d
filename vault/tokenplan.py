"""What a batch tokenize writes, worked out without a database: the token request, and the rows a batch makes.

No SQLAlchemy here. `vault.tokens` runs these inside its transactions; the log scrubber's embedded writer
(`vault.logwriter`) runs them on a bare sqlite3 connection, so `tokenbunker scrub` starts without loading the ORM.
Both make the same rows from the same rules: one place decides what a token row holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.crypto import seal
from vault.errors import BadInput
from vault.formats import FORMATS, check_value_for_format, make_token
from vault.keys import KeyRing

SHARED_KEY_ID = "shared"  # the data key of tokens that belong to no person
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ROUTE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
MAX_VALUE_CHARS = 65536
REVEALS = ("plain", "masked")


@dataclass(frozen=True, slots=True)
class TokenRequest:
    value: str
    kind: str = "generic"
    format: str = "opaque"
    deterministic: bool = False
    ttl: int | None = None  # seconds
    subject: str | None = None  # a person's uuid
    route: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or self.value == "":
            raise BadInput("value must be a non-empty string")
        if len(self.value) > MAX_VALUE_CHARS:
            raise BadInput(f"value is longer than {MAX_VALUE_CHARS} characters")
        if not isinstance(self.kind, str) or not KIND_PATTERN.match(self.kind):
            raise BadInput("kind must match ^[a-z][a-z0-9_-]{0,31}$")
        if self.format not in FORMATS:
            raise BadInput(f"unknown token format: use one of {', '.join(FORMATS)}")
        if not isinstance(self.deterministic, bool):
            raise BadInput("deterministic must be true or false")
        if self.ttl is not None and (isinstance(self.ttl, bool) or not isinstance(self.ttl, int) or self.ttl <= 0):
            raise BadInput("ttl must be a positive duration")
        if self.route is not None and (not isinstance(self.route, str) or not ROUTE_PATTERN.match(self.route)):
            raise BadInput("route must be a short name of letters, digits and _.:-")
        check_value_for_format(self.format, self.value)


def aad(token: str, kind: str) -> bytes:
    return f"tok|{token}|{kind}".encode()


def lookup_scope(req: TokenRequest) -> str:
    return f"tok|{req.kind}|{req.format}"



INSERT_COLUMNS = ("token", "kind", "format", "value", "lookup", "owner_id", "data_key_id", "created_at",
                  "expires_at", "route")

Existing = dict[bytes, tuple[str, str | None, int | None]]  # lookup hash -> (token, owner, expires_at)


# The stored deterministic tokens of a batch's lookups ({marks}: the driver's placeholders, one per lookup).
BY_LOOKUP_SQL = "SELECT token, lookup, expires_at, owner_id FROM tb_tokens WHERE lookup IN ({marks})"


def split_found(rows: Iterable[Sequence[Any]], now: int, existing: Existing, expired: list[str]) -> None:
    """BY_LOOKUP_SQL's rows into the live tokens by lookup (`existing`) and the expired ones (`expired`: their values
    are gone; the values get new tokens)."""
    for token, lookup, expires_at, owner_id in rows:
        if expires_at is not None and expires_at <= now:
            expired.append(token)
        else:
            existing[bytes(lookup)] = (token, owner_id, expires_at)


def lookups_of(keyring: KeyRing, reqs: Sequence[TokenRequest]) -> list[bytes | None]:
    """Each request's lookup hash (deterministic requests only)."""
    return [keyring.lookup_hash(lookup_scope(r), r.value) if r.deterministic else None for r in reqs]


@dataclass
class Plan:
    tokens: list[str]  # one per request, in order
    new_rows: list[tuple[Any, ...]]  # in INSERT_COLUMNS order, sorted by lookup
    adopted: list[dict[str, Any]]  # unowned deterministic tokens that the batch gives an owner: t, owner_id, ...


def plan(
    reqs: Sequence[TokenRequest],
    lookups: Sequence[bytes | None],
    owner_of: Sequence[str | None],
    owners: dict[str, str],
    aeads: dict[str, AESGCM],
    existing: Existing,
    now: int,
    expiries: list[int | None] | None = None,
    owners_out: list[str | None] | None = None,
) -> Plan:
    """The tokens of a batch and the rows to write. `existing` holds the live deterministic tokens already stored
    under the batch's lookups (it is updated with the owners given here); `owners` maps each owner to its data key
    id, and `aeads` each data key id to its key."""
    out: list[str] = []
    new_rows: list[tuple[Any, ...]] = []
    adopted: list[dict[str, Any]] = []
    made: dict[bytes, str] = {}  # deterministic values made earlier in this same batch
    made_expiry: dict[bytes, int | None] = {}
    made_owner: dict[bytes, str | None] = {}
    batch_tokens: set[str] = set()
    for req, lk, subject in zip(reqs, lookups, owner_of, strict=True):
        if lk is not None:
            hit = existing.get(lk)
            if hit is not None:
                hit_token, hit_owner, hit_expiry = hit
                out.append(hit_token)
                if expiries is not None:
                    expiries.append(hit_expiry)
                if owners_out is not None:
                    owners_out.append(hit_owner if hit_owner is not None else subject)  # adopted just below
                if hit_owner is None and subject is not None:
                    # A value first seen unowned (a log IP, say) and now seen with its person becomes theirs, so
                    # forget-me reaches it too.
                    key_id = owners[subject]
                    adopted.append(
                        {
                            "t": hit_token,
                            "owner_id": subject,
                            "data_key_id": key_id,
                            "value": seal(aeads[key_id], req.value.encode(), aad(hit_token, req.kind)),
                        }
                    )
                    existing[lk] = (hit_token, subject, hit_expiry)
                continue
            if lk in made:
                out.append(made[lk])
                if expiries is not None:
                    expiries.append(made_expiry[lk])
                if owners_out is not None:
                    owners_out.append(made_owner[lk])
                continue
        token = make_token(req.format, req.value)
        while token in batch_tokens:
            token = make_token(req.format, req.value)
        batch_tokens.add(token)
        key_id = owners[subject] if subject else SHARED_KEY_ID
        expires_at = now + req.ttl if req.ttl else None
        new_rows.append((
            token, req.kind, req.format, seal(aeads[key_id], req.value.encode(), aad(token, req.kind)), lk, subject,
            key_id, now, expires_at, req.route,
        ))
        if lk is not None:
            made[lk] = token
            made_expiry[lk] = expires_at
            made_owner[lk] = subject
        out.append(token)
        if expiries is not None:
            expiries.append(expires_at)
        if owners_out is not None:
            owners_out.append(subject)
    # Deterministic rows go in lookup order: writers racing on overlapping batches then take the unique-index locks
    # in the same order and one waits for the other instead of both deadlocking.
    new_rows.sort(key=lambda row: row[4] or b"")
    return Plan(out, new_rows, adopted)
