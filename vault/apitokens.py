"""Scoped access tokens: what a token may do, for how long, until revoked. Only keyed hashes are stored.

Scopes: tokenize, detokenize (every kind) or detokenize:KIND[,KIND...], tokens:read, tokens:write, users:read,
users:write, consent, scrub, audit:read, dpo, metrics. The root token holds them all, and only it may manage tokens.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, insert, select, update

from vault.errors import BadInput, NotFound
from vault.keys import KeyRing
from vault.models import api_tokens_table as api_tokens

SCOPES = ("tokenize", "detokenize", "tokens:read", "tokens:write", "users:read", "users:write", "consent", "scrub",
          "audit:read", "dpo",
          "metrics")
_KINDS = re.compile(r"^detokenize:([a-z][a-z0-9_-]{0,31}(?:,[a-z][a-z0-9_-]{0,31})*)$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:-]{0,63}$")
PREFIX = "tbx_"
# What a person's own session may do, and only on their own records (vault/web.py checks whose they are).
SELF_SCOPES = frozenset({"users:read", "users:write", "consent", "audit:read"})


@dataclass(frozen=True)
class Grant:
    """Who is calling and what they may do."""

    id: str
    name: str
    scopes: frozenset[str]
    detokenize_kinds: frozenset[str] | None  # None: every kind (or no detokenize at all: see allows)
    person: str | None = None  # a person's own session (/v1/login): acts only on that person's records

    @classmethod
    def root(cls) -> Grant:
        return cls("root", "root", frozenset(SCOPES) | {"root"}, None)

    @classmethod
    def self_service(cls, session_id: str, person: str) -> Grant:
        return cls(session_id, "self", SELF_SCOPES, frozenset(), person)

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or (scope == "detokenize" and self.detokenize_kinds is not None)


def parse_scopes(raw: object) -> tuple[frozenset[str], frozenset[str] | None]:
    items = raw.split() if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
        raise BadInput("scopes: a non-empty list (or space-separated string) of scopes")
    scopes: set[str] = set()
    kinds: set[str] | None = None
    for scope in items:
        if (m := _KINDS.match(scope)) is not None:
            kinds = (kinds or set()) | set(m.group(1).split(","))
        elif scope in SCOPES:
            scopes.add(scope)
        else:
            raise BadInput(f"unknown scope '{scope[:40]}': use {', '.join(SCOPES)} or detokenize:KIND,...")
    if "detokenize" in scopes:
        kinds = None  # every kind
    return frozenset(scopes), (frozenset(kinds) if kinds is not None else None)


def _stored(scopes: frozenset[str], kinds: frozenset[str] | None) -> str:
    parts = sorted(scopes)
    if kinds is not None:
        parts.append("detokenize:" + ",".join(sorted(kinds)))
    return " ".join(parts)


def create(conn: Connection, keyring: KeyRing, name: str, raw_scopes: object, expires_at: int | None,
           now: int) -> tuple[str, str]:
    if not isinstance(name, str) or not NAME.match(name):
        raise BadInput("name: letters, digits and ' _.:-', at most 64")
    scopes, kinds = parse_scopes(raw_scopes)
    token_id = str(uuid.uuid4())
    token = PREFIX + secrets.token_urlsafe(32)
    conn.execute(insert(api_tokens).values(
        id=token_id, name=name, token_hash=keyring.api_token_hash(token), scopes=_stored(scopes, kinds),
        created_at=now, expires_at=expires_at, revoked_at=None,
    ))
    return token_id, token


def find(conn: Connection, token_hash: bytes, now: int) -> Grant | None:
    row = conn.execute(select(api_tokens).where(api_tokens.c.token_hash == token_hash)).first()
    if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    scopes, kinds = parse_scopes(row.scopes)
    return Grant(row.id, row.name, scopes, kinds)


def revoke(conn: Connection, token_id: str, now: int) -> None:
    done = conn.execute(update(api_tokens).where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                        .values(revoked_at=now))
    if done.rowcount == 0:
        raise NotFound("no such token, or already revoked")


def listing(conn: Connection) -> list[dict[str, object]]:
    rows = conn.execute(select(api_tokens).order_by(api_tokens.c.created_at)).all()
    return [{"id": r.id, "name": r.name, "scopes": r.scopes.split(), "created": r.created_at,
             "expires": r.expires_at, "revoked": r.revoked_at} for r in rows]
