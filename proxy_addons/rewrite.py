"""Apply a route's compiled rules to one HTTP message: find the values, ask the vault once, write the answers back.

Structured selectors (json, form, query, header, cookie) go first; text-like ones (text, detect, any: tokens) then
run over what is left: every string of a JSON body, every field of a form, or the whole of any other text body.
Nothing here logs or raises with a value in it.
"""

from __future__ import annotations

import asyncio
import bisect
import codecs
import functools
import itertools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from proxy_addons import bodylimit, multipart
from proxy_addons.vaultclient import VaultClient
from rules.model import (
    AnyTokensSelector,
    DetectSelector,
    FieldSelector,
    JsonSelector,
    Route,
    Rule,
    Subject,
    TextSelector,
)
from vault.formats import TOKEN_PATTERN
from vault.tokens import TokenRequest

JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]*\+)?json$|^text/json$")
FORM_TYPE = "application/x-www-form-urlencoded"
MULTIPART_TYPE = "multipart/form-data"
BINARY_TYPE = re.compile(r"^(image|audio|video|font)/|^application/(octet-stream|pdf|zip|gzip|x-protobuf|grpc)")
TEXT_SELECTORS = (TextSelector, DetectSelector, AnyTokensSelector)
# Values sent to the vault in one call: a larger message is split, so that other flows' transactions go in between.
CHUNK = 500
# Bodies larger than this are decoded, parsed, scanned and written back in a worker thread, off mitmproxy's loop.
OFFLOAD_BYTES = 64 * 1024


