"""snackbase.schema: names, field definitions, the record validator, and DDL run against real SQLite.

Tables of cases first (one row per accepted or refused input), then DDL and schema changes executed
on an in-memory apsw database that has `accounts` and `users` stubs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snackbase.collection_defs import (
    collection_from_json,
    collection_from_row,
    collection_to_json,
    collection_to_row,
    new_collection,
    parse_collection_body,
)
from snackbase.ddl import SchemaChange, create_table_sql, drop_table_sql, patch_collection, plan_schema_change
from snackbase.errors import ApiError
from snackbase.field_types import RecordValidator, validate_field_defs
from snackbase.schema import (
    FIELD_TYPES,
    Collection,
    Field,
    quote_ident,
    referenced_collections,
    referencing_fields,
    table_name,
    validate_collection_name,
)

NOW = "2026-11-27T09:10:10.123Z"
_ids = itertools.count(1)


def codes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, str]:
    """The `fields` codes of the 400 validation error `fn` raises."""
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    assert (info.value.status, info.value.code) == (400, "validation_failed")
    return {key: entry["code"] for key, entry in info.value.fields.items()}


def make(name: str, fields: list[dict[str, Any]], **body: Any) -> Collection:
    parsed = parse_collection_body({"name": name, "fields": fields, **body})
    return new_collection(parsed, id=f"col-{name}", now=NOW)


def validator(type_: str, options: dict[str, Any] | None = None, **field: Any) -> RecordValidator:
    return RecordValidator(make("things", [{"name": "f", "type": type_, "options": options or {}, **field}]))


# --- names -------------------------------------------------------------------------------------

GOOD_NAMES = ["posts", "a", "a" * 63, "select", "order", "table", "x_1", "a__b"]
BAD_NAMES = [
    ("a" * 64, "invalid_name"),
    ("", "invalid_name"),
    ("Posts", "invalid_name"),
    ("1posts", "invalid_name"),
    ("_posts", "invalid_name"),
    ("__proto__", "invalid_name"),
    ("po-sts", "invalid_name"),
    ("po sts", "invalid_name"),
    ('po"sts', "invalid_name"),
    ("posts; DROP TABLE users", "invalid_name"),
    ("pöst", "invalid_name"),
    ("posts\n", "invalid_name"),
    ("\uff50osts", "invalid_name"),
    (5, "invalid_type"),
    (None, "invalid_type"),
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_collection_and_field_names_accepted_including_sql_keywords(name: str) -> None:
    assert validate_collection_name(name) == name
    validate_field_defs([Field(name, "text")])


@pytest.mark.parametrize(
    ("name", "code"), [*BAD_NAMES, ("users", "reserved_name"), ("sqlite_x", "reserved_name")]
)
def test_collection_name_refused(name: object, code: str) -> None:
    assert codes(validate_collection_name, name) == {"name": code}


@pytest.mark.parametrize(
    ("name", "code"),
    [
        *BAD_NAMES[:-2],
        *((name, "reserved_name") for name in ("id", "account_id", "updated_by", "expand", "rowid", "oid")),
    ],
)
def test_field_name_refused(name: str, code: str) -> None:
    assert codes(validate_field_defs, [Field(name, "text")]) == {"fields.0.name": code}


def test_quote_ident_and_table_name() -> None:
    assert table_name("posts") == "c_posts"
    assert quote_ident("c_posts") == '"c_posts"'
    assert quote_ident("ux:c_posts:title") == '"ux:c_posts:title"'
    for bad in ['a"b', "a b", "", "1a", "a;b", "é"]:
        with pytest.raises(ValueError):
            quote_ident(bad)


# --- field definitions -------------------------------------------------------------------------

GOOD_FIELDS = [
    {"type": "text", "options": {"min_length": 0, "max_length": 10, "pattern": "^[a-z]+$", "index": True}},
    {"type": "number", "options": {"min": -1.5, "max": 10, "integer_only": False}, "default": 3},
    {"type": "boolean", "default": True, "required": True},
    {"type": "email", "unique": True, "pii": True, "mask": "email"},
    {"type": "url", "default": "https://example.com"},
    {"type": "date", "options": {"min": "2020-01-01", "max": "2030-12-31"}},
    {"type": "datetime", "options": {"min": "2020-01-01T00:00:00+02:00", "max": "2020-01-01T00:00:00Z"}},
    {"type": "select", "options": {"values": ["a", "b"], "multiple": True}, "default": ["a"]},
    {"type": "json", "options": {"max_bytes": 100}, "default": {"k": [1]}},
    {"type": "reference", "options": {"collection": "other", "on_delete": "cascade"}},
    {"type": "reference", "required": True, "options": {"collection": "other"}},
    {"type": "user", "options": {"on_delete": "set_null"}},
    {
        "type": "file",
        "options": {"max_size": 10, "mime_types": ["image/*", "application/pdf"], "protected": True},
    },
    {"type": "text", "pii": True},
]


@pytest.mark.parametrize("spec", GOOD_FIELDS)
def test_field_definition_accepted(spec: dict[str, Any]) -> None:
    make("things", [{"name": "f", **spec}])


BAD_FIELDS = [
    ({"type": "string"}, "fields.0.type", "invalid_value"),
    ({"type": "text", "options": {"max": 3}}, "fields.0.options.max", "unknown_option"),
    ({"type": "text", "options": {"index": "yes"}}, "fields.0.options.index", "invalid_option"),
    ({"type": "text", "options": {"max_length": 0}}, "fields.0.options.max_length", "invalid_option"),
    ({"type": "text", "options": {"max_length": True}}, "fields.0.options.max_length", "invalid_option"),
    (
        {"type": "text", "options": {"min_length": 5, "max_length": 2}},
        "fields.0.options.min_length",
        "invalid_option",
    ),
    ({"type": "text", "options": {"pattern": "(unclosed"}}, "fields.0.options.pattern", "invalid_option"),
    ({"type": "text", "options": {"pattern": "a" * 501}}, "fields.0.options.pattern", "invalid_option"),
    ({"type": "text", "options": {"pattern": "^(a+)+$"}}, "fields.0.options.pattern", "invalid_option"),
    ({"type": "text", "options": {"pattern": "^(a|aa)*$"}}, "fields.0.options.pattern", "invalid_option"),
    ({"type": "number", "options": {"min": "0"}}, "fields.0.options.min", "invalid_option"),
    ({"type": "number", "options": {"min": 5, "max": 1}}, "fields.0.options.min", "invalid_option"),
    ({"type": "date", "options": {"min": "2020-13-01"}}, "fields.0.options.min", "invalid_option"),
    ({"type": "datetime", "options": {"max": "2020-01-01"}}, "fields.0.options.max", "invalid_option"),
    (
        {"type": "datetime", "options": {"min": "2020-01-01T01:00:00Z", "max": "2020-01-01T02:00:00+02:00"}},
        "fields.0.options.min",
        "invalid_option",
    ),
    ({"type": "select"}, "fields.0.options.values", "required"),
    ({"type": "select", "options": {"values": []}}, "fields.0.options.values", "invalid_option"),
    ({"type": "select", "options": {"values": ["a", "a"]}}, "fields.0.options.values", "invalid_option"),
    ({"type": "select", "options": {"values": ["a", 1]}}, "fields.0.options.values", "invalid_option"),
    ({"type": "select", "options": {"values": [""]}}, "fields.0.options.values", "invalid_option"),
    ({"type": "json", "options": {"max_bytes": -1}}, "fields.0.options.max_bytes", "invalid_option"),
    ({"type": "reference"}, "fields.0.options.collection", "required"),
    (
        {"type": "reference", "options": {"collection": "Bad"}},
        "fields.0.options.collection",
        "invalid_option",
    ),
    (
        {"type": "reference", "options": {"collection": "o", "on_delete": "nullify"}},
        "fields.0.options.on_delete",
        "invalid_option",
    ),
    ({"type": "user", "options": {"on_delete": "cascade"}}, "fields.0.options.on_delete", "invalid_option"),
    (
        {"type": "user", "required": True, "options": {"on_delete": "set_null"}},
        "fields.0.options.on_delete",
        "invalid_option",
    ),
    ({"type": "file", "options": {"mime_types": ["png"]}}, "fields.0.options.mime_types", "invalid_option"),
    ({"type": "boolean", "options": {"values": ["a"]}}, "fields.0.options.values", "unknown_option"),
    ({"type": "text", "mask": "email"}, "fields.0.mask", "invalid_value"),
    ({"type": "text", "pii": True, "mask": "stars"}, "fields.0.mask", "invalid_value"),
    ({"type": "text", "default": 5}, "fields.0.default", "invalid_type"),
    ({"type": "text", "default": "toolong", "options": {"max_length": 3}}, "fields.0.default", "too_long"),
    ({"type": "text", "default": "", "required": True}, "fields.0.default", "required"),
    ({"type": "text", "default": "a\x00b"}, "fields.0.default", "invalid_value"),
    ({"type": "select", "default": "z", "options": {"values": ["a"]}}, "fields.0.default", "not_in_values"),
    ({"type": "user", "default": "u1"}, "fields.0.default", "invalid_value"),
    ({"type": "text", "required": "yes"}, "fields.0.required", "invalid_type"),
    ({"type": "text", "options": []}, "fields.0.options", "invalid_type"),
    ({"type": "text", "previous_name": "old"}, "fields.0.previous_name", "unknown_field"),
    ({"type": "text", "colour": "red"}, "fields.0.colour", "unknown_field"),
]


@pytest.mark.parametrize(("spec", "key", "code"), BAD_FIELDS)
def test_field_definition_refused(spec: dict[str, Any], key: str, code: str) -> None:
    assert codes(make, "things", [{"name": "f", **spec}]) == {key: code}


def test_field_list_errors_are_collected_and_indexed() -> None:
    fields = [{"name": "a", "type": "text"}, {"name": "a", "type": "text"}, "nope", {"type": "text"}]
    assert codes(make, "things", fields) == {
        "fields.1.name": "duplicate_name",
        "fields.2": "invalid_type",
        "fields.3.name": "required",
    }


def test_normalization_makes_implicit_choices_explicit() -> None:
    c = make("things", [{"name": "r", "type": "user"}, {"name": "p", "type": "text", "pii": True}])
    assert c.field_map["r"].options == {"on_delete": "restrict"}
    assert c.field_map["p"].mask == "full"


# --- the /collections body ---------------------------------------------------------------------


def test_post_body_defaults() -> None:
    parsed = parse_collection_body({"name": "posts", "fields": []})
    assert parsed == {
        "name": "posts",
        "fields": [],
        "rules": dict.fromkeys(["list", "view", "create", "update", "delete"]),
        "field_access": {op: ["*"] for op in ("list", "view", "create", "update")},
        "audit": {"require_reason": False},
    }


BAD_BODIES = [
    ({"fields": []}, {"name": "required"}),
    ({"name": "posts"}, {"fields": "required"}),
    ({"name": "posts", "fields": {}}, {"fields": "invalid_type"}),
    (
        {"name": "posts", "fields": [], "colour": 1, "extra": 2},
        {"colour": "unknown_field", "extra": "unknown_field"},
    ),
    ({"name": "posts", "fields": [], "rules": {"list": 5}}, {"rules.list": "invalid_type"}),
    ({"name": "posts", "fields": [], "rules": {"lst": ""}}, {"rules.lst": "unknown_field"}),
    ({"name": "posts", "fields": [], "rules": "x"}, {"rules": "invalid_type"}),
    (
        {"name": "posts", "fields": [], "field_access": {"list": ["nope"]}},
        {"field_access.list": "unknown_field"},
    ),
    (
        {"name": "posts", "fields": [], "field_access": {"create": ["id"]}},
        {"field_access.create": "unknown_field"},
    ),
    (
        {"name": "posts", "fields": [], "field_access": {"list": ["*", "id"]}},
        {"field_access.list": "invalid_value"},
    ),
    ({"name": "posts", "fields": [], "field_access": {"list": "*"}}, {"field_access.list": "invalid_value"}),
    (
        {"name": "posts", "fields": [], "field_access": {"delete": []}},
        {"field_access.delete": "unknown_field"},
    ),
    (
        {"name": "posts", "fields": [], "audit": {"require_reason": 1}},
        {"audit.require_reason": "invalid_type"},
    ),
    ({"name": "posts", "fields": [], "audit": {"reason": True}}, {"audit.reason": "unknown_field"}),
    (
        {"name": "Posts", "fields": [{"name": "id", "type": "text"}]},
        {"name": "invalid_name", "fields.0.name": "reserved_name"},
    ),
]


@pytest.mark.parametrize(("body", "expected"), BAD_BODIES)
def test_collection_body_refused(body: dict[str, Any], expected: dict[str, str]) -> None:
    assert codes(parse_collection_body, body) == expected


def test_collection_body_must_be_an_object() -> None:
    with pytest.raises(ApiError) as info:
        parse_collection_body([1])
    assert (info.value.status, info.value.code) == (400, "bad_request")


def test_field_access_and_rules_accepted() -> None:
    body = {
        "rules": {"list": "", "view": "@owns_record()"},
        "field_access": {"list": ["title", "id"], "update": []},
        "audit": {"require_reason": True},
    }
    c = make("posts", [{"name": "title", "type": "text"}], **body)
    assert c.rules == {"list": "", "view": "@owns_record()", "create": None, "update": None, "delete": None}
    assert c.field_access == {"list": ["title", "id"], "view": ["*"], "create": ["*"], "update": []}
    assert c.audit == {"require_reason": True}


def test_patch_body_returns_only_given_keys_and_allows_previous_name() -> None:
    assert parse_collection_body({"rules": {"list": ""}}, partial=True) == {"rules": {"list": ""}}
    parsed = parse_collection_body(
        {"fields": [{"name": "b", "type": "text", "previous_name": "a"}]}, partial=True
    )
    assert parsed["fields"][0].previous_name == "a"


def test_storage_and_api_round_trip() -> None:
    c = make(
        "posts",
        [{"name": "title", "type": "text", "default": "x", "options": {"max_length": 5}}],
        rules={"list": ""},
        field_access={"view": ["title"]},
    )
    row = collection_to_row(c)
    assert all(isinstance(v, str) for v in row.values())
    assert collection_from_row(row) == c
    assert collection_from_json(*row.values()) == c
    api = collection_to_json(c)
    assert list(api) == ["id", "name", "fields", "rules", "field_access", "audit", "created_at", "updated_at"]
    assert api["fields"][0] == {
        "name": "title", "type": "text", "required": False, "unique": False, "default": "x",
        "options": {"max_length": 5}, "pii": False, "mask": None,
    }  # fmt: skip
    assert "previous_name" not in api["fields"][0]


def test_stored_json_with_missing_keys_gets_defaults() -> None:
    c = collection_from_json("i", "posts", "[]", "{}", "{}", "{}", NOW, NOW)
    assert c.rules == dict.fromkeys(["list", "view", "create", "update", "delete"])
    assert c.field_access["list"] == ["*"] and c.audit == {"require_reason": False}


def test_reference_helpers() -> None:
    a = make("a", [{"name": "self_ref", "type": "reference", "options": {"collection": "a"}}])
    b = make("b", [{"name": "to_a", "type": "reference", "options": {"collection": "a"}}])
    assert referenced_collections(b) == {"a"}
    assert referencing_fields("a", [a, b]) == [("b", "to_a")]


# --- record values -----------------------------------------------------------------------------

ACCEPTED = [
    ("text", {}, "hello", "hello"),
    ("text", {"max_length": 5}, "héllo", "héllo"),
    ("text", {"min_length": 2}, "ab", "ab"),
    ("text", {"pattern": "^[a-z]+$"}, "abc", "abc"),
    ("text", {"min_length": 3, "pattern": "x"}, "", ""),
    ("number", {}, 5, 5),
    ("number", {}, 5.5, 5.5),
    ("number", {}, -0.25, -0.25),
    ("number", {}, 2**63 - 1, 2**63 - 1),
    ("number", {"integer_only": True}, 5.0, 5),
    ("number", {"min": 0, "max": 10}, 10, 10),
    ("number", {"min": 0, "max": 10}, 0, 0),
    ("boolean", {}, True, 1),
    ("boolean", {}, False, 0),
    ("email", {}, "a@example.com", "a@example.com"),
    ("email", {}, "first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
    ("email", {}, "", None),
    ("url", {}, "https://example.com", "https://example.com"),
    ("url", {}, "http://localhost:8080/p?q=1#f", "http://localhost:8080/p?q=1#f"),
    ("url", {}, "", None),
    ("date", {}, "2024-02-29", "2024-02-29"),
    ("date", {"min": "2026-01-01", "max": "2026-12-31"}, "2026-06-01", "2026-06-01"),
    ("datetime", {}, "2026-11-27T09:10:10.123Z", "2026-11-27T09:10:10.123Z"),
    ("datetime", {"min": "2026-01-01T00:00:00Z"}, "2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00.000Z"),
    ("select", {"values": ["a", "b"]}, "b", "b"),
    ("select", {"values": ["a", "b"]}, "", None),
    ("select", {"values": ["a", "b"], "multiple": True}, ["b", "a", "b"], '["b","a"]'),
    ("select", {"values": ["a", "b"], "multiple": True}, [], "[]"),
    ("json", {}, {"a": [1, 2.5, None, True]}, '{"a":[1,2.5,null,true]}'),
    ("json", {}, "x", '"x"'),
    ("json", {}, "", '""'),
    ("json", {}, 0, "0"),
    ("json", {}, [], "[]"),
    ("json", {"max_bytes": 7}, {"a": 1}, '{"a":1}'),
    (
        "reference",
        {"collection": "things"},
        "01930000-0000-7000-8000-000000000000",
        "01930000-0000-7000-8000-000000000000",
    ),
    ("user", {}, "u1", "u1"),
    ("file", {}, {"name": "a.png", "size": 3}, '{"name":"a.png","size":3}'),
    ("file", {"multiple": True, "max_size": 5}, [{"name": "a", "size": 5}], '[{"name":"a","size":5}]'),
]


@pytest.mark.parametrize(("type_", "options", "value", "expected"), ACCEPTED)
def test_value_accepted(type_: str, options: dict[str, Any], value: Any, expected: Any) -> None:
    out = validator(type_, options).validate({"f": value}, mode="update")
    assert out == {"f": expected}
    assert type(out["f"]) is type(expected)  # 5 stays int, 5.5 stays float


REFUSED = [
    ("text", {}, 5, "invalid_type"),
    ("text", {}, ["a"], "invalid_type"),
    ("text", {"max_length": 3}, "abcd", "too_long"),
    ("text", {"min_length": 3}, "ab", "too_short"),
    ("text", {"pattern": "^[a-z]+$"}, "ABC", "pattern_mismatch"),
    ("number", {}, True, "invalid_type"),
    ("number", {}, False, "invalid_type"),
    ("number", {}, "5", "invalid_type"),
    ("number", {}, math.nan, "invalid_type"),
    ("number", {}, math.inf, "invalid_type"),
    ("number", {}, 2**63, "out_of_range"),
    ("number", {"integer_only": True}, 5.5, "not_integer"),
    ("number", {"integer_only": True}, 1e30, "out_of_range"),
    ("number", {"min": 0}, -1, "out_of_range"),
    ("number", {"max": 10}, 10.5, "out_of_range"),
    ("boolean", {}, 1, "invalid_type"),
    ("boolean", {}, "true", "invalid_type"),
    ("email", {}, "nope", "invalid_email"),
    ("email", {}, "a@localhost", "invalid_email"),
    ("email", {}, "a b@example.com", "invalid_email"),
    ("email", {}, "a@example.com\n", "invalid_email"),
    ("email", {}, "a" * 250 + "@example.com", "invalid_email"),
    ("email", {}, 5, "invalid_type"),
    ("url", {}, "ftp://example.com", "invalid_url"),
    ("url", {}, "javascript:alert(1)", "invalid_url"),
    ("url", {}, "example.com", "invalid_url"),
    ("url", {}, "https://", "invalid_url"),
    ("url", {}, "http://exa mple.com", "invalid_url"),
    ("url", {}, "http://[::1", "invalid_url"),
    ("url", {}, "http://example.com:99999", "invalid_url"),
    ("url", {}, "https://example.com/" + "a" * 2048, "invalid_url"),
    ("date", {}, "2026-02-30", "invalid_date"),
    ("date", {}, "2026-2-3", "invalid_date"),
    ("date", {}, "20260203", "invalid_date"),
    ("date", {}, "2026-02-03T00:00:00Z", "invalid_date"),
    ("date", {}, "\uff12\uff10\uff12\uff16-01-01", "invalid_date"),
    ("date", {}, 20260203, "invalid_type"),
    ("date", {"min": "2026-01-01"}, "2025-12-31", "out_of_range"),
    ("datetime", {}, "2026-11-27T09:10:10", "invalid_datetime"),
    ("datetime", {}, "2026-11-27", "invalid_datetime"),
    ("datetime", {}, "2026-13-01T00:00:00Z", "invalid_datetime"),
    ("datetime", {}, "2026-11-27T24:00:00Z", "invalid_datetime"),
    ("datetime", {}, "2026-11-27T09:10:60Z", "invalid_datetime"),
    ("datetime", {}, "2026-11-27T09:10:10+24:00", "invalid_datetime"),
    ("datetime", {}, "0001-01-01T00:00:00+01:00", "invalid_datetime"),
    ("datetime", {}, 1700000000, "invalid_type"),
    ("datetime", {"max": "2026-01-01T00:00:00Z"}, "2026-01-01T00:00:00-00:01", "out_of_range"),
    ("select", {"values": ["a"]}, "c", "not_in_values"),
    ("select", {"values": ["a"]}, 1, "invalid_type"),
    ("select", {"values": ["a"], "multiple": True}, "a", "invalid_type"),
    ("select", {"values": ["a"], "multiple": True}, ["a", "c"], "not_in_values"),
    ("select", {"values": ["a"], "multiple": True}, [1], "invalid_type"),
    ("json", {"max_bytes": 5}, {"abc": 1}, "too_large"),
    ("json", {}, object(), "invalid_type"),
    ("reference", {"collection": "things"}, 5, "invalid_type"),
    ("reference", {"collection": "things"}, "x" * 129, "invalid_type"),
    ("user", {}, {"id": "u1"}, "invalid_type"),
    ("file", {}, "a.png", "invalid_type"),
    ("file", {"multiple": True}, {"name": "a"}, "invalid_type"),
    ("file", {"max_files": 3}, {"name": "a"}, "invalid_type"),  # sizes are checked while uploads stream
]


@pytest.mark.parametrize(("type_", "options", "value", "code"), REFUSED)
def test_value_refused(type_: str, options: dict[str, Any], value: Any, code: str) -> None:
    assert codes(validator(type_, options).validate, {"f": value}, mode="update") == {"f": code}


REQUIRED_OPTIONS: dict[str, dict[str, Any]] = {
    "select": {"values": ["a"]},
    "reference": {"collection": "things"},
}


@pytest.mark.parametrize("type_", FIELD_TYPES)
@pytest.mark.parametrize("value", [None, "", []])
def test_required_refuses_null_and_empty(type_: str, value: Any) -> None:
    v = validator(type_, REQUIRED_OPTIONS.get(type_), required=True)
    assert codes(v.validate, {"f": value}, mode="update") == {"f": "required"}
    assert codes(v.validate, {}, mode="create") == {"f": "required"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-27T09:10:10.123Z", "2026-11-27T09:10:10.123Z"),
        ("2026-11-27T10:10:10.123+01:00", "2026-11-27T09:10:10.123Z"),
        ("2026-11-27T03:40:10.123-05:30", "2026-11-27T09:10:10.123Z"),
        ("2026-11-27T09:10:10Z", "2026-11-27T09:10:10.000Z"),
        ("2026-11-27T09:10:10.1Z", "2026-11-27T09:10:10.100Z"),
        ("2026-11-27T09:10:10.123999999Z", "2026-11-27T09:10:10.123Z"),
        ("2026-11-27t09:10:10z", "2026-11-27T09:10:10.000Z"),
        ("2026-11-27 09:10:10-00:00", "2026-11-27T09:10:10.000Z"),
        ("2026-01-01T00:30:00+01:00", "2025-12-31T23:30:00.000Z"),
        ("0999-01-01T00:00:00Z", "0999-01-01T00:00:00.000Z"),
    ],
)
def test_datetime_normalized_to_utc_milliseconds(value: str, expected: str) -> None:
    assert validator("datetime").validate({"f": value}, mode="update") == {"f": expected}


# --- record bodies -----------------------------------------------------------------------------


@pytest.fixture
def posts() -> Collection:
    return make(
        "posts",
        [
            {"name": "title", "type": "text", "required": True},
            {"name": "views", "type": "number", "default": 0},
            {
                "name": "status",
                "type": "select",
                "required": True,
                "default": "draft",
                "options": {"values": ["draft", "live"]},
            },
            {"name": "body", "type": "text"},
        ],
    )


def test_create_and_replace_fill_defaults_and_nulls(posts: Collection) -> None:
    v = RecordValidator(posts)
    expected = {"title": "t", "views": 0, "status": "draft", "body": None}
    assert v.validate({"title": "t"}, mode="create") == expected
    assert v.validate({"title": "t"}, mode="replace") == expected


def test_update_keeps_only_given_keys(posts: Collection) -> None:
    v = RecordValidator(posts)
    assert v.validate({"views": 7}, mode="update") == {"views": 7}
    assert v.validate({}, mode="update") == {}


def test_all_errors_reported_at_once(posts: Collection) -> None:
    body = {"title": None, "views": "many", "status": "gone", "id": "x", "created_at": NOW, "colour": "red"}
    assert codes(RecordValidator(posts).validate, body, mode="create") == {
        "title": "required",
        "views": "invalid_type",
        "status": "not_in_values",
        "id": "read_only_field",
        "created_at": "read_only_field",
        "colour": "unknown_field",
    }


def test_underscore_keys_are_ignored(posts: Collection) -> None:
    assert RecordValidator(posts).validate({"_reason": "typo", "views": 1}, mode="update") == {"views": 1}


def test_body_must_be_an_object_and_mode_known(posts: Collection) -> None:
    with pytest.raises(ApiError) as info:
        RecordValidator(posts).validate([], mode="create")
    assert (info.value.status, info.value.code) == (400, "bad_request")
    with pytest.raises(ValueError):
        RecordValidator(posts).validate({}, mode="upsert")  # type: ignore[arg-type]


def test_to_json_converts_stored_values_and_passes_others_through() -> None:
    c = make(
        "things",
        [
            {"name": "b", "type": "boolean"},
            {"name": "s", "type": "select", "options": {"values": ["a"], "multiple": True}},
            {"name": "j", "type": "json"},
            {"name": "f", "type": "file"},
            {"name": "n", "type": "number"},
        ],
    )
    row = {"id": "r1", "b": 0, "s": '["a"]', "j": '{"k":[1]}', "f": '{"name":"x"}', "n": 5}
    assert RecordValidator(c).to_json(row) == {
        "id": "r1",
        "b": False,
        "s": ["a"],
        "j": {"k": [1]},
        "f": {"name": "x"},
        "n": 5,
    }
    assert RecordValidator(c).to_json({"id": "r1", "b": None}) == {"id": "r1", "b": None}  # projected row


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=10,
)
FUZZ_VALIDATORS = {
    t: validator(t, {**REQUIRED_OPTIONS.get(t, {}), **({"max_bytes": 50} if t == "json" else {})})
    for t in FIELD_TYPES
}


@pytest.mark.parametrize("type_", FIELD_TYPES)
@settings(max_examples=60, deadline=None)
@given(value=JSON_VALUES)
def test_any_json_value_is_stored_or_refused_with_a_field_error(type_: str, value: Any) -> None:
    v = FUZZ_VALIDATORS[type_]
    try:
        out = v.validate({"f": value}, mode="update")
    except ApiError as e:
        assert e.status == 400 and set(e.fields) == {"f"}
        return
    assert isinstance(out["f"], (str, int, float, type(None)))
    assert not isinstance(out["f"], bool)


@settings(max_examples=100, deadline=None)
@given(st.datetimes(timezones=st.timezones()))
def test_datetime_normalization_is_idempotent(moment: Any) -> None:
    v = validator("datetime")
    try:
        first = v.validate({"f": moment.isoformat()}, mode="update")["f"]
    except ApiError:
        return  # e.g. year 1 shifted below year 1 by its offset
    assert v.validate({"f": first}, mode="update")["f"] == first


# --- DDL against real SQLite -------------------------------------------------------------------


@pytest.fixture
def conn() -> Iterator[apsw.Connection]:
    db = apsw.Connection(":memory:")
    db.execute("PRAGMA foreign_keys=ON")  # as the app's connection has it
    db.execute("CREATE TABLE accounts (id TEXT PRIMARY KEY)")
    db.execute("CREATE TABLE users (id TEXT PRIMARY KEY)")
    db.execute("INSERT INTO accounts VALUES ('AA0001'), ('BB0002')")
    db.execute("INSERT INTO users VALUES ('u1'), ('u2')")
    yield db
    db.close()


def create(conn: apsw.Connection, name: str, fields: list[dict[str, Any]]) -> Collection:
    c = make(name, fields)
    for sql in create_table_sql(c):
        conn.execute(sql)
    return c


def insert(conn: apsw.Connection, c: Collection, account: str = "AA0001", **data: Any) -> str:
    record_id = f"r{next(_ids)}"
    row = {"id": record_id, "account_id": account, "created_at": NOW, "updated_at": NOW}
    row.update(RecordValidator(c).validate(data, mode="create"))
    columns = ", ".join(quote_ident(k) for k in row)
    marks = ", ".join("?" * len(row))
    conn.execute(f"INSERT INTO {quote_ident(c.table)} ({columns}) VALUES ({marks})", tuple(row.values()))
    return record_id


def rows(conn: apsw.Connection, c: Collection, *columns: str) -> list[tuple[Any, ...]]:
    cols = ", ".join(quote_ident(col) for col in ("id", *columns))
    return conn.execute(f"SELECT {cols} FROM {quote_ident(c.table)} ORDER BY id").fetchall()


def change(
    conn: apsw.Connection, c: Collection, fields: list[dict[str, Any]]
) -> tuple[Collection, SchemaChange]:
    """Plan a field-list PATCH and run it exactly as plan_schema_change's docstring prescribes."""
    parsed = parse_collection_body({"fields": fields}, partial=True)
    new, plan = patch_collection(c, parsed, now=NOW)
    assert plan is not None
    conn.execute("PRAGMA foreign_keys=OFF")
    try:
        with conn:
            for sql in plan.statements:
                conn.execute(sql)
            if conn.execute(plan.fk_check_sql).fetchall():
                raise ApiError(409, "conflict")
    finally:
        conn.execute("PRAGMA foreign_keys=ON")
    return new, plan


