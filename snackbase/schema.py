"""Collections: the definitions themselves (pure: no database access here).

A collection is one SQL table `"c_<name>"` holding the six system columns and one column per field;
every row carries `account_id`, so per-field UNIQUE is a unique index on `(account_id, column)`.

Here: the `Field` and `Collection` types, the names and constants every other module shares, and the
name checks (`validate_collection_name`, `table_name`, `quote_ident`). Field types — converters,
option checks, `RecordValidator` — are in `field_types`; the `/collections` body parser and the
stored form of a definition in `collection_defs`; the DDL built from definitions in `ddl`.

Every identifier that reaches SQL text went through a name check and `quote_ident`; the only values
written into SQL text are field defaults, rendered as literals by `ddl._sql_literal` after validation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cached_property
from typing import Any, Literal

import msgspec

from snackbase.errors import field_error, validation_error

SYSTEM_FIELDS = ("id", "account_id", "created_at", "created_by", "updated_at", "updated_by")
FIELD_TYPES = (
    "text", "number", "boolean", "email", "url", "date", "datetime",
    "select", "json", "reference", "user", "file",
)  # fmt: skip
MASKS = ("email", "phone", "ssn", "name", "full")
RULE_OPS = ("list", "view", "create", "update", "delete")
FIELD_ACCESS_OPS = ("list", "view", "create", "update")
MAX_FIELDS = 250

# "rowid"/"oid" would shadow SQLite's rowid alias; "expand" is where expanded references appear.
RESERVED_FIELD_NAMES = frozenset((*SYSTEM_FIELDS, "expand", "rowid", "oid"))
# Names that are (or may become) our own tables or URL segments next to /records/{collection}.
RESERVED_COLLECTION_NAMES = frozenset((
    "accounts", "users", "sessions", "groups", "roles", "invitations", "macros", "audit_log",
    "audit", "collections", "files", "realtime", "batch", "records", "auth", "settings",
    "migrations", "superadmins", "health",
))  # fmt: skip

SqlValue = str | int | float | bytes | None
Mode = Literal["create", "update", "replace"]

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Identifiers we build: validated names, "c_<name>", "_new_c_<name>" and "ix:c_<name>:<column>".
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_:]{0,200}")
FK_TYPES = ("reference", "user")
MAX_SELECT_LIMIT = 1000  # the most ids one multi-reference field may hold


def is_multi_reference(field: Field) -> bool:
    """A `reference` with `max_select > 1` stores a JSON array of ids (no foreign key: the write path
    checks the ids and snackbase.cascade handles deletes)."""
    return field.type == "reference" and int(field.options.get("max_select") or 1) > 1


class Field(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    type: str
    required: bool = False
    unique: bool = False
    default: Any = None
    options: dict[str, Any] = {}
    pii: bool = False
    mask: str | None = None
    previous_name: str | None = None  # only meaningful in a PATCH body (rename)


class Collection(msgspec.Struct, frozen=True, dict=True):
    id: str
    name: str
    fields: tuple[Field, ...]
    rules: dict[str, str | None]
    field_access: dict[str, list[str]]
    audit: dict[str, Any]
    created_at: str
    updated_at: str

    @cached_property
    def field_map(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    @cached_property
    def pii_kinds(self) -> dict[str, str]:
        """PII field → its mask kind ("full" when none is set). Shared: never change it."""
        return {f.name: f.mask or "full" for f in self.fields if f.pii}

    @cached_property
    def table(self) -> str:
        return table_name(self.name)


# --- names -------------------------------------------------------------------------------------


def name_problem(name: object, reserved: frozenset[str]) -> tuple[str, str] | None:
    if not isinstance(name, str):
        return "invalid_type", "Must be a string."
    if not NAME_RE.fullmatch(name):
        return "invalid_name", "Must match ^[a-z][a-z0-9_]{0,62}$ (lowercase letter first)."
    if name in reserved or name.startswith("sqlite_"):
        return "reserved_name", f"`{name}` is reserved."
    return None


def validate_collection_name(name: object) -> str:
    problem = name_problem(name, RESERVED_COLLECTION_NAMES)
    if problem:
        raise validation_error(field_error("name", *problem))
    assert isinstance(name, str)
    return name


def table_name(collection_name: str) -> str:
    return "c_" + collection_name


def quote_ident(name: str) -> str:
    # A real check rather than `assert`: identifiers are the one thing bound parameters cannot carry.
    if not _IDENT_RE.fullmatch(name):
        raise ValueError(f"refusing to quote unvalidated identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def referenced_collections(c: Collection) -> frozenset[str]:
    """Collections this one's reference fields point at (the caller checks that they exist)."""
    return frozenset(f.options["collection"] for f in c.fields if f.type == "reference")


def referencing_fields(target: str, collections: Iterable[Collection]) -> list[tuple[str, str]]:
    """(collection, field) pairs in *other* collections that reference `target`: deleting `target`
    while this is non-empty is 409 collection_in_use."""
    return [
        (c.name, f.name)
        for c in collections
        if c.name != target
        for f in c.fields
        if f.type == "reference" and f.options.get("collection") == target
    ]
