"""Keys, sealing, and what happens when the key or a ciphertext is wrong: it fails loudly, never returns garbage."""

from __future__ import annotations

import os
import secrets
import stat

import pytest
from sqlalchemy import select, update

from vault.core import Vault
from vault.crypto import seal, unseal
from vault.errors import Tampered, WrongKey
from vault.keys import KeyRing, MasterKeyError, generate_master_key, load_master_key, parse_master_key
from vault.models import people_table, tokens_table
from vault.tokens import TokenRequest


def test_generated_key_is_256_bits_of_hex() -> None:
    key = generate_master_key()
    assert len(parse_master_key(key, "test")) == 32
    assert generate_master_key() != key


@pytest.mark.parametrize(
    ("text", "message"),
    [("abc", "64 hex characters"), ("zz" * 32, "0-9, a-f"), ("", "got 0")],
)
def test_bad_master_keys_are_refused_without_echo(text: str, message: str) -> None:
    with pytest.raises(MasterKeyError, match=message) as info:
        parse_master_key(text, "TOKENBUNKER_MASTER_KEY")
    if text:
        assert text not in str(info.value)


def test_master_key_from_env_wins_over_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    file_key, env_key = generate_master_key(), generate_master_key()
    path = tmp_path / "k"
    path.write_text(file_key)
    path.chmod(0o600)
    assert load_master_key(str(path), {"TOKENBUNKER_MASTER_KEY": env_key}) == bytes.fromhex(env_key)
    assert load_master_key(str(path), {}) == bytes.fromhex(file_key)


def test_key_file_readable_by_others_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "k"
    path.write_text(generate_master_key())
    path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        load_master_key(str(path), {})


def test_no_key_at_all_names_the_variable() -> None:
    with pytest.raises(MasterKeyError, match="TOKENBUNKER_MASTER_KEY"):
        load_master_key(None, {})


def test_write_key_file_is_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vault.keys import write_key_file

    path = tmp_path / "master.key"
    write_key_file(path, generate_master_key())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_key_file(path, generate_master_key())


def test_derived_keys_are_separate_and_stable() -> None:
    secret = secrets.token_bytes(32)
    a, b = KeyRing.from_secret(secret), KeyRing.from_secret(secret)
    assert a.lookup_key == b.lookup_key and a.api_key == b.api_key
    assert a.lookup_key != a.api_key and KeyRing.from_secret(secrets.token_bytes(32)).lookup_key != a.lookup_key
    assert a.lookup_hash("idx|email", "x") != a.lookup_hash("idx|login", "x")
    assert "hidden" in repr(a) and a.lookup_key.hex() not in repr(a)


def test_seal_uses_fresh_nonces_and_binds_associated_data() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    one, two = seal(aead, b"v", b"row-1"), seal(aead, b"v", b"row-1")
    assert one != two and one[1:13] != two[1:13]
    assert unseal(aead, one, b"row-1") == b"v"
    with pytest.raises(Tampered):
        unseal(aead, one, b"row-2")
    flipped = bytearray(one)
    flipped[-1] ^= 1
    with pytest.raises(Tampered):
        unseal(aead, bytes(flipped), b"row-1")
    with pytest.raises(Tampered):
        unseal(aead, b"\x01short", b"row-1")


def test_wrong_master_key_is_refused_at_open(database_url: str, master_key: bytes) -> None:
    Vault.open(database_url, master_key).close()
    with pytest.raises(WrongKey, match="master key does not open this vault") as info:
        Vault.open(database_url, secrets.token_bytes(32))
    assert master_key.hex() not in str(info.value)


def test_rotating_the_master_key_keeps_every_value(database_url: str, master_key: bytes) -> None:
    from vault.core import rotate_master_key

    vault = Vault.open(database_url, master_key)
    pid = vault.create_person({"email": "rot@example.com"})
    tokens = vault.tokenize([TokenRequest("rot@example.com", kind="email", deterministic=True, subject=pid),
                             TokenRequest("10.0.0.9", kind="ip")])
    vault.close()
    new_key = secrets.token_bytes(32)
    with pytest.raises(WrongKey):
        rotate_master_key(database_url, secrets.token_bytes(32), new_key)
    rotate_master_key(database_url, master_key, new_key)
    with pytest.raises(WrongKey):
        Vault.open(database_url, master_key)
    rotated = Vault.open(database_url, new_key)
    try:
        assert rotated.detokenize(tokens) == ["rot@example.com", "10.0.0.9"]
        assert rotated.get_person("email", "rot@example.com")[0] == pid
        assert rotated.tokenize([TokenRequest("rot@example.com", kind="email", deterministic=True)]) == tokens[:1]
    finally:
        rotated.close()


def test_swapped_token_ciphertexts_fail_loudly(vault: Vault) -> None:
    a, b = vault.tokenize([TokenRequest("alice@example.com", kind="email"), TokenRequest("bob@example.com",
                                                                                            kind="email")])
    with vault.engine.begin() as conn:
        sealed_a = conn.execute(select(tokens_table.c.value).where(tokens_table.c.token == a)).scalar_one()
        conn.execute(update(tokens_table).where(tokens_table.c.token == b).values(value=sealed_a))
    assert vault.detokenize([a]) == ["alice@example.com"]
    with pytest.raises(Tampered):
        vault.detokenize([b])


def test_flipped_byte_in_a_profile_fails_loudly(vault: Vault) -> None:
    pid = vault.create_person({"email": "carol@example.com"})
    with vault.engine.begin() as conn:
        sealed = conn.execute(select(people_table.c.profile).where(people_table.c.id == pid)).scalar_one()
        broken = bytearray(sealed)
        broken[20] ^= 0x40
        conn.execute(update(people_table).where(people_table.c.id == pid).values(profile=bytes(broken)))
    with pytest.raises(Tampered):
        vault.get_person("token", pid)


def test_profile_moved_to_another_person_fails(vault: Vault) -> None:
    first = vault.create_person({"email": "dan@example.com"})
    second = vault.create_person({"email": "erin@example.com"})
    with vault.engine.begin() as conn:
        sealed = conn.execute(select(people_table.c.profile).where(people_table.c.id == first)).scalar_one()
        conn.execute(update(people_table).where(people_table.c.id == second).values(profile=sealed))
    with pytest.raises(Tampered):
        vault.get_person("token", second)
