"""Collections: definitions and record validation (pure: no database access here).

A collection is one SQL table `"c_<name>"` holding the six system columns and one column per field;
every row carries `account_id`, so per-field UNIQUE is a unique index on `(account_id, column)`.

Storage of the definition (the `collections` row): `fields`, `rules`, `field_access` and `audit` are
JSON text columns; `collection_to_row` / `collection_from_row` are the two ends of that mapping.

What lives here, in file order:
- names (`validate_collection_name`, `table_name`, `quote_ident`),
- value converters: one small function per field type, JSON value -> SQL value, compiled once,
- field definition checks and the `/collections` body parser,
- `RecordValidator` (record body -> SQL values, SQL row -> API record).
The DDL built from these definitions (CREATE/DROP, schema-change plans) lives in `ddl`.

Every identifier that reaches SQL text went through a name check and `quote_ident`; the only values
written into SQL text are field defaults, rendered as literals by `ddl._sql_literal` after validation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from functools import cached_property
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from snackbase.errors import ApiError, FieldErrors, field_error, validation_error

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

_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Identifiers we build: validated names, "c_<name>", "_new_c_<name>" and "ix:c_<name>:<column>".
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_:]{0,200}")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
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

    @property
    def table(self) -> str:
        return table_name(self.name)


# --- names -------------------------------------------------------------------------------------


def _name_problem(name: object, reserved: frozenset[str]) -> tuple[str, str] | None:
    if not isinstance(name, str):
        return "invalid_type", "Must be a string."
    if not _NAME_RE.fullmatch(name):
        return "invalid_name", "Must match ^[a-z][a-z0-9_]{0,62}$ (lowercase letter first)."
    if name in reserved or name.startswith("sqlite_"):
        return "reserved_name", f"`{name}` is reserved."
    return None


def validate_collection_name(name: object) -> str:
    problem = _name_problem(name, RESERVED_COLLECTION_NAMES)
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


# --- value converters: JSON value -> SQL value -------------------------------------------------


class _Invalid(ValueError):
    """A value refused with an API error code; a ValueError so `parse_date`/`parse_datetime` callers
    need no private type."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Convert = Callable[[Any], SqlValue]
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.decode
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
# Close to the WHATWG "valid e-mail address"; a dot in the domain is required.
_EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)


def _expect_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("invalid_type", "Must be a string.")
    return value


def _check_range(value: Any, lo: Any, hi: Any) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if lo is not None and hi is not None else ""
        bounds = bounds or (f"at least {lo}" if lo is not None else f"at most {hi}")
        raise _Invalid("out_of_range", f"Must be {bounds}.")


def _text_converter(opts: Mapping[str, Any]) -> Convert:
    lo, hi = opts.get("min_length"), opts.get("max_length")
    pattern = re.compile(opts["pattern"]) if opts.get("pattern") else None

    def convert(value: Any) -> SqlValue:
        text = _expect_str(value)
        if hi is not None and len(text) > hi:
            raise _Invalid("too_long", f"Must be at most {hi} characters.")
        if lo is not None and len(text) < lo:
            raise _Invalid("too_short", f"Must be at least {lo} characters.")
        if pattern is not None and pattern.search(text) is None:
            raise _Invalid("pattern_mismatch", "Does not match the required pattern.")
        return text

    return convert


def _number_converter(opts: Mapping[str, Any]) -> Convert:
    lo, hi, integer_only = opts.get("min"), opts.get("max"), bool(opts.get("integer_only"))

    # Ints stay ints and floats stay floats; the NUMERIC column does store 5.0 as the integer 5.
    def convert(value: Any) -> SqlValue:
        # bool is an int subclass in Python; JSON true must not become 1.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid("invalid_type", "Must be a number.")
        if isinstance(value, float) and not math.isfinite(value):
            raise _Invalid("invalid_type", "Must be a finite number.")
        if integer_only and isinstance(value, float):
            if not value.is_integer():
                raise _Invalid("not_integer", "Must be a whole number.")
            value = int(value)
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            raise _Invalid("out_of_range", "Must fit in a signed 64-bit integer.")
        _check_range(value, lo, hi)
        return value

    return convert


