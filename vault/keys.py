"""The master key, the vault secret it seals, and the keys derived from that secret.

master key (outside the database: environment or key file)
  -> seals the vault secret (random, 256 bits, stored sealed in tb_meta)
     -> HKDF: wrap (data keys), lookup (keyed hashes), api (API token hashes), audit (the audit chain): one key
        per job, so a leak of one derived key (say, the lookup key) does not open the sealed values
        -> data keys (one per person, wrapped) -> values
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault.crypto import seal, unseal
from vault.errors import Tampered, VaultError, WrongKey

MASTER_KEY_ENV = "TOKENBUNKER_MASTER_KEY"
_VAULT_SECRET_AAD = b"tokenbunker vault secret v1"


class MasterKeyError(VaultError):
    """The master key is missing or malformed (never says what the key was)."""


def generate_master_key() -> str:
    """A new 256-bit master key as 64 hex characters."""
    return secrets.token_hex(32)


def parse_master_key(text: str, source: str) -> bytes:
    cleaned = text.strip()
    if len(cleaned) != 64:
        raise MasterKeyError(f"{source}: the master key must be 64 hex characters (256 bits), got {len(cleaned)}")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise MasterKeyError(f"{source}: the master key must be 64 hex characters (0-9, a-f)") from None


def load_master_key(key_file: str | None, env: dict[str, str] | None = None) -> bytes:
    """The master key from TOKENBUNKER_MASTER_KEY, else from the named key file."""
    env = dict(os.environ) if env is None else env
    if env.get(MASTER_KEY_ENV):
        return parse_master_key(env[MASTER_KEY_ENV], MASTER_KEY_ENV)
    if key_file:
        path = Path(key_file)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise MasterKeyError(f"{key_file}: master key file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise MasterKeyError(f"{key_file}: cannot read the master key file ({type(exc).__name__})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise MasterKeyError(f"{key_file}: the master key file is readable by others; run: chmod 600 {key_file}")
        return parse_master_key(text, key_file)
    raise MasterKeyError(
        f"no master key: set {MASTER_KEY_ENV} (64 hex characters, from `tokenbunker keys generate`) "
        "or vault.master_key_file"
    )


def write_key_file(path: str | os.PathLike[str], key_hex: str) -> None:
    """Write a key file readable by its owner only (created with 0600, never widened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key_hex + "\n")


def _derive(secret: bytes, label: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tokenbunker/" + label.encode()).derive(
        secret
    )


def _master_wrap(master: bytes) -> AESGCM:
    if len(master) != 32:
        raise MasterKeyError("the master key must be 256 bits")
    return AESGCM(_derive(master, "master-wrap"))


def seal_vault_secret(master: bytes, secret: bytes) -> bytes:
    """The vault secret, sealed by the master key: the one thing the master key opens directly."""
    return seal(_master_wrap(master), secret, _VAULT_SECRET_AAD)


def open_vault_secret(master: bytes, sealed: bytes) -> bytes:
    """Opening it is the key check: AES-GCM's tag fails for any other master key, so a wrong key is refused before
    anything is read or written with it."""
    try:
        return unseal(_master_wrap(master), sealed, _VAULT_SECRET_AAD)
    except Tampered:
        raise WrongKey("the master key does not open this vault (key check failed)") from None


def new_vault_secret() -> bytes:
    return secrets.token_bytes(32)


@dataclass(frozen=True)
class KeyRing:
    """Keys derived from the vault secret, one per job. Built once at start; never logged or stored.

    They hang off a random vault secret rather than the master key itself, so rotating the master key re-seals one
    small blob instead of re-computing every lookup hash and re-wrapping every data key.
    """

    wrap: AESGCM = field(repr=False)
    lookup_key: bytes = field(repr=False)
    api_key: bytes = field(repr=False)
    audit_key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyRing:
        return cls(
            wrap=AESGCM(_derive(secret, "wrap")),
            lookup_key=_derive(secret, "lookup"),
            api_key=_derive(secret, "api"),
            audit_key=_derive(secret, "audit"),
        )

    def lookup_hash(self, scope: str, value: str) -> bytes:
        """Keyed hash for equality lookups (people's indexes, deterministic tokens); scope keeps jobs apart."""
        return hmac.digest(self.lookup_key, scope.encode() + b"\x00" + value.encode(), sha256)

    def api_token_hash(self, token: str) -> bytes:
        return hmac.digest(self.api_key, token.encode(), sha256)

    def audit_hash(self, data: bytes) -> bytes:
        """The audit trail's chain links: keyed, so nobody without the vault secret can forge a valid chain."""
        return hmac.digest(self.audit_key, data, sha256)

    def __repr__(self) -> str:
        return "KeyRing(<hidden>)"
