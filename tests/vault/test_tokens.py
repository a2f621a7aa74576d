"""Tokenize and detokenize through the library: formats, determinism, ttl, owners, masking, batches."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from tests.conftest import Clock
from vault.core import Vault
from vault.errors import BadInput, NotFound
from vault.formats import TOKEN_PATTERN, luhn_valid
from vault.models import tokens_table
from vault.tokens import TokenRequest


def _count(vault: Vault) -> int:
    with vault.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tokens_table)).scalar_one())


@pytest.mark.parametrize(
    ("value", "fmt", "shape"),
    [
        ("jane@example.com", "opaque", r"^tbk_[a-z2-7]{26}$"),
        ("jane@example.com", "uuid", r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"),
        ("jane@example.com", "email", r"^tbk_[a-z2-7]{20}@token\.invalid$"),
        ("07700 900123", "digits", r"^\d{5} \d{6}$"),
        ("17700 900123", "digits", r"^[1-9]\d{4} \d{6}$"),
        ("4111 1111 1111 1111", "keep-last4", r"^\d{4} \d{4} \d{4} 1111$"),
    ],
)
def test_each_format_has_its_shape_and_round_trips(vault: Vault, value: str, fmt: str, shape: str) -> None:
    [token] = vault.tokenize([TokenRequest(value, kind="x", format=fmt)])
    assert re.match(shape, token) and token != value
    assert vault.detokenize([token]) == [value]
    if fmt in ("opaque", "email", "uuid"):
        assert TOKEN_PATTERN.fullmatch(token)


def test_keep_last4_stays_luhn_valid_for_a_card() -> None:
    from vault.formats import make_token

    for _ in range(200):
        token = make_token("keep-last4", "4111111111111111")
        assert token.endswith("1111") and luhn_valid(token) and token != "4111111111111111"


def test_random_tokens_differ_and_deterministic_repeat(vault: Vault) -> None:
    rand = vault.tokenize([TokenRequest("same@example.com", kind="email")] * 2)
    assert rand[0] != rand[1]
    det = TokenRequest("same@example.com", kind="email", deterministic=True)
    first = vault.tokenize([det, det])
    assert first[0] == first[1]
    assert vault.tokenize([det]) == first[:1]
    # The kind and the format are part of the identity of a deterministic token.
    other_kind = vault.tokenize([TokenRequest("same@example.com", kind="login", deterministic=True)])
    other_fmt = vault.tokenize([TokenRequest("same@example.com", kind="email", format="uuid", deterministic=True)])
    assert len({first[0], other_kind[0], other_fmt[0]}) == 3


def test_deterministic_tokens_agree_across_vault_instances(database_url: str, master_key: bytes) -> None:
    one, two = Vault.open(database_url, master_key), Vault.open(database_url, master_key)
    try:
        req = TokenRequest("10.1.2.3", kind="ip", deterministic=True)
        assert one.tokenize([req]) == two.tokenize([req])
    finally:
        one.close()
        two.close()


def test_ttl_expires_and_a_deterministic_value_gets_a_new_token(vault: Vault, clock: Clock) -> None:
    req = TokenRequest("192.0.2.1", kind="ip", deterministic=True, ttl=60)
    [token] = vault.tokenize([req])
    clock.advance(59)
    assert vault.detokenize([token]) == ["192.0.2.1"]
    assert vault.token_info(token).expires == int(clock.now) + 1
    clock.advance(1)
    assert vault.detokenize([token]) == [None]
    with pytest.raises(NotFound):
        vault.token_info(token)
    [fresh] = vault.tokenize([req])
    assert fresh != token and vault.detokenize([fresh, token]) == ["192.0.2.1", None]


def test_purge_removes_only_expired(vault: Vault, clock: Clock) -> None:
    vault.tokenize([TokenRequest("a", ttl=10), TokenRequest("b")])
    clock.advance(11)
    assert vault.purge_expired() == 1
    assert _count(vault) == 1


def test_masked_reveal_per_kind(vault: Vault) -> None:
    tokens = vault.tokenize(
        [
            TokenRequest("john@example.com", kind="email"),
            TokenRequest("+44 7700 900123", kind="phone"),
            TokenRequest("4111111111111111", kind="card", format="keep-last4"),
            TokenRequest("Johanna", kind="name"),
        ]
    )
    assert vault.detokenize(tokens, "masked") == ["j***@example.com", "+** **** **0123", "************1111", "J***"]


def test_unknown_tokens_and_duplicates_in_one_batch(vault: Vault) -> None:
    [token] = vault.tokenize([TokenRequest("v")])
    assert vault.detokenize([token, "tbk_nope", token]) == ["v", None, "v"]


def test_token_metadata_never_holds_the_value(vault: Vault) -> None:
    pid = vault.create_person({"email": "meta@example.com"})
    [token] = vault.tokenize([TokenRequest("meta@example.com", kind="email", subject=pid, route="signup")])
    info = vault.token_info(token).as_dict()
    assert info["kind"] == "email" and info["subject"] == pid and info["route"] == "signup"
    assert "meta@example.com" not in repr(info)
    vault.delete_token(token)
    assert vault.detokenize([token]) == [None]
    with pytest.raises(NotFound):
        vault.delete_token(token)


def test_tokens_of_a_forgotten_person_resolve_to_nothing(vault: Vault) -> None:
    pid = vault.create_person({"email": "gone@example.com"})
    mine = vault.tokenize([TokenRequest("gone@example.com", kind="email", subject=pid)] * 3)
    [other] = vault.tokenize([TokenRequest("stays@example.com", kind="email")])
    vault.forget_person("email", "gone@example.com")
    assert vault.detokenize([*mine, other]) == [None, None, None, "stays@example.com"]
    assert _count(vault) == 1


def test_unowned_deterministic_token_is_adopted_by_its_person(vault: Vault) -> None:
    """An IP first seen in a log (no owner), then by the sidecar with its person: forget-me reaches it."""
    req = TokenRequest("198.51.100.7", kind="ip", deterministic=True)
    [token] = vault.tokenize([req])
    pid = vault.create_person({"login": "frank"})
    assert vault.tokenize([TokenRequest("198.51.100.7", kind="ip", deterministic=True, subject=pid)]) == [token]
    assert vault.token_info(token).subject == pid
    assert vault.detokenize([token]) == ["198.51.100.7"]
    vault.forget_person("login", "frank")
    assert vault.detokenize([token]) == [None]


def test_unknown_subject_fails_the_whole_batch(vault: Vault) -> None:
    with pytest.raises(NotFound, match="unknown subject"):
        vault.tokenize([TokenRequest("a"), TokenRequest("b", subject="00000000-0000-4000-8000-000000000000")])
    assert _count(vault) == 0


def test_a_purpose_reveals_nothing_until_consent_exists(vault: Vault) -> None:
    [token] = vault.tokenize([TokenRequest("+447700900123", kind="phone")])
    assert vault.detokenize([token], purpose="sms") == [None]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"value": ""}, "non-empty string"),
        ({"value": 5}, "non-empty string"),
        ({"value": "x" * 70000}, "longer than"),
        ({"value": "v", "kind": "Bad Kind"}, "kind must match"),
        ({"value": "v", "format": "rot13"}, "unknown token format"),
        ({"value": "v", "deterministic": "yes"}, "true or false"),
        ({"value": "v", "ttl": -1}, "positive"),
        ({"value": "12", "format": "digits"}, "at least 6 digits"),
        ({"value": "4111 1111", "format": "keep-last4"}, "at least 10 digits"),
        ({"value": "v", "route": "bad route!"}, "route must be"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(BadInput, match=message) as info:
        TokenRequest(**kwargs)
    assert "x" * 100 not in str(info.value)


def test_batches_take_a_fixed_number_of_statements(vault: Vault) -> None:
    from sqlalchemy import event

    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(vault.engine, "before_cursor_execute", count)
    try:
        vault.tokenize([TokenRequest(f"u{i}@example.com", kind="email", deterministic=i % 2 == 0)
                        for i in range(1000)])
        writes = len(statements)
        statements.clear()
        vault.tokenize([TokenRequest(f"v{i}@example.com", kind="email", deterministic=i % 2 == 0)
                        for i in range(10)])
        assert len(statements) == writes
    finally:
        event.remove(vault.engine, "before_cursor_execute", count)


def test_expiry_of_a_deterministic_token_found_again_is_its_first(vault: Vault, clock: Clock) -> None:
    req = TokenRequest("192.0.2.77", kind="ip", deterministic=True, ttl=100)
    [(token, first)] = vault.tokenize_with_expiry([req])
    assert first == int(clock.now) + 100
    clock.advance(60)
    assert vault.tokenize_with_expiry([req, req]) == [(token, first), (token, first)]
    assert vault.tokenize_with_expiry([TokenRequest("x")])[0][1] is None
