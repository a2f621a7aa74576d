"""Rules files (contract: shared/contracts/rules.md) checked and compiled into rules.model objects.

Every mistake is collected as `FILE:LINE: where: what (expected ...)`, so one run of `tokenbunker rules check`
shows them all; unknown keys are errors, because a typo must never silently disable a rule.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rules.located import LList, LMap, LocatedError, load_located
from rules.model import (
    FIELD_PLACES,
    AnyTokensSelector,
    DetectSelector,
    FieldSelector,
    JsonSelector,
    Match,
    Route,
    Rule,
    RuleSet,
    Selector,
    Subject,
    TextSelector,
)
from vault.config import parse_duration
from vault.formats import FORMATS
from vault.identity import INDEX_MODES

ACTIONS = ("tokenize", "detokenize", "redact", "drop", "mask", "truncate")
LOG_ONLY_ACTIONS = ("mask", "truncate")
SELECTOR_KEYS = ("json", "form", "query", "header", "cookie", "text", "detect", "any", "field")
ROUTE_SELECTORS = SELECTOR_KEYS[:-1]
LOG_SELECTORS = ("json", "text", "detect", "field")
OPTION_KEYS = ("action", "kind", "format", "deterministic", "ttl", "reveal", "require_consent",
               "on_consent_missing", "placeholder")
TOP_KEYS = ("version", "defaults", "routes", "logs")
ROUTE_KEYS = ("name", "match", "subject", "request", "response", "on_error", "on_unreadable_body")
MATCH_KEYS = ("hosts", "path", "methods", "case_sensitive")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
PURPOSE_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,64}$")


class RulesError(Exception):
    """Every problem found, one `FILE:LINE: message` per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Problems:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.items: list[str] = []

    def add(self, line: int, message: str) -> None:
        self.items.append(f"{self.filename}:{line}: {message}")

    def where(self, line: int) -> str:
        return f"{self.filename}:{line}"


def load_rules(paths: Iterable[str | Path]) -> RuleSet:
    """Compile rule files in order; route names must be unique across all of them."""
    routes: list[Route] = []
    logs: list[Rule] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    files = []
    for path in paths:
        name = str(path)
        files.append(name)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{name}:1: file not found")
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{name}:1: cannot read the file ({type(exc).__name__})")
            continue
        try:
            file_routes, file_logs = compile_text(text, name)
        except RulesError as exc:
            problems.extend(exc.problems)
            continue
        for route in file_routes:
            if route.name in seen:
                problems.append(f"{route.where}: routes: duplicate route name '{route.name}' "
                                f"(first at {seen[route.name]})")
            seen.setdefault(route.name, route.where)
        routes.extend(file_routes)
        logs.extend(file_logs)
    if problems:
        raise RulesError(problems)
    return RuleSet(tuple(routes), tuple(logs), tuple(files))


def compile_text(text: str, filename: str) -> tuple[list[Route], list[Rule]]:
    problems = _Problems(filename)
    try:
        doc = load_located(text)
    except LocatedError as exc:
        raise RulesError([f"{filename}:{exc.line}: {exc.message}"]) from None
    if doc is None:
        raise RulesError([f"{filename}:1: the file is empty (expected version: 1 and routes or logs)"])
    if not isinstance(doc, LMap):
        raise RulesError([f"{filename}:1: a rules file is a mapping with version, defaults, routes, logs"])
    _unknown_keys(doc, TOP_KEYS, "", problems)
    if doc.get("version") != 1:
        problems.add(doc.line_of("version"), f"version: expected 1, got {_show(doc.get('version'))}")
    default_on_error = "block"
    defaults = doc.get("defaults")
    if defaults is not None:
        if not isinstance(defaults, LMap):
            problems.add(doc.line_of("defaults"), "defaults: expected a mapping")
        else:
            _unknown_keys(defaults, ("on_error",), "defaults.", problems)
            default_on_error = _on_error(defaults, "defaults", problems) or "block"
    routes = []
    names: dict[str, int] = {}
    for i, item in enumerate(_list(doc, "routes", problems)):
        line = doc["routes"].line_of(i)
        route = _route(item, f"routes[{i}]", line, default_on_error, problems)
        if route is not None:
            if route.name in names:
                problems.add(line, f"routes[{i}].name: duplicate route name '{route.name}' (first on line "
                                   f"{names[route.name]})")
            names.setdefault(route.name, line)
            routes.append(route)
    logs = [
        rule
        for i, item in enumerate(_list(doc, "logs", problems))
        if (rule := _rule(item, f"logs[{i}]", doc["logs"].line_of(i), problems, place="logs")) is not None
    ]
    if problems.items:
        raise RulesError(problems.items)
    return routes, logs


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _unknown_keys(node: LMap, known: tuple[str, ...], prefix: str, problems: _Problems) -> None:
    for key in node:
        if key not in known:
            problems.add(node.line_of(key), f"{prefix}{key}: unknown key (expected one of {', '.join(known)})")


