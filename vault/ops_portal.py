"""What the portal needs: a person's own view (vault/selfservice.py) and passwordless login and sessions
(vault/login.py). Mixed into vault.core.Vault: each method is one transaction, as there.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from vault import (
    apitokens,
    audit,
    login,
    people,
    selfservice,
)
from vault.errors import RateLimited, Unauthorized, VaultError
from vault.login import Policy as LoginPolicy
from vault.vaultbase import VaultBase


class PortalOps(VaultBase):
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

    # -- passwordless login (vault/login.py) -------------------------------------------------------------------

    def request_login_code(self, mode: str, ident: str, client: str,
                           policy: LoginPolicy) -> tuple[str, str] | None:
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
        found = self._session(token, policy, "person")
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
        found = self._session(token, policy, "dpo")
        return None if found is None or found[2] is None else (found[0], found[2])

    def _session(self, token: str, policy: LoginPolicy, kind: str) -> tuple[str, str, bytes | None] | None:
        """Checked on every request of a session: a read, and a write only when the session must be touched or
        closed (at most twice a minute per session)."""
        digest = self.keyring.api_token_hash(token)
        now = self.now()
        with self._read() as conn:
            found, need = login.find_session(conn, digest, policy, now, kind)
        if need is not None:
            self._run_write(lambda conn: login.settle_session(conn, digest, need, now))
        return found

    def logout(self, token: str) -> bool:
        digest = self.keyring.api_token_hash(token)
        return self._run_write(lambda conn: login.close_session(conn, digest))

