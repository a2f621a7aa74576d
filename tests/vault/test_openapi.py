"""vault/openapi.json: well-formed, in step with the Flask routes, served as is, true to real responses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from vault.api import OPENAPI_PATH, create_app
from vault.core import Vault

ROOT = "x" * 32
AUTH = {"X-Bunker-Token": ROOT}
METHODS = {"get", "put", "post", "delete", "patch"}
JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    return doc


@pytest.fixture
def app(vault: Vault) -> Flask:
    return create_app(vault, root_token_hash=vault.keyring.api_token_hash(ROOT))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _walk(child)


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        assert node["$ref"].startswith("#/"), node["$ref"]
        target: Any = spec
        for part in node["$ref"][2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _check(spec: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$") -> None:
    """A tiny JSON Schema checker: $ref, type, required, properties, enum and items only. Stricter than JSON Schema,
    an object may hold only the properties its schema lists unless it says additionalProperties, so that no new
    field of an answer goes undocumented."""
    schema = _resolve(spec, schema)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(value, JSON_TYPES[t]) and not (isinstance(value, bool) and t in ("integer", "number"))
            for t in types
        )
        assert ok, f"{where}: {value!r} is not of type {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        missing = set(schema.get("required", ())) - set(value)
        assert not missing, f"{where}: missing {sorted(missing)}"
        if "properties" in schema and schema.get("additionalProperties", False) is False:
            extra = set(value) - set(schema["properties"])
            assert not extra, f"{where}: undocumented {sorted(extra)}"
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                _check(spec, sub, value[name], f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(spec, schema["items"], item, f"{where}[{i}]")


def _response_schema(spec: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    response = _resolve(spec, spec["paths"][path][method]["responses"][str(status)])
    return response["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


def test_the_document_is_openapi_31_and_every_ref_resolves(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["title"] == "Tokenbunker vault API"
    refs = [node["$ref"] for node in _walk(spec) if isinstance(node, dict) and "$ref" in node]
    assert refs, "components are meant to be reused"
    for ref in refs:
        assert isinstance(_resolve(spec, {"$ref": ref}), dict), ref


def test_the_paths_are_exactly_the_flask_routes(spec: dict[str, Any], app: Flask) -> None:
    routes = {
        (method.lower(), re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.endpoint.startswith("portal.")  # the portal's pages: HTML
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    documented = {(m, path) for path, item in spec["paths"].items() for m in item if m in METHODS}
    assert documented == routes
    for path, item in spec["paths"].items():
        for method in set(item) & METHODS:
            params = item.get("parameters", []) + item[method].get("parameters", [])
            resolved = [_resolve(spec, p) for p in params]
            names = {p["name"] for p in resolved if p["in"] == "path"}
            assert names == set(re.findall(r"{(\w+)}", path)), path


def test_the_api_serves_this_document_without_auth(spec: dict[str, Any], client: FlaskClient) -> None:
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == spec
    for path in ("/v1/openapi.json", "/health", "/ready"):
        assert spec["paths"][path]["get"]["security"] == []


def test_the_checker_rejects_a_wrong_shape(spec: dict[str, Any]) -> None:
    error = {"$ref": "#/components/schemas/Error"}
    with pytest.raises(AssertionError):
        _check(spec, error, {"status": "ok", "message": "x"})
    with pytest.raises(AssertionError):
        _check(spec, error, {"status": "error"})
    with pytest.raises(AssertionError):
        _check(spec, error, {"status": "error", "message": "x", "hint": "y"})
    reasons = {"$ref": "#/components/schemas/DetokenizeResponse"}
    with pytest.raises(AssertionError):
        _check(spec, reasons, {"status": "ok", "values": [None], "reasons": ["because"]})


def test_real_responses_match_the_documented_schemas(spec: dict[str, Any], client: FlaskClient) -> None:
    items = [{"value": "jane@example.com", "kind": "email", "format": "email", "ttl": "30d"}, {"value": "42"}]
    tokenized = client.post("/v1/tokenize", json={"items": items}, headers=AUTH)
    assert tokenized.status_code == 200
    _check(spec, _response_schema(spec, "post", "/v1/tokenize", 200), tokenized.get_json())

    tokens = [*tokenized.get_json()["tokens"], "tbk_unknown"]
    revealed = client.post("/v1/detokenize", json={"tokens": tokens, "reveal": "masked"}, headers=AUTH)
    assert revealed.status_code == 200 and revealed.get_json()["values"][-1] is None
    _check(spec, _response_schema(spec, "post", "/v1/detokenize", 200), revealed.get_json())

    info = client.get(f"/v1/token/{tokens[0]}", headers=AUTH)
    assert info.status_code == 200
    _check(spec, _response_schema(spec, "get", "/v1/token/{token}", 200), info.get_json())

    refused = client.post("/v1/tokenize", json={"items": items})
    assert refused.status_code == 401
    _check(spec, _response_schema(spec, "post", "/v1/tokenize", 401), refused.get_json())

    bad = client.post("/v1/tokenize", json={"items": [{"value": "x", "colour": "red"}]}, headers=AUTH)
    assert bad.status_code == 400
    _check(spec, _response_schema(spec, "post", "/v1/tokenize", 400), bad.get_json())


def test_subject_and_explain_answers_match_the_documented_schemas(spec: dict[str, Any], client: FlaskClient) -> None:
    call = {"subject": {"index": "email", "value": " Jane@Example.com "}, "items": [{"value": "+44 7700 900123"}]}
    tokenized = client.post("/v1/tokenize", json=call, headers=AUTH)
    assert tokenized.status_code == 200 and isinstance(tokenized.get_json()["subject"], str)
    _check(spec, _response_schema(spec, "post", "/v1/tokenize", 200), tokenized.get_json())
    person = tokenized.get_json()["subject"]

    tokens = [*tokenized.get_json()["tokens"], "tbk_unknown"]
    explained = client.post("/v1/detokenize", json={"tokens": tokens, "explain": True}, headers=AUTH)
    assert explained.status_code == 200 and explained.get_json()["reasons"] == [None, "unknown"]
    _check(spec, _response_schema(spec, "post", "/v1/detokenize", 200), explained.get_json())
    gated = client.post("/v1/detokenize", json={"tokens": tokens, "purpose": "sms", "explain": True}, headers=AUTH)
    assert gated.status_code == 200 and gated.get_json()["reasons"] == ["consent", "unknown"]
    _check(spec, _response_schema(spec, "post", "/v1/detokenize", 200), gated.get_json())

    owned = {"subject": call["subject"], "items": [{"value": "x", "subject": person}]}
    for path, body in [("/v1/tokenize", owned), ("/v1/tokenize", {"items": [], "colour": "red"}),
                       ("/v1/detokenize", {"tokens": tokens, "purpose": "Not A Brief"}),
                       ("/v1/detokenize", {"tokens": tokens, "colour": "red"})]:
        bad = client.post(path, json=body, headers=AUTH)
        assert bad.status_code == 400, body
        _check(spec, _response_schema(spec, "post", path, 400), bad.get_json())


def test_agreement_answers_match_the_documented_schemas(spec: dict[str, Any], client: FlaskClient) -> None:
    path = "/v1/agreement/{brief}/{mode}/{ident}"
    assert client.post("/v1/user", json={"email": "jane@example.com"}, headers=AUTH).status_code == 200
    url = "/v1/agreement/sms/email/jane@example.com"

    given = client.post(url, json={"agreementmethod": "web", "referencecode": "r-1", "expiration": "30d"},
                        headers=AUTH)
    assert given.status_code == 200
    _check(spec, _response_schema(spec, "post", path, 200), given.get_json())
    got = client.get(url, headers=AUTH)
    assert got.status_code == 200 and got.get_json()["data"]["status"] == "yes"
    _check(spec, _response_schema(spec, "get", path, 200), got.get_json())

    by_form = client.post("/v1/agreement/news/email/jane@example.com", data={"expiration": "1d"}, headers=AUTH)
    assert by_form.status_code == 200
    _check(spec, _response_schema(spec, "post", path, 200), by_form.get_json())

    withdrawn = client.delete(url, headers=AUTH)
    assert withdrawn.status_code == 200
    _check(spec, _response_schema(spec, "delete", path, 200), withdrawn.get_json())
    got = client.get(url, headers=AUTH)
    assert got.status_code == 200 and got.get_json()["data"]["status"] == "no"
    _check(spec, _response_schema(spec, "get", path, 200), got.get_json())

    for method, where, status in [("get", "/v1/agreement/other/email/jane@example.com", 404),
                                  ("delete", "/v1/agreement/sms/email/nobody@example.com", 404),
                                  ("post", "/v1/agreement/Not-A-Brief/email/jane@example.com", 400),
                                  ("post", "/v1/agreement/sms/nick/jane", 400)]:
        answer = client.open(where, method=method.upper(), headers=AUTH)
        assert answer.status_code == status, where
        _check(spec, _response_schema(spec, method, path, status), answer.get_json())
    refused = client.get(url)
    assert refused.status_code == 401
    _check(spec, _response_schema(spec, "get", path, 401), refused.get_json())