def _boolean_converter(opts: Mapping[str, Any]) -> Convert:
    def convert(value: Any) -> SqlValue:
        if not isinstance(value, bool):
            raise _Invalid("invalid_type", "Must be true or false.")
        return 1 if value else 0

    return convert


def _email_converter(opts: Mapping[str, Any]) -> Convert:
    def convert(value: Any) -> SqlValue:
        text = _expect_str(value)
        if len(text) > 254 or not _EMAIL_RE.fullmatch(text):
            raise _Invalid("invalid_email", "Must be a valid email address.")
        return text

    return convert


def _is_http_url(text: str) -> bool:
    if len(text) > 2048 or any(ch.isspace() or ord(ch) < 32 for ch in text):
        return False
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _url_converter(opts: Mapping[str, Any]) -> Convert:
    def convert(value: Any) -> SqlValue:
        text = _expect_str(value)
        if not _is_http_url(text):
            raise _Invalid("invalid_url", "Must be a valid http(s) URL.")
        return text

    return convert


def parse_date(value: Any) -> str:
    """A `YYYY-MM-DD` calendar date, returned unchanged; raises ValueError (`.code`, `.message`)."""
    text = _expect_str(value)
    try:
        if _DATE_RE.fullmatch(text):
            date.fromisoformat(text)
            return text
    except ValueError:
        pass
    raise _Invalid("invalid_date", "Must be a date as YYYY-MM-DD.")


def _parse_offset(tz: str) -> timedelta:
    if tz in ("Z", "z"):
        return timedelta(0)
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError("offset out of range")
    return (-1 if tz[0] == "-" else 1) * timedelta(hours=hours, minutes=minutes)


def parse_datetime(value: Any) -> str:
    """RFC 3339 with an offset -> the contract format `2026-11-27T09:10:10.123Z` (UTC, ms, truncated)."""
    match = _DATETIME_RE.fullmatch(_expect_str(value))
    try:
        if match is None:
            raise ValueError("not RFC 3339")
        y, mo, d, h, mi, s = (int(g) for g in match.groups()[:6])
        millis = int((match.group(7) or ".0")[1:4].ljust(3, "0"))
        local = datetime(y, mo, d, h, mi, s, millis * 1000, timezone(_parse_offset(match.group(8))))
        utc = local.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _Invalid("invalid_datetime", "Must be an RFC 3339 date-time with an offset.") from None
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def _date_converter(opts: Mapping[str, Any]) -> Convert:
    lo, hi = opts.get("min"), opts.get("max")

    def convert(value: Any) -> SqlValue:
        text = parse_date(value)
        _check_range(text, lo, hi)  # the format sorts as text
        return text

    return convert


def _datetime_converter(opts: Mapping[str, Any]) -> Convert:
    lo = parse_datetime(opts["min"]) if opts.get("min") else None
    hi = parse_datetime(opts["max"]) if opts.get("max") else None

    def convert(value: Any) -> SqlValue:
        text = parse_datetime(value)
        _check_range(text, lo, hi)
        return text

    return convert


def _select_converter(opts: Mapping[str, Any]) -> Convert:
    allowed = frozenset(opts.get("values") or ())

    def one(value: Any) -> str:
        if _expect_str(value) not in allowed:
            raise _Invalid("not_in_values", "Must be one of: " + ", ".join(sorted(allowed)) + ".")
        return value

    def many(value: Any) -> SqlValue:
        if not isinstance(value, list):
            raise _Invalid("invalid_type", "Must be a list of strings.")
        return _json_encode(list(dict.fromkeys(one(v) for v in value))).decode()

    return many if opts.get("multiple") else one


