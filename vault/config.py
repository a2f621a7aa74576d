"""Load config.yaml: one declarative schema, line-accurate errors, environment overrides.

The file is written by people, so every mistake is reported at once as `FILE:LINE: section.key: ...`,
and values of secret keys are never echoed back (they end up in terminals and CI logs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

DEFAULT_PATH = "config.yaml"
CONFIG_ENV = "TOKENBUNKER_CONFIG"
_TAG = "tag:yaml.org,2002:"


class ConfigError(Exception):
    """A mistake in the config file or environment; the message is meant to be printed as it is."""


def parse_listen(value: str) -> tuple[str, int]:
    """Split "HOST:PORT" or "[IPV6]:PORT" into (host, port)."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep or not host or "[" in host or "]" in host:
            raise ValueError(f"invalid listen address {value!r}: expected [IPV6]:PORT, e.g. [::1]:3000")
    else:
        host, sep, port = value.rpartition(":")
        if ":" in host:
            raise ValueError(f"invalid listen address {value!r}: put IPv6 addresses in brackets: [::1]:3000")
        if not sep or not host or "[" in host or "]" in host:
            raise ValueError(f"invalid listen address {value!r}: expected HOST:PORT, e.g. 127.0.0.1:3000")
    if any(c.isspace() for c in host):
        raise ValueError(f"invalid listen address {value!r}: the host contains a space")
    # [0-9] rather than \d or int(): int() would also take "+1", " 1", "1_0" and non-ASCII digits.
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {value!r}: the port must be a number from 1 to 65535")
    return host, int(port)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """Seconds in "30s", "90m", "12h", "30d" or "2w"; a bare number is ambiguous, so it is refused."""
    match = re.fullmatch(r"([0-9]+)([smhdw])", text)
    if match is None:
        raise ValueError(f"invalid duration {text!r}: use a number followed by s, m, h, d or w")
    if int(match[1]) == 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return int(match[1]) * _UNITS[match[2]]


