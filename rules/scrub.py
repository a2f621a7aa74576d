"""The log scrubber's engine: a rules file's `logs:` section applied to batches of lines.

A batch is scrubbed as one text: the detectors and regexes run over the whole buffer (lines do not matter to an IP
or an email), every new value of the batch goes to the vault in one call, and values seen before come from a
bounded cache without a round trip. One line out for each line in, in order: replacements never hold a newline.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rules.model import DetectSelector, FieldSelector, JsonSelector, Rule, TextSelector
from vault.identity import mask
from vault.tokens import TokenRequest

Tokenizer = Callable[[Sequence[TokenRequest]], list[str]]

# nginx's and Apache's "combined" format; `field:` selectors in logs name these groups.
COMBINED = re.compile(
    r'^(?P<remote_addr>\S+) \S+ (?P<remote_user>\S+) \[(?P<time_local>[^\]]*)\] "(?P<request>[^"\\]*(?:\\.[^"\\]*)*)"'
    r' (?P<status>\d{3}) (?P<body_bytes_sent>\S+)(?: "(?P<http_referer>[^"\\]*(?:\\.[^"\\]*)*)"'
    r' "(?P<http_user_agent>[^"\\]*(?:\\.[^"\\]*)*)")?',
    re.MULTILINE,
)
COMBINED_FIELDS = tuple(COMBINED.groupindex)


@dataclass
class ScrubStats:
    lines: int = 0
    replaced: int = 0
    vault_calls: int = 0
    cache_hits: int = 0


class TokenCache:
    """(kind, format, value) -> (token, expiry) for deterministic tokens; bounded LRU; expired entries miss."""

    def __init__(self, capacity: int, clock: Callable[[], float]) -> None:
        self.capacity = capacity
        self.clock = clock
        self._items: OrderedDict[tuple[str, str, str], tuple[str, float | None]] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        token, expires = item
        if expires is not None and expires <= self.clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return token

    def put(self, key: tuple[str, str, str], token: str, ttl: int | None) -> None:
        if self.capacity <= 0:
            return
        # Forget a little before the vault does, so a cached token is never one the vault has already let go.
        expires = None if ttl is None else self.clock() + ttl * 0.99
        self._items[key] = (token, expires)
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


def truncate_ip(value: str) -> str | None:
    """IPv4 to its /24, IPv6 to its /48 (the nginx anonymisation recipes); None if it is not an address."""
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


class LogScrubber:
    def __init__(self, rules: Sequence[Rule], tokenize: Tokenizer, cache_size: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.rules = tuple(rules)
        self.tokenize = tokenize
        self.cache = TokenCache(cache_size, clock)
        self.stats = ScrubStats()
        self._json_rules = [r for r in self.rules if isinstance(r.selector, JsonSelector)]
        self._field_rules = [r for r in self.rules if isinstance(r.selector, FieldSelector)]
        self._text_rules = [r for r in self.rules if isinstance(r.selector, TextSelector | DetectSelector)]
        self._prefilter = _prefilter(self._text_rules)

    def scrub(self, text: str) -> str:
        """Scrub a buffer of whole lines (newline-separated); the result has the same number of lines."""
        if not text:
            return text
        self.stats.lines += text.count("\n") + (not text.endswith("\n"))
        if self._json_rules:
            text = self._scrub_json_lines(text)
        spans = self._spans(text)
        if not spans:
            return text
        values = self._resolve(text, spans)
        pieces, last = [], 0
        for (start, end, _rule, _kind), new in zip(spans, values, strict=True):
            pieces += [text[last:start], new]
            last = end
        pieces.append(text[last:])
        self.stats.replaced += len(spans)
        return "".join(pieces)

    # -- finding -----------------------------------------------------------------------------------------------

    def _spans(self, text: str) -> list[tuple[int, int, Rule, str | None]]:
        found: list[tuple[int, int, Rule, str | None]] = []
        for rule in self._field_rules:
            name = rule.selector.name  # type: ignore[union-attr]
            for m in COMBINED.finditer(text):
                if m.group(name) and m.group(name) != "-":
                    found.append((m.start(name), m.end(name), rule, None))
        if self._text_rules and (self._prefilter is None or self._prefilter.search(text)):
            for rule in self._text_rules:
                selector = rule.selector
                if isinstance(selector, DetectSelector):
                    found += [(f.start, f.end, rule, f.kind) for f in selector.detector.find(text)]
                else:
                    assert isinstance(selector, TextSelector)
                    for m in selector.pattern.finditer(text):
                        start, end = (m.start(1), m.end(1)) if m.re.groups and m.group(1) is not None else m.span()
                        if end > start and "\n" not in text[start:end]:
                            found.append((start, end, rule, None))
        if not found:
            return []
        # Earlier rules win overlaps: sort by position, keep a span only if it starts after the last kept one ends,
        # comparing rule order where two collide.
        order = {id(rule): i for i, rule in enumerate(self.rules)}
        found.sort(key=lambda s: (s[0], order[id(s[2])]))
        kept: list[tuple[int, int, Rule, str | None]] = []
        for span in found:
            if kept and span[0] < kept[-1][1]:
                if order[id(span[2])] < order[id(kept[-1][2])]:
                    kept[-1] = span
                continue
            kept.append(span)
        return kept

    # -- replacing ---------------------------------------------------------------------------------------------

    def _resolve(self, text: str, spans: Sequence[tuple[int, int, Rule, str | None]]) -> list[str]:
        return self._replacements([(text[start:end], rule, kind) for start, end, rule, kind in spans])

    def _replacements(self, items: Sequence[tuple[str, Rule, str | None]]) -> list[str]:
        """What each value becomes; every value the cache lacks goes to the vault in one call."""
        out: list[str] = []
        waiting: dict[tuple[str, str, str], list[int]] = {}  # deterministic values not cached, by cache key
        requests: list[TokenRequest] = []
        owners: list[list[int]] = []  # for each request, the outputs its token fills
        for i, (value, rule, detected_kind) in enumerate(items):
            kind = rule.kind_for(detected_kind)
            action = rule.action
            out.append("")
            if action == "tokenize":
                key = (kind, rule.format, value)
                if rule.deterministic:
                    cached = self.cache.get(key)
                    if cached is not None:
                        self.stats.cache_hits += 1
                        out[i] = cached
                        continue
                    if key in waiting:
                        waiting[key].append(i)
                        continue
                    waiting[key] = [i]
                    owners.append(waiting[key])
                else:
                    owners.append([i])
                requests.append(TokenRequest(value, kind=kind, format=rule.format,
                                             deterministic=rule.deterministic, ttl=rule.ttl))
            elif action == "redact":
                out[i] = rule.placeholder
            elif action == "mask":
                out[i] = mask(kind, value)
            elif action == "truncate":
                out[i] = truncate_ip(value) or rule.placeholder
            # drop: stays ""
        if requests:
            tokens = self.tokenize(requests)
            self.stats.vault_calls += 1
            for req, token, targets in zip(requests, tokens, owners, strict=True):
                if req.deterministic:
                    self.cache.put((req.kind, req.format, req.value), token, req.ttl)
                for i in targets:
                    out[i] = token
        return out

    # -- JSON lines ----------------------------------------------------------------------------------------------

    def _scrub_json_lines(self, text: str) -> str:
        lines = text.split("\n")
        found: list[tuple[int, object, Any, Rule]] = []  # line number, its document, the match, the rule
        docs: dict[int, object] = {}
        for n, line in enumerate(lines):
            if not line.startswith("{"):
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            for rule in self._json_rules:
                for match in rule.selector.expr.find(doc):  # type: ignore[union-attr]
                    if isinstance(match.value, str | int | float) and not isinstance(match.value, bool):
                        found.append((n, doc, match, rule))
                        docs[n] = doc
        if not found:
            return text
        replaced = self._replacements([(str(match.value), rule, None) for _n, _doc, match, rule in found])
        for (n, _doc, match, _rule), new in zip(found, replaced, strict=True):
            docs[n] = match.full_path.update(docs[n], new)
        for n, doc in docs.items():
            lines[n] = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        self.stats.replaced += len(found)
        return "\n".join(lines)


def _prefilter(rules: Sequence[Rule]) -> re.Pattern[str] | None:
    """One cheap search that says a buffer holds no candidate for any detector; None when a text rule is present
    (its regex is the filter)."""
    if any(isinstance(r.selector, TextSelector) for r in rules):
        return None
    return re.compile(r"[.:@+]|\d{4}")
