"""DDL for collection tables: CREATE/DROP, and planning a schema change (pure: SQL text out).

A change runs as one transaction with the collection's row and its audit entry (see
`plan_schema_change` for the foreign-key protocol the caller follows). ALTER TABLE is used where
SQLite can; everything else rebuilds the table as SQLite's "Making Other Kinds Of Table Schema
Changes" describes. On PostgreSQL every change is an ALTER (`_alter_sql_postgres`, side by side with
SQLite's planners).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from snackbase.backends import dialect
from snackbase.collection_defs import field_access_errors
from snackbase.errors import FieldErrors, field_error, validation_error
from snackbase.field_types import default_value, normalize_field, validate_field_defs
from snackbase.schema import (
    FIELD_TYPES,
    FK_TYPES,
    SYSTEM_FIELDS,
    Collection,
    Field,
    SqlValue,
    is_multi_reference,
    quote_ident,
    table_name,
)


class SchemaChange(msgspec.Struct, frozen=True):
    """The result of `plan_schema_change`; `statements` run in order inside one transaction."""

    fields: tuple[Field, ...]
    renames: dict[str, str]  # new name -> old name
    added: tuple[str, ...]
    dropped: tuple[str, ...]
    changed: tuple[str, ...]  # (new) names of kept fields whose definition changed
    needs_rebuild: bool
    statements: list[str]
    fk_check_sql: str  # run after `statements`, inside the transaction: any row returned -> roll back


def _carry_field_access(access: Mapping[str, list[str]], change: SchemaChange) -> dict[str, list[str]]:
    """Renamed fields keep their access; dropped fields leave the lists."""
    new_name = {old: new for new, old in change.renames.items()}
    kept = {f.name for f in change.fields}
    return {
        op: ["*"] if names == ["*"] else [n2 for n in names if (n2 := new_name.get(n, n)) in kept]
        for op, names in access.items()
    }


def patch_collection(
    old: Collection, parsed: Mapping[str, Any], *, now: str
) -> tuple[Collection, SchemaChange | None]:
    """Apply a parsed PATCH body. Returns the new definition and the schema change to run (None when
    `fields` was not given). Collections cannot be renamed: other collections' reference options and
    stored audit targets name them."""
    if parsed.get("name", old.name) != old.name:
        raise validation_error(field_error("name", "immutable", "A collection cannot be renamed."))
    change = plan_schema_change(old, parsed["fields"]) if "fields" in parsed else None
    fields = change.fields if change else old.fields
    access = _carry_field_access(old.field_access, change) if change else dict(old.field_access)
    access.update(parsed.get("field_access", {}))
    if errors := field_access_errors(access, fields):
        raise validation_error(errors)
    rules = {**old.rules, **parsed.get("rules", {})}
    audit = {**old.audit, **parsed.get("audit", {})}
    return Collection(old.id, old.name, fields, rules, access, audit, old.created_at, now), change


_ON_DELETE_SQL = {"restrict": "RESTRICT", "cascade": "CASCADE", "set_null": "SET NULL"}

# --- DDL ---------------------------------------------------------------------------------------

_SQL_TYPES = {t: "TEXT" for t in FIELD_TYPES} | {"number": "NUMERIC", "boolean": "INTEGER"}

_SYSTEM_COLUMNS_SQL = """\
  id TEXT PRIMARY KEY NOT NULL,
  account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
  created_at TEXT NOT NULL,
  created_by TEXT,
  updated_at TEXT NOT NULL,
  updated_by TEXT"""


def column_type(collection: Collection, column: str) -> str:
    """The SQL type of a column of the collection's table (the system columns are TEXT)."""
    f = collection.field_map.get(column)
    return _SQL_TYPES[f.type] if f is not None else "TEXT"


