"""JSON Merge Patch (RFC 7386) and JSON Patch (RFC 6902) for profile updates.

Profiles hold personal data and error messages go back to API users, so a PatchError names operations, indices
and paths only, never a value from the document or the patch.
"""

from __future__ import annotations

import copy
import re
from typing import Any

OPS = ("add", "remove", "replace", "move", "copy", "test")
_INDEX = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_OP_NAME = re.compile(r"[A-Za-z_]{1,32}", re.ASCII)
_BAD_ESCAPE = re.compile(r"~(?![01])")
_MAX_INDEX_DIGITS = 18  # int() of a huge digit string is slow, then refused; no array is that long anyway
_MAX_SHOWN_PATH = 200  # paths come from the caller; a bound keeps one huge pointer out of logs and responses


class PatchError(ValueError):
    """A patch that cannot be applied; the message is safe to show to users."""


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch as a new value: neither input is changed, nor aliased by the result."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    _merge_into(result, patch)
    return result


def _merge_into(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for name, value in patch.items():
        if value is None:
            target.pop(name, None)
        elif isinstance(value, dict):
            current = target.get(name)
            if not isinstance(current, dict):
                # A non-object is replaced by an object, and the patch's nulls are then dropped from it.
                current = {}
                target[name] = current
            _merge_into(current, value)
        else:
            target[name] = copy.deepcopy(value)


def json_patch(doc: Any, ops: list[Any]) -> Any:
    """Apply an RFC 6902 JSON Patch atomically: all operations apply, or PatchError and `doc` is as it was."""
    if not isinstance(ops, list):
        raise PatchError("a JSON Patch must be an array of operations")
    result = copy.deepcopy(doc)
    for n, op in enumerate(ops):
        result = _apply_op(result, n, op)
    return result


def apply_change(doc: dict[str, Any], change: Any) -> dict[str, Any]:
    """Apply a profile change: an array is a JSON Patch, an object a merge patch; the result is an object."""
    try:
        if isinstance(change, list):
            result = json_patch(doc, change)
        elif isinstance(change, dict):
            result = merge_patch(doc, change)
        else:
            raise PatchError("a change must be a JSON object (merge patch) or an array (JSON Patch)")
    except RecursionError:
        raise PatchError("the document or the change is nested too deeply") from None
    if not isinstance(result, dict):
        raise PatchError("the result must be a JSON object")
    return result


def _show(path: str) -> str:
    if len(path) > _MAX_SHOWN_PATH:
        path = path[:_MAX_SHOWN_PATH] + "..."
    return repr(path)


def _apply_op(doc: Any, n: int, op: Any) -> Any:
    where = f"patch operation {n}"
    if not isinstance(op, dict):
        raise PatchError(f"{where}: must be a JSON object")
    name = op.get("op")
    if name is None:
        raise PatchError(f"{where}: missing 'op'")
    if not isinstance(name, str):
        raise PatchError(f"{where}: 'op' must be a string")
    if name not in OPS:
        # The op field is free text from the caller: echo it only when it looks like an op name.
        shown = f" {name!r}" if _OP_NAME.fullmatch(name) else ""
        raise PatchError(f"{where}: unknown op{shown}: use one of {', '.join(OPS)}")
    path = _member(op, "path", where)
    tokens = _parse_pointer(path, where)
    if name in ("add", "replace", "test") and "value" not in op:
        raise PatchError(f"{where}: missing 'value'")

    if name == "add":
        return _add(doc, tokens, copy.deepcopy(op["value"]), where, path)
    if name == "remove":
        _get(doc, tokens, where, path)
        return _remove(doc, tokens, where, path)
    if name == "replace":
        _get(doc, tokens, where, path)
        if not tokens:
            return copy.deepcopy(op["value"])
        # Assigned in place, so a replaced member keeps its position in the object.
        parent = _parent(doc, tokens, where, path)
        key = tokens[-1] if isinstance(parent, dict) else _index(parent, tokens[-1], where, path)
        parent[key] = copy.deepcopy(op["value"])
        return doc
    if name == "test":
        if not _json_equal(_get(doc, tokens, where, path), op["value"]):
            raise PatchError(f"{where}: test failed at {_show(path)}")
        return doc

    source = _member(op, "from", where)
    from_tokens = _parse_pointer(source, where)
    value = _get(doc, from_tokens, where, source)
    if name == "copy":
        return _add(doc, tokens, copy.deepcopy(value), where, path)
    # move
    if tokens == from_tokens:
        return doc
    if tokens[: len(from_tokens)] == from_tokens:
        raise PatchError(f"{where}: cannot move {_show(source)} into one of its own children")
    doc = _remove(doc, from_tokens, where, source)
    return _add(doc, tokens, value, where, path)


def _member(op: dict[str, Any], key: str, where: str) -> str:
    if key not in op:
        raise PatchError(f"{where}: missing {key!r}")
    value = op[key]
    if not isinstance(value, str):
        raise PatchError(f"{where}: {key!r} must be a string")
    return value


def _parse_pointer(pointer: str, where: str) -> list[str]:
    """Split an RFC 6901 JSON Pointer into unescaped reference tokens; "" is the whole document."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"{where}: path {_show(pointer)} must be empty or start with '/'")
    tokens = pointer[1:].split("/")
    for token in tokens:
        if _BAD_ESCAPE.search(token):
            raise PatchError(f"{where}: path {_show(pointer)} has an invalid '~' escape")
    # ~1 before ~0, so that "~01" becomes "~1" and not "/".
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def _index(container: list[Any], token: str, where: str, path: str, *, for_add: bool = False) -> int:
    """The array index a token names; "-" (one past the end) and len(container) are only valid for add."""
    if for_add and token == "-":
        return len(container)
    i = _array_index(token)
    if i is None:
        raise PatchError(f"{where}: path {_show(path)} has an invalid array index")
    if i > len(container) or (i == len(container) and not for_add):
        raise PatchError(f"{where}: path {_show(path)} is out of the array's range")
    return i


def _array_index(token: str) -> int | None:
    """RFC 6901 array index: digits without a leading zero; None when the token is not one."""
    if len(token) > _MAX_INDEX_DIGITS or not _INDEX.fullmatch(token):
        return None
    return int(token)


def _get(doc: Any, tokens: list[str], where: str, path: str) -> Any:
    node = doc
    for token in tokens:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and (i := _array_index(token)) is not None and i < len(node):
            node = node[i]
        else:
            raise PatchError(f"{where}: path {_show(path)} does not exist")
    return node


def _parent(doc: Any, tokens: list[str], where: str, path: str) -> Any:
    parent = _get(doc, tokens[:-1], where, path)
    if not isinstance(parent, dict | list):
        raise PatchError(f"{where}: path {_show(path)} does not exist")
    return parent


def _add(doc: Any, tokens: list[str], value: Any, where: str, path: str) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens, where, path)
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    else:
        parent.insert(_index(parent, tokens[-1], where, path, for_add=True), value)
    return doc


def _remove(doc: Any, tokens: list[str], where: str, path: str) -> Any:
    if not tokens:
        raise PatchError(f"{where}: cannot remove the whole document")
    parent = _parent(doc, tokens, where, path)
    if isinstance(parent, dict):
        if tokens[-1] not in parent:
            raise PatchError(f"{where}: path {_show(path)} does not exist")
        del parent[tokens[-1]]
    else:
        del parent[_index(parent, tokens[-1], where, path)]
    return doc


def _json_equal(a: Any, b: Any) -> bool:
    """Equality by JSON's rules: unlike Python's ==, true is not 1 and 1.0 is not "1"."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