def _json_converter(opts: Mapping[str, Any]) -> Convert:
    max_bytes = opts.get("max_bytes")

    def convert(value: Any) -> SqlValue:
        try:
            raw = _json_encode(value)
        except (TypeError, msgspec.EncodeError):
            raise _Invalid("invalid_type", "Must be a JSON value.") from None
        if max_bytes is not None and len(raw) > max_bytes:
            raise _Invalid("too_large", f"Must be at most {max_bytes} bytes as JSON.")
        return raw.decode()

    return convert


def _id_converter(opts: Mapping[str, Any]) -> Convert:
    # Only the shape; whether the id exists is the caller's check (reference_not_found).
    def convert(value: Any) -> SqlValue:
        if len(_expect_str(value)) > 128:
            raise _Invalid("invalid_type", "Must be a record id.")
        return value

    return convert


def _reference_converter(opts: Mapping[str, Any]) -> Convert:
    one = _id_converter(opts)
    max_select = int(opts.get("max_select") or 1)
    if max_select <= 1:
        return one

    def many(value: Any) -> SqlValue:
        if not isinstance(value, list):
            raise _Invalid("invalid_type", "Must be a list of record ids.")
        ids = list(dict.fromkeys(one(v) for v in value))
        if len(ids) > max_select:
            raise _Invalid("too_many", f"At most {max_select} references.")
        return _json_encode(ids).decode()

    return many


def _file_converter(opts: Mapping[str, Any]) -> Convert:
    """A file value is the stored metadata of its files (one object, or a list when `max_files` > 1).
    The record pipeline builds it (snackbase.files.resolve) from uploads and kept names; only its
    shape is checked here."""
    single = opts.get("max_files", 1 if not opts.get("multiple") else 99) == 1

    def meta(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Invalid("invalid_type", "Must be file metadata (an object).")
        return value

    def convert(value: Any) -> SqlValue:
        if not single and not isinstance(value, list):
            raise _Invalid("invalid_type", "Must be a list of files.")
        return _json_encode(meta(value) if single else [meta(v) for v in value]).decode()

    return convert


_CONVERTERS: dict[str, Callable[[Mapping[str, Any]], Convert]] = {
    "text": _text_converter,
    "number": _number_converter,
    "boolean": _boolean_converter,
    "email": _email_converter,
    "url": _url_converter,
    "date": _date_converter,
    "datetime": _datetime_converter,
    "select": _select_converter,
    "json": _json_converter,
    "reference": _reference_converter,
    "user": _id_converter,
    "file": _file_converter,
}
# Types whose "" means "no value" (NULL), so that "" neither fails format checks nor collides in a
# unique index. Text keeps "" as a value; json keeps it as the JSON string "".
_BLANK_IS_NULL = frozenset(("email", "url", "date", "datetime", "select", "reference", "user"))


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list)) and len(value) == 0)


_NO_DEFAULT: Any = object()


def default_value(field: Field) -> SqlValue:
    """The field's default as stored (already validated when the definition was saved)."""
    return _FieldSpec(field).default


class _FieldSpec:
    """One field compiled for validation: the converter plus what an empty value means."""

    __slots__ = ("blank_is_null", "convert", "default", "is_text", "name", "required")

    def __init__(self, field: Field) -> None:
        self.name = field.name
        self.required = field.required
        self.convert = _CONVERTERS[field.type](field.options)
        self.is_text = field.type == "text"
        self.blank_is_null = field.type in _BLANK_IS_NULL and not field.options.get("multiple")
        self.blank_is_null = self.blank_is_null and not is_multi_reference(field)
        self.default = _NO_DEFAULT if field.default is None else self.value(field.default)

    def value(self, value: Any) -> SqlValue:
        if _is_empty(value):
            if self.required:
                raise _Invalid("required", "This field is required.")
            if value is None or (value == "" and self.blank_is_null):
                return None
            if value == "" and self.is_text:
                return ""  # an optional empty text skips length and pattern checks
        return self.convert(value)


