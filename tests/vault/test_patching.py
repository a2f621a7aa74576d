"""JSON Merge Patch (RFC 7386) and JSON Patch (RFC 6902), checked against the RFCs' own examples."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.patching import PatchError, apply_change, json_patch, merge_patch

# RFC 7386, Appendix A: (target, patch, result)
MERGE_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), MERGE_EXAMPLES)
def test_merge_patch_rfc7386_examples(target: Any, patch: Any, expected: Any) -> None:
    assert merge_patch(target, patch) == expected


def test_merge_patch_result_does_not_alias_inputs() -> None:
    target = {"keep": {"deep": [1]}, "x": 1}
    patch = {"new": {"list": [1, 2]}, "x": [3]}
    result = merge_patch(target, patch)
    result["keep"]["deep"].append(2)
    result["new"]["list"].append(3)
    result["x"].append(4)
    assert target == {"keep": {"deep": [1]}, "x": 1}
    assert patch == {"new": {"list": [1, 2]}, "x": [3]}


# RFC 6902, Appendix A: (section, document, patch, result). A.9, A.12 and A.15 are errors, in ERRORS below;
# A.13 (a duplicated "op" member) cannot happen once the JSON is parsed into a dict.
RFC6902_EXAMPLES: list[tuple[str, Any, list[Any], Any]] = [
    ("A.1", {"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"baz": "qux", "foo": "bar"}),
    (
        "A.2",
        {"foo": ["bar", "baz"]},
        [{"op": "add", "path": "/foo/1", "value": "qux"}],
        {"foo": ["bar", "qux", "baz"]},
    ),
    ("A.3", {"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ("A.4", {"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    (
        "A.5",
        {"baz": "qux", "foo": "bar"},
        [{"op": "replace", "path": "/baz", "value": "boo"}],
        {"baz": "boo", "foo": "bar"},
    ),
    (
        "A.6",
        {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
        [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
        {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
    ),
    (
        "A.7",
        {"foo": ["all", "grass", "cows", "eat"]},
        [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
        {"foo": ["all", "cows", "eat", "grass"]},
    ),
    (
        "A.8",
        {"baz": "qux", "foo": ["a", 2, "c"]},
        [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}],
        {"baz": "qux", "foo": ["a", 2, "c"]},
    ),
    (
        "A.10",
        {"foo": "bar"},
        [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
        {"foo": "bar", "child": {"grandchild": {}}},
    ),
    (
        "A.11",
        {"foo": "bar"},
        [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
        {"foo": "bar", "baz": "qux"},
    ),
    ("A.14", {"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
    (
        "A.16",
        {"foo": ["bar"]},
        [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
        {"foo": ["bar", ["abc", "def"]]},
    ),
    # Beyond the appendix: section 4 rules and RFC 6901 pointers.
    ("copy", {"a": [1]}, [{"op": "copy", "from": "/a", "path": "/c"}], {"a": [1], "c": [1]}),
    ("add at root", {"a": 1}, [{"op": "add", "path": "", "value": {"b": 2}}], {"b": 2}),
    ("replace root", {"a": 1}, [{"op": "replace", "path": "", "value": [1]}], [1]),
    ("add replaces member", {"a": 1}, [{"op": "add", "path": "/a", "value": 2}], {"a": 2}),
    ("add at array end", {"a": [1]}, [{"op": "add", "path": "/a/1", "value": 2}], {"a": [1, 2]}),
    ("empty key", {"": 1}, [{"op": "replace", "path": "/", "value": 2}], {"": 2}),
    ("slash key", {}, [{"op": "add", "path": "/a~1b", "value": 1}], {"a/b": 1}),
    ("tilde key", {"m~n": 1}, [{"op": "remove", "path": "/m~0n"}], {}),
    ("move to itself", {"a": 1}, [{"op": "move", "from": "/a", "path": "/a"}], {"a": 1}),
    ("test null", {"a": None}, [{"op": "test", "path": "/a", "value": None}], {"a": None}),
    ("test object order", {"a": {"x": 1, "y": 2}}, [{"op": "test", "path": "/a", "value": {"y": 2, "x": 1}}],
     {"a": {"x": 1, "y": 2}}),
    ("test int and float", {"a": 1}, [{"op": "test", "path": "/a", "value": 1.0}], {"a": 1}),
    ("no operations", {"a": 1}, [], {"a": 1}),
]


@pytest.mark.parametrize(
    ("doc", "ops", "expected"),
    [case[1:] for case in RFC6902_EXAMPLES],
    ids=[case[0] for case in RFC6902_EXAMPLES],
)
def test_json_patch_examples(doc: Any, ops: list[Any], expected: Any) -> None:
    before = copy.deepcopy(doc)
    assert json_patch(doc, ops) == expected
    assert doc == before


def test_replace_keeps_member_order() -> None:
    result = json_patch({"a": 1, "b": 2, "c": 3}, [{"op": "replace", "path": "/a", "value": 9}])
    assert list(result) == ["a", "b", "c"]


def test_json_patch_result_does_not_alias_the_patch() -> None:
    ops = [{"op": "add", "path": "/a", "value": {"list": [1]}}]
    result = json_patch({}, ops)
    result["a"]["list"].append(2)
    assert ops[0]["value"] == {"list": [1]}


DOC: dict[str, Any] = {"a": {"b": 1}, "arr": [1, 2, 3], "s": "text", "x": True}

# (name, document, operations, message pattern)
ERRORS: list[tuple[str, Any, Any, str]] = [
    ("A.9 test failed", {"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}],
     r"^patch operation 0: test failed at '/baz'$"),
    ("A.12 missing parent", {"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}],
     r"^patch operation 0: path '/baz/bat' does not exist$"),
    ("A.15 string is not number", {"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": "10"}],
     r"^patch operation 0: test failed at '/~01'$"),
    ("not a list", DOC, {"op": "add"}, r"^a JSON Patch must be an array of operations$"),
    ("op not an object", DOC, [1], r"^patch operation 0: must be a JSON object$"),
    ("missing op", DOC, [{"path": "/a"}], r"^patch operation 0: missing 'op'$"),
    ("op not a string", DOC, [{"op": 5, "path": "/a"}], r"^patch operation 0: 'op' must be a string$"),
    ("unknown op", DOC,
     [{"op": "test", "path": "/x", "value": True}, {"op": "remove", "path": "/s"}, {"op": "frobnicate"}],
     r"^patch operation 2: unknown op 'frobnicate'"),
    ("unknown op, not a name", DOC, [{"op": "add!", "path": "/a"}], r"^patch operation 0: unknown op: use"),
    ("missing path", DOC, [{"op": "remove"}], r"^patch operation 0: missing 'path'$"),
    ("path not a string", DOC, [{"op": "remove", "path": 1}], r"^patch operation 0: 'path' must be a string"),
    ("path without slash", DOC, [{"op": "remove", "path": "a"}], r"path 'a' must be empty or start with '/'"),
    ("bad escape", DOC, [{"op": "remove", "path": "/a~2"}], r"path '/a~2' has an invalid '~' escape"),
    ("add without value", DOC, [{"op": "add", "path": "/n"}], r"^patch operation 0: missing 'value'$"),
    ("replace without value", DOC, [{"op": "replace", "path": "/a"}], r"^patch operation 0: missing 'value'"),
    ("test without value", DOC, [{"op": "test", "path": "/a"}], r"^patch operation 0: missing 'value'$"),
    ("move without from", DOC, [{"op": "move", "path": "/n"}], r"^patch operation 0: missing 'from'$"),
    ("copy from not a string", DOC, [{"op": "copy", "from": None, "path": "/n"}], r"'from' must be a string"),
    ("remove missing", DOC, [{"op": "test", "path": "/x", "value": True}, {"op": "remove", "path": "/a/c"}],
     r"^patch operation 1: path '/a/c' does not exist$"),
    ("replace missing", DOC, [{"op": "replace", "path": "/no", "value": 1}], r"path '/no' does not exist"),
    ("move from missing", DOC, [{"op": "move", "from": "/no", "path": "/n"}], r"path '/no' does not exist"),
    ("copy from missing", DOC, [{"op": "copy", "from": "/arr/3", "path": "/n"}], r"'/arr/3' does not exist"),
    ("move into own child", DOC, [{"op": "move", "from": "/a", "path": "/a/b/c"}],
     r"cannot move '/a' into one of its own children"),
    ("leading zero", DOC, [{"op": "add", "path": "/arr/01", "value": 0}], r"'/arr/01' has an invalid array"),
    ("negative index", DOC, [{"op": "add", "path": "/arr/-1", "value": 0}], r"invalid array index"),
    ("huge index", DOC, [{"op": "add", "path": "/arr/" + "9" * 5000, "value": 0}], r"invalid array index"),
    ("add out of range", DOC, [{"op": "add", "path": "/arr/4", "value": 0}], r"'/arr/4' is out of the array"),
    ("remove past end", DOC, [{"op": "remove", "path": "/arr/3"}], r"path '/arr/3' does not exist"),
    ("remove dash", DOC, [{"op": "remove", "path": "/arr/-"}], r"path '/arr/-' does not exist"),
    ("replace dash", DOC, [{"op": "replace", "path": "/arr/-", "value": 0}], r"path '/arr/-' does not exist"),
    ("dash mid-path", DOC, [{"op": "add", "path": "/arr/-/x", "value": 0}], r"'/arr/-/x' does not exist"),
    ("into a string", DOC, [{"op": "add", "path": "/s/0", "value": "x"}], r"path '/s/0' does not exist"),
    ("remove root", DOC, [{"op": "remove", "path": ""}], r"cannot remove the whole document"),
    ("test true is not 1", {"a": 1}, [{"op": "test", "path": "/a", "value": True}], r"test failed at '/a'"),
    ("test array order", {"a": [1, 2]}, [{"op": "test", "path": "/a", "value": [2, 1]}], r"test failed"),
    ("long path is cut", DOC, [{"op": "remove", "path": "/" + "k" * 999}], r"'/k{199}\.\.\.' does not exist"),
]


@pytest.mark.parametrize(("doc", "ops", "pattern"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_json_patch_errors(doc: Any, ops: Any, pattern: str) -> None:
    before = copy.deepcopy(doc)
    with pytest.raises(PatchError, match=pattern):
        json_patch(doc, ops)
    assert doc == before


def test_json_patch_is_atomic() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    before = copy.deepcopy(doc)
    ops = [
        {"op": "add", "path": "/a/-", "value": 3},
        {"op": "remove", "path": "/b/c"},
        {"op": "move", "from": "/a", "path": "/z"},
        {"op": "test", "path": "/z/0", "value": 99},
    ]
    with pytest.raises(PatchError, match=r"^patch operation 3: test failed at '/z/0'$"):
        json_patch(doc, ops)
    assert doc == before


SECRET = "s3cret@example.com"
PATCH_SECRET = "hunter2-in-the-patch"


@pytest.mark.parametrize(
    "op",
    [
        {"op": "test", "path": "/email", "value": PATCH_SECRET},
        {"op": "test", "path": "/list", "value": [PATCH_SECRET]},
        {"op": "replace", "path": "/missing", "value": PATCH_SECRET},
        {"op": "add", "path": "/list/9", "value": PATCH_SECRET},
        {"op": "add", "path": "/email/x", "value": PATCH_SECRET},
        {"op": "move", "from": "/email", "path": "/email/x"},
        {"op": PATCH_SECRET, "path": "/email", "value": SECRET},
        {"op": SECRET, "path": "/email"},
        {"op": "add", "path": "/missing/deep", "value": SECRET},
        {"op": "copy", "from": 5, "path": "/x", "value": PATCH_SECRET},
        PATCH_SECRET,
    ],
)
def test_error_messages_never_hold_values(op: Any) -> None:
    doc = {"email": SECRET, "list": [SECRET, {"nested": SECRET}]}
    with pytest.raises(PatchError) as info:
        json_patch(doc, [{"op": "test", "path": "/email", "value": SECRET}, op])
    message = str(info.value)
    assert message.startswith("patch operation 1:")
    for secret in (SECRET, PATCH_SECRET, "s3cret", "hunter2"):
        assert secret not in message


def test_apply_change_dispatches_on_type() -> None:
    doc = {"name": "Ann", "email": "ann@example.com", "tags": ["a"]}
    before = copy.deepcopy(doc)
    merged = apply_change(doc, {"email": None, "city": "Leeds"})
    assert merged == {"name": "Ann", "tags": ["a"], "city": "Leeds"}
    assert apply_change(doc, [{"op": "add", "path": "/tags/-", "value": "b"}])["tags"] == ["a", "b"]
    assert apply_change(doc, {}) == doc
    assert doc == before


@pytest.mark.parametrize("change", ["text", None, 1, True])
def test_apply_change_refuses_other_types(change: Any) -> None:
    message = r"^a change must be a JSON object \(merge patch\) or an array \(JSON Patch\)$"
    with pytest.raises(PatchError, match=message):
        apply_change({"a": 1}, change)


@pytest.mark.parametrize(
    "change",
    [[{"op": "replace", "path": "", "value": [1]}], [{"op": "add", "path": "", "value": "s3cret"}]],
)
def test_apply_change_result_must_be_an_object(change: Any) -> None:
    with pytest.raises(PatchError, match=r"^the result must be a JSON object$"):
        apply_change({"a": 1}, change)


def test_apply_change_reports_deep_nesting() -> None:
    deep: Any = {}
    for _ in range(5000):
        deep = {"a": deep}
    with pytest.raises(PatchError, match=r"nested too deeply"):
        apply_change({}, deep)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=20,
)
# Patches lean towards objects, where the interesting merging happens.
json_patches = st.dictionaries(st.sampled_from("abcd"), json_values, max_size=4) | json_values


@settings(database=None, max_examples=300)
@given(target=json_values, patch=json_patches)
def test_merge_patch_never_mutates_inputs(target: Any, patch: Any) -> None:
    target_before = copy.deepcopy(target)
    patch_before = copy.deepcopy(patch)
    once = merge_patch(target, patch)
    assert target == target_before
    assert patch == patch_before
    # RFC 7386 patches are idempotent: applying one twice changes nothing more.
    assert merge_patch(once, patch) == once
