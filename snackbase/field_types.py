"""Field types: one small converter per type (JSON value -> SQL value, compiled once per field), the
checks of a field definition's options, and `RecordValidator` (record body -> SQL values, SQL row ->
API record). Pure: no database access. The definitions themselves (`Field`, `Collection`, names) are
in `schema`; the `/collections` body and the stored form of a definition in `collection_defs`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import msgspec

from snackbase.errors import ApiError, FieldErrors, field_error, validation_error
from snackbase.schema import (
    FIELD_TYPES,
    FK_TYPES,
    MASKS,
    MAX_FIELDS,
    MAX_SELECT_LIMIT,
    NAME_RE,
    RESERVED_COLLECTION_NAMES,
    RESERVED_FIELD_NAMES,
    SYSTEM_FIELDS,
    Collection,
    Field,
    Mode,
    SqlValue,
    is_multi_reference,
    name_problem,
)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # SQLite's INTEGER range

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
    problem = name_problem(v, RESERVED_COLLECTION_NAMES)
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
    if problem := name_problem(field.name, RESERVED_FIELD_NAMES):
        errors.update(field_error(prefix + "name", *problem))
    if field.previous_name is not None and not NAME_RE.fullmatch(field.previous_name):
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


def field_defs_errors(fields: Sequence[Field | None]) -> FieldErrors:
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
    if errors := field_defs_errors(fields):
        raise validation_error(errors, "The field definitions are not valid.")


def normalize_field(field: Field) -> Field:
    """Make implicit choices explicit so stored definitions compare equal: `on_delete` defaults to
    restrict, and a PII field without a mask is masked in `full` (the safe side)."""
    options = dict(field.options)
    if field.type in FK_TYPES:
        options.setdefault("on_delete", "restrict")
    mask = field.mask or ("full" if field.pii else None)
    return msgspec.structs.replace(field, options=options, mask=mask)


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
