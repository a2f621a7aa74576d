"""The path the app routes on: decoded once, dot segments resolved, ambiguous spellings refused."""

from __future__ import annotations

import posixpath
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.routing import Map, Rule
from werkzeug.test import EnvironBuilder

from proxy_addons import paths


@pytest.mark.parametrize(("raw", "expected"), [
    (b"/api/%75sers", "/api/users"),
    (b"/%61pi/users", "/api/users"),
    (b"/api/./users", "/api/users"),
    (b"/api/x/../users", "/api/users"),
    (b"//api//users", "/api/users"),
    (b"/api/users/", "/api/users/"),
    (b"/a/b/..", "/a/"),
    (b"/../../api/users", "/api/users"),
    (b"/caf%C3%A9", "/caf\u00e9"),
    (b"/caf\xc3\xa9", "/caf\u00e9"),
    (b"/a%20b", "/a b"),
    (b"/a%25b", "/a%b"),
    (b"/", "/"),
    (b"*", "*"),
    (b"", ""),
])
def test_canonical(raw: bytes, expected: str) -> None:
    assert paths.canonical(raw) == expected


@pytest.mark.parametrize("raw", [
    b"/api%2fusers", b"/api%2Fusers", b"/api/%2e%2e/users", b"/api/%2E/users", b"/a%5cb", b"/a%5Cb", b"/a\\b",
    b"/a%00", b"/a%", b"/a%4", b"/a%zz", b"/a%C0%AF", b"/a%E0%80%AF", b"/a%ED%A0%80", b"/a%FF", b"/a\xff",
    b"/a%0a", b"/a%0d%0aX-Injected:%201", b"api/users",
])
def test_ambiguous_paths_are_refused(raw: bytes) -> None:
    with pytest.raises(paths.PathRefused) as caught:
        paths.canonical(raw)
    assert raw.decode("latin-1") not in caught.value.message


def test_the_forwarded_path_decodes_to_the_matched_one() -> None:
    for raw in (b"/a%20b", b"/a%25b", b"/a%3Fb", b"/a%23b", b"/caf%C3%A9", b"/x;y=1/z", b"/a:b@c"):
        canonical = paths.canonical(raw)
        assert urllib.parse.unquote(paths.encode(canonical)) == canonical


def test_match_candidates() -> None:
    assert paths.match_candidates("/api/users") == ("/api/users",)
    assert paths.match_candidates("/api/users/") == ("/api/users/", "/api/users")
    assert paths.match_candidates("/api/users;jsessionid=1") == ("/api/users;jsessionid=1", "/api/users")
    assert paths.match_candidates("/") == ("/",)


# What Werkzeug routes on: the WSGI PATH_INFO a server builds (decoded once) through Werkzeug's own router, which
# merges slashes. Dot segments are resolved by clients and most servers; ours must agree with posixpath's.
_ROUTER = Map([Rule("/api/users", endpoint="users", merge_slashes=True)], strict_slashes=False).bind("app")

segment = st.sampled_from(["api", "API", "users", "x", ".", "..", "", "%75sers", "%61pi", "a%20b", "caf%C3%A9"])


@settings(max_examples=400, deadline=None)
@given(st.lists(segment, min_size=1, max_size=7))
def test_property_our_canonical_path_is_what_a_server_routes(parts: list[str]) -> None:
    raw = ("/" + "/".join(parts)).encode()
    canonical = paths.canonical(raw)
    decoded = urllib.parse.unquote(raw.decode())
    resolved = posixpath.normpath(decoded)
    if resolved.startswith("//"):
        resolved = "/" + resolved.lstrip("/")
    assert canonical.rstrip("/") == resolved.rstrip("/") or (canonical == "/" and resolved == "/")
    # Werkzeug routes the canonical path (what we forward) to `users` exactly when it is /api/users.
    environ = EnvironBuilder(path=paths.encode(canonical)).get_environ()
    try:
        endpoint = _ROUTER.match(environ["PATH_INFO"])[0]
    except Exception:
        endpoint = None
    assert (endpoint == "users") == (canonical.rstrip("/") == "/api/users")
