"""vault.config: defaults, schema errors with lines, environment overrides, listen and duration parsing."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from vault.config import (
    SCHEMA,
    ApiSettings,
    CallbackSettings,
    Config,
    ConfigError,
    DemoSettings,
    LoginSettings,
    NotifySettings,
    PortalSettings,
    ProxySettings,
    ScrubSettings,
    VaultSettings,
    load_config,
    parse_config,
    parse_duration,
    parse_listen,
)


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(text, "config.yaml", env or {})


def error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return str(info.value)


DEFAULTS = Config(
    path="config.yaml",
    vault=VaultSettings("sqlite:///data/tokenbunker.db", None, "GB", True, 10000, 5),
    api=ApiSettings("127.0.0.1:3000", 4194304, 1000, 8),
    proxy=ProxySettings(("rules/example.yaml",), None, None, "127.0.0.1", 8081, None, 10485760, "drop"),
    demo=DemoSettings(True, "127.0.0.1:8080"),
    scrub=ScrubSettings(None),
    notify=NotifySettings(None),
    portal=PortalSettings(True, "Tokenbunker privacy portal"),
    callbacks=CallbackSettings(None, None, None, None, None, None, 10, 12, 2, 3600, 1),
)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "null\n", "---\n", "vault:\napi: null\n"])
def test_empty_file_or_sections_give_defaults(text: str) -> None:
    assert parse(text) == DEFAULTS


def test_schema_and_dataclasses_agree() -> None:
    classes = {"vault": VaultSettings, "api": ApiSettings, "proxy": ProxySettings,
               "scrub": ScrubSettings, "notify": NotifySettings, "portal": PortalSettings, "login": LoginSettings,
               "callbacks": CallbackSettings}
    assert list(SCHEMA) == [f.name for f in dataclasses.fields(Config)][1:-1]
    for section, cls in classes.items():
        assert list(SCHEMA[section]) == [f.name for f in dataclasses.fields(cls)]


FULL = """\
vault:
  database_url: postgresql+psycopg://tb@db/tb
  master_key_file: /run/secrets/master.key
  default_country: US
  auto_migrate: false
  data_key_cache: 0
  pool_size: 0x10
api:
  listen: "[::1]:8443"
  max_body_bytes: 1_048_576
  max_batch: 100000
  threads: 256
proxy:
  rules: [rules/a.yaml, rules/b.yaml]
  vault_url: http://vault:3000
  listen_host: 0.0.0.0
  listen_port: 65535
  upstream: http://127.0.0.1:8080
  max_body_bytes: 1024
scrub:
  rules: []
notify:
  outbox: data/outbox
portal:
  enabled: no
  title: Privacy
