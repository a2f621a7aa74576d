"""Identity modes: normalization of each mode, profile indexing and masked display."""

from __future__ import annotations

from typing import Any

import pytest

from vault.identity import INDEX_MODES, MODES, IdentityError, index_values, mask, normalize


def assert_not_echoed(exc: IdentityError, value: object) -> None:
    """The refused value must not appear in the message (a blank one is in every string, so it is skipped)."""
    text = str(value).strip()
    if text:
        assert text not in str(exc)
        assert repr(value) not in str(exc)


def test_modes() -> None:
    assert MODES == ("token", "login", "email", "phone", "custom")
    assert INDEX_MODES == ("login", "email", "phone", "custom")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("john@example.com", "john@example.com"),
        ("John.Doe+tag@Example.COM ", "john.doe+tag@example.com"),
        ("  a@b.co\n", "a@b.co"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("x_y-z!#$%&*/=?^`{|}~@sub-domain.example.co.uk", "x_y-z!#$%&*/=?^`{|}~@sub-domain.example.co.uk"),
        ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
        ("user@mail.xn--p1ai", "user@mail.xn--p1ai"),
        ("user@123.example.com", "user@123.example.com"),
        ("l" * 64 + "@example.com", "l" * 64 + "@example.com"),
        ("a@" + "d" * 63 + ".com", "a@" + "d" * 63 + ".com"),
    ],
)
def test_valid_emails(value: str, expected: str) -> None:
    assert normalize("email", value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "a@b",
        "a@b.c",
        "a@-b.com",
        "a@b-.com",
        "a@b..com",
        "a..b@c.com",
        ".a@b.com",
        "a.@b.com",
        "<script>@x.com",
        "a@b.c0m",
        "a@b.123",
        "a@[127.0.0.1]",
        "a@b.com.",
        "a b@c.com",
        "a@b@c.com",
        "a@b.com\nx@y.com",
        '"quoted"@example.com',
        "no-at-sign.example.com",
        "@example.com",
        "jöhn@example.com",
        "\u212aim@example.com",  # the Kelvin sign, which lower() would turn into an ASCII "k"
        "l" * 65 + "@example.com",
        "a@" + "d" * 64 + ".com",
        "a" * 300,
        "a" * 290 + "@example.com",
        "",
        "   ",
        None,
        42,
        ["a@b.com"],
    ],
)
def test_invalid_emails(value: Any) -> None:
    with pytest.raises(IdentityError, match=r"^invalid email address$") as info:
        normalize("email", value)
    assert_not_echoed(info.value, value)


@pytest.mark.parametrize(
    ("value", "country", "expected"),
    [
        ("07700 900123", "GB", "+447700900123"),
        ("07700-900-123", "GB", "+447700900123"),
        ("+44 (0)20 7946 0958", "GB", "+442079460958"),
        ("(020) 7946 0958", "GB", "+442079460958"),
        ("00 44 7700 900123", "GB", "+447700900123"),
        ("+1 415 555 2671", "GB", "+14155552671"),
        ("  +14155552671 ", "GB", "+14155552671"),
        ("(415) 555-2671", "US", "+14155552671"),
        ("415.555.2671", "US", "+14155552671"),
        ("+44 7700 900123", "US", "+447700900123"),
        (7700900123, "GB", "+447700900123"),
        (4155552671, "US", "+14155552671"),
    ],
)
def test_valid_phones(value: Any, country: str, expected: str) -> None:
    assert normalize("phone", value, default_country=country) == expected


@pytest.mark.parametrize(
    ("value", "country"),
    [
        ("0800 FLOWERS", "GB"),  # phonenumbers would read the letters as digits
        ("07700 900123 ext 5", "GB"),  # and drop the extension
        ("call me", "GB"),
        ("tel:+44-7700-900123", "GB"),
        ("12", "GB"),
        ("123", "GB"),
        ("+", "GB"),
        ("+44 20", "GB"),
        ("07700 900123", "US"),
        ("4155552671", "ZZ"),
        ("1" * 65, "GB"),
        ("+44 " + " " * 70 + "7700900123", "GB"),
        ("", "GB"),
        ("   ", "GB"),
        (None, "GB"),
        (True, "GB"),
        (7.5, "GB"),
        (12, "GB"),
    ],
)
def test_invalid_phones(value: Any, country: str) -> None:
    with pytest.raises(IdentityError, match=r"^invalid phone number$") as info:
        normalize("phone", value, default_country=country)
    assert_not_echoed(info.value, value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3f2504e0-4f89-11d3-9a0c-0305e82c3301", "3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
        ("3F2504E0-4F89-11D3-9A0C-0305E82C3301", "3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
        (" 3f2504e0-4f89-11d3-9a0c-0305e82c3301 ", "3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
    ],
)
def test_valid_tokens(value: str, expected: str) -> None:
    assert normalize("token", value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "3f2504e04f8911d39a0c0305e82c3301",
        "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}",
        "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "3f2504e0-4f89-11d3-9a0c-0305e82c330",
        "3f2504e0-4f89-11d3-9a0c-0305e82c33011",
        "3g2504e0-4f89-11d3-9a0c-0305e82c3301",
        "3f2504e0-4f89-11d3-9a0c0305-e82c3301",
        "",
        None,
        123,
    ],
)
def test_invalid_tokens(value: Any) -> None:
    with pytest.raises(IdentityError, match=r"^invalid person token$") as info:
        normalize("token", value)
    assert_not_echoed(info.value, value)


