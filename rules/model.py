"""Compiled rules: immutable objects built once at load (JSONPath parsed, regexes compiled), used on the hot path."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["tokenize", "detokenize", "redact", "drop", "mask", "truncate"]
OnError = Literal["block", "pass"]
FIELD_PLACES = ("form", "query", "header", "cookie")
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class JsonSelector:
    path: str
    expr: Any = field(compare=False, repr=False)  # a parsed jsonpath_ng expression


@dataclass(frozen=True, slots=True)
class FieldSelector:
    place: str  # form, query, header or cookie; "field" for a named field of a log format
    name: str


@dataclass(frozen=True, slots=True)
class TextSelector:
    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class DetectSelector:
    names: tuple[str, ...]
    detector: Any = field(compare=False, repr=False)  # a rules.detectors.Detector


@dataclass(frozen=True, slots=True)
class AnyTokensSelector:
    pass


Selector = JsonSelector | FieldSelector | TextSelector | DetectSelector | AnyTokensSelector
BODY_SELECTORS = (JsonSelector, TextSelector, DetectSelector, AnyTokensSelector)


@dataclass(frozen=True, slots=True)
class Rule:
    selector: Selector
    action: Action
    kind: str | None = None  # None: the detector's kind for `detect`, else "generic"
    format: str = "opaque"
    deterministic: bool = False
    ttl: int | None = None
    reveal: str = "plain"
    require_consent: str | None = None
    on_consent_missing: str = "block"
    placeholder: str = REDACTED
    where: str = ""  # FILE:LINE, for messages about this rule

    def kind_for(self, detector_kind: str | None = None) -> str:
        return self.kind or detector_kind or "generic"


@dataclass(frozen=True, slots=True)
class Subject:
    selector: JsonSelector | FieldSelector
    index: str  # email, phone, login or custom
    optional: bool = False  # False: a flow that would tokenize without its subject is refused


@dataclass(frozen=True, slots=True)
class Match:
    hosts: tuple[re.Pattern[str], ...] = ()
    path: re.Pattern[str] | None = None
    methods: frozenset[str] = frozenset()
    glob: bool = True  # a glob matches the whole path; a `re:` regex matches as written (anchor it with ^ and $)

    def matches(self, host: str, paths: tuple[str, ...], method: str) -> bool:
        """`paths`: the spellings of the one path the app routes on (proxy_addons.paths.match_candidates)."""
        if self.methods and method.upper() not in self.methods:
            return False
        if self.hosts and not any(h.fullmatch(host) for h in self.hosts):
            return False
        if self.path is None:
            return True
        if self.glob:
            return any(self.path.fullmatch(p) is not None for p in paths)
        return any(self.path.search(p) is not None for p in paths)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: Match
    subject: Subject | None
    request: tuple[Rule, ...]
    response: tuple[Rule, ...]
    on_error: OnError
    where: str
    on_unreadable_body: OnError = "block"  # a request body the route's json/form rules cannot read: refused


@dataclass(frozen=True, slots=True)
class RuleSet:
    routes: tuple[Route, ...] = ()
    logs: tuple[Rule, ...] = ()
    files: tuple[str, ...] = ()

    @property
    def uses_hosts(self) -> bool:
        return any(route.match.hosts for route in self.routes)

    def route_for(self, host: str, paths: str | tuple[str, ...], method: str) -> Route | None:
        """The first route, in file order, whose match accepts the request. `paths`: the path, or its spellings."""
        host = host.lower().rstrip(".")
        if isinstance(paths, str):
            paths = (paths,)
        for route in self.routes:
            if route.match.matches(host, paths, method):
                return route
        return None