def _list(node: LMap, key: str, problems: _Problems) -> LList:
    value = node.get(key)
    if value is None:
        return LList()
    if not isinstance(value, LList):
        problems.add(node.line_of(key), f"{key}: expected a list")
        return LList()
    return value


def _on_error(node: LMap, where: str, problems: _Problems) -> str | None:
    value = node.get("on_error")
    if value is None:
        return None
    if value not in ("block", "pass"):
        problems.add(node.line_of("on_error"), f"{where}.on_error: expected block or pass, got {_show(value)}")
        return None
    return str(value)


def _route(node: Any, where: str, line: int, default_on_error: str, problems: _Problems) -> Route | None:
    if not isinstance(node, LMap):
        problems.add(line, f"{where}: expected a mapping with name, match, request, response")
        return None
    before = len(problems.items)
    _unknown_keys(node, ROUTE_KEYS, f"{where}.", problems)
    name = node.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        problems.add(node.line_of("name"), f"{where}.name: expected a name of letters, digits and _.:- "
                                           f"(at most 128), got {_show(name)}")
        name = None
    match = _match(node.get("match"), f"{where}.match", node.line_of("match"), problems)
    subject = None
    if "subject" in node:
        subject = _subject(node["subject"], f"{where}.subject", node.line_of("subject"), problems)
    request = [
        rule
        for i, item in enumerate(_list(node, "request", problems))
        if (rule := _rule(item, f"{where}.request[{i}]", node["request"].line_of(i), problems, "request"))
    ]
    response = [
        rule
        for i, item in enumerate(_list(node, "response", problems))
        if (rule := _rule(item, f"{where}.response[{i}]", node["response"].line_of(i), problems, "response"))
    ]
    on_error = _on_error(node, where, problems) or default_on_error
    unreadable = node.get("on_unreadable_body", "block")
    if unreadable not in ("block", "pass"):
        problems.add(node.line_of("on_unreadable_body"), f"{where}.on_unreadable_body: expected block or pass, "
                                                         f"got {_show(unreadable)}")
    if len(problems.items) > before or name is None or match is None:
        return None
    return Route(name, match, subject, tuple(request), tuple(response), on_error,  # type: ignore[arg-type]
                 problems.where(line), unreadable)


def _glob(pattern: str) -> re.Pattern[str]:
    # Hosts are compared in lower case, without the trailing dot of a fully qualified name.
    return re.compile(fnmatch.translate(pattern.lower().rstrip(".")))