class ProtectionError(Exception):
    """The message cannot be protected (unparseable body, vault error, unknown token): the route's on_error.

    `message` goes to the client, so it holds no value and no server path; `where` (the rule's FILE:LINE) goes to
    the log only. `final`: the request is built to be read two ways (duplicate keys, ambiguous multipart or
    encodings), or is too large, or does not name its subject: refused even where on_error says pass, since a
    client must not be able to choose to be passed unprotected."""

    def __init__(self, message: str, status: int = 502, where: str = "", final: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.where = where
        self.final = final


class Blocked(Exception):
    """A rule refuses the message (consent missing): never passed on, whatever on_error says."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Counts:
    tokenized: int = 0
    revealed: int = 0
    redacted: int = 0
    dropped: int = 0
    withheld: int = 0

    def as_dict(self) -> dict[str, int]:
        counts = {"tokenized": self.tokenized, "revealed": self.revealed, "redacted": self.redacted,
                  "dropped": self.dropped}
        return counts | ({"withheld": self.withheld} if self.withheld else {})


Sink = Callable[[str], None]


@dataclass
class _Reveal:
    token: str
    sink: Sink
    rule: Rule
    strict: bool  # a field named by the rule must hold a known token; `any: tokens` only reveals what it knows


@dataclass
class _Work:
    """What one pass needs from the vault, and where each answer goes."""

    route: str
    counts: Counts
    produced: set[str]  # tokens this message already holds: later rules leave them alone
    tokenize: list[TokenRequest] = field(default_factory=list)
    tokenize_sinks: list[Sink] = field(default_factory=list)
    reveals: list[_Reveal] = field(default_factory=list)
    withheld: frozenset[str] = frozenset()  # tokens the client brought in itself: never revealed back (echo.py)

    def add_tokenize(self, value: str, rule: Rule, sink: Sink, kind: str | None = None) -> None:
        try:
            req = TokenRequest(value, kind=rule.kind_for(kind), format=rule.format,
                               deterministic=rule.deterministic, ttl=rule.ttl, route=self.route)
        except Exception as exc:  # BadInput: its message holds no value
            raise ProtectionError(getattr(exc, "message", "invalid value"), where=rule.where) from None
        self.tokenize.append(req)
        self.tokenize_sinks.append(sink)

    async def run(self, vault: VaultClient, subject: tuple[str, str] | None) -> str | None:
        person = None
        for start in range(0, len(self.tokenize), CHUNK):
            # One vault call per CHUNK values: each is a transaction of its own, and other flows' go in between.
            made = await vault.tokenize(subject, self.tokenize[start : start + CHUNK])
            person = person or made.person
            for sink, token in zip(self.tokenize_sinks[start : start + CHUNK], made.tokens, strict=True):
                sink(token)
            self.produced.update(made.tokens)
            self.counts.tokenized += len(made.tokens)
        groups: dict[str | None, list[_Reveal]] = {}  # by the consent needed; plain and masked go together
        for reveal in self.reveals:
            if reveal.token in self.withheld:
                self.counts.withheld += 1
                continue
            groups.setdefault(reveal.rule.require_consent, []).append(reveal)
        batches = [(purpose, items[i : i + CHUNK]) for purpose, items in groups.items()
                   for i in range(0, len(items), CHUNK)]
        for purpose, items in batches:
            modes = [r.rule.reveal for r in items]
            values, reasons = await vault.detokenize([r.token for r in items],
                                                     modes[0] if len(set(modes)) == 1 else modes, purpose, self.route)
            for item, value, reason in zip(items, values, reasons, strict=True):
                if value is not None:
                    item.sink(value)
                    self.counts.revealed += 1
                elif reason == "consent":
                    if item.rule.on_consent_missing == "redact":
                        item.sink(item.rule.placeholder)
                        self.counts.redacted += 1
                    else:
                        raise Blocked(f"route '{self.route}': consent '{purpose}' is not given")
                elif reason == "scope" and item.strict:
                    raise ProtectionError("the sidecar's vault token may not reveal this kind",
                                          where=item.rule.where)
                elif item.strict:
                    raise ProtectionError("a field the rules reveal holds no known token", where=item.rule.where)
        return person


def read_subject(request: http.Request, subject: Subject | None, doc: Any = None,
                 parsed: _Parsed = None) -> tuple[str, str] | None:
    """The value that identifies the person, read before anything in the request is rewritten. `doc`: the body
    as MessageRewriter.prepare parsed it (_NO_JSON when it is not JSON)."""
    if subject is None:
        return None
    selector = subject.selector
    value: Any = None
    if isinstance(selector, JsonSelector):
        if doc is None:
            doc = _json_doc(request)
        if doc is not _NO_JSON:
            keys = _plain_keys(selector)
            if keys is not None:
                found = [value for value, _parent, _key in itertools.islice(_plain_find(keys, doc), 1)]
            else:
                found = [m.value for m in selector.expr.find(doc)]
            value = found[0] if found else None
    else:
        values = _field_values(request, selector, request, parsed)
        value = values[0] if values else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    return (subject.index, value) if isinstance(value, str) and value else None


class _NoJson:
    pass


_NO_JSON: Any = _NoJson()


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _DuplicateKey
    return found


def load_json(raw: bytes, unique: bool = False) -> Any:
    """JSON as Python's json, Flask's get_json and Starlette read it: UTF-8, -16 or -32, with or without a BOM.
    `unique`: an object with a key twice is an error, since parsers disagree on which one counts."""
    return json.loads(raw, object_pairs_hook=_unique_keys if unique else None)


def _json_doc(message: http.Message) -> Any:
    """A response body as JSON when it says or looks like JSON; _NO_JSON when it is neither; an error when it
    claims JSON and is not."""
    raw = _content(message)
    if not raw or not raw.strip():
        return _NO_JSON
    claims = bool(JSON_TYPE.match(_mimetype(message)))
    if not claims and raw.lstrip()[:1] not in (b"{", b"[", codecs.BOM_UTF8[:1]):
        return _NO_JSON
    try:
        return load_json(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        if claims:
            raise ProtectionError("the body is not valid JSON although its Content-Type says so") from None
        return _NO_JSON


WILD: Any = object()  # a `*` / `[*]` step of a plain path


@functools.lru_cache(maxsize=4096)
def _plain_keys(selector: JsonSelector) -> tuple[Any, ...] | None:
    """The steps of a JSONPath made only of named fields and wildcards (`$.a.b`, `$[*].email`,
    `$.contacts[*].phone`; no filter, index, union or descent): a field name, or WILD. Else None. Such a path is
    found and written with plain dict and list access below, exactly as jsonpath_ng would (a field: `dict.get`,
    nothing under a non-object; a wildcard: every element of a list or value of an object, nothing under a scalar),
    at a fraction of its cost, and lazily, so that a message over the value cap is refused before it is all
    walked. Most rules are this simple."""
    from jsonpath_ng import jsonpath  # loaded already: the rules' JSONPaths were parsed with it

    keys: list[Any] = []
    expr = selector.expr
    while isinstance(expr, jsonpath.Child):
        step = expr.right
        if type(step) is jsonpath.Wildcard:
            keys.append(WILD)
        elif type(step) is not jsonpath.Fields or len(step.fields) != 1:
            return None
        else:
            name = step.fields[0]
            if name == "*" or name == jsonpath.auto_id_field:
                return None
            keys.append(name)
        expr = expr.left
    if type(expr) is not jsonpath.Root or not keys:
        return None
    return tuple(reversed(keys))


def _plain_find(keys: tuple[Any, ...], doc: Any) -> Iterator[tuple[Any, Any, Any]]:
    """The matches of a plain path (see _plain_keys) in `doc`, in jsonpath_ng's order: (value, the object or list
    holding it, its key or index)."""

    def walk(node: Any, depth: int) -> Iterator[tuple[Any, Any, Any]]:
        key = keys[depth]
        if key is WILD:
            if isinstance(node, list):
                children: Any = enumerate(node)
            elif isinstance(node, dict):
                children = node.items()
            else:
                return
        elif isinstance(node, dict) and key in node:
            children = ((key, node[key]),)
        else:
            return
        last = depth == len(keys) - 1
        for child_key, value in children:
            if last:
                yield value, node, child_key
            else:
                yield from walk(value, depth + 1)

    return walk(doc, 0)


def _content(message: http.Message) -> bytes | None:
    """The body, decoded. MessageRewriter.prepare has already replaced a compressed body by its bounded decoding
    (bodylimit.decode), so mitmproxy's own unbounded decoder never runs on one."""
    if message.raw_content is not None and bodylimit.encodings_of(message.headers.get("content-encoding", "")):
        raise ProtectionError("the body's Content-Encoding was not decoded", status=415, final=True)
    return message.raw_content


