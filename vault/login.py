"""Passwordless login: one-time codes by email or SMS, limits on tries, and the sessions a login opens.

The counters must survive the refusal they cause, so these functions return the refusal (an exception object)
instead of raising it inside the transaction, which would roll the counting back; the Vault raises it after the
commit. Nothing here may tell a caller whether an identity is known: a code is "sent" for every identity (only known
ones get a message), limits count unknown identities exactly like known ones, and a wrong code for an unknown
identity fails like a wrong code for a known one. Codes, session tokens, identities and client addresses are kept
only as keyed hashes.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select, update

from vault.errors import BadInput, RateLimited, Unauthorized
from vault.identity import IdentityError, normalize
from vault.keys import KeyRing
from vault.models import login_codes_table as codes
from vault.models import people_table as people
from vault.models import person_sessions_table as sessions
from vault.models import rate_limits_table as limits

LOGIN_MODES = ("email", "phone")
CODE_DIGITS = 6
SESSION_PREFIX = "tbs_"  # a person's session
DPO_PREFIX = "tbd_"  # a DPO console session
_HOUR = 3600
_WRONG = "the code is wrong or has expired; ask for a new one"


@dataclass(frozen=True)
class Policy:
    code_ttl: int = 600
    max_attempts: int = 5
    lockout: int = 900
    codes_per_hour: int = 5
    client_per_hour: int = 30
    session_idle: int = 1800
    session_absolute: int = 43200


def identity_of(keyring: KeyRing, mode: str, ident: str, country: str) -> tuple[str, bytes]:
    """The normalised identity and its keyed hash (the same hash people's indexes use)."""
    if mode not in LOGIN_MODES:
        raise BadInput("log in by email or phone")
    try:
        value = normalize(mode, ident, country)
    except IdentityError as exc:
        raise BadInput(str(exc)) from None
    return value, keyring.lookup_hash(f"idx|{mode}", value)


def _limit_key(keyring: KeyRing, scope: str, value: bytes | str) -> bytes:
    raw = value.hex() if isinstance(value, bytes) else value
    return keyring.lookup_hash(f"limit|{scope}", raw)


def _locked(until: int, now: int) -> RateLimited:
    minutes = max(1, (until - now + 59) // 60)
    return RateLimited(f"too many attempts; try again in {minutes} minute{'s' if minutes > 1 else ''}")


def _check_lock(conn: Connection, key: bytes, now: int) -> RateLimited | None:
    row = conn.execute(select(limits.c.locked_until).where(limits.c.key == key)).first()
    if row is not None and row.locked_until is not None and row.locked_until > now:
        return _locked(row.locked_until, now)
    return None


def _count(conn: Connection, key: bytes, now: int, per_hour: int, lockout: int) -> RateLimited | None:
    """One more attempt under `key`; past `per_hour` in the current hour the key is locked for `lockout`."""
    if (refused := _check_lock(conn, key, now)) is not None:
        return refused
    # "count" is also a tuple method of Row: read it under another name.
    row = conn.execute(select(limits.c.window_start, limits.c.count.label("n")).where(limits.c.key == key)).first()
    if row is None:
        conn.execute(insert(limits).values(key=key, window_start=now, count=1, locked_until=None))
    elif now - row.window_start >= _HOUR:
        conn.execute(update(limits).where(limits.c.key == key).values(window_start=now, count=1, locked_until=None))
    elif row.n + 1 > per_hour:
        conn.execute(update(limits).where(limits.c.key == key).values(locked_until=now + lockout))
        return _locked(now + lockout, now)
    else:
        conn.execute(update(limits).where(limits.c.key == key).values(count=row.n + 1))
    return None


def _code_hash(keyring: KeyRing, identity: bytes, code: str) -> bytes:
    return keyring.lookup_hash("login-code", identity.hex() + ":" + code)


def request_code(conn: Connection, keyring: KeyRing, mode: str, ident: str, client: str, country: str,
                 policy: Policy, now: int) -> tuple[str, str, str] | RateLimited | None:
    """A new code for a known identity: (person uuid, normalised address, code) to send; None for an unknown one.
    Either way the same limits count, so the caller's answer can be the same."""
    value, identity = identity_of(keyring, mode, ident, country)
    for scope, key, per_hour in (("client", client, policy.client_per_hour),
                                 ("send", identity, policy.codes_per_hour)):
        if (refused := _count(conn, _limit_key(keyring, scope, key), now, per_hour, policy.lockout)) is not None:
            return refused
    column = people.c[f"{mode}_idx"]
    person = conn.execute(select(people.c.id).where(column == identity)).scalar()
    if person is None:
        return None
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    conn.execute(delete(codes).where(codes.c.identity == identity))
    conn.execute(insert(codes).values(identity=identity, person_id=person, attempts=0,
                                      code_hash=_code_hash(keyring, identity, code), expires_at=now + policy.code_ttl))
    return person, value, code


def check_code(conn: Connection, keyring: KeyRing, mode: str, ident: str, code: str, client: str, country: str,
               policy: Policy, now: int) -> str | RateLimited | Unauthorized:
    """The person whose code this is; the code is used up. A wrong code counts against the identity, and after
    `max_attempts` the identity is locked (known or not: the answers are the same)."""
    _value, identity = identity_of(keyring, mode, ident, country)
    guess_key = _limit_key(keyring, "guess", identity)
    if (refused := _check_lock(conn, guess_key, now)) is not None:
        return refused
    client_key = _limit_key(keyring, "client", client)
    if (refused := _count(conn, client_key, now, policy.client_per_hour, policy.lockout)) is not None:
        return refused
    row = conn.execute(select(codes).where(codes.c.identity == identity)).first()
    good = (row is not None and row.expires_at > now and isinstance(code, str) and code.isdigit()
            and hmac.compare_digest(_code_hash(keyring, identity, code), row.code_hash))
    if row is not None and good:
        conn.execute(delete(codes).where(codes.c.identity == identity))
        conn.execute(delete(limits).where(limits.c.key == guess_key))
        return str(row.person_id)
    if row is not None and row.attempts + 1 >= policy.max_attempts:
        conn.execute(delete(codes).where(codes.c.identity == identity))  # this code can no longer be guessed
    elif row is not None:
        conn.execute(update(codes).where(codes.c.identity == identity).values(attempts=row.attempts + 1))
    # The wrong guesses of an identity are counted whether it is known or not.
    return _failed(conn, guess_key, now, policy.max_attempts, policy.lockout) or Unauthorized(_WRONG)


def _failed(conn: Connection, key: bytes, now: int, most: int, lockout: int) -> RateLimited | None:
    """One more failure under `key`; the refusal once it makes `most` in the hour (then locked for `lockout`). A new
    hour, or a lockout served, starts the count again."""
    row = conn.execute(select(limits.c.window_start, limits.c.locked_until, limits.c.count.label("n"))
                       .where(limits.c.key == key)).first()
    if row is None or now - row.window_start >= _HOUR or row.locked_until is not None:
        conn.execute(delete(limits).where(limits.c.key == key))
        conn.execute(insert(limits).values(key=key, window_start=now, count=1, locked_until=None))
        count = 1
    else:
        count = row.n + 1
        conn.execute(update(limits).where(limits.c.key == key).values(count=count))
    if count >= most:
        conn.execute(update(limits).where(limits.c.key == key).values(locked_until=now + lockout))
        return _locked(now + lockout, now)
    return None


# The DPO console: wrong API tokens pasted from one client address, counted per hour before it is locked out.
CONSOLE_PER_HOUR = 10
CONSOLE_LOCKOUT = _HOUR


def console_locked(conn: Connection, keyring: KeyRing, client: str, now: int) -> RateLimited | None:
    """The refusal when `client` is locked out of the console's login, else None."""
    return _check_lock(conn, _limit_key(keyring, "console", client), now)


def console_failed(conn: Connection, keyring: KeyRing, client: str, now: int) -> RateLimited | None:
    """One more wrong token from `client`; the refusal once it makes CONSOLE_PER_HOUR in the hour (the client is
    then locked for CONSOLE_LOCKOUT, whatever token it tries)."""
    return _failed(conn, _limit_key(keyring, "console", client), now, CONSOLE_PER_HOUR, CONSOLE_LOCKOUT)


def console_succeeded(conn: Connection, keyring: KeyRing, client: str) -> None:
    conn.execute(delete(limits).where(limits.c.key == _limit_key(keyring, "console", client)))


def open_session(conn: Connection, keyring: KeyRing, person_id: str, policy: Policy, now: int, *,
                 kind: str = "person", grant_hash: bytes | None = None) -> tuple[str, str]:
    """A new session: (session id, token). Only the token's keyed hash is stored. A DPO console session ("dpo")
    names its API token by id in `person_id` and keeps that token's keyed hash."""
    session_id = str(uuid.uuid4())
    token = (SESSION_PREFIX if kind == "person" else DPO_PREFIX) + secrets.token_urlsafe(32)
    conn.execute(insert(sessions).values(id=session_id, token_hash=keyring.api_token_hash(token), kind=kind,
                                         person_id=person_id, grant_hash=grant_hash, created_at=now,
                                         expires_at=now + policy.session_absolute, last_seen=now))
    return session_id, token


def find_session(conn: Connection, token_hash: bytes, policy: Policy, now: int,
                 kind: str = "person") -> tuple[tuple[str, str, bytes | None] | None, str | None]:
    """A live session of `kind`: (session id, person uuid or API token id, grant hash), or None; and what it needs
    written, for the caller to do in a write transaction only then: "close" (idle or expired: it is no longer
    live), "touch" (last seen over 30 s ago; idle time is coarse so that most requests only read), or None."""
    row = conn.execute(select(sessions).where(sessions.c.token_hash == token_hash)).first()
    if row is None or row.kind != kind:
        return None, None
    if row.expires_at <= now or now - row.last_seen >= policy.session_idle:
        return None, "close"
    return (str(row.id), str(row.person_id), row.grant_hash), ("touch" if now - row.last_seen >= 30 else None)


def settle_session(conn: Connection, token_hash: bytes, need: str, now: int) -> None:
    """Apply what find_session said a session needs."""
    where = sessions.c.token_hash == token_hash
    if need == "close":
        conn.execute(delete(sessions).where(where))
    else:
        conn.execute(update(sessions).where(where).values(last_seen=now))


def close_session(conn: Connection, token_hash: bytes) -> bool:
    return conn.execute(delete(sessions).where(sessions.c.token_hash == token_hash)).rowcount > 0


def close_all(conn: Connection, person_id: str) -> int:
    """Every session of a person (forget-me, or a logout everywhere)."""
    return conn.execute(delete(sessions).where(sessions.c.person_id == person_id)).rowcount
