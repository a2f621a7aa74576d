"""The proxy's own log lines: client addresses (and any IP or email) dropped or hashed, everything else intact."""

from __future__ import annotations

import logging
import re

import pytest

from proxy_addons import logfilter
from proxy_addons.logfilter import AddressFilter

KEY = b"k" * 32
HASHED = re.compile(r"addr-[0-9a-f]{12}")


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("mitmproxy.proxy", logging.INFO, __file__, 1, msg, args or None, None)


def scrub(message: str, mode: str = "drop", key: bytes = KEY, *args: object) -> str:
    rec = record(message, *args)
    assert AddressFilter(mode, key).filter(rec) is True  # a record is never suppressed, only rewritten
    return rec.getMessage()


ADDRESSES = [
    "10.1.2.3",
    "192.168.0.254",
    "2001:db8::1",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    "fe80::1%eth0",
    "::1",
    "jo.bloggs+tag@example.co.uk",
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_drop_removes_addresses(address: str) -> None:
    out = scrub(f"client connect from {address} done")
    assert out == "client connect from [address] done"


@pytest.mark.parametrize("address", ADDRESSES)
def test_hash_replaces_addresses_with_a_keyed_hash(address: str) -> None:
    out = scrub(f"client connect from {address} done", "hash")
    m = re.fullmatch(r"client connect from (\S+) done", out)
    assert m and HASHED.fullmatch(m[1]) and address not in out


def test_hash_is_stable_per_address_and_key() -> None:
    line = "error from 10.1.2.3: reset; again 10.1.2.3; other 10.9.9.9"
    first, second = scrub(line, "hash"), scrub(line, "hash")
    assert first == second
    hashes = HASHED.findall(first)
    assert len(hashes) == 3 and hashes[0] == hashes[1] != hashes[2]
    assert HASHED.findall(scrub(line, "hash", b"another key" * 3))[0] != hashes[0]


def test_keep_leaves_everything() -> None:
    line = "client 10.1.2.3 [2001:db8::1]:443 jo@example.com"
    rec = record(line)
    assert AddressFilter("keep", KEY).filter(rec) and rec.getMessage() == line


def test_bracketed_ipv6_with_port_and_ipv4_with_port() -> None:
    out = scrub("client connect [2001:db8::1]:53422")
    assert "2001" not in out and "db8" not in out and out.startswith("client connect [address]")
    assert out.endswith(":53422")
    assert scrub("client connect 10.1.2.3:53422") == "client connect [address]:53422"


def test_ipv4_mapped_ipv6_leaves_no_part_of_the_address() -> None:
    out = scrub("client connect [::ffff:192.168.1.20]:53422")
    assert "192" not in out and "168" not in out and ".1.20" not in out, out
    out = scrub("peer ::ffff:10.20.30.40 closed")
    assert "20.30.40" not in out and ".30" not in out, out


def test_several_addresses_in_one_line_and_format_arguments() -> None:
    out = scrub("%s -> %s (%s)", "drop", KEY, "10.0.0.1:1234", "[2001:db8::2]:443", "kim@example.com")
    assert re.fullmatch(r"\[address\]:1234 -> \[address\]\]?:443 \(\[address\]\)", out), out


@pytest.mark.parametrize("line", [
    "request took 12:34:56.789 to finish",
    "started at 12:34:56",
    "uptime 0:00:05",
    "mitmproxy 12.3.1, python 3.12.1, OpenSSL 3.0.2",
    "version 1.2.3 released",
    "HTTP/1.1 200 OK in 1.25s",
    "ratio 3:2, list[1:3], C++ std::vector",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
])
def test_ordinary_text_is_not_mangled(line: str) -> None:
    assert scrub(line) == line
    assert scrub(line, "hash") == line


def test_a_record_whose_arguments_do_not_format_says_nothing_personal() -> None:
    rec = record("client %s %d", "10.1.2.3", "not a number")
    AddressFilter("drop", KEY).filter(rec)
    assert "10.1.2.3" not in rec.getMessage()


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="drop, hash, keep"):
        AddressFilter("mask")


def test_install_puts_one_filter_on_every_root_handler() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        logfilter.install(AddressFilter("drop", KEY))
        logfilter.install(AddressFilter("hash", KEY))
        filters = [f for f in handler.filters if isinstance(f, AddressFilter)]
        assert len(filters) == 1 and filters[0].mode == "drop"
        rec = record("from 10.1.2.3")
        assert handler.filter(rec) and rec.getMessage() == "from [address]"
    finally:
        root.removeHandler(handler)