# A multipart body and the parts multipart.parts() found in it (strict parse and cross-checks done), or None.
_Parsed = tuple[bytes, list[multipart.Part]] | None


def _parts_of(parsed: _Parsed, content: bytes) -> list[multipart.Part] | None:
    """The parts already read for `content`, when it is that very body (not one a rule has rewritten since)."""
    return parsed[1] if parsed is not None and parsed[0] is content else None


def _boundary(message: http.Message) -> bytes:
    try:
        boundary = multipart.boundary_of(message.headers.get("content-type", ""))
    except ValueError as exc:
        raise ProtectionError(f"the multipart body is refused: {getattr(exc, 'message', 'bad boundary')}",
                              status=400, final=True) from None
    if boundary is None:
        raise ProtectionError("the multipart body has no boundary", status=400, final=True)
    return boundary


def _mimetype(message: http.Message) -> str:
    return message.headers.get("content-type", "").split(";")[0].strip().lower()


def _field_values(message: http.Message, selector: FieldSelector, request: http.Request,
                  parsed: _Parsed = None) -> list[str]:
    """`parsed`: the multipart body and its parts as MessageRewriter.prepare read them (see _parts_of)."""
    place, name = selector.place, selector.name
    if place == "query":
        return list(request.query.get_all(name)) if message is request else []
    if place == "header":
        return list(message.headers.get_all(name))
    if place == "cookie":
        if isinstance(message, http.Request):
            return list(message.cookies.get_all(name))
        return [value for value, _attrs in message.cookies.get_all(name)]  # type: ignore[union-attr]
    if not isinstance(message, http.Request):
        return []  # a response carries no form fields
    mimetype = _mimetype(message)
    if mimetype == FORM_TYPE:
        return list(message.urlencoded_form.get_all(name))
    if mimetype == MULTIPART_TYPE:
        content = _content(message)
        if not content:
            return []
        boundary = _boundary(message)
        try:
            return multipart.values(content, boundary, name, _parts_of(parsed, content))
        except ValueError:
            raise ProtectionError("the multipart body is malformed") from None
    return []