# --- field definitions -------------------------------------------------------------------------

OptionCheck = Callable[[Any], "str | None"]  # -> error message or None


def _is_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "Must be true or false."


def _is_count(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _INT64_MAX
    return None if ok else "Must be a non-negative integer."


def _is_positive(v: Any) -> str | None:
    return _is_count(v) or (None if v > 0 else "Must be greater than 0.")


def _is_number(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return None if ok else "Must be a finite number."


def _is_date(v: Any) -> str | None:
    return _invalid_message(parse_date, v)


def _is_datetime(v: Any) -> str | None:
    return _invalid_message(parse_datetime, v)


def _invalid_message(parse: Callable[[Any], Any], v: Any) -> str | None:
    try:
        parse(v)
    except _Invalid as e:
        return e.message
    return None


# Nested quantifiers like (a+)+ or (a|aa)* backtrack exponentially; Python's re has no time limit.
_NESTED_QUANTIFIER_RE = re.compile(r"\([^()]*[+*}][^()]*\)\s*[+*{]|\([^()]*\|[^()]*\)\s*[+*{]")


def _is_pattern(v: Any) -> str | None:
    if not isinstance(v, str) or not v or len(v) > 500:
        return "Must be a regular expression of 1 to 500 characters."
    if _NESTED_QUANTIFIER_RE.search(v):
        return "Nested or alternated repetition like (a+)+ is refused: it can take exponential time."
    try:
        re.compile(v)
    except re.error as e:
        return f"Not a valid regular expression: {e}."
    return None


def _is_values(v: Any) -> str | None:
    if not isinstance(v, list) or not v or len(v) > 1000:
        return "Must be a non-empty list of at most 1000 strings."
    if not all(isinstance(s, str) and 0 < len(s) <= 255 for s in v):
        return "Each value must be a string of 1 to 255 characters."
    return None if len(set(v)) == len(v) else "Values must be unique."


def _is_collection_name(v: Any) -> str | None:
    problem = _name_problem(v, RESERVED_COLLECTION_NAMES)
    return problem[1] if problem else None


def _is_mime_list(v: Any) -> str | None:
    pattern = re.compile(r"[a-z0-9.+-]+/(\*|[a-z0-9.+-]+)")
    ok = isinstance(v, list) and all(isinstance(m, str) and pattern.fullmatch(m) for m in v)
    return None if ok else 'Must be a list of MIME types like "image/png" or "image/*".'


def _is_max_select(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SELECT_LIMIT
    return None if ok else f"Must be an integer from 1 to {MAX_SELECT_LIMIT}."


def _is_thumb_list(v: Any) -> str | None:
    pattern = re.compile(r"[0-9]{1,4}x[0-9]{1,4}[tbf]?")
    ok = isinstance(v, list) and len(v) <= 20 and all(isinstance(t, str) and pattern.fullmatch(t) for t in v)
    return None if ok and "0x0" not in v else 'Must be a list of sizes like "100x100", "0x300" or "200x200f".'


def _one_of(*choices: str) -> OptionCheck:
    return lambda v: None if v in choices else "Must be one of: " + ", ".join(choices) + "."


_TYPE_OPTIONS: dict[str, dict[str, OptionCheck]] = {
    "text": {
        "min_length": _is_count,
        "max_length": _is_positive,
        "pattern": _is_pattern,
        "searchable": _is_bool,  # full-text search (snackbase.search)
    },
    "number": {"min": _is_number, "max": _is_number, "integer_only": _is_bool},
    "boolean": {},
    "email": {},
    "url": {},
    "date": {"min": _is_date, "max": _is_date},
    "datetime": {"min": _is_datetime, "max": _is_datetime},
    "select": {"values": _is_values, "multiple": _is_bool},
    "json": {"max_bytes": _is_positive},
    "reference": {
        "collection": _is_collection_name,
        "on_delete": _one_of("restrict", "cascade", "set_null"),
        "max_select": _is_max_select,
    },
    "user": {"on_delete": _one_of("restrict", "set_null")},
    "file": {
        "max_size": _is_positive,
        "mime_types": _is_mime_list,
        "multiple": _is_bool,  # before max_files: true = up to 99 files
        "max_files": _is_positive,
        "protected": _is_bool,
        "thumbs": _is_thumb_list,
    },
}
_REQUIRED_OPTIONS = {"select": ("values",), "reference": ("collection",)}
_RANGE_OPTIONS = (("min_length", "max_length"), ("min", "max"))


def _option_errors(field: Field, prefix: str) -> FieldErrors:
    checks = {"index": _is_bool, **_TYPE_OPTIONS[field.type]}
    errors: FieldErrors = {}
    for key, value in field.options.items():
        check = checks.get(key)
        message = f"Unknown option `{key}` for type {field.type}." if check is None else check(value)
        if message:
            errors.update(
                field_error(
                    f"{prefix}{key}", "unknown_option" if check is None else "invalid_option", message
                )
            )
    for key in _REQUIRED_OPTIONS.get(field.type, ()):
        if key not in field.options:
            errors.update(field_error(f"{prefix}{key}", "required", f"Type {field.type} requires `{key}`."))
    return errors or _cross_option_errors(field, prefix)


def _cross_option_errors(field: Field, prefix: str) -> FieldErrors:
    opts = field.options
    bound = parse_datetime if field.type == "datetime" else (lambda v: v)  # offsets differ: compare UTC
    for lo, hi in _RANGE_OPTIONS:
        if opts.get(lo) is not None and opts.get(hi) is not None and bound(opts[lo]) > bound(opts[hi]):
            return field_error(f"{prefix}{lo}", "invalid_option", f"`{lo}` must not exceed `{hi}`.")
    if field.required and opts.get("on_delete") == "set_null":
        return field_error(f"{prefix}on_delete", "invalid_option", "A required field cannot be set to null.")
    return {}


def _default_error(field: Field) -> tuple[str, str] | None:
    if field.type in (*FK_TYPES, "file"):
        return "invalid_value", f"Type {field.type} cannot have a default."
    try:
        value = _FieldSpec(field).default
    except _Invalid as e:
        return e.code, e.message
    if isinstance(value, str) and "\x00" in value:  # defaults are written into DDL as literals
        return "invalid_value", "A default cannot contain NUL characters."
    return None


def _field_errors(field: Field, prefix: str) -> FieldErrors:
    errors: FieldErrors = {}
    if problem := _name_problem(field.name, RESERVED_FIELD_NAMES):
        errors.update(field_error(prefix + "name", *problem))
    if field.previous_name is not None and not _NAME_RE.fullmatch(field.previous_name):
        errors.update(field_error(prefix + "previous_name", "invalid_name", "Not a valid field name."))
    if field.mask is not None and (not field.pii or field.mask not in MASKS):
        message = "Requires `pii: true` and one of: " + ", ".join(MASKS) + "."
        errors.update(field_error(prefix + "mask", "invalid_value", message))
    if field.type not in FIELD_TYPES:
        message = "Must be one of: " + ", ".join(FIELD_TYPES) + "."
        return {**errors, **field_error(prefix + "type", "invalid_value", message)}
    if option_errors := _option_errors(field, prefix + "options."):
        return {**errors, **option_errors}
    if field.default is not None and (problem := _default_error(field)):
        errors.update(field_error(prefix + "default", *problem))
    return errors


def _field_defs_errors(fields: Sequence[Field | None]) -> FieldErrors:
    """Errors keyed `fields.<i>.<key>`; None entries (items that failed to parse) are skipped."""
    errors: FieldErrors = {}
    if len(fields) > MAX_FIELDS:
        return field_error("fields", "too_long", f"At most {MAX_FIELDS} fields.")
    seen: set[str] = set()
    for i, field in enumerate(fields):
        if field is None:
            continue
        errors.update(_field_errors(field, f"fields.{i}."))
        if field.name in seen:
            errors.update(field_error(f"fields.{i}.name", "duplicate_name", "Field names must be unique."))
        seen.add(field.name)
    return errors


def validate_field_defs(fields: Sequence[Field]) -> None:
    if errors := _field_defs_errors(fields):
        raise validation_error(errors, "The field definitions are not valid.")


def normalize_field(field: Field) -> Field:
    """Make implicit choices explicit so stored definitions compare equal: `on_delete` defaults to
    restrict, and a PII field without a mask is masked in `full` (the safe side)."""
    options = dict(field.options)
    if field.type in FK_TYPES:
        options.setdefault("on_delete", "restrict")
    mask = field.mask or ("full" if field.pii else None)
    return msgspec.structs.replace(field, options=options, mask=mask)


# --- the /collections body ---------------------------------------------------------------------

_BODY_KEYS = ("name", "fields", "rules", "field_access", "audit")
_FIELD_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "type": (str,),
    "required": (bool,),
    "unique": (bool,),
    "default": (object,),
    "options": (dict,),
    "pii": (bool,),
    "mask": (str, type(None)),
    "previous_name": (str, type(None)),
}
_FIELD_KEY_TYPES_POST = {k: v for k, v in _FIELD_KEYS.items() if k != "previous_name"}


def _unknown(key: str, what: str = "key") -> FieldErrors:
    return field_error(key, "unknown_field", f"Unknown {what} `{key.rsplit('.', 1)[-1]}`.")


def _parse_field(item: object, prefix: str, partial: bool, errors: FieldErrors) -> Field | None:
    if not isinstance(item, dict):
        errors.update(field_error(prefix.rstrip("."), "invalid_type", "Each field must be an object."))
        return None
    before = len(errors)
    for key, value in item.items():
        types = _FIELD_KEY_TYPES_POST if not partial else _FIELD_KEYS
        if key not in types:
            errors.update(_unknown(prefix + str(key)))
        elif not isinstance(value, types[key]):
            errors.update(field_error(prefix + key, "invalid_type", f"Wrong type for `{key}`."))
    for key in ("name", "type"):
        if key not in item:
            errors.update(field_error(prefix + key, "required", f"`{key}` is required."))
    return Field(**item) if len(errors) == before else None


def _parse_fields(value: object, partial: bool, errors: FieldErrors) -> list[Field]:
    if not isinstance(value, list):
        errors.update(field_error("fields", "invalid_type", "Must be a list of fields."))
        return []
    parsed = [_parse_field(item, f"fields.{i}.", partial, errors) for i, item in enumerate(value)]
    errors.update(_field_defs_errors(parsed))
    return [normalize_field(f) for f in parsed if f is not None]


def _parse_object(value: object, key: str, allowed: Iterable[str], errors: FieldErrors) -> dict[str, Any]:
    if not isinstance(value, dict):
        errors.update(field_error(key, "invalid_type", "Must be an object."))
        return {}
    allowed = tuple(allowed)
    for k in value:
        if k not in allowed:
            errors.update(_unknown(f"{key}.{k}"))
    return {k: v for k, v in value.items() if k in allowed}


def _parse_rules(value: object, partial: bool, errors: FieldErrors) -> dict[str, str | None]:
    rules = _parse_object(value, "rules", RULE_OPS, errors)
    for op, rule in rules.items():
        if rule is not None and not isinstance(rule, str):
            errors.update(field_error(f"rules.{op}", "invalid_type", "Must be null or a string."))
    return rules if partial else {op: rules.get(op) for op in RULE_OPS}


def _access_list_problem(names: object) -> str | None:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return 'Must be a list of field names, or ["*"].'
    if "*" in names and names != ["*"]:
        return '"*" must stand alone.'
    return None if len(set(names)) == len(names) else "Field names must be unique."


def _parse_field_access(value: object, partial: bool, errors: FieldErrors) -> dict[str, list[str]]:
    access = _parse_object(value, "field_access", FIELD_ACCESS_OPS, errors)
    for op, names in access.items():
        if problem := _access_list_problem(names):
            errors.update(field_error(f"field_access.{op}", "invalid_value", problem))
    return access if partial else {op: list(access.get(op, ["*"])) for op in FIELD_ACCESS_OPS}


def _parse_audit(value: object, partial: bool, errors: FieldErrors) -> dict[str, Any]:
    audit = _parse_object(value, "audit", ("require_reason",), errors)
    if not isinstance(audit.get("require_reason", False), bool):
        errors.update(field_error("audit.require_reason", "invalid_type", "Must be true or false."))
    return audit if partial else {"require_reason": audit.get("require_reason", False)}


def field_access_errors(access: Mapping[str, list[str]], fields: Iterable[Field]) -> FieldErrors:
    known = {f.name for f in fields}
    errors: FieldErrors = {}
    for op, names in access.items():
        readable = SYSTEM_FIELDS if op in ("list", "view") else ()
        unknown = [n for n in names if n != "*" and n not in known and n not in readable]
        if unknown:
            message = "Unknown field(s): " + ", ".join(unknown) + "."
            errors.update(field_error(f"field_access.{op}", "unknown_field", message))
    return errors


_SECTION_PARSERS: dict[str, Callable[[object, bool, FieldErrors], Any]] = {
    "fields": _parse_fields,
    "rules": _parse_rules,
    "field_access": _parse_field_access,
    "audit": _parse_audit,
}


def parse_collection_body(body: object, *, partial: bool = False) -> dict[str, Any]:
    """Validate a POST (`partial=False`) or PATCH (`partial=True`) /collections body.

    POST: `name` and `fields` are required; missing rules are null, missing field_access lists are
    ["*"], audit defaults to require_reason false. PATCH: only the given keys are returned, and
    within rules/field_access/audit only the given sub-keys (`patch_collection` merges them).
    """
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    errors: FieldErrors = {}
    for key in body:
        if key not in _BODY_KEYS:
            errors.update(_unknown(str(key)))
    out: dict[str, Any] = {}
    if "name" in body:
        if problem := _name_problem(body["name"], RESERVED_COLLECTION_NAMES):
            errors.update(field_error("name", *problem))
        out["name"] = body["name"]
    for key, parse in _SECTION_PARSERS.items():
        if key in body or not partial:
            out[key] = parse(body.get(key, {}), partial, errors)
    for key in ("name", "fields"):
        if not partial and key not in body:
            errors.update(field_error(key, "required", f"`{key}` is required."))
    if not partial and not errors:
        errors.update(field_access_errors(out["field_access"], out["fields"]))
    if errors:
        raise validation_error(errors)
    return out


def new_collection(parsed: Mapping[str, Any], *, id: str, now: str) -> Collection:
    """The Collection for a parsed POST body (`parse_collection_body(body)`)."""
    fields = tuple(normalize_field(f) for f in parsed["fields"])
    return Collection(
        id, parsed["name"], fields, dict(parsed["rules"]), dict(parsed["field_access"]),
        dict(parsed["audit"]), now, now,
    )  # fmt: skip


# --- API shape and storage ---------------------------------------------------------------------


def field_to_json(f: Field) -> dict[str, Any]:
    return {
        "name": f.name, "type": f.type, "required": f.required, "unique": f.unique,
        "default": f.default, "options": f.options, "pii": f.pii, "mask": f.mask,
    }  # fmt: skip


def collection_to_json(c: Collection) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "fields": [field_to_json(f) for f in c.fields],
        "rules": {op: c.rules.get(op) for op in RULE_OPS},
        "field_access": {op: c.field_access.get(op, ["*"]) for op in FIELD_ACCESS_OPS},
        "audit": {"require_reason": bool(c.audit.get("require_reason", False))},
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }


def collection_to_row(c: Collection) -> dict[str, str]:
    """Column -> value for the `collections` row; the four structured columns hold JSON text."""
    api = collection_to_json(c)
    row = {key: _json_encode(api[key]).decode() for key in ("fields", "rules", "field_access", "audit")}
    return {"id": c.id, "name": c.name, **row, "created_at": c.created_at, "updated_at": c.updated_at}


_fields_decoder = msgspec.json.Decoder(list[Field])
_rules_decoder = msgspec.json.Decoder(dict[str, str | None])
_access_decoder = msgspec.json.Decoder(dict[str, list[str]])
_audit_decoder = msgspec.json.Decoder(dict[str, Any])


def collection_from_json(
    id: str, name: str, fields_json: str, rules_json: str, field_access_json: str, audit_json: str,
    created_at: str, updated_at: str,
) -> Collection:  # fmt: skip
    rules, access = _rules_decoder.decode(rules_json), _access_decoder.decode(field_access_json)
    audit = _audit_decoder.decode(audit_json)
    return Collection(
        id, name, tuple(_fields_decoder.decode(fields_json)),
        {op: rules.get(op) for op in RULE_OPS},
        {op: access.get(op, ["*"]) for op in FIELD_ACCESS_OPS},
        {"require_reason": bool(audit.get("require_reason", False))},
        created_at, updated_at,
    )  # fmt: skip


def collection_from_row(row: Mapping[str, Any]) -> Collection:
    keys = ("id", "name", "fields", "rules", "field_access", "audit", "created_at", "updated_at")
    return collection_from_json(*(row[k] for k in keys))


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


# --- records -----------------------------------------------------------------------------------

_READERS: dict[str, Callable[[Any], Any]] = {"boolean": bool, "json": _json_decode, "file": _json_decode}


def _reader(field: Field) -> Callable[[Any], Any] | None:
    if (field.type == "select" and field.options.get("multiple")) or is_multi_reference(field):
        return _json_decode
    return _READERS.get(field.type)


class RecordValidator:
    """Compiled once per collection version (cache it by collection id + updated_at)."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self._specs = tuple(_FieldSpec(f) for f in collection.fields)
        self._names = frozenset(s.name for s in self._specs)
        readers = ((f.name, _reader(f)) for f in collection.fields)
        self._readers = tuple((name, read) for name, read in readers if read is not None)

    def validate(self, data: object, *, mode: Mode) -> dict[str, Any]:
        """A decoded JSON body -> {column: SQL value}; raises 400 validation_failed with every
        field's error. create/replace fill missing fields (default or NULL); update keeps only the
        given keys. Keys starting with "_" (`_reason`, …) are ignored."""
        if mode not in ("create", "update", "replace"):
            raise ValueError(f"unknown mode {mode!r}")
        if not isinstance(data, dict):
            raise ApiError(400, "bad_request", "The record must be a JSON object.")
        errors = self._key_errors(data)
        out: dict[str, Any] = {}
        for spec in self._specs:
            try:
                if spec.name in data:
                    out[spec.name] = spec.value(data[spec.name])
                elif mode != "update":
                    out[spec.name] = spec.value(None) if spec.default is _NO_DEFAULT else spec.default
            except _Invalid as e:
                errors[spec.name] = {"code": e.code, "message": e.message}
        if errors:
            raise validation_error(errors)
        return out

    def _key_errors(self, data: dict[Any, Any]) -> FieldErrors:
        errors: FieldErrors = {}
        for key in data:
            if not isinstance(key, str) or key.startswith("_") or key in self._names:
                continue
            if key in SYSTEM_FIELDS:
                errors.update(field_error(key, "read_only_field", "This field is set by the server."))
            else:
                errors.update(field_error(key, "unknown_field", "Unknown field."))
        return errors

    def to_json(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """An SQL row (possibly projected) -> the API record."""
        record = dict(row)
        for name, read in self._readers:
            value = record.get(name)
            if value is not None:
                record[name] = read(value)
        return record