def snapshot(conn: apsw.Connection, table: str) -> tuple[list[Any], list[Any]]:
    schema = conn.execute(
        "SELECT type, name, sql FROM sqlite_schema WHERE tbl_name = ? ORDER BY name", (table,)
    )
    return schema.fetchall(), conn.execute(f"SELECT * FROM {quote_ident(table)} ORDER BY id").fetchall()


def columns_of(conn: apsw.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({quote_ident(table)})")]


def index_columns(conn: apsw.Connection, table: str) -> dict[str, list[str]]:
    names = indexes_of(conn, table)
    return {n: [row[2] for row in conn.execute(f"PRAGMA index_info({quote_ident(n)})")] for n in names}


def indexes_of(conn: apsw.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA index_list({quote_ident(table)})") if row[3] == "c"}


EVERY_TYPE = [
    {"name": "t", "type": "text", "required": True, "options": {"index": True}},
    {"name": "n", "type": "number", "default": 0},
    {"name": "b", "type": "boolean"},
    {"name": "e", "type": "email", "unique": True},
    {"name": "u", "type": "url"},
    {"name": "d", "type": "date"},
    {"name": "dt", "type": "datetime"},
    {"name": "s", "type": "select", "options": {"values": ["x", "y"], "multiple": True}},
    {"name": "j", "type": "json"},
    {"name": "r", "type": "reference", "options": {"collection": "every"}},
    {"name": "usr", "type": "user"},
    {"name": "f", "type": "file"},
]


def test_create_table_round_trips_every_type(conn: apsw.Connection) -> None:
    c = create(conn, "every", EVERY_TYPE)
    assert columns_of(conn, "c_every")[:6] == [
        "id",
        "account_id",
        "created_at",
        "created_by",
        "updated_at",
        "updated_by",
    ]
    assert indexes_of(conn, "c_every") == {
        "ix:c_every:created_at", "ix:c_every:t", "ux:c_every:e", "fk:c_every:r", "fk:c_every:usr",
    }  # fmt: skip
    first = insert(conn, c, t="first")
    record = {
        "t": "x", "n": 5.5, "b": True, "e": "a@example.com", "u": "https://example.com", "d": "2026-01-02",
        "dt": "2026-01-02T03:04:05.678Z", "s": ["y"], "j": {"k": [1, 2.5]}, "r": first, "usr": "u1",
        "f": {"name": "a.png"},
    }  # fmt: skip
    second = insert(conn, c, **record)
    row = conn.execute("SELECT * FROM c_every WHERE id = ?", (second,))
    names = [d[0] for d in row.getdescription()]
    assert {
        k: v
        for k, v in RecordValidator(c).to_json(dict(zip(names, row.fetchone(), strict=True))).items()
        if k in record
    } == record


@pytest.mark.parametrize("value", [5, 5.5, -3, 0, 2**62, 1.0e300, 0.1])
def test_numbers_round_trip_through_numeric_column(conn: apsw.Connection, value: float) -> None:
    c = create(conn, "nums", [{"name": "n", "type": "number"}])
    record_id = insert(conn, c, n=value)
    stored = rows(conn, c, "n")[0][1]
    assert stored == value and type(stored) is type(value)
    assert record_id


def test_numeric_column_stores_whole_floats_as_integers(conn: apsw.Connection) -> None:
    c = create(conn, "nums", [{"name": "n", "type": "number"}])
    insert(conn, c, n=5.0)
    assert rows(conn, c, "n")[0][1] == 5 and type(rows(conn, c, "n")[0][1]) is int


def test_sqlite_keyword_and_quote_free_names_work_as_columns(conn: apsw.Connection) -> None:
    c = create(
        conn,
        "order",
        [{"name": "select", "type": "text"}, {"name": "from", "type": "number", "unique": True}],
    )
    insert(conn, c, select="s", **{"from": 1})
    assert rows(conn, c, "select", "from")[0][1:] == ("s", 1)


def test_unique_is_per_account(conn: apsw.Connection) -> None:
    c = create(conn, "people", [{"name": "email", "type": "email", "unique": True}])
    insert(conn, c, "AA0001", email="a@example.com")
    insert(conn, c, "BB0002", email="a@example.com")
    insert(conn, c, "AA0001", email="")  # "" is NULL for email: many blanks never collide
    insert(conn, c, "AA0001", email="")
    with pytest.raises(apsw.ConstraintError):
        insert(conn, c, "AA0001", email="a@example.com")


def test_boolean_check_and_account_cascade(conn: apsw.Connection) -> None:
    c = create(conn, "flags", [{"name": "on", "type": "boolean"}])
    with pytest.raises(apsw.ConstraintError):
        conn.execute(
            'INSERT INTO c_flags (id, account_id, created_at, updated_at, "on") VALUES (?, ?, ?, ?, 2)',
            ("x", "AA0001", NOW, NOW),
        )
    insert(conn, c, "AA0001", on=True)
    conn.execute("DELETE FROM accounts WHERE id = 'AA0001'")
    assert rows(conn, c) == []


@pytest.mark.parametrize(
    ("on_delete", "survivors"),
    [("cascade", []), ("set_null", [None]), ("restrict", "refused")],
)
def test_reference_on_delete(conn: apsw.Connection, on_delete: str, survivors: Any) -> None:
    authors = create(conn, "authors", [{"name": "name", "type": "text"}])
    books = create(
        conn,
        "books",
        [
            {
                "name": "author",
                "type": "reference",
                "options": {"collection": "authors", "on_delete": on_delete},
            }
        ],
    )
    author = insert(conn, authors, name="Ann")
    insert(conn, books, author=author)
    if survivors == "refused":
        with pytest.raises(apsw.ConstraintError):
            conn.execute("DELETE FROM c_authors WHERE id = ?", (author,))
        return
    conn.execute("DELETE FROM c_authors WHERE id = ?", (author,))
    assert [r[1] for r in rows(conn, books, "author")] == survivors


def test_user_reference_set_null_and_missing_target_refused(conn: apsw.Connection) -> None:
    c = create(conn, "notes", [{"name": "owner", "type": "user", "options": {"on_delete": "set_null"}}])
    insert(conn, c, owner="u1")
    with pytest.raises(apsw.ConstraintError):
        insert(conn, c, owner="nobody")
    conn.execute("DELETE FROM users WHERE id = 'u1'")
    assert [r[1] for r in rows(conn, c, "owner")] == [None]


def test_drop_table_with_self_reference(conn: apsw.Connection) -> None:
    c = create(conn, "tree", [{"name": "parent", "type": "reference", "options": {"collection": "tree"}}])
    root = insert(conn, c)
    insert(conn, c, parent=root)
    conn.execute("PRAGMA foreign_keys=OFF")
    with conn:
        for sql in drop_table_sql("tree"):
            conn.execute(sql)
    conn.execute("PRAGMA foreign_keys=ON")
    assert conn.execute("SELECT count(*) FROM sqlite_schema WHERE tbl_name = 'c_tree'").fetchall() == [(0,)]


# --- schema changes ----------------------------------------------------------------------------

POSTS = [
    {"name": "title", "type": "text"},
    {"name": "views", "type": "number", "options": {"index": True}},
]


@pytest.fixture
def posts_table(conn: apsw.Connection) -> Collection:
    c = create(conn, "posts", POSTS)
    insert(conn, c, title="a", views=1)
    insert(conn, c, title=None, views=2)
    return c


def test_add_uses_alter_and_fills_default(conn: apsw.Connection, posts_table: Collection) -> None:
    added = {
        "name": "status",
        "type": "text",
        "required": True,
        "default": "draft",
        "options": {"index": True},
    }
    new, plan = change(conn, posts_table, [*POSTS, added])
    assert (plan.added, plan.needs_rebuild) == (("status",), False)
    assert [r[1] for r in rows(conn, new, "status")] == ["draft", "draft"]
    assert "ix:c_posts:status" in indexes_of(conn, "c_posts")
    insert(conn, new, title="c", status="live")


def test_defaults_are_written_as_safe_literals(conn: apsw.Connection, posts_table: Collection) -> None:
    added = [
        {"name": "quote", "type": "text", "default": "it's'; DROP TABLE c_posts; --"},
        {"name": "neg", "type": "number", "default": -2.5},
        {"name": "on", "type": "boolean", "required": True, "default": True},
        {
            "name": "tags",
            "type": "select",
            "default": ["b"],
            "options": {"values": ["a", "b"], "multiple": True},
        },
    ]
    new, plan = change(conn, posts_table, [*POSTS, *added])
    assert not plan.needs_rebuild
    stored = rows(conn, new, "quote", "neg", "on", "tags")
    assert [r[1:] for r in stored] == [("it's'; DROP TABLE c_posts; --", -2.5, 1, '["b"]')] * 2


def test_add_required_without_default_fails_on_rows_and_changes_nothing(
    conn: apsw.Connection, posts_table: Collection
) -> None:
    before = snapshot(conn, "c_posts")
    with pytest.raises(apsw.ConstraintError):
        change(conn, posts_table, [*POSTS, {"name": "slug", "type": "text", "required": True}])
    assert snapshot(conn, "c_posts") == before


def test_add_required_without_default_on_empty_table(conn: apsw.Connection) -> None:
    c = create(conn, "empty", POSTS)
    new, plan = change(conn, c, [*POSTS, {"name": "slug", "type": "text", "required": True}])
    assert plan.needs_rebuild and "slug" in columns_of(conn, "c_empty")
    with pytest.raises(ApiError):
        insert(conn, new)


def test_rename_keeps_data_and_moves_index(conn: apsw.Connection, posts_table: Collection) -> None:
    renamed = [POSTS[0], {**POSTS[1], "name": "hits", "previous_name": "views"}]
    new, plan = change(conn, posts_table, renamed)
    assert (plan.renames, plan.needs_rebuild, plan.dropped, plan.added) == ({"hits": "views"}, False, (), ())
    assert [r[1] for r in rows(conn, new, "hits")] == [1, 2]
    assert indexes_of(conn, "c_posts") == {"ix:c_posts:created_at", "ix:c_posts:hits"}


def test_rename_and_reuse_old_name(conn: apsw.Connection, posts_table: Collection) -> None:
    # The old index "ix:c_posts:views" has the same name and SQL as the new field's index: it must
    # still be rebuilt, because RENAME COLUMN moved it onto "hits".
    fields = [POSTS[0], {**POSTS[1], "name": "hits", "previous_name": "views"}, POSTS[1]]
    new, plan = change(conn, posts_table, fields)
    assert (plan.renames, plan.added, plan.needs_rebuild) == ({"hits": "views"}, ("views",), False)
    assert [r[1:] for r in rows(conn, new, "hits", "views")] == [(1, None), (2, None)]
    assert index_columns(conn, "c_posts") == {
        "ix:c_posts:created_at": ["account_id", "created_at", "id"],
        "ix:c_posts:hits": ["account_id", "hits"],
        "ix:c_posts:views": ["account_id", "views"],
    }


def test_swap_names_rebuilds_and_keeps_data(conn: apsw.Connection) -> None:
    fields = [{"name": "a", "type": "text"}, {"name": "b", "type": "text"}]
    c = create(conn, "pairs", fields)
    insert(conn, c, a="A", b="B")
    swapped = [
        {"name": "a", "type": "text", "previous_name": "b"},
        {"name": "b", "type": "text", "previous_name": "a"},
    ]
    new, plan = change(conn, c, swapped)
    assert plan.needs_rebuild
    assert rows(conn, new, "a", "b")[0][1:] == ("B", "A")


def test_drop_columns_including_unique_and_indexed(conn: apsw.Connection, posts_table: Collection) -> None:
    c = create(
        conn,
        "docs",
        [{"name": "code", "type": "text", "unique": True}, *POSTS, {"name": "flag", "type": "boolean"}],
    )
    insert(conn, c, code="x", title="t", flag=True)
    new, plan = change(conn, c, [POSTS[0]])
    assert (plan.dropped, plan.needs_rebuild) == (("code", "views", "flag"), False)
    assert columns_of(conn, "c_docs")[6:] == ["title"]
    assert indexes_of(conn, "c_docs") == {"ix:c_docs:created_at"}
    assert rows(conn, new, "title")[0][1] == "t"


def test_required_on_nulls_fails_and_table_is_unchanged(
    conn: apsw.Connection, posts_table: Collection
) -> None:
    before = snapshot(conn, "c_posts")
    with pytest.raises(apsw.ConstraintError):
        change(conn, posts_table, [{**POSTS[0], "required": True}, POSTS[1]])
    assert snapshot(conn, "c_posts") == before
    assert conn.execute("SELECT name FROM sqlite_schema WHERE name LIKE '_new_%'").fetchall() == []


def test_required_without_nulls_rebuilds(conn: apsw.Connection, posts_table: Collection) -> None:
    new, plan = change(conn, posts_table, [POSTS[0], {**POSTS[1], "required": True}])
    assert plan.needs_rebuild and plan.changed == ("views",)
    assert [r[1] for r in rows(conn, new, "views")] == [1, 2]
    assert indexes_of(conn, "c_posts") == {"ix:c_posts:created_at", "ix:c_posts:views"}
    with pytest.raises(apsw.ConstraintError):
        conn.execute(
            "INSERT INTO c_posts (id, account_id, created_at, updated_at) VALUES ('z', 'AA0001', '', '')"
        )


def test_unique_on_duplicates_fails_then_succeeds_per_account(
    conn: apsw.Connection, posts_table: Collection
) -> None:
    insert(conn, posts_table, title="a")
    before = snapshot(conn, "c_posts")
    with pytest.raises(apsw.ConstraintError):
        change(conn, posts_table, [{**POSTS[0], "unique": True}, POSTS[1]])
    assert snapshot(conn, "c_posts") == before
    conn.execute("UPDATE c_posts SET account_id = 'BB0002' WHERE title = 'a' AND views IS NULL")
    _, plan = change(conn, posts_table, [{**POSTS[0], "unique": True}, POSTS[1]])
    assert not plan.needs_rebuild and "ux:c_posts:title" in indexes_of(conn, "c_posts")


def test_validation_only_option_change_has_no_ddl(conn: apsw.Connection, posts_table: Collection) -> None:
    _, plan = change(conn, posts_table, [{**POSTS[0], "options": {"max_length": 3}}, POSTS[1]])
    assert (plan.statements, plan.changed) == ([], ("title",))


def test_single_select_becomes_multiple(conn: apsw.Connection) -> None:
    field = {"name": "s", "type": "select", "options": {"values": ["a", "b"]}}
    c = create(conn, "sel", [field])
    insert(conn, c, s="a")
    insert(conn, c)
    new, plan = change(conn, c, [{**field, "options": {"values": ["a", "b"], "multiple": True}}])
    assert plan.needs_rebuild
    assert [RecordValidator(new).to_json({"s": r[1]})["s"] for r in rows(conn, new, "s")] == [["a"], None]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([{"name": "title", "type": "number"}], {"fields.0.type": "invalid_change"}),
        (
            [{"name": "t", "type": "text", "previous_name": "nope"}],
            {"fields.0.previous_name": "unknown_field"},
        ),
        (
            [
                {"name": "a", "type": "text", "previous_name": "title"},
                {"name": "b", "type": "text", "previous_name": "title"},
            ],
            {"fields.0.previous_name": "unknown_field", "fields.1.previous_name": "unknown_field"},
        ),
        ([{"name": "id", "type": "text"}], {"fields.0.name": "reserved_name"}),
    ],
)
def test_impossible_changes_refused(
    conn: apsw.Connection, posts_table: Collection, fields: list[Any], expected: Any
) -> None:
    assert codes(change, conn, posts_table, fields) == expected