def _sql_literal(value: SqlValue) -> str:
    """Only for validated defaults (DDL cannot take bound parameters)."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return repr(value)
    raise ValueError(f"no SQL literal for {value!r}")


def _column_def(field: Field) -> str:
    col = quote_ident(field.name)
    parts = [col, _SQL_TYPES[field.type]]
    if field.required:
        parts.append("NOT NULL")
    if field.default is not None:
        parts.append("DEFAULT " + _sql_literal(default_value(field)))
    if field.type == "boolean":
        parts.append(f"CHECK ({col} IN (0, 1))")
    if field.type in FK_TYPES and not is_multi_reference(field):  # a JSON array has no foreign key
        target = (
            quote_ident(table_name(field.options["collection"])) if field.type == "reference" else "users"
        )
        on_delete = _ON_DELETE_SQL[field.options.get("on_delete", "restrict")]
        parts.append(f"REFERENCES {target}(id) ON DELETE {on_delete}")
    return " ".join(parts)


def _create_table(table: str, fields: Iterable[Field]) -> str:
    columns = [_SYSTEM_COLUMNS_SQL, *("  " + _column_def(f) for f in fields)]
    return f"CREATE TABLE {quote_ident(table)} (\n" + ",\n".join(columns) + "\n)"


def _index(kind: str, table: str, column: str, columns_sql: str) -> tuple[str, str]:
    """Index names are `<kind>:<table>:<column>`: ':' cannot occur in a name, so two (table, column)
    pairs never produce the same index name."""
    name = f"{kind}:{table}:{column}"
    unique = "UNIQUE " if kind == "ux" else ""
    return name, f"CREATE {unique}INDEX {quote_ident(name)} ON {quote_ident(table)} ({columns_sql})"


def _field_indexes(table: str, field: Field) -> dict[str, str]:
    col = quote_ident(field.name)
    kinds = []
    if field.unique:  # per account: tenants must not collide with each other
        kinds.append(("ux", f"account_id, {col}"))
    elif field.options.get("index"):
        kinds.append(("ix", f"account_id, {col}"))
    if field.type in FK_TYPES and not is_multi_reference(field):  # else every parent delete scans
        kinds.append(("fk", col))
    return dict(_index(kind, table, field.name, cols) for kind, cols in kinds)


def _indexes(table: str, fields: Iterable[Field]) -> dict[str, str]:
    # `id` ends the index because it breaks ties in every sort (in the direction of the last key), so
    # a newest-first list (ORDER BY created_at DESC, id DESC) reads the index backwards with no sort step.
    out = dict([_index("ix", table, "created_at", "account_id, created_at, id")])
    for field in fields:
        out.update(_field_indexes(table, field))
    return out


def create_table_sql(collection: Collection) -> list[str]:
    table = table_name(collection.name)
    return [_create_table(table, collection.fields), *_indexes(table, collection.fields).values()]


def drop_table_sql(collection_name: str) -> list[str]:
    """Run like a rebuild (foreign_keys OFF, see `plan_schema_change`) after checking
    `referencing_fields`: with foreign keys on, DROP TABLE deletes every row first and a
    self-reference with ON DELETE RESTRICT would refuse it."""
    return [f"DROP TABLE {quote_ident(table_name(collection_name))}"]


def _match_fields(old: Collection, new_fields: Sequence[Field]) -> dict[str, str | None]:
    """New field name -> the old field it continues (None: added). An explicit previous_name claims
    an old field first, so `b (previous_name a)` plus a new `a` is a rename and an add."""
    claimed = [f.previous_name for f in new_fields if f.previous_name is not None]
    errors: FieldErrors = {}
    sources: dict[str, str | None] = {}
    for i, f in enumerate(new_fields):
        if f.previous_name is None:
            sources[f.name] = f.name if f.name in old.field_map and f.name not in claimed else None
        elif f.previous_name not in old.field_map or claimed.count(f.previous_name) > 1:
            message = "Must name an existing field, once."
            errors.update(field_error(f"fields.{i}.previous_name", "unknown_field", message))
        else:
            sources[f.name] = f.previous_name
    if errors:
        raise validation_error(errors)
    return sources


def _change_errors(
    old: Collection, new_fields: Sequence[Field], sources: dict[str, str | None]
) -> FieldErrors:
    errors: FieldErrors = {}
    for i, f in enumerate(new_fields):
        was = old.field_map.get(sources[f.name] or "")
        if was is None:
            continue
        if was.type != f.type:
            message = "A field's type cannot change; add a new field and drop this one."
            errors.update(field_error(f"fields.{i}.type", "invalid_change", message))
        elif was.options.get("multiple") and not f.options.get("multiple"):
            message = "A multiple field cannot become single."
            errors.update(field_error(f"fields.{i}.options.multiple", "invalid_change", message))
        elif is_multi_reference(was) != is_multi_reference(f):  # an id vs a JSON array of ids
            message = "A reference cannot change between one (max_select 1) and several records."
            errors.update(field_error(f"fields.{i}.options.max_select", "invalid_change", message))
    return errors


def _copy_expr(was: Field, now: Field) -> str:
    """SQL that carries an old column into the rebuilt table; single -> multiple wraps in a list."""
    col = quote_ident(was.name)
    if now.options.get("multiple") and not was.options.get("multiple"):
        item = f"json({col})" if now.type == "file" else col
        return f"CASE WHEN {col} IS NULL THEN NULL ELSE json_array({item}) END"
    return col


def _rebuild_sql(old: Collection, fields: Sequence[Field], sources: dict[str, str | None]) -> list[str]:
    table = table_name(old.name)
    t, tmp = quote_ident(table), "_new_" + table
    kept = [(f, old.field_map[src]) for f in fields if (src := sources[f.name]) is not None]
    columns = ", ".join([*SYSTEM_FIELDS, *(quote_ident(f.name) for f, _ in kept)])
    exprs = ", ".join([*SYSTEM_FIELDS, *(_copy_expr(was, f) for f, was in kept)])
    return [
        _create_table(tmp, fields),
        f"INSERT INTO {quote_ident(tmp)} ({columns}) SELECT {exprs} FROM {t}",
        f"DROP TABLE {t}",
        # Renaming the *new* table onto the old name leaves other tables' REFERENCES "c_x" pointing at
        # it; renaming the old table away first would rewrite those references (legacy_alter_table=OFF).
        f"ALTER TABLE {quote_ident(tmp)} RENAME TO {t}",
        *_indexes(table, fields).values(),
    ]


def _alter_plan(
    old: Collection, fields: Sequence[Field], sources: dict[str, str | None]
) -> tuple[str, dict[str, str], list[Field], dict[str, str], dict[str, str], list[str]]:
    """What both engines' in-place changes start from: the quoted table, renames (new -> old name),
    dropped fields, the old and new indexes, and the indexes to drop first — those on renamed or
    dropped columns (a dropped column may not be indexed, and a kept index name would otherwise
    describe a column that no longer has that name) and those whose definition changes."""
    table = table_name(old.name)
    renames = {new: src for new, src in sources.items() if src is not None and src != new}
    dropped = [f for f in old.fields if f.name not in sources.values()]
    touched = {*renames.values(), *(f.name for f in dropped)}
    stale = {n for f in old.fields if f.name in touched for n in _field_indexes(table, f)}
    old_ix, new_ix = _indexes(table, old.fields), _indexes(table, fields)
    drop_ix = [n for n, sql in old_ix.items() if n in stale or new_ix.get(n) != sql]
    return quote_ident(table), renames, dropped, old_ix, new_ix, drop_ix


def _alter_sql(old: Collection, fields: Sequence[Field], sources: dict[str, str | None]) -> list[str]:
    t, renames, dropped, old_ix, new_ix, drop_ix = _alter_plan(old, fields, sources)
    return [
        *(f"DROP INDEX {quote_ident(n)}" for n in drop_ix),
        *(f"ALTER TABLE {t} RENAME COLUMN {quote_ident(o)} TO {quote_ident(n)}" for n, o in renames.items()),
        *(f"ALTER TABLE {t} DROP COLUMN {quote_ident(f.name)}" for f in dropped),
        *(f"ALTER TABLE {t} ADD COLUMN {_column_def(f)}" for f in fields if sources[f.name] is None),
        *(sql for n, sql in new_ix.items() if n in drop_ix or n not in old_ix),
    ]


def _alter_sql_postgres(
    old: Collection, fields: Sequence[Field], sources: dict[str, str | None]
) -> list[str]:
    """The PostgreSQL variant of `_alter_sql` + `_rebuild_sql`: PostgreSQL alters a table in place for
    every change SQLite needs a rebuild for (NOT NULL, DEFAULT, the reference target or its ON DELETE,
    single -> multiple), with foreign keys enforced throughout, so there is never a rebuild.

    Renames go through temporary names first, so swaps and chains (a -> b, b -> a) work; existing rows
    that break a new NOT NULL fail the ALTER with a not-null violation (409, as on SQLite)."""
    t, renames, dropped, old_ix, new_ix, drop_ix = _alter_plan(old, fields, sources)
    temp = {src: f"_renaming_{i}" for i, src in enumerate(renames.values())}
    statements = [
        *(f"DROP INDEX {quote_ident(n)}" for n in drop_ix),
        *(f"ALTER TABLE {t} DROP COLUMN {quote_ident(f.name)}" for f in dropped),
        *(f"ALTER TABLE {t} RENAME COLUMN {quote_ident(src)} TO {quote_ident(temp[src])}" for src in temp),
        *(
            f"ALTER TABLE {t} RENAME COLUMN {quote_ident(temp[o])} TO {quote_ident(n)}"
            for n, o in renames.items()
        ),
    ]
    for f in fields:
        src = sources[f.name]
        if src is not None:
            statements += _alter_column_postgres(table_name(old.name), old.field_map[src], f)
    statements += [f"ALTER TABLE {t} ADD COLUMN {_column_def(f)}" for f in fields if sources[f.name] is None]
    return [*statements, *(sql for n, sql in new_ix.items() if n in drop_ix or n not in old_ix)]


def _alter_column_postgres(table: str, was: Field, now: Field) -> list[str]:
    """ALTER COLUMN statements that turn the column of `was` (already renamed) into that of `now`."""
    t, col = quote_ident(table), quote_ident(now.name)
    out = []
    if _copy_expr(was, now) != quote_ident(was.name):  # single -> multiple: the value becomes a list
        item = f"{col}::json" if now.type == "file" else col
        out.append(f"UPDATE {t} SET {col} = json_build_array({item})::text WHERE {col} IS NOT NULL")
    if was.default != now.default:
        default = _sql_literal(default_value(now)) if now.default is not None else None
        out.append(
            f"ALTER TABLE {t} ALTER COLUMN {col} " + (f"SET DEFAULT {default}" if default else "DROP DEFAULT")
        )
    if was.required != now.required:
        out.append(f"ALTER TABLE {t} ALTER COLUMN {col} {'SET' if now.required else 'DROP'} NOT NULL")
    was_fk, now_fk = _fk_sql(was), _fk_sql(now)
    if was_fk != now_fk:
        if was_fk:
            out.append(
                _DROP_FK_POSTGRES.format(table=table.replace("'", "''"), column=now.name.replace("'", "''"))
            )
        if now_fk:
            out.append(f"ALTER TABLE {t} ADD FOREIGN KEY ({col}) {now_fk}")
    return out


def _fk_sql(field: Field) -> str:
    """The REFERENCES clause of a field's column ('' for none), as `_column_def` writes it."""
    if field.type not in FK_TYPES or is_multi_reference(field):
        return ""
    target = quote_ident(table_name(field.options["collection"])) if field.type == "reference" else "users"
    return f"REFERENCES {target}(id) ON DELETE {_ON_DELETE_SQL[field.options.get('on_delete', 'restrict')]}"


