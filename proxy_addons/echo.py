"""Tokens a client sent in: never revealed back to that client in the same flow.

An app that echoes what it was sent (a signup page that shows the submitted form, an error that repeats a field)
turns a route's response reveal rules into a detokenization oracle: anyone holding tokens from a legacy table or
log sends them in and reads the values back. The sidecar's own tokens are made from values the client sent, so a
client never needs a token revealed that it brought itself; those are left as they are.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

from mitmproxy import http

from vault.formats import TOKEN_PATTERN

_ESCAPE = re.compile(r"\\u00([0-9a-fA-F]{2})")


def brought_tokens(request: http.Request, body: bytes | None, doc: Any = None) -> frozenset[str]:
    """Every recognisable token in the request as the app could read it: path and query (decoded), header values,
    and the body (as JSON strings and keys when it parses, else as text, percent-decoded too). `doc`: the body
    already parsed as JSON, when the caller has it."""
    target = request.data.path.decode("utf-8", "replace")
    texts = [target, urllib.parse.unquote_plus(target)]
    texts += [value for _name, value in request.headers.items(multi=True)]
    if doc is not None:
        _strings(doc, texts)
    elif body:
        try:
            _strings(json.loads(body), texts)
        except (ValueError, UnicodeDecodeError, RecursionError):
            text = body.decode("utf-8", "replace")
            texts += [text, urllib.parse.unquote_plus(text), _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)]
    return frozenset(token for text in texts for token in TOKEN_PATTERN.findall(text))


def _strings(doc: Any, out: list[str]) -> None:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            out.extend(k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