def test_multiple_cannot_become_single(conn: apsw.Connection) -> None:
    field = {"name": "s", "type": "select", "options": {"values": ["a"], "multiple": True}}
    c = create(conn, "sel", [field])
    assert codes(change, conn, c, [{**field, "options": {"values": ["a"]}}]) == {
        "fields.0.options.multiple": "invalid_change"
    }


AUTHOR_REF = {
    "name": "author",
    "type": "reference",
    "options": {"collection": "authors", "on_delete": "cascade"},
}


@pytest.fixture
def library(conn: apsw.Connection) -> tuple[Collection, Collection, str]:
    authors = create(conn, "authors", [{"name": "name", "type": "text"}])
    books = create(conn, "books", [AUTHOR_REF])
    author = insert(conn, authors, name="Ann")
    insert(conn, books, author=author)
    return authors, books, author


def test_rebuilding_a_referenced_table_keeps_its_children(conn: apsw.Connection, library: Any) -> None:
    authors, books, author = library
    _, plan = change(conn, authors, [{"name": "name", "type": "text", "default": "?"}])
    assert plan.needs_rebuild
    assert rows(conn, books, "author") == [(rows(conn, books)[0][0], author)]
    conn.execute("DELETE FROM c_authors")  # the children's REFERENCES still point at the new table
    assert rows(conn, books) == []