def _match(node: Any, where: str, line: int, problems: _Problems) -> Match | None:
    if node is None:
        return Match()
    if not isinstance(node, LMap):
        problems.add(line, f"{where}: expected a mapping with hosts, path, methods")
        return None
    _unknown_keys(node, MATCH_KEYS, f"{where}.", problems)
    case_sensitive = node.get("case_sensitive", False)
    if not isinstance(case_sensitive, bool):
        problems.add(node.line_of("case_sensitive"), f"{where}.case_sensitive: expected true or false, "
                                                     f"got {_show(case_sensitive)}")
        case_sensitive = False
    # Paths match without case unless the route says otherwise: a case-insensitive app (IIS, ASP.NET, Spring with
    # its option, ...) routes /API/Users as /api/users, and matching too much only protects more.
    flags = 0 if case_sensitive else re.IGNORECASE
    hosts: list[re.Pattern[str]] = []
    raw_hosts = node.get("hosts")
    if raw_hosts is not None:
        if isinstance(raw_hosts, str):
            raw_hosts = [raw_hosts]
        if not isinstance(raw_hosts, list) or not all(isinstance(h, str) and h for h in raw_hosts):
            problems.add(node.line_of("hosts"), f"{where}.hosts: expected a list of host globs")
        else:
            hosts = [_glob(h) for h in raw_hosts]
    path = None
    raw_path = node.get("path")
    if raw_path is not None:
        if not isinstance(raw_path, str) or not raw_path:
            problems.add(node.line_of("path"), f"{where}.path: expected a glob or re:REGEX string")
        elif raw_path.startswith("re:"):
            try:
                path = re.compile(raw_path[3:], flags)
            except re.error as exc:
                problems.add(node.line_of("path"), f"{where}.path: invalid regex: {exc}")
        elif not raw_path.startswith(("/", "*")):
            problems.add(node.line_of("path"), f"{where}.path: a glob matches the whole path, so it starts with / "
                                               f"or *, got {_show(raw_path)}")
        else:
            path = re.compile(fnmatch.translate(raw_path), flags)
    methods: set[str] = set()
    raw_methods = node.get("methods")
    if raw_methods is not None:
        if isinstance(raw_methods, str):
            raw_methods = [raw_methods]
        if not isinstance(raw_methods, list) or not all(isinstance(m, str) for m in raw_methods):
            problems.add(node.line_of("methods"), f"{where}.methods: expected a list of HTTP methods")
        else:
            for m in raw_methods:
                if m.upper() not in METHODS:
                    problems.add(node.line_of("methods"), f"{where}.methods: unknown method {_show(m)} "
                                                          f"(expected {', '.join(METHODS)})")
                methods.add(m.upper())
    return Match(tuple(hosts), path, frozenset(methods), glob=not (isinstance(raw_path, str)
                                                                    and raw_path.startswith("re:")))


def _selector(node: LMap, where: str, problems: _Problems, allowed: tuple[str, ...]) -> Selector | None:
    present = [key for key in SELECTOR_KEYS if key in node]
    if len(present) != 1:
        found = f"found {', '.join(present)}" if present else "found none"
        problems.add(node.line, f"{where}: expected exactly one selector of {', '.join(allowed)} ({found})")
        return None
    key = present[0]
    line = node.line_of(key)
    value = node[key]
    if key not in allowed:
        problems.add(line, f"{where}.{key}: this selector cannot be used here (expected {', '.join(allowed)})")
        return None
    if key == "json":
        if not isinstance(value, str) or not value.startswith("$"):
            problems.add(line, f"{where}.json: expected a JSONPath starting with $, got {_show(value)}")
            return None
        from jsonpath_ng.ext import parse as parse_jsonpath  # here: ~15 ms to import, for JSON rules only

        try:
            return JsonSelector(value, parse_jsonpath(value))
        except Exception as exc:  # jsonpath_ng raises bare Exceptions (and JsonPathLexerError) on bad syntax
            problems.add(line, f"{where}.json: invalid JSONPath {_show(value)}: {str(exc).splitlines()[0][:120]}")
            return None
    if key == "field":
        from rules.scrub import COMBINED_FIELDS

        if value not in COMBINED_FIELDS:
            problems.add(line, f"{where}.field: expected a field of the combined log format "
                               f"({', '.join(COMBINED_FIELDS)}), got {_show(value)}")
            return None
        return FieldSelector("field", value)
    if key in FIELD_PLACES:
        if not isinstance(value, str) or not value:
            problems.add(line, f"{where}.{key}: expected a field name, got {_show(value)}")
            return None
        return FieldSelector(key, value.lower() if key == "header" else value)
    if key == "text":
        if not isinstance(value, str) or not value:
            problems.add(line, f"{where}.text: expected a regular expression, got {_show(value)}")
            return None
        try:
            return TextSelector(re.compile(value))
        except re.error as exc:
            problems.add(line, f"{where}.text: invalid regex: {exc}")
            return None
    if key == "detect":
        from rules.detectors import DETECTORS, Detector

        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            problems.add(line, f"{where}.detect: expected a list of detectors ({', '.join(DETECTORS)})")
            return None
        unknown = [n for n in names if n not in DETECTORS]
        if unknown:
            problems.add(line, f"{where}.detect: unknown detector {_show(unknown[0])} "
                               f"(expected {', '.join(DETECTORS)})")
            return None
        return DetectSelector(tuple(names), Detector(names))
    if value != "tokens":
        problems.add(line, f"{where}.any: expected tokens, got {_show(value)}")
        return None
    return AnyTokensSelector()