def _set_field_values(message: http.Message, selector: FieldSelector, values: list[str | None],
                      parsed: _Parsed = None) -> None:
    """Write back one field's values; None removes that occurrence."""
    place, name = selector.place, selector.name
    kept = [v for v in values if v is not None]
    if place == "query":
        message.query.set_all(name, kept)  # type: ignore[union-attr]
    elif place == "header":
        message.headers.set_all(name, kept)
    elif place == "cookie":
        if isinstance(message, http.Request):
            message.cookies.set_all(name, kept)
        else:
            jar = message.cookies  # type: ignore[union-attr]
            attrs = [a for _v, a in jar.get_all(name)]
            jar.set_all(name, [(v, a) for v, a in zip(values, attrs, strict=True) if v is not None])
    elif _mimetype(message) == FORM_TYPE:
        message.urlencoded_form.set_all(name, kept)  # type: ignore[union-attr]
    else:
        boundary = multipart.boundary_of(message.headers.get("content-type", ""))
        assert boundary is not None  # values were read with it
        content = _content(message) or b""
        message.content = multipart.replace_values(content, boundary, name, values, _parts_of(parsed, content))


class MessageRewriter:
    """Rewrites one message (a request, or a response) by one route's rules for that direction.

    `prepare()` decodes the body (bounded) and reads it the way the app will: a request body that the route's
    rules cannot read one way only is refused there. `subject()` then reads the person, and `apply()` asks the
    vault and writes the answers back. Work on a large body runs in a worker thread, off mitmproxy's loop."""

    def __init__(self, message: http.Message, request: http.Request, route: Route, rules: Sequence[Rule],
                 max_body: int | None = None, *, max_values: int = 0, is_request: bool = False,
                 withheld: frozenset[str] = frozenset()) -> None:
        self.message = message
        self.request = request
        self.route = route
        self.rules = rules
        self.max_body = max_body  # None: these rules do not read the body, which is left as it came
        self.max_values = max_values
        self.is_request = is_request
        self.withheld = withheld
        self.counts = Counts()
        self.produced: set[str] = set()
        self.doc: Any = _NO_JSON
        self.selected = 0  # values handed to the vault or replaced, against max_values
        self.ownerless = False  # tokenized without a subject, where the route says the subject is optional
        self.unreadable = False  # a body the rules cannot read, passed as on_unreadable_body says
        self.heavy = False
        self._encoding = ""  # the Content-Encoding taken off while the body is worked on
        self._raw: bytes | None = None
        self._decoded: bytes | None = None
        self._multipart: _Parsed = None  # read once in prepare, reused by every form rule on the same body

    async def _cpu(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(fn) if self.heavy else fn()

    # -- reading the body ----------------------------------------------------------------------------------------

    async def prepare(self) -> None:
        raw = self.message.raw_content
        if self.max_body is None or not raw:
            return
        if len(raw) > self.max_body:
            raise ProtectionError(f"the body is larger than the limit of {self.max_body} bytes", status=413,
                                  final=self.is_request)
        encoding = self.message.headers.get("content-encoding", "")
        self.heavy = len(raw) > OFFLOAD_BYTES or bool(bodylimit.encodings_of(encoding))
        await self._cpu(self._read_body)

    def _read_body(self) -> None:
        raw = self.message.raw_content
        assert raw is not None and self.max_body is not None
        encoding = self.message.headers.get("content-encoding", "")
        if bodylimit.encodings_of(encoding):
            try:
                decoded = bodylimit.decode(raw, encoding, self.max_body)
            except bodylimit.BodyError as exc:
                raise ProtectionError(exc.message, status=exc.status, final=self.is_request) from None
            # From here on the message is plain: nothing (mitmproxy's own decoder included) inflates it again.
            self._encoding, self._raw, self._decoded = encoding, raw, decoded
            del self.message.headers["content-encoding"]
            self.message.content = decoded
        self.heavy = len(self.message.raw_content or b"") > OFFLOAD_BYTES
        if self.is_request:
            self._read_request_body()
        elif any(isinstance(r.selector, JsonSelector) for r in self.rules) or (
                any(isinstance(r.selector, TEXT_SELECTORS) for r in self.rules)
                and JSON_TYPE.match(_mimetype(self.message))):
            self.doc = _json_doc(self.message)

    def _read_request_body(self) -> None:
        """Read as the app will, whatever the Content-Type claims: on a route whose rules read JSON, any body a
        JSON parser accepts is JSON. A body the route's json or form rules cannot read is refused (415), unless
        the route says `on_unreadable_body: pass`."""
        body = self.message.raw_content or b""
        if not body.strip():
            return
        selectors = [r.selector for r in self.rules] + ([self.route.subject.selector] if self.route.subject else [])
        json_rules = any(isinstance(s, JsonSelector) for s in selectors)
        form_rules = any(isinstance(s, FieldSelector) and s.place == "form" for s in selectors)
        text_rules = any(isinstance(s, TEXT_SELECTORS) for s in selectors)
        mimetype = _mimetype(self.message)
        formish = mimetype in (FORM_TYPE, MULTIPART_TYPE)
        if json_rules or (text_rules and not formish):
            try:
                self.doc = load_json(body, unique=True)
            except _DuplicateKey:
                raise ProtectionError("the JSON body has a key twice, and parsers disagree on which one counts",
                                      status=400, final=True) from None
            except (ValueError, UnicodeDecodeError, RecursionError):
                self.doc = _NO_JSON
        if mimetype == MULTIPART_TYPE and (form_rules or text_rules):
            boundary = _boundary(self.message)
            try:  # refuses framing that parsers would read differently
                self._multipart = (body, multipart.parts(body, boundary))
            except ValueError as exc:
                raise ProtectionError(f"the multipart body is refused: {getattr(exc, 'message', 'malformed')}",
                                      status=400, final=True) from None
        readable = (json_rules and self.doc is not _NO_JSON) or (form_rules and formish)
        if (json_rules or form_rules) and not readable:
            if self.route.on_unreadable_body == "pass":
                self.unreadable = True
                return
            # Not final: a route that says on_error: pass has chosen to pass what it cannot protect.
            if json_rules and JSON_TYPE.match(mimetype):
                raise ProtectionError("the body is not valid JSON", status=400)
            wanted = " or ".join(w for w, on in (("JSON", json_rules), ("a form", form_rules)) if on)
            raise ProtectionError(f"this route's rules read {wanted} bodies, and this body is not one", status=415)

    @property
    def json_doc(self) -> Any:
        """The body as prepare() parsed it as JSON, or None when it did not (not JSON, or not read as JSON)."""
        return None if self.doc is _NO_JSON else self.doc

    def subject(self) -> tuple[str, str] | None:
        if self.route.subject is None:
            return None
        return read_subject(self.request, self.route.subject, self.doc, self._multipart)

    # -- applying the rules ----------------------------------------------------------------------------------------

    async def apply(self, vault: VaultClient, subject: tuple[str, str] | None) -> str | None:
        if self.unreadable:
            return None
        structured = [r for r in self.rules if not isinstance(r.selector, TEXT_SELECTORS)]
        textual = [r for r in self.rules if isinstance(r.selector, TEXT_SELECTORS)]
        person = None
        holder = [self.doc]
        if structured:
            work = _Work(self.route.name, self.counts, self.produced, withheld=self.withheld)
            finishers = await self._cpu(lambda: [self._structured(rule, work, holder) for rule in structured])
            self._check_owner(work, subject)
            person = await work.run(vault, subject)
            await self._cpu(lambda: [finish() for finish in finishers])
        if textual:
            work = _Work(self.route.name, self.counts, self.produced, withheld=self.withheld)
            finish_text = await self._cpu(lambda: self._textual(textual, work, holder))
            self._check_owner(work, subject)
            person = await work.run(vault, subject) or person
            await self._cpu(finish_text)
        await self._cpu(lambda: self._write_back(holder[0]))
        return person

    def _check_owner(self, work: _Work, subject: tuple[str, str] | None) -> None:
        """Tokens made without their person can never be forgotten with them: a route with a subject refuses a
        request that does not name it, unless its subject is `optional: true`."""
        if not (self.is_request and work.tokenize and self.route.subject is not None and subject is None):
            return
        if not self.route.subject.optional:
            raise ProtectionError("the request does not name the person it is about (the route's subject field "
                                  "is missing or empty)", status=400, final=True)
        self.ownerless = True

    def _write_back(self, doc: Any) -> None:
        if doc is not _NO_JSON and (self.counts.tokenized or self.counts.revealed or self.counts.redacted
                                    or self.counts.dropped):
            text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
            try:
                self.message.content = text.encode()
            except UnicodeEncodeError:  # a lone surrogate, which JSON allows as an escape: write it as one
                self.message.content = json.dumps(doc, separators=(",", ":")).encode()
            content_type = self.message.headers.get("content-type", "")
            if "charset" in content_type.lower():
                self.message.headers["content-type"] = re.sub(r"(?i)charset=[^;]*", "charset=utf-8", content_type)
        if not self._encoding:
            return
        if self.message.raw_content == self._decoded:
            # Unchanged: the bytes that came go on, as they came (the decoder read all of them).
            self.message.raw_content = self._raw
            self.message.headers["content-encoding"] = self._encoding
            if "transfer-encoding" not in self.message.headers:
                self.message.headers["content-length"] = str(len(self._raw or b""))
        else:
            self.message.encode(bodylimit.encodings_of(self._encoding)[0])

    # -- structured selectors ----------------------------------------------------------------------------------

    def _structured(self, rule: Rule, work: _Work, holder: list[Any]) -> Callable[[], None]:
        selector = rule.selector
        if isinstance(selector, JsonSelector):
            return self._json(rule, selector, work, holder)
        assert isinstance(selector, FieldSelector)
        values: list[str | None] = list(_field_values(self.message, selector, self.request, self._multipart))
        if not values:
            return lambda: None
        for i, value in enumerate(values):
            self._act(rule, value, work, _list_sink(values, i), strict=True)
        return lambda: _set_field_values(self.message, selector, values, self._multipart)

    def _json(self, rule: Rule, selector: JsonSelector, work: _Work, holder: list[Any]) -> Callable[[], None]:
        if holder[0] is _NO_JSON:
            return lambda: None
        if rule.action == "drop":
            found = len(selector.expr.find(holder[0]))
            if found:
                holder[0] = selector.expr.filter(lambda _value: True, holder[0])
                self.counts.dropped += found
            return lambda: None
        keys = _plain_keys(selector)
        matches: Iterator[tuple[Any, Callable[[Any], None]]]
        if keys is not None:
            # Lazily: a message over the value cap is refused by _act before the rest of it is walked.
            matches = ((value, functools.partial(_put, parent, key))
                       for value, parent, key in _plain_find(keys, holder[0]))
        else:
            def update(path: Any, new: Any) -> None:
                holder[0] = path.update(holder[0], new)
            matches = ((m.value, functools.partial(update, m.full_path)) for m in selector.expr.find(holder[0]))
        for value, write in matches:
            if value is None or isinstance(value, bool):
                continue
            if isinstance(value, dict | list):
                # In a request the client chose that shape (and an app may store it as text): refused, always.
                raise ProtectionError("a JSONPath of the rules matched an object or array, not a value",
                                      status=400 if self.is_request else 502, where=rule.where,
                                      final=self.is_request)
            was_number = isinstance(value, int | float)

            def sink(new: str, write: Callable[[Any], None] = write, was_number: bool = was_number) -> None:
                write(int(new) if was_number and new.isdigit() else new)

            self._act(rule, str(value), work, sink, strict=True)
        return lambda: None

    def _act(self, rule: Rule, value: str, work: _Work, sink: Sink | Callable[[str | None], None],
             strict: bool, kind: str | None = None) -> None:
        self.selected += 1
        if self.max_values and self.selected > self.max_values:
            raise ProtectionError(f"the message holds more than {self.max_values} values for the rules",
                                  status=413, final=self.is_request)
        if rule.action == "tokenize":
            work.add_tokenize(value, rule, sink, kind)  # type: ignore[arg-type]
        elif rule.action == "detokenize":
            work.reveals.append(_Reveal(value, sink, rule, strict))  # type: ignore[arg-type]
        elif rule.action == "redact":
            sink(rule.placeholder)
            self.counts.redacted += 1
        else:
            sink(None)  # type: ignore[arg-type]
            self.counts.dropped += 1

    # -- text-like selectors -------------------------------------------------------------------------------------

    def _textual(self, rules: Sequence[Rule], work: _Work, holder: list[Any]) -> Callable[[], None]:
        targets: list[_Text] = []
        if holder[0] is not _NO_JSON:
            _json_strings(holder, targets)
        elif isinstance(self.message, http.Request) and _mimetype(self.message) == FORM_TYPE:
            request = self.message
            fields = list(request.urlencoded_form.items(multi=True))
            field_targets = []
            for i, (_key, value) in enumerate(fields):
                def set_field(new: str, i: int = i) -> None:
                    fields[i] = (fields[i][0], new)
                field_targets.append(_Text(value, set_field))
            targets.extend(field_targets)
            # The form is encoded again once, after its fields are rewritten, and only if one of them was.
            targets.append(_Text("", lambda _new: None, after=lambda: any(t.replacements for t in field_targets)
                                 and setattr(request, "urlencoded_form", fields)))
        elif self.message.raw_content and (self.is_request or not BINARY_TYPE.match(_mimetype(self.message))):
            # A request body is scanned whatever its Content-Type says: the app may read any of them as text.
            text, codec = self._body_text()
            if text is not None:
                message = self.message
                targets.append(_Text(text, lambda new: setattr(message, "content", new.encode(codec))))
        for target in targets:
            target.plan(rules, self, work)
        return lambda: [t.finish() for t in targets]  # type: ignore[func-returns-value]

    def _body_text(self) -> tuple[str | None, str]:
        """The body as text, in its declared charset or else UTF-8 (a BOM says which UTF); (None, "") when it is
        not text, which a request refuses unless the route says `on_unreadable_body: pass`."""
        raw = _content(self.message) or b""
        match = re.search(r"(?i)charset=\"?([\w.:-]+)", self.message.headers.get("content-type", ""))
        codec = match.group(1) if match else "utf-8"
        if codec.lower().replace("_", "-") in ("utf-8", "utf8") and raw.startswith(codecs.BOM_UTF8):
            codec = "utf-8-sig"
        elif not match and raw[:4] in (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE):
            codec = "utf-32"
        elif not match and raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            codec = "utf-16"
        try:
            return raw.decode(codec), codec
        except (LookupError, UnicodeDecodeError):
            if not self.is_request or self.route.on_unreadable_body == "pass":
                if self.is_request:
                    self.unreadable = True
                return None, ""
            raise ProtectionError("the body is not text in its charset, and this route's rules read text",
                                  status=415) from None


class _Text:
    """One string that text-like rules scan: spans found first (the earlier rule wins an overlap), replaced after
    the vault has answered."""

    def __init__(self, text: str, write: Callable[[str], None], after: Callable[[], object] | None = None) -> None:
        self.text = text
        self.write = write
        self.after = after
        self.spans: list[tuple[int, int]] = []
        self.replacements: dict[int, str] = {}
        # The spans taken so far, sorted: they never overlap, so their ends are sorted too, and an overlap with a
        # new span is found by one bisection (a scan of every earlier span made this quadratic).
        self._starts: list[int] = []
        self._ends: list[int] = []

    def _take(self, start: int, end: int) -> bool:
        """Keep the span [start, end) unless it overlaps one kept already (the earlier one wins)."""
        i = bisect.bisect_right(self._starts, start)
        if (i > 0 and self._ends[i - 1] > start) or (i < len(self._starts) and self._starts[i] < end):
            return False
        self._starts.insert(i, start)
        self._ends.insert(i, end)
        return True

    def plan(self, rules: Sequence[Rule], rewriter: MessageRewriter, work: _Work) -> None:
        if not self.text:
            return
        for rule in rules:
            for start, end, kind in _spans(rule, self.text):
                if self.text[start:end] in rewriter.produced or not self._take(start, end):
                    continue
                index = len(self.spans)
                self.spans.append((start, end))

                def sink(new: str | None, index: int = index) -> None:
                    self.replacements[index] = "" if new is None else new

                rewriter._act(rule, self.text[start:end], work, sink,
                              strict=not isinstance(rule.selector, AnyTokensSelector), kind=kind)

    def finish(self) -> None:
        if self.after is not None:
            self.after()
        if not self.replacements:
            return
        pieces, last = [], 0
        for index, (start, end) in sorted(enumerate(self.spans), key=lambda item: item[1][0]):
            if index in self.replacements:
                pieces += [self.text[last:start], self.replacements[index]]
                last = end
        pieces.append(self.text[last:])
        self.write("".join(pieces))


def _spans(rule: Rule, text: str) -> Iterator[tuple[int, int, str | None]]:
    """Lazily, so that a text over the value cap is refused before all of it is scanned."""
    selector = rule.selector
    if isinstance(selector, TextSelector):
        for m in selector.pattern.finditer(text):
            if m.re.groups and m.group(1) is not None:
                yield m.start(1), m.end(1), None
            elif not m.re.groups and m.end() > m.start():
                yield m.start(), m.end(), None
    elif isinstance(selector, DetectSelector):
        for f in selector.detector.find(text):
            yield f.start, f.end, f.kind
    else:
        for m in TOKEN_PATTERN.finditer(text):
            yield m.start(), m.end(), None


def _json_strings(holder: list[Any], targets: list[_Text]) -> None:
    """Every string value of the JSON document (not keys), each with a writer back into the document."""

    def walk(container: Any) -> None:
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in list(items):
            if isinstance(value, str):
                def write(new: str, container: Any = container, key: Any = key) -> None:
                    container[key] = new
                targets.append(_Text(value, write))
            elif isinstance(value, dict | list):
                walk(value)

    root = holder[0]
    if isinstance(root, str):
        targets.append(_Text(root, lambda new: holder.__setitem__(0, new)))
    elif isinstance(root, dict | list):
        walk(root)


def _put(parent: Any, key: Any, new: Any) -> None:
    parent[key] = new


def _list_sink(values: list[str | None], index: int) -> Callable[[str | None], None]:
    def sink(new: str | None) -> None:
        values[index] = new
    return sink