def test_why_defer_foreign_keys_is_not_enough(conn: apsw.Connection, library: Any) -> None:
    authors, books, _ = library
    plan = plan_schema_change(authors, [Field("name", "text", default="?")])
    with conn:
        conn.execute("PRAGMA defer_foreign_keys=ON")
        for sql in plan.statements:
            conn.execute(sql)
    assert rows(conn, books) == []  # DROP TABLE's implicit DELETE fired ON DELETE CASCADE


@pytest.mark.parametrize(("on_delete", "left"), [("set_null", [None]), ("restrict", "refused")])
def test_changing_on_delete_rebuilds_and_takes_effect(
    conn: apsw.Connection, library: Any, on_delete: str, left: Any
) -> None:
    _, books, _ = library
    new, plan = change(
        conn, books, [{**AUTHOR_REF, "options": {"collection": "authors", "on_delete": on_delete}}]
    )
    assert plan.needs_rebuild
    if left == "refused":
        with pytest.raises(apsw.ConstraintError):
            conn.execute("DELETE FROM c_authors")
    else:
        conn.execute("DELETE FROM c_authors")
        assert [r[1] for r in rows(conn, new, "author")] == left


def test_retargeting_a_reference_is_caught_by_the_fk_check(conn: apsw.Connection, library: Any) -> None:
    _, books, _ = library
    create(conn, "editors", [{"name": "name", "type": "text"}])
    before = snapshot(conn, "c_books")
    with pytest.raises(ApiError) as info:
        change(conn, books, [{**AUTHOR_REF, "options": {"collection": "editors"}}])
    assert info.value.status == 409
    assert snapshot(conn, "c_books") == before