@pytest.mark.parametrize("mode", ["login", "custom"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice", "alice"),
        ("  MixedCase  ", "MixedCase"),
        ("with space", "with space"),
        ("Zoë-李", "Zoë-李"),
        (12345, "12345"),
        (0, "0"),
        ("x" * 256, "x" * 256),
    ],
)
def test_valid_login_and_custom(mode: str, value: Any, expected: str) -> None:
    assert normalize(mode, value) == expected


@pytest.mark.parametrize("mode", ["login", "custom"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "must be a non-empty string of at most 256 characters"),
        ("   ", "must be a non-empty string of at most 256 characters"),
        ("x" * 257, "must be a non-empty string of at most 256 characters"),
        (None, "must be a non-empty string of at most 256 characters"),
        (True, "must be a non-empty string of at most 256 characters"),
        (1.5, "must be a non-empty string of at most 256 characters"),
        (["alice"], "must be a non-empty string of at most 256 characters"),
        ("ali\x00ce", "must not contain control characters"),
        ("ali\nce", "must not contain control characters"),
        ("ali\x1bce", "must not contain control characters"),
        ("ali\x7fce", "must not contain control characters"),
        ("ali\ud800ce", "must not contain control characters"),
    ],
)
def test_invalid_login_and_custom(mode: str, value: Any, message: str) -> None:
    with pytest.raises(IdentityError, match=rf"^{mode} {message}$") as info:
        normalize(mode, value)
    assert_not_echoed(info.value, value)


def test_unknown_mode() -> None:
    with pytest.raises(
        IdentityError, match=r"^unknown mode 'foo': use one of token, login, email, phone, custom$"
    ):
        normalize("foo", "x")


def test_unknown_mode_is_cut_short() -> None:
    with pytest.raises(IdentityError) as info:
        normalize("m" * 100, "x")
    assert f"'{'m' * 32}'" in str(info.value)
    assert "m" * 33 not in str(info.value)


def test_index_values() -> None:
    profile = {
        "login": "  Bob ",
        "email": "Bob@Example.com",
        "phone": "07700 900123",
        "custom": None,
        "name": "Bob Smith",
        "token": "not looked at",
        "address": {"email": "nested@example.com"},
    }
    assert index_values(profile) == {"login": "Bob", "email": "bob@example.com", "phone": "+447700900123"}
    assert index_values({"phone": "(415) 555-2671", "custom": 7}, default_country="US") == {
        "phone": "+14155552671",
        "custom": "7",
    }
    assert index_values({}) == {}


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        (
            {"login": "bob", "email": "bob-at-example.com", "phone": "07700 900123"},
            "field 'email': invalid email address",
        ),
        ({"login": "bob", "phone": "0800 SECRETS"}, "field 'phone': invalid phone number"),
        ({"login": "b\x00b"}, "field 'login': login must not contain control characters"),
        ({"custom": ""}, "field 'custom': custom must be a non-empty string of at most 256 characters"),
    ],
)
def test_index_values_names_the_bad_field(profile: dict[str, Any], message: str) -> None:
    with pytest.raises(IdentityError) as info:
        index_values(profile)
    assert str(info.value) == message
    for value in profile.values():
        assert_not_echoed(info.value, value)


def test_index_values_needs_an_object() -> None:
    with pytest.raises(IdentityError, match=r"^a profile must be a JSON object$"):
        index_values(["email", "a@b.com"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("email", "john@example.com", "j***@example.com"),
        ("email", "J.Doe+tag@mail.example.co.uk", "J***@mail.example.co.uk"),
        ("email", "not-an-email", "n***"),
        ("email", "@example.com", "@***"),
        ("email", "john@", "j***"),
        ("email", "", ""),
        ("phone", "+44 7700 900123", "+** **** **0123"),
        ("phone", "(415) 555-2671", "(***) ***-2671"),
        ("phone", "no digits", "n***"),
        ("card", "4111 1111 1111 1111", "**** **** **** 1111"),
        ("card", "4111111111111111", "************1111"),
        ("ssn", "123-45-6789", "***-**-6789"),
        ("iban", "GB82 WEST 1234 5698 7654 32", "GB** WEST **** **** **54 32"),
        ("account", "12345", "*2345"),
        ("account", "1234", "****"),
        ("account", "12-3", "**-*"),
        ("account", "", ""),
        ("ip", "203.0.113.7", "203.0.113.*"),
        ("ip", " 10.0.0.255 ", "10.0.0.*"),
        ("ip", "2001:db8:85a3::8a2e:370:7334", "2001:db8:85a3:*"),
        ("ip", "2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8:0:*"),
        ("ip", "::1", "0:0:0:*"),
        ("ip", "203.0.113.300", "2***"),
        ("ip", "localhost", "l***"),
        ("ip", "", ""),
        ("name", "Alice Smith", "A***"),
        ("name", "A", "A***"),
        ("address", "1 High Street, Leeds", "1***"),
        ("anything", "", ""),
    ],
)
def test_mask(kind: str, value: str, expected: str) -> None:
    assert mask(kind, value) == expected


def test_mask_does_not_reveal_length() -> None:
    assert mask("name", "Al") == mask("name", "Alexandra-Katharina")
    assert mask("email", "j@example.com") == mask("email", "jonathan.livingston@example.com")