# The foreign key of one column has a generated name: look it up in the catalog and drop it.
_DROP_FK_POSTGRES = """DO $$
DECLARE fk text;
BEGIN
    SELECT c.conname INTO fk FROM pg_constraint c JOIN pg_attribute a
        ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
    WHERE c.conrelid = quote_ident('{table}')::regclass AND c.contype = 'f' AND a.attname = '{column}';
    IF fk IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', '{table}', fk);
    END IF;
END $$"""


def _needs_rebuild(old: Collection, fields: Sequence[Field], sources: dict[str, str | None]) -> bool:
    for f in fields:
        src = sources[f.name]
        if src is None:
            if f.required and f.default is None:  # so existing rows fail NOT NULL (ConstraintError)
                return True
            continue
        was = old.field_map[src]
        if src != f.name and f.name in old.field_map:  # swaps and chains cannot be RENAME COLUMNs
            return True
        if _column_def(msgspec.structs.replace(was, name=f.name)) != _column_def(f):
            return True
        if _copy_expr(was, f) != quote_ident(was.name):
            return True
    # SQLite refuses DROP COLUMN on a column with a foreign key.
    return any(f.type in FK_TYPES and f.name not in sources.values() for f in old.fields)


def plan_schema_change(old: Collection, new_fields: Sequence[Field]) -> SchemaChange:
    """Plan the DDL that turns `old`'s table into one for `new_fields` (the complete new list; a
    field with `previous_name` renames, a missing old field is dropped, a new name is added).

    Refused with 400 validation_failed: invalid definitions, a `previous_name` naming no old field,
    a type change, multiple -> single. Options that only affect validation (max_length, values, …)
    are not checked against existing rows. Adds, drops and renames use ALTER TABLE when SQLite can;
    anything that changes a column's definition (required, default, reference target, on_delete,
    single -> multiple) rebuilds the table as SQLite's "Making Other Kinds Of Table Schema Changes".

    The caller must run it like this (its connection normally has foreign keys ON):

        with unit_of_work(conn, foreign_keys_off=change.needs_rebuild):  # PRAGMA before BEGIN
            for sql in change.statements: conn.execute(sql)
            if conn.execute(change.fk_check_sql).fetchall(): raise ApiError(409, ...)
            ... update the collections row, write the audit entry ...

    Why OFF and not `PRAGMA defer_foreign_keys=ON`: with foreign keys enabled, DROP TABLE first
    deletes every row, and that fires ON DELETE CASCADE / SET NULL in the tables that reference this
    one — deferring only postpones violation *checks*, not these actions, so children would be
    silently deleted. With foreign keys OFF nothing fires, so `fk_check_sql` re-checks this table's
    own references before commit (rows keep their ids, so references *into* it stay valid). Leave
    `legacy_alter_table` at its default (OFF). NOT NULL on existing nulls, UNIQUE on duplicates and
    CHECK failures raise apsw.ConstraintError inside the unit of work, which rolls everything back: the
    caller answers 409. The ALTER-only path is correct with foreign keys on or off.
    """
    validate_field_defs(new_fields)
    new_fields = [normalize_field(f) for f in new_fields]
    sources = _match_fields(old, new_fields)
    if errors := _change_errors(old, new_fields, sources):
        raise validation_error(errors, "The schema change is not possible.")
    fields = tuple(msgspec.structs.replace(f, previous_name=None) for f in new_fields)
    if dialect.current.get() is dialect.POSTGRESQL:
        rebuild, statements = False, _alter_sql_postgres(old, fields, sources)
        fk_check_sql = _NO_FK_CHECK_POSTGRES
    else:
        rebuild = _needs_rebuild(old, fields, sources)
        statements = (_rebuild_sql if rebuild else _alter_sql)(old, fields, sources)
        fk_check_sql = f"PRAGMA foreign_key_check({quote_ident(table_name(old.name))})"
    return SchemaChange(
        fields=fields,
        renames={new: src for new, src in sources.items() if src is not None and src != new},
        added=tuple(name for name, src in sources.items() if src is None),
        dropped=tuple(f.name for f in old.fields if f.name not in sources.values()),
        changed=tuple(f.name for f in fields if _changed(old, f, sources[f.name])),
        needs_rebuild=rebuild,
        statements=statements,
        fk_check_sql=fk_check_sql,
    )


# PostgreSQL checks foreign keys at every statement (they are never off), so nothing is left to check.
_NO_FK_CHECK_POSTGRES = "SELECT 1 WHERE FALSE"


def _changed(old: Collection, field: Field, source: str | None) -> bool:
    return source is not None and msgspec.structs.replace(old.field_map[source], name=field.name) != field
