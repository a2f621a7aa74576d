"""AES-256-GCM sealing with associated data that binds each ciphertext to its row and kind.

Layout of a sealed blob: one version byte, a fresh random 96-bit nonce, then ciphertext and tag. The version byte
leaves room to change the algorithm without guessing what old rows hold.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.errors import Tampered

_VERSION = b"\x01"
_NONCE_BYTES = 12


def seal(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return _VERSION + nonce + aead.encrypt(nonce, plaintext, aad)


def unseal(aead: AESGCM, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
        raise Tampered("a stored value is malformed (integrity check failed)")
    try:
        return aead.decrypt(blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :], aad)
    except InvalidTag:
        raise Tampered("a stored value failed its integrity check (altered, moved, or a wrong key)") from None


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap_data_key(wrap: AESGCM, key_id: str, key: bytes) -> bytes:
    return seal(wrap, key, b"datakey|" + key_id.encode())


def unwrap_data_key(wrap: AESGCM, key_id: str, wrapped: bytes) -> AESGCM:
    return AESGCM(unseal(wrap, wrapped, b"datakey|" + key_id.encode()))