def _parses(parse: Callable[[str], object]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            parse(value)
        except ValueError:
            return False
        return True

    return check


@dataclass(frozen=True)
class Field:
    kind: Literal["str", "int", "bool", "list"]  # "list" is a list of strings, kept as a tuple
    default: Any
    optional: bool = False  # null (or an empty env value) means None
    min: int | None = None
    max: int | None = None
    check: Callable[[Any], bool] | None = None
    expect: str = ""  # what `check` wants, for the message
    secret: bool = False  # never echo the value
    warn_in_file: bool = False  # accepted in the file, but the environment is the better place


_URL = "a URL such as http://127.0.0.1:8080"
_DURATION = "a duration such as 60s, 30m, 12h, 30d or 2w"
_APPROVERS = ("self", "dpo")
_LISTEN = "HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:3000 or [::1]:3000"

# The single source of truth: add a key here and to its dataclass below.
SCHEMA: dict[str, dict[str, Field]] = {
    "vault": {
        # A database URL may carry a password, hence secret.
        "database_url": Field("str", "sqlite:///data/tokenbunker.db", secret=True, check=lambda v: "://" in v,
                              expect="an SQLAlchemy URL such as sqlite:///data/tokenbunker.db"),
        "master_key_file": Field("str", None, optional=True),
        "default_country": Field("str", "GB", check=lambda v: re.fullmatch("[A-Z]{2}", v) is not None,
                                 expect="two uppercase letters (ISO 3166 alpha-2), e.g. GB"),
        "auto_migrate": Field("bool", True),
        "data_key_cache": Field("int", 10000, min=0),
        "pool_size": Field("int", 5, min=1),
    },
    "api": {
        "listen": Field("str", "127.0.0.1:3000", check=_parses(parse_listen), expect=_LISTEN),
        "max_body_bytes": Field("int", 4194304, min=1024),
        "max_batch": Field("int", 1000, min=1, max=100000),
        "threads": Field("int", 8, min=1, max=256),
        "list_users": Field("bool", False),  # POST /v1/users (root only) lists every person's profile
        # Reverse proxies in front of `serve` (e.g. a TLS terminator) whose X-Forwarded-For/-Proto/-Host to trust:
        # the client address that login limits count, and HTTPS for the portal's Secure cookies. 0: trust none.
        "trusted_proxies": Field("int", 0, min=0, max=5),
    },
    "proxy": {
        "rules": Field("list", ("rules/example.yaml",)),
        "vault_url": Field("str", None, optional=True, check=lambda v: "://" in v, expect=_URL),
        "vault_token": Field("str", None, optional=True, secret=True, warn_in_file=True),
        "listen_host": Field("str", "127.0.0.1"),
        "listen_port": Field("int", 8081, min=1, max=65535),
        "upstream": Field("str", None, optional=True, check=lambda v: "://" in v, expect=_URL),
        "max_body_bytes": Field("int", 10485760, min=1024),
        "log_client_ip": Field("str", "drop", check=lambda v: v in ("drop", "hash", "keep"),
                               expect="drop, hash or keep"),
        # Values one message may have tokenized or revealed; above it the message is refused (413). Each one is a
        # vault write, so this bounds how long one request can hold the writer.
        "max_values_per_message": Field("int", 10000, min=1, max=1000000),
        "access_log": Field("str", None, optional=True),  # the sidecar's access log, scrubbed by the logs: rules
        # strict: a revealed value leaves only once its audit row is committed; buffered: rows are written within
        # 0.25 s, coalesced (faster; a crash can lose the last 0.25 s of reveal counts). See docs/sidecar.md.
        "audit_reveals": Field("str", "strict", check=lambda v: v in ("strict", "buffered"),
                               expect="strict or buffered"),
    },
    "demo": {
        # `tokenbunker up` starts a small legacy app here for the sidecar to stand in front of.
        "enabled": Field("bool", True),
        "listen": Field("str", "127.0.0.1:8080", check=_parses(parse_listen), expect=_LISTEN),
    },
    "scrub": {
        "rules": Field("list", None, optional=True),  # None: use proxy.rules
    },
    "notify": {
        # Development: messages to people are appended to this file as JSON lines instead of being sent.
        "outbox": Field("str", None, optional=True),
        "email_from": Field("str", "Tokenbunker <no-reply@localhost>"),
        "smtp_host": Field("str", None, optional=True),
        "smtp_port": Field("int", 587, min=1, max=65535),
        "smtp_security": Field("str", "starttls", check=lambda v: v in ("starttls", "tls", "none"),
                               expect="starttls, tls or none"),
        "smtp_user": Field("str", None, optional=True),
        "smtp_password": Field("str", None, optional=True, secret=True, warn_in_file=True),
        # An SMS gateway over HTTP (as Databunker's): {to} and {body} are replaced, JSON-escaped in a JSON template.
        "sms_url": Field("str", None, optional=True, check=lambda v: "://" in v, expect=_URL),
        "sms_body": Field("str", '{"to": "{to}", "text": "{body}"}'),
        "sms_content_type": Field("str", "application/json"),
        "sms_auth_header": Field("str", None, optional=True, secret=True, warn_in_file=True),
        "timeout": Field("str", "10s", check=_parses(parse_duration), expect="a duration such as 10s"),
    },
    "portal": {
        "enabled": Field("bool", True),
        "title": Field("str", "Tokenbunker privacy portal"),
        "logo_url": Field("str", None, optional=True),
        "terms_url": Field("str", None, optional=True),
        "privacy_url": Field("str", None, optional=True),
        "contact_email": Field("str", None, optional=True),
    },
    "login": {
        # Passwordless login (one-time codes), for the portal and /v1/prelogin + /v1/login.
        "code_ttl": Field("str", "10m", check=_parses(parse_duration), expect="a duration such as 10m"),
        "max_attempts": Field("int", 5, min=1, max=100),  # wrong codes before the identity is locked
        "lockout": Field("str", "15m", check=_parses(parse_duration), expect="a duration such as 15m"),
        "codes_per_hour": Field("int", 5, min=1, max=1000),  # codes sent to one identity per hour
        "client_per_hour": Field("int", 30, min=1, max=100000),  # login calls from one client address per hour
        "session_idle": Field("str", "30m", check=_parses(parse_duration), expect="a duration such as 30m"),
        "session_absolute": Field("str", "12h", check=_parses(parse_duration), expect="a duration such as 12h"),
    },
    # Which operations wait for a DPO's approval (a request) instead of applying at once, for every API caller.
    "approval": {
        "change_profile": Field("str", "self", check=lambda v: v in _APPROVERS, expect="self or dpo"),
        "forget_me": Field("str", "self", check=lambda v: v in _APPROVERS, expect="self or dpo"),
        "agreement_withdraw": Field("str", "self", check=lambda v: v in _APPROVERS, expect="self or dpo"),
        "change_app_data": Field("list", ()),  # app-name glob patterns whose changes need a DPO, e.g. billing*
    },
    # The scheduler inside `serve`: how often it runs, and the maximum retention per kind (null: no maximum).
    "retention": {
        "interval": Field("str", "60s", check=_parses(parse_duration), expect=_DURATION),
        "tokens": Field("str", None, optional=True, check=_parses(parse_duration), expect=_DURATION),
        "sessions": Field("str", "30d", optional=True, check=_parses(parse_duration), expect=_DURATION),
        "requests": Field("str", "365d", optional=True, check=_parses(parse_duration), expect=_DURATION),
        "agreements": Field("str", None, optional=True, check=_parses(parse_duration), expect=_DURATION),
        # Callbacks delivered (or given up) this long ago leave the outbox; pending ones always stay.
        "outbox": Field("str", "7d", optional=True, check=_parses(parse_duration), expect=_DURATION),
    },
    "callbacks": {
        # Where events are POSTed: `url` for every event, or one URL per event (which wins over `url`). The
        # signing secret comes from TOKENBUNKER_CALLBACKS_SECRET only (see vault/callbacks.py).
        "url": Field("str", None, optional=True, check=lambda v: v.startswith(("http://", "https://")),
                     expect="an http:// or https:// URL"),
        **{event: Field("str", None, optional=True, check=lambda v: v.startswith(("http://", "https://")),
                        expect="an http:// or https:// URL")
           for event in ("profilenew", "profilechange", "forgetme", "consentchange", "requestcreated")},
        "timeout_seconds": Field("int", 10, min=1, max=300),
        "max_attempts": Field("int", 12, min=1, max=1000),
        "backoff_seconds": Field("int", 2, min=1, max=86400),  # the first retry's delay; doubled each time
        "max_backoff_seconds": Field("int", 3600, min=1, max=604800),
        "poll_seconds": Field("int", 1, min=1, max=3600),
    },
}


@dataclass(frozen=True)
class VaultSettings:
    database_url: str = field(repr=False)
    master_key_file: str | None
    default_country: str
    auto_migrate: bool
    data_key_cache: int
    pool_size: int


@dataclass(frozen=True)
class ApiSettings:
    listen: str
    max_body_bytes: int
    max_batch: int
    threads: int
    list_users: bool = False
    trusted_proxies: int = 0

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


@dataclass(frozen=True)
class ProxySettings:
    rules: tuple[str, ...]
    vault_url: str | None
    vault_token: str | None = field(repr=False)
    listen_host: str
    listen_port: int
    upstream: str | None
    max_body_bytes: int
    log_client_ip: str
    max_values_per_message: int = 10000
    access_log: str | None = None
    audit_reveals: str = "strict"


@dataclass(frozen=True)
class DemoSettings:
    enabled: bool
    listen: str


@dataclass(frozen=True)
class ScrubSettings:
    rules: tuple[str, ...] | None


@dataclass(frozen=True)
class NotifySettings:
    outbox: str | None
    email_from: str = "Tokenbunker <no-reply@localhost>"
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_security: str = "starttls"
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    sms_url: str | None = None
    sms_body: str = '{"to": "{to}", "text": "{body}"}'
    sms_content_type: str = "application/json"
    sms_auth_header: str | None = field(default=None, repr=False)
    timeout: str = "10s"


@dataclass(frozen=True)
class LoginSettings:
    code_ttl: str = "10m"
    max_attempts: int = 5
    lockout: str = "15m"
    codes_per_hour: int = 5
    client_per_hour: int = 30
    session_idle: str = "30m"
    session_absolute: str = "12h"


@dataclass(frozen=True)
class PortalSettings:
    enabled: bool
    title: str
    logo_url: str | None = None
    terms_url: str | None = None
    privacy_url: str | None = None
    contact_email: str | None = None


@dataclass(frozen=True)
class ApprovalSettings:
    change_profile: str = "self"
    forget_me: str = "self"
    agreement_withdraw: str = "self"
    change_app_data: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetentionSettings:
    interval: str = "60s"
    tokens: str | None = None
    sessions: str | None = "30d"
    requests: str | None = "365d"
    agreements: str | None = None
    outbox: str | None = "7d"

    def seconds(self, kind: str) -> int | None:
        """The interval, or a kind's maximum retention, in seconds (None: kept until something else ends it)."""
        value: str | None = getattr(self, kind)
        return None if value is None else parse_duration(value)


@dataclass(frozen=True)
class CallbackSettings:
    url: str | None = None
    profilenew: str | None = None
    profilechange: str | None = None
    forgetme: str | None = None
    consentchange: str | None = None
    requestcreated: str | None = None
    timeout_seconds: int = 10
    max_attempts: int = 12
    backoff_seconds: int = 2
    max_backoff_seconds: int = 3600
    poll_seconds: int = 1

    def url_for(self, event: str) -> str | None:
        chosen: str | None = getattr(self, event, None)
        return chosen or self.url

    @property
    def configured(self) -> bool:
        return any(self.url_for(e) for e in ("profilenew", "profilechange", "forgetme", "consentchange",
                                             "requestcreated"))


@dataclass(frozen=True)
class Config:
    path: str | None
    vault: VaultSettings
    api: ApiSettings
    proxy: ProxySettings
    demo: DemoSettings
    scrub: ScrubSettings
    notify: NotifySettings
    portal: PortalSettings
    login: LoginSettings = field(default_factory=LoginSettings)
    approval: ApprovalSettings = field(default_factory=ApprovalSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    warnings: tuple[str, ...] = ()

    @property
    def log_rule_files(self) -> tuple[str, ...]:
        """The rule files whose `logs:` sections the scrubber applies: scrub.rules, else proxy.rules."""
        return self.scrub.rules if self.scrub.rules is not None else self.proxy.rules


_SECTIONS: dict[str, type] = {
    "vault": VaultSettings, "api": ApiSettings, "proxy": ProxySettings, "demo": DemoSettings,
    "scrub": ScrubSettings, "notify": NotifySettings, "portal": PortalSettings, "login": LoginSettings,
    "approval": ApprovalSettings, "retention": RetentionSettings, "callbacks": CallbackSettings,
}


class _Invalid(Exception):
    def __init__(self, what: str, expected: str, got: str, node: yaml.Node | None = None) -> None:
        super().__init__(f"{what} (expected {expected}, got {got})")
        self.expected, self.got, self.node = expected, got, node


def env_name(section: str, key: str) -> str:
    return f"TOKENBUNKER_{section}_{key}".upper()


_EXPECT = {"str": "a string", "int": "an integer", "bool": "true or false", "list": "a list of strings"}


def _expected(f: Field, env: bool = False) -> str:
    text = _EXPECT[f.kind]
    if env:  # the environment is parsed by us, not by YAML
        text = {"bool": "true, false, yes, no, 1 or 0", "list": "a comma-separated list"}.get(f.kind, text)
    return text + (" (or empty for none)" if env and f.optional else " or null" if f.optional else "")


def _show(value: Any, secret: bool) -> str:
    return "an invalid value" if secret else repr(value)


_NAMES = {"str": "a string", "int": "an integer", "bool": "a boolean", "float": "a number",
          "timestamp": "a date", "binary": "binary data"}


def _describe(node: yaml.Node, secret: bool) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    tag = node.tag.removeprefix(_TAG)
    if tag == "null":
        return "null"
    if tag not in _NAMES:
        return f"a value tagged {node.tag}"
    text = node.value if len(node.value) <= 40 else node.value[:40] + "..."
    return _NAMES[tag] if secret else f"{_NAMES[tag]} {text!r}" if tag == "str" else f"{_NAMES[tag]} {text}"


def _is(node: yaml.Node, tag: str) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _TAG + tag


def _from_node(f: Field, node: yaml.Node, ctor: yaml.constructor.SafeConstructor) -> Any:
    if f.optional and _is(node, "null"):
        return None
    if f.kind == "list" and isinstance(node, yaml.SequenceNode):
        for item in node.value:
            if not _is(item, "str"):
                raise _Invalid("wrong type", _expected(f), f"{_describe(item, f.secret)} in the list", item)
        return tuple(item.value for item in node.value)
    if f.kind != "list" and _is(node, f.kind):
        return ctor.construct_object(node)  # YAML's own int/bool rules: 0x10, 1_000, yes/no
    raise _Invalid("wrong type", _expected(f), _describe(node, f.secret))


def _from_env(f: Field, raw: str) -> Any:
    if f.optional and raw == "":
        return None
    if f.kind == "str":
        return raw
    if f.kind == "list":
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    text = raw.strip().lower()
    if f.kind == "int" and re.fullmatch(r"[+-]?[0-9]+", text):
        return int(text)
    bools = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if f.kind == "bool" and text in bools:
        return bools[text]
    raise _Invalid("wrong type", _expected(f, env=True), _show(raw, f.secret))


def _validate(f: Field, value: Any) -> None:
    if value is None:
        return
    if f.kind == "int" and (f.min is not None and value < f.min or f.max is not None and value > f.max):
        limits = f"from {f.min} to {f.max}" if f.min is not None and f.max is not None else (
            f">= {f.min}" if f.min is not None else f"<= {f.max}")
        raise _Invalid("out of range", f"an integer {limits}", _show(value, f.secret))
    if f.check is not None and not f.check(value):
        raise _Invalid("invalid value", f.expect, _show(value, f.secret))


Problems = list[tuple[int, str]]  # (line, message): sorted by line, then prefixed with the file name
Values = dict[str, dict[str, Any]]  # section -> key -> value, starting from the defaults


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _pairs(node: yaml.MappingNode, section: str | None, problems: Problems) -> list[tuple[Any, yaml.Node]]:
    """The mapping's entries; duplicate and non-name keys are problems (PyYAML keeps the last silently)."""
    seen: dict[str, int] = {}
    pairs = []
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            problems.append((_line(key), f"{section or 'top level'}: keys must be plain names"))
        elif key.value in seen:
            dotted = f"{section}.{key.value}" if section else key.value
            problems.append((_line(key), f"{dotted}: duplicate key (first on line {seen[key.value]})"))
        else:
            seen[key.value] = _line(key)
            pairs.append((key, value))
    return pairs


def _read_file(root: yaml.Node, where: str, values: Values, warnings: list[str]) -> Problems:
    """Copy valid values from the YAML tree into `values`; return the problems found."""
    if not isinstance(root, yaml.MappingNode):
        got = _describe(root, False)
        return [(_line(root), f"the top level must be a mapping of sections (expected a mapping, got {got})")]
    problems: Problems = []
    ctor = yaml.constructor.SafeConstructor()
    for section_node, body in _pairs(root, None, problems):
        section, keys = section_node.value, SCHEMA.get(section_node.value)
        if keys is None:
            problems.append((_line(section_node), f"{section}: unknown section (known: {', '.join(SCHEMA)})"))
        elif isinstance(body, yaml.MappingNode):
            for key_node, node in _pairs(body, section, problems):
                key, f = key_node.value, keys.get(key_node.value)
                if f is None:
                    known = ", ".join(keys)
                    problems.append((_line(key_node), f"{section}.{key}: unknown key (known: {known})"))
                    continue
                try:
                    value = _from_node(f, node, ctor)
                    _validate(f, value)
                except _Invalid as exc:
                    problems.append((_line(exc.node or node), f"{section}.{key}: {exc}"))
                    continue
                values[section][key] = value
                if f.warn_in_file and value is not None:
                    warnings.append(f"{where}:{_line(node)}: {section}.{key}: a secret in the config file; "
                                    f"prefer {env_name(section, key)}")
        elif not _is(body, "null"):  # a null section ("vault:" alone) means defaults
            got = _describe(body, False)
            problems.append((_line(section_node), f"{section}: wrong type (expected a mapping, got {got})"))
    return problems


def _read_env(env: Mapping[str, str], values: Values) -> list[str]:
    errors = []
    for section, keys in SCHEMA.items():
        for key, f in keys.items():
            name = env_name(section, key)
            if name not in env:
                continue
            try:
                value = _from_env(f, env[name])
                _validate(f, value)
            except _Invalid as exc:
                errors.append(f"env {name}: expected {exc.expected}, got {exc.got}")
                continue
            values[section][key] = value
    return errors


def parse_config(text: str, filename: str, env: Mapping[str, str]) -> Config:
    """Validate YAML text and apply environment overrides; raise ConfigError listing every problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark, detail = exc.problem_mark or exc.context_mark, exc.problem or exc.context or "syntax error"
        cm = exc.context_mark
        if exc.problem and exc.context:  # e.g. an unclosed quote: say where it started
            detail += f" ({exc.context}" + (f", line {cm.line + 1})" if cm and mark and cm.line != mark.line else ")")
        where = f"{filename}:{mark.line + 1}" if mark else filename
        raise ConfigError(f"{where}: invalid YAML: {detail}") from None
    except yaml.YAMLError as exc:  # a ReaderError (control character) has a position, not a mark
        line = text.count("\n", 0, getattr(exc, "position", 0)) + 1
        raise ConfigError(f"{filename}:{line}: invalid YAML: {str(exc).splitlines()[0]}") from None

    values = {s: {k: f.default for k, f in keys.items()} for s, keys in SCHEMA.items()}
    warnings: list[str] = []
    problems = [] if root is None or _is(root, "null") else _read_file(root, filename, values, warnings)
    errors = [f"{filename}:{line}: {message}" for line, message in sorted(problems, key=lambda p: p[0])]
    errors += _read_env(env, values)  # after the file: the environment wins
    if errors:
        raise ConfigError("\n".join(errors))
    built = {s: cls(**values[s]) for s, cls in _SECTIONS.items()}
    return Config(path=filename, warnings=tuple(warnings), **built)


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load `path`, else $TOKENBUNKER_CONFIG, else ./config.yaml; only the last may be missing."""
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get(CONFIG_ENV))
    name = str(path) if path is not None else env.get(CONFIG_ENV) or DEFAULT_PATH
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{name}: file not found") from None
        return replace(parse_config("", name, env), path=None)
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the file ({exc.strerror})") from None
    return parse_config(text, name, env)
