"""The log scrubber's engine: a rules file's `logs:` section applied to batches of lines.

A batch is scrubbed as one text: the detectors and regexes run over the whole buffer (lines do not matter to an IP
or an email), every new value of the batch goes to the vault in one call, and values seen before come from a
bounded cache without a round trip. One line out for each line in, in order: replacements never hold a newline.

The common case, one `detect:` rule (`{detect: [ipv4, ipv6], action: tokenize, deterministic: true}` on access
logs), has a fast path with the same output, stats and cache state: the detector's spans over the whole buffer,
each distinct value of the buffer resolved once (cache, then one vault call for the rest), and the output joined
from slices. bench/scrub_bench.py measures it.
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

from rules.detectors import KIND_OF
from rules.model import DetectSelector, FieldSelector, JsonSelector, Rule, TextSelector
from vault.identity import mask
from vault.tokenplan import TokenRequest

# The vault as the scrubber needs it: tokens and when each stops resolving (Vault.tokenize_with_expiry).
Tokenizer = Callable[[Sequence[TokenRequest]], list[tuple[str, int | None]]]
EXPIRY_MARGIN = 1.0  # seconds a cached token is forgotten before the vault lets it go (the vault counts whole seconds)

# nginx's and Apache's "combined" format; `field:` selectors in logs name these groups.
# No part may cross a newline: a cut-off line must not swallow the next one's fields.
_QUOTED = r'[^"\\\n]*(?:\\[^\n][^"\\\n]*)*'
COMBINED = re.compile(
    rf'^(?P<remote_addr>\S+) \S+ (?P<remote_user>\S+) \[(?P<time_local>[^\]\n]*)\] "(?P<request>{_QUOTED})"'
    rf' (?P<status>\d{{3}}) (?P<body_bytes_sent>\S+)(?: "(?P<http_referer>{_QUOTED})"'
    rf' "(?P<http_user_agent>{_QUOTED})")?',
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

    def get_many(self, kind: str, format: str, values: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        """get((kind, format, v)) for each of `values` in turn (repeats allowed), in one go: the tokens of the values
        found, and the values missing, each once, in order of first appearance. The cache ends in the same state as
        after the gets one by one (recency by last use, expired entries gone); the clock is read once."""
        items = self._items
        if not items:
            return {}, list(dict.fromkeys(values))
        now = self.clock()
        found: dict[str, str] = {}
        missing: list[str] = []
        move = items.move_to_end
        # Distinct values in order of their last use: moving each hit to the end in that order leaves the same LRU
        # order as one move per use.
        last_use = list(dict.fromkeys(reversed(values)))
        last_use.reverse()
        for value in last_use:
            key = (kind, format, value)
            item = items.get(key)
            if item is None:
                missing.append(value)
                continue
            expires = item[1]
            if expires is not None and expires <= now:
                del items[key]
                missing.append(value)
                continue
            move(key)
            found[value] = item[0]
        if len(missing) > 1:
            gone = set(missing)
            missing = [v for v in dict.fromkeys(values) if v in gone]
        return found, missing

    def put(self, key: tuple[str, str, str], token: str, expires_at: int | None) -> None:
        """Remember a token until a little before the vault's own expiry of it (which, for a deterministic token
        found again, is the one it was made with: never later than that)."""
        if self.capacity <= 0:
            return
        expires = None if expires_at is None else expires_at - EXPIRY_MARGIN
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
        # A log regex speaks of one line: ^ and $ at each line's ends (MULTILINE), and never across a newline.
        self._line_patterns = {id(r): re.compile(r.selector.pattern.pattern, r.selector.pattern.flags | re.MULTILINE)
                               for r in self._text_rules if isinstance(r.selector, TextSelector)}
        # One detect rule and nothing else: the fast path (see the module docstring), and the one kind its values
        # have (None: detectors of different kinds and no `kind:` in the rule).
        self._only_detect: Rule | None = None
        self._only_kind: str | None = None
        if len(self.rules) == 1 and isinstance(self.rules[0].selector, DetectSelector):
            rule = self._only_detect = self.rules[0]
            kinds = {rule.kind_for(KIND_OF[name]) for name in rule.selector.names}
            self._only_kind = kinds.pop() if len(kinds) == 1 else None

    def scrub(self, text: str) -> str:
        """Scrub a buffer of whole lines (newline-separated); the result has the same number of lines."""
        if not text:
            return text
        self.stats.lines += text.count("\n") + (not text.endswith("\n"))
        if self._only_detect is not None:
            return self._scrub_detect(text, self._only_detect)
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

    def _scrub_detect(self, text: str, rule: Rule) -> str:
        """scrub() for a rule set of one `detect:` rule: the same output and stats, without the general path's
        per-span (start, end, rule, kind) tuples, rule-order sorting and per-occurrence cache lookups."""
        spans = rule.selector.detector.spans(text)  # type: ignore[union-attr]
        if not spans:
            return text
        # pieces: the text before the first value, the value, the text up to the next value, ..., the rest.
        pieces: list[str] = []
        add = pieces.append
        last = 0
        for start, end, _name in spans:
            add(text[last:start])
            add(text[start:end])
            last = end
        add(text[last:])
        values = pieces[1::2]
        if self._only_kind is not None:
            pieces[1::2] = self._replace_values(values, rule, self._only_kind)
        else:  # each value by its own detector's kind
            pieces[1::2] = self._replacements([(v, rule, KIND_OF[span[2]]) for v, span in zip(values, spans,
                                                                                                strict=True)])
        self.stats.replaced += len(values)
        return "".join(pieces)

    def _replace_values(self, values: list[str], rule: Rule, kind: str) -> list[str]:
        """_replacements for values of one rule and one kind: each distinct value worked out once."""
        action = rule.action
        if action == "tokenize":
            if not rule.deterministic:
                return self._replacements([(v, rule, kind) for v in values])
            found, missing = self.cache.get_many(kind, rule.format, values)
            if missing:
                gone = set(missing)
                self.stats.cache_hits += len(values) - sum(map(gone.__contains__, values))
                requests = [TokenRequest(v, kind=kind, format=rule.format, deterministic=True, ttl=rule.ttl)
                            for v in missing]
                made = self.tokenize(requests)
                self.stats.vault_calls += 1
                put = self.cache.put
                for value, (token, expires_at) in zip(missing, made, strict=True):
                    put((kind, rule.format, value), token, expires_at)
                    found[value] = token
            else:
                self.stats.cache_hits += len(values)
            return list(map(found.__getitem__, values))
        if action == "redact":
            return [rule.placeholder] * len(values)
        if action == "drop":
            return [""] * len(values)
        if action == "mask":
            table = {v: mask(kind, v) for v in dict.fromkeys(values)}
        elif action == "truncate":
            table = {v: truncate_ip(v) or rule.placeholder for v in dict.fromkeys(values)}
        else:
            return self._replacements([(v, rule, kind) for v in values])
        return list(map(table.__getitem__, values))

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
                    found += [(s, e, rule, KIND_OF[name]) for s, e, name in selector.detector.spans(text)]
                else:
                    assert isinstance(selector, TextSelector)
                    found += _line_matches(self._line_patterns[id(rule)], text, rule)
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
            made = self.tokenize(requests)
            self.stats.vault_calls += 1
            for req, (token, expires_at), targets in zip(requests, made, owners, strict=True):
                if req.deterministic:
                    self.cache.put((req.kind, req.format, req.value), token, expires_at)
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
        for (n, _doc, match, rule), new in zip(found, replaced, strict=True):
            if rule.action != "drop":
                docs[n] = match.full_path.update(docs[n], new)
        for n, _doc, _match, rule in found:
            if rule.action == "drop":  # drop removes the field, as the sidecar does
                docs[n] = rule.selector.expr.filter(lambda _value: True, docs[n])  # type: ignore[union-attr]
        for n, doc in docs.items():
            lines[n] = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        self.stats.replaced += len(found)
        return "\n".join(lines)


def _line_matches(pattern: re.Pattern[str], text: str, rule: Rule) -> list[tuple[int, int, Rule, str | None]]:
    """The pattern's matches (its first group, if it has one) within single lines. The whole buffer is searched at
    once; a match that runs over a line's end is searched again within that line alone (endpos), so a value at the
    end of a line is still found, and nothing of the next line is taken."""
    out: list[tuple[int, int, Rule, str | None]] = []
    pos, length = 0, len(text)
    while pos < length:
        m = pattern.search(text, pos)
        if m is None:
            break
        line_end = text.find("\n", m.start())
        if line_end != -1 and m.end() > line_end:
            m = pattern.search(text, m.start(), line_end)  # the same start, this line only
            if m is None:
                pos = line_end + 1
                continue
        start, end = (m.start(1), m.end(1)) if m.re.groups and m.group(1) is not None else m.span()
        if end > start:
            out.append((start, end, rule, None))
        pos = m.end() if m.end() > m.start() else m.end() + 1
    return out


def _prefilter(rules: Sequence[Rule]) -> re.Pattern[str] | None:
    """One cheap search that says a buffer holds no candidate for any detector; None when a text rule is present
    (its regex is the filter)."""
    if any(isinstance(r.selector, TextSelector) for r in rules):
        return None
    return re.compile(r"[.:@+]|\d{4}")