"""


def test_every_key_is_read() -> None:
    config = parse(FULL)
    assert config.vault == VaultSettings("postgresql+psycopg://tb@db/tb", "/run/secrets/master.key", "US",
                                         False, 0, 16)
    assert config.api == ApiSettings("[::1]:8443", 1048576, 100000, 256)
    assert (config.api.host, config.api.port) == ("::1", 8443)
    assert config.proxy == ProxySettings(("rules/a.yaml", "rules/b.yaml"), "http://vault:3000", None,
                                         "0.0.0.0", 65535, "http://127.0.0.1:8080", 1024, "drop")
    assert config.scrub.rules == ()
    assert config.notify.outbox == "data/outbox"
    assert config.portal == PortalSettings(False, "Privacy")
    assert config.warnings == ()


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse("").api.threads = 1  # type: ignore[misc]


# (YAML text, line of the mistake, regex for the rest of the message)
BAD_FILES = [
    # unknown names, at the line of the key
    ("vault:\n  pool_size: 2\n  databse_url: x\n", 3,
     r"vault\.databse_url: unknown key \(known: database_url, master_key_file, default_country, "
     r"auto_migrate, data_key_cache, pool_size\)$"),
    ("api: {}\nvalt:\n  pool_size: 1\n", 2,
     r"valt: unknown section \(known: vault, api, proxy, demo, scrub, notify, portal, login, approval, "
     r"retention, callbacks\)$"),
    ("vault:\n  master_key: 00ff\n", 2, r"vault\.master_key: unknown key"),
    ("api:\n  root_token: x\n", 2, r"api\.root_token: unknown key"),
    ("vault:\n  [a, b]: 1\n", 2, r"vault: keys must be plain names$"),
    # duplicates, which PyYAML would silently collapse
    ("vault:\n  pool_size: 2\n  auto_migrate: true\n  pool_size: 3\n", 4,
     r"vault\.pool_size: duplicate key \(first on line 2\)$"),
    ("vault: {}\napi: {}\nvault: {}\n", 3, r"vault: duplicate key \(first on line 1\)$"),
    # shapes
    ("- vault\n", 1, r"the top level must be a mapping of sections \(expected a mapping, got a list\)$"),
    ("just text\n", 1, r"the top level .*got a string 'just text'\)$"),
    ("api: 5\n", 1, r"api: wrong type \(expected a mapping, got an integer 5\)$"),
    ("portal:\n  - enabled\n", 1, r"portal: wrong type \(expected a mapping, got a list\)$"),
    # int
    ("api:\n  threads: abc\n", 2, r"api\.threads: wrong type \(expected an integer, got a string 'abc'\)$"),
    ("api:\n  threads: 1.5\n", 2, r"api\.threads: wrong type \(expected an integer, got a number 1\.5\)$"),
    ("api:\n  threads: true\n", 2, r"api\.threads: wrong type \(expected an integer, got a boolean true\)$"),
    ("api:\n  threads: '8'\n", 2, r"api\.threads: wrong type \(expected an integer, got a string '8'\)$"),
    ("api:\n  threads:\n", 2, r"api\.threads: wrong type \(expected an integer, got null\)$"),
    ("api:\n  threads: [8]\n", 2, r"api\.threads: wrong type \(expected an integer, got a list\)$"),
    ("api:\n  threads: {n: 8}\n", 2, r"api\.threads: wrong type \(expected an integer, got a mapping\)$"),
    ("vault:\n  pool_size: 0\n", 2, r"vault\.pool_size: out of range \(expected an integer >= 1, got 0\)$"),
    ("vault:\n  data_key_cache: -1\n", 2,
     r"vault\.data_key_cache: out of range \(expected an integer >= 0, got -1\)$"),
    ("api:\n  max_batch: 100001\n", 2,
     r"api\.max_batch: out of range \(expected an integer from 1 to 100000, got 100001\)$"),
    ("api:\n  threads: 0\n", 2, r"api\.threads: out of range \(expected an integer from 1 to 256, got 0\)$"),
    ("api:\n  max_body_bytes: 1023\n", 2,
     r"api\.max_body_bytes: out of range \(expected an integer >= 1024, got 1023\)$"),
    ("proxy:\n  listen_port: 65536\n", 2,
     r"proxy\.listen_port: out of range \(expected an integer from 1 to 65535, got 65536\)$"),
    ("proxy:\n  max_body_bytes: 10\n", 2,
     r"proxy\.max_body_bytes: out of range \(expected an integer >= 1024, got 10\)$"),
    # bool
    ("vault:\n  auto_migrate: 'yes'\n", 2,
     r"vault\.auto_migrate: wrong type \(expected true or false, got a string 'yes'\)$"),
    ("portal:\n  enabled: 1\n", 2,
     r"portal\.enabled: wrong type \(expected true or false, got an integer 1\)$"),
    # str and optional str
    ("portal:\n  title: 123\n", 2, r"portal\.title: wrong type \(expected a string, got an integer 123\)$"),
    ("portal:\n  title: 2024-01-01\n", 2,
     r"portal\.title: wrong type \(expected a string, got a date 2024-01-01\)$"),
    ("portal:\n  title: !secret x\n", 2,
     r"portal\.title: wrong type \(expected a string, got a value tagged !secret\)$"),
    ("portal:\n  title:\n", 2, r"portal\.title: wrong type \(expected a string, got null\)$"),
    ("vault:\n  master_key_file: [a]\n", 2,
     r"vault\.master_key_file: wrong type \(expected a string or null, got a list\)$"),
    ("notify:\n  outbox: 5\n", 2,
     r"notify\.outbox: wrong type \(expected a string or null, got an integer 5\)$"),
    # checked strings; unquoted NO is a boolean in YAML 1.1 (the Norway problem)
    ("vault:\n  default_country: gb\n", 2,
     r"vault\.default_country: invalid value "
     r"\(expected two uppercase letters \(ISO 3166 alpha-2\), e\.g\. GB, got 'gb'\)$"),
    ("vault:\n  default_country: NO\n", 2,
     r"vault\.default_country: wrong type \(expected a string, got a boolean NO\)$"),
    ("vault:\n  database_url: data/tb.db\n", 2,
     r"vault\.database_url: invalid value \(expected an SQLAlchemy URL .*, got an invalid value\)$"),
    ("proxy:\n  upstream: 127.0.0.1:8080\n", 2,
     r"proxy\.upstream: invalid value \(expected a URL such as http://127\.0\.0\.1:8080, "
     r"got '127\.0\.0\.1:8080'\)$"),
    ("proxy:\n  vault_url: vault\n", 2, r"proxy\.vault_url: invalid value"),
    ("api:\n  listen: localhost\n", 2,
     r"api\.listen: invalid value \(expected HOST:PORT .*, got 'localhost'\)$"),
    ("api:\n  listen: '::1:3000'\n", 2, r"api\.listen: invalid value"),
    ("api:\n  listen: 127.0.0.1:0\n", 2, r"api\.listen: invalid value"),
    # lists, at the line of the bad item
    ("proxy:\n  rules: rules/a.yaml\n", 2,
     r"proxy\.rules: wrong type \(expected a list of strings, got a string 'rules/a\.yaml'\)$"),
    ("proxy:\n  rules:\n    - rules/a.yaml\n    - 5\n", 4,
     r"proxy\.rules: wrong type \(expected a list of strings, got an integer 5 in the list\)$"),
    ("proxy:\n  rules:\n", 2, r"proxy\.rules: wrong type \(expected a list of strings, got null\)$"),
    ("scrub:\n  rules: {}\n", 2,
     r"scrub\.rules: wrong type \(expected a list of strings or null, got a mapping\)$"),
    # YAML syntax
    ("vault:\n  pool_size: 5\n    x: 1\n", 3, r"invalid YAML: mapping values are not allowed here$"),
    ("portal:\n  title: 'open\n", 3,
     r"invalid YAML: found unexpected end of stream \(while scanning a quoted scalar, line 2\)$"),
    ("api:\n  listen: [1, 2\n", 3, r"invalid YAML: "),
    ("vault:\n\tpool_size: 5\n", 2, r"invalid YAML: found character '\\t' that cannot start any token"),
    ("vault: {}\n---\napi: {}\n", 2, r"invalid YAML: but found another document"),
    ("vault:\n  pool_size: *nope\n", 2, r"invalid YAML: found undefined alias 'nope'"),
    ("portal:\n  title: a\x00b\n", 2, r"invalid YAML: unacceptable character #x0000"),
]


@pytest.mark.parametrize(("text", "line", "pattern"), BAD_FILES)
def test_bad_file(text: str, line: int, pattern: str) -> None:
    with pytest.raises(ConfigError, match=rf"^config\.yaml:{line}: {pattern}") as info:
        parse(text)
    assert "\n" not in str(info.value)  # one mistake, one line


def test_every_problem_is_reported_in_line_order() -> None:
    text = "vault:\n  pool_size: 0\n  pool_size: 1\n  nope: 1\napi:\n  threads: x\nzzz: 1\n"
    assert error(text, {"TOKENBUNKER_API_MAX_BATCH": "x"}).splitlines() == [
        "config.yaml:2: vault.pool_size: out of range (expected an integer >= 1, got 0)",
        "config.yaml:3: vault.pool_size: duplicate key (first on line 2)",
        "config.yaml:4: vault.nope: unknown key (known: database_url, master_key_file, default_country, "
        "auto_migrate, data_key_cache, pool_size)",
        "config.yaml:6: api.threads: wrong type (expected an integer, got a string 'x')",
        "config.yaml:7: zzz: unknown section (known: vault, api, proxy, demo, scrub, notify, portal, login, "
        "approval, retention, callbacks)",
        "env TOKENBUNKER_API_MAX_BATCH: expected an integer, got 'x'",
    ]


def test_secret_values_are_never_echoed() -> None:
    message = error("vault:\n  database_url: hunter2-password\nproxy:\n  vault_token: [hunter3]\n")
    assert "hunter" not in message
    assert "proxy.vault_token: wrong type (expected a string or null, got a list)" in message
    message = error("", {"TOKENBUNKER_VAULT_DATABASE_URL": "hunter2-password"})
    assert message == ("env TOKENBUNKER_VAULT_DATABASE_URL: expected an SQLAlchemy URL such as "
                       "sqlite:///data/tokenbunker.db, got an invalid value")


def test_secrets_are_left_out_of_repr() -> None:
    config = parse("vault:\n  database_url: postgresql://u:hunter2@db/tb\nproxy:\n  vault_token: hunter3\n")
    assert config.proxy.vault_token == "hunter3"
    assert "hunter" not in repr(config)


def test_vault_token_in_file_is_accepted_with_a_warning() -> None:
    config = parse("proxy:\n  listen_port: 9000\n  vault_token: s3cret\n")
    assert config.proxy.vault_token == "s3cret"
    assert config.warnings == ("config.yaml:3: proxy.vault_token: a secret in the config file; "
                               "prefer TOKENBUNKER_PROXY_VAULT_TOKEN",)
    assert parse("proxy:\n  vault_token: null\n").warnings == ()
    assert parse("", {"TOKENBUNKER_PROXY_VAULT_TOKEN": "s3cret"}).warnings == ()


ENV_OVERRIDES: list[tuple[str, str, str, str, Any]] = [
    ("TOKENBUNKER_VAULT_DATABASE_URL", "postgresql://db/tb", "vault", "database_url", "postgresql://db/tb"),
    ("TOKENBUNKER_VAULT_MASTER_KEY_FILE", "/k", "vault", "master_key_file", "/k"),
    ("TOKENBUNKER_VAULT_MASTER_KEY_FILE", "", "vault", "master_key_file", None),
    ("TOKENBUNKER_VAULT_DEFAULT_COUNTRY", "FR", "vault", "default_country", "FR"),
    ("TOKENBUNKER_VAULT_AUTO_MIGRATE", "false", "vault", "auto_migrate", False),
    ("TOKENBUNKER_VAULT_AUTO_MIGRATE", "No", "vault", "auto_migrate", False),
    ("TOKENBUNKER_VAULT_AUTO_MIGRATE", "0", "vault", "auto_migrate", False),
    ("TOKENBUNKER_PORTAL_ENABLED", "TRUE", "portal", "enabled", True),
    ("TOKENBUNKER_PORTAL_ENABLED", " yes ", "portal", "enabled", True),
    ("TOKENBUNKER_PORTAL_ENABLED", "1", "portal", "enabled", True),
    ("TOKENBUNKER_VAULT_DATA_KEY_CACHE", "0", "vault", "data_key_cache", 0),
    ("TOKENBUNKER_API_MAX_BATCH", "42", "api", "max_batch", 42),
    ("TOKENBUNKER_API_LISTEN", "[::]:8000", "api", "listen", "[::]:8000"),
    ("TOKENBUNKER_PROXY_RULES", "rules/a.yaml, rules/b.yaml", "proxy", "rules",
     ("rules/a.yaml", "rules/b.yaml")),
    ("TOKENBUNKER_PROXY_RULES", "", "proxy", "rules", ()),
    ("TOKENBUNKER_PROXY_VAULT_TOKEN", "tok", "proxy", "vault_token", "tok"),
    ("TOKENBUNKER_PROXY_UPSTREAM", "", "proxy", "upstream", None),
    ("TOKENBUNKER_SCRUB_RULES", "rules/s.yaml", "scrub", "rules", ("rules/s.yaml",)),
    ("TOKENBUNKER_SCRUB_RULES", "", "scrub", "rules", None),  # optional wins: back to "use proxy.rules"
    ("TOKENBUNKER_NOTIFY_OUTBOX", "out", "notify", "outbox", "out"),
    ("TOKENBUNKER_PORTAL_TITLE", "", "portal", "title", ""),
]


@pytest.mark.parametrize(("name", "raw", "section", "key", "expected"), ENV_OVERRIDES)
def test_env_overrides(name: str, raw: str, section: str, key: str, expected: Any) -> None:
    config = parse("", {name: raw})
    assert getattr(getattr(config, section), key) == expected


def test_env_wins_over_file() -> None:
    text = "api:\n  max_batch: 10\nproxy:\n  rules: [a]\n  upstream: http://x:1\n"
    env = {"TOKENBUNKER_API_MAX_BATCH": "20", "TOKENBUNKER_PROXY_RULES": "b,c",
           "TOKENBUNKER_PROXY_UPSTREAM": ""}
    config = parse(text, env)
    assert (config.api.max_batch, config.proxy.rules, config.proxy.upstream) == (20, ("b", "c"), None)


def test_unrelated_env_vars_are_ignored() -> None:
    env = {"TOKENBUNKER_MASTER_KEY": "00" * 32, "TOKENBUNKER_ROOT_TOKEN": "t", "TOKENBUNKER_CONFIG": "x.yaml",
           "TOKENBUNKER_VAULT_NOPE": "1", "TOKENBUNKER_API_MAX_BATCHES": "x",
           "tokenbunker_api_max_batch": "x"}
    assert parse("", env) == DEFAULTS


BAD_ENV = [
    ("TOKENBUNKER_API_MAX_BATCH", "abc", "env TOKENBUNKER_API_MAX_BATCH: expected an integer, got 'abc'"),
    ("TOKENBUNKER_API_MAX_BATCH", "1.5", "env TOKENBUNKER_API_MAX_BATCH: expected an integer, got '1.5'"),
    ("TOKENBUNKER_API_MAX_BATCH", "", "env TOKENBUNKER_API_MAX_BATCH: expected an integer, got ''"),
    ("TOKENBUNKER_API_MAX_BATCH", "0",
     "env TOKENBUNKER_API_MAX_BATCH: expected an integer from 1 to 100000, got 0"),
    ("TOKENBUNKER_PROXY_LISTEN_PORT", "0x50",
     "env TOKENBUNKER_PROXY_LISTEN_PORT: expected an integer, got '0x50'"),
    ("TOKENBUNKER_VAULT_AUTO_MIGRATE", "maybe",
     "env TOKENBUNKER_VAULT_AUTO_MIGRATE: expected true, false, yes, no, 1 or 0, got 'maybe'"),
    ("TOKENBUNKER_VAULT_DEFAULT_COUNTRY", "gbr",
     "env TOKENBUNKER_VAULT_DEFAULT_COUNTRY: expected two uppercase letters (ISO 3166 alpha-2), e.g. GB, "
     "got 'gbr'"),
    ("TOKENBUNKER_API_LISTEN", "3000",
     "env TOKENBUNKER_API_LISTEN: expected HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:3000 or "
     "[::1]:3000, got '3000'"),
    ("TOKENBUNKER_PROXY_VAULT_URL", "vault:3000",
     "env TOKENBUNKER_PROXY_VAULT_URL: expected a URL such as http://127.0.0.1:8080, got 'vault:3000'"),
]


@pytest.mark.parametrize(("name", "raw", "expected"), BAD_ENV)
def test_bad_env_value(name: str, raw: str, expected: str) -> None:
    assert error("", {name: raw}) == expected


LISTEN = [
    ("127.0.0.1:3000", ("127.0.0.1", 3000)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("localhost:65535", ("localhost", 65535)),
    ("[::1]:3000", ("::1", 3000)),
    ("[::]:80", ("::", 80)),
    ("[fe80::1%eth0]:8080", ("fe80::1%eth0", 8080)),
]


@pytest.mark.parametrize(("value", "expected"), LISTEN)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(("value", "pattern"), [
    ("3000", "expected HOST:PORT"),
    (":3000", "expected HOST:PORT"),
    ("localhost", "expected HOST:PORT"),
    ("::1:3000", "put IPv6 addresses in brackets"),
    ("[::1]", r"expected \[IPV6\]:PORT"),
    ("[::1]3000", r"expected \[IPV6\]:PORT"),
    ("[]:3000", r"expected \[IPV6\]:PORT"),
    ("host]:3000", "expected HOST:PORT"),
    ("my host:3000", "the host contains a space"),
    ("localhost:", "the port must be a number from 1 to 65535"),
    ("localhost:0", "the port must be a number from 1 to 65535"),
    ("localhost:65536", "the port must be a number from 1 to 65535"),
    ("localhost:+80", "the port must be"),
    ("localhost:http", "the port must be"),
])
def test_parse_listen_rejects(value: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=f"^invalid listen address {re.escape(repr(value))}: {pattern}"):
        parse_listen(value)


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1), ("30s", 30), ("90m", 5400), ("12h", 43200), ("30d", 2592000), ("2w", 1209600), ("007s", 7),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


# "\u0663s" is an Arabic-Indic three: \d would take it.
@pytest.mark.parametrize(
    "text", ["3x", "30", "", "s", "1.5h", "-5m", "+5m", "5 m", " 5m", "5m ", "5M", "1h30m", "\u0663s"]
)
def test_parse_duration_rejects(text: str) -> None:
    message = f"invalid duration {text!r}: use a number followed by s, m, h, d or w"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration(text)


def test_parse_duration_rejects_zero() -> None:
    with pytest.raises(ValueError, match=r"^invalid duration '0d': must be greater than zero$"):
        parse_duration("0d")


def test_load_config_reads_the_given_file(tmp_path: Path) -> None:
    path = tmp_path / "tb.yaml"
    path.write_text("api:\n  threads: 2\nproxy:\n  vault_token: x\n", encoding="utf-8")
    config = load_config(path, env={"TOKENBUNKER_API_MAX_BATCH": "7"})
    assert (config.path, config.api.threads, config.api.max_batch) == (str(path), 2, 7)
    assert config.warnings[0].startswith(f"{path}:4: proxy.vault_token:")
    path.write_text("api:\n  threads: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}:2: api.threads: out of range"):
        load_config(str(path), env={})


def test_load_config_explicit_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^config\.yaml: file not found$"):
        load_config("config.yaml", env={})
    with pytest.raises(ConfigError, match=r"^other\.yaml: file not found$"):
        load_config(env={"TOKENBUNKER_CONFIG": "other.yaml"})


def test_load_config_missing_default_file_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENBUNKER_API_THREADS", "3")  # env=None reads os.environ
    monkeypatch.delenv("TOKENBUNKER_CONFIG", raising=False)
    config = load_config()
    assert config.path is None
    assert config.api.threads == 3
    assert config.vault == DEFAULTS.vault


def test_load_config_finds_the_file_through_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("api:\n  threads: 4\n", encoding="utf-8")
    (tmp_path / "other.yaml").write_text("api:\n  threads: 5\n", encoding="utf-8")
    assert load_config(env={}).api.threads == 4
    assert load_config(env={"TOKENBUNKER_CONFIG": ""}).api.threads == 4
    assert load_config(env={"TOKENBUNKER_CONFIG": "other.yaml"}).api.threads == 5


def test_load_config_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r": cannot read the file \("):
        load_config(tmp_path, env={})
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"bin\.yaml: not a UTF-8 text file$"):
        load_config(binary, env={})