def _subject(node: Any, where: str, line: int, problems: _Problems) -> Subject | None:
    if not isinstance(node, LMap):
        problems.add(line, f"{where}: expected a mapping like {{json: \"$.email\", index: email}}")
        return None
    allowed = ("json", "form", "query", "header", "cookie")
    _unknown_keys(node, (*allowed, "index", "optional"), f"{where}.", problems)
    optional = node.get("optional", False)
    if not isinstance(optional, bool):
        problems.add(node.line_of("optional"), f"{where}.optional: expected true or false, got {_show(optional)}")
        return None
    selector = _selector(node, where, problems, allowed)
    index = node.get("index")
    if index not in INDEX_MODES:
        problems.add(node.line_of("index"), f"{where}.index: expected one of {', '.join(INDEX_MODES)}, "
                                            f"got {_show(index)}")
        return None
    if selector is None:
        return None
    return Subject(selector, index, optional)  # type: ignore[arg-type]


def _rule(node: Any, where: str, line: int, problems: _Problems, place: str) -> Rule | None:
    if not isinstance(node, LMap):
        problems.add(line, f"{where}: expected a mapping like {{json: \"$.email\", action: tokenize}}")
        return None
    before = len(problems.items)
    _unknown_keys(node, (*SELECTOR_KEYS, *OPTION_KEYS), f"{where}.", problems)
    allowed = LOG_SELECTORS if place == "logs" else ROUTE_SELECTORS
    selector = _selector(node, where, problems, allowed)
    action = node.get("action")
    if "action" not in node:
        problems.add(node.line, f"{where}.action: missing (expected one of {', '.join(ACTIONS)})")
        return None
    if action not in ACTIONS:
        problems.add(node.line_of("action"), f"{where}.action: expected one of {', '.join(ACTIONS)}, "
                                             f"got {_show(action)}")
        return None
    options: dict[str, Any] = {}

    def opt(key: str, check: Any, expected: str) -> None:
        if key in node:
            if check(node[key]):
                options[key] = node[key]
            else:
                problems.add(node.line_of(key), f"{where}.{key}: expected {expected}, got {_show(node[key])}")

    def only_with(key: str, actions: tuple[str, ...]) -> None:
        if key in node and action not in actions:
            problems.add(node.line_of(key), f"{where}.{key}: only used with action {' or '.join(actions)}")

    opt("kind", lambda v: isinstance(v, str) and KIND_PATTERN.match(v), "a kind like email, phone, ip, card")
    opt("format", lambda v: v in FORMATS, f"one of {', '.join(FORMATS)}")
    opt("deterministic", lambda v: isinstance(v, bool), "true or false")
    opt("reveal", lambda v: v in ("plain", "masked"), "plain or masked")
    opt("require_consent", lambda v: isinstance(v, str) and PURPOSE_PATTERN.match(v), "a consent purpose name")
    opt("on_consent_missing", lambda v: v in ("block", "redact"), "block or redact")
    opt("placeholder", lambda v: isinstance(v, str), "a string")
    if "ttl" in node:
        try:
            if not isinstance(node["ttl"], str):
                raise ValueError("expected a duration such as 30d, 12h or 90m")
            options["ttl"] = parse_duration(node["ttl"])
        except ValueError as exc:
            problems.add(node.line_of("ttl"), f"{where}.ttl: {exc}")
    for key in ("kind", "format", "deterministic", "ttl"):
        only_with(key, ("tokenize",) if key != "kind" else ("tokenize", "detokenize"))
    only_with("reveal", ("detokenize",))
    only_with("require_consent", ("detokenize",))
    only_with("placeholder", ("redact", "truncate"))
    if "on_consent_missing" in node and "require_consent" not in node:
        problems.add(node.line_of("on_consent_missing"), f"{where}.on_consent_missing: only used with "
                                                         "require_consent")
    if isinstance(selector, AnyTokensSelector) and action != "detokenize":
        problems.add(node.line_of("any"), f"{where}.any: 'any: tokens' only works with action detokenize")
    if action in LOG_ONLY_ACTIONS and place != "logs":
        problems.add(node.line_of("action"), f"{where}.action: {action} is for logs only")
    if action == "detokenize" and place == "logs":
        problems.add(node.line_of("action"), f"{where}.action: logs are never detokenized")
    if len(problems.items) > before or selector is None:
        return None
    return Rule(selector, action, where=problems.where(line), **options)