def test_dropping_a_reference_rebuilds(conn: apsw.Connection, library: Any) -> None:
    _, books, _ = library
    _, plan = change(conn, books, [{"name": "note", "type": "text"}])
    assert plan.needs_rebuild and plan.dropped == ("author",) and plan.added == ("note",)
    assert columns_of(conn, "c_books")[6:] == ["note"] and len(rows(conn, books)) == 1


def test_self_reference_survives_rebuild(conn: apsw.Connection) -> None:
    ref = {"name": "parent", "type": "reference", "options": {"collection": "tree", "on_delete": "cascade"}}
    c = create(conn, "tree", [ref])
    root = insert(conn, c)
    insert(conn, c, parent=root)
    _, plan = change(conn, c, [ref, {"name": "label", "type": "text", "required": True, "default": "-"}])
    assert plan.needs_rebuild is False  # NOT NULL with a default is a plain ADD COLUMN
    _, plan = change(
        conn, c, [{**ref, "required": False, "options": {"collection": "tree", "on_delete": "restrict"}}]
    )
    assert plan.needs_rebuild
    with pytest.raises(apsw.ConstraintError):
        conn.execute("DELETE FROM c_tree WHERE id = ?", (root,))


def test_patch_carries_renames_into_field_access_and_merges_rules(
    conn: apsw.Connection, posts_table: Collection
) -> None:
    c = make("posts", POSTS, field_access={"list": ["title", "views"]}, rules={"list": ""})
    parsed = parse_collection_body(
        {"fields": [{**POSTS[0], "name": "headline", "previous_name": "title"}], "rules": {"view": ""}},
        partial=True,
    )
    new, plan = patch_collection(c, parsed, now="later")
    assert new.field_access["list"] == ["headline"] and new.field_access["view"] == ["*"]
    assert new.rules["list"] == "" and new.rules["view"] == ""
    assert (new.updated_at, new.created_at) == ("later", c.created_at)
    assert plan is not None and plan.dropped == ("views",)


def test_patch_refuses_rename_and_unknown_field_access(posts_table: Collection) -> None:
    assert codes(patch_collection, posts_table, {"name": "other"}, now=NOW) == {"name": "immutable"}
    parsed = parse_collection_body({"field_access": {"view": ["nope"]}}, partial=True)
    assert codes(patch_collection, posts_table, parsed, now=NOW) == {"field_access.view": "unknown_field"}
    same, plan = patch_collection(posts_table, {"name": "posts"}, now=NOW)
    assert plan is None and same.fields == posts_table.fields
