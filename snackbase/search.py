"""Full-text search: text fields with `searchable: true` are indexed in an SQLite FTS5 table.

Per collection `x` with searchable fields:
- `"c_x:fts"`, an FTS5 table of those fields (unicode61 tokenizer, diacritics folded), and
- `"c_x:fts_ids"`, record id → FTS rowid. The FTS rowid is this table's INTEGER PRIMARY KEY, which
  (unlike the rowid of the records table) survives VACUUM, so the index never points at another row.

Three triggers on the records table keep both in step — in the same statement, hence in the same unit
of work, as every insert, update and delete of a record, including cascaded deletes, account deletion
and hook writes; a rolled-back write rolls its index change back with it. Collection changes rebuild
the index (`drop_sql` before the schema change, `create_sql` after it).

`@search("buffer solution")` in a filter (snackbase.relations) matches records containing every word
(a trailing `*` makes a word a prefix) in the searchable fields the caller may read in clear; the
user's text never reaches FTS5's query syntax, each word is quoted. `sort=@rank` orders by bm25, best
first. Tenancy and rules apply because the index is joined to the scoped, rule-checked list query.

On PostgreSQL (the `…_postgres` functions below) the index is a GIN index on the expression
`to_tsvector('simple', sb_fold(field || ' ' || field …))` of the collection's table: PostgreSQL keeps
it in step with every write itself, so there are no triggers and no side tables. `@search` is that
expression `@@` the caller's words as a tsquery (`'word'` each, `'word':*` a prefix, all required),
`sort=@rank` orders by `ts_rank`, best first. The `simple` configuration (no stemming, as unicode61)
and `sb_fold` (Latin diacritics, snackbase/sql/postgresql/sqlite_functions.sql) keep the matches close
to FTS5's; docs/search.md says where they differ.
"""

from __future__ import annotations

import re
from typing import Final

from snackbase.backends import dialect
from snackbase.filter import FilterError
from snackbase.rules import ALIAS
from snackbase.schema import Collection, quote_ident, table_name

MAX_WORDS: Final = 32
_WORD_RE = re.compile(r"\w+\*?")


def searchable(collection: Collection) -> list[str]:
    return [f.name for f in collection.fields if f.type == "text" and f.options.get("searchable")]


def _names(collection_name: str) -> tuple[str, str, str]:
    table = table_name(collection_name)
    return table, f"{table}:fts", f"{table}:fts_ids"


def drop_sql(collection_name: str) -> list[str]:
    if dialect.current.get() is dialect.POSTGRESQL:
        return [f"DROP INDEX IF EXISTS {quote_ident(_names(collection_name)[1])}"]
    table, fts, ids = _names(collection_name)
    triggers = [f"DROP TRIGGER IF EXISTS {quote_ident(f'{table}:fts_{op}')}" for op in ("ai", "au", "ad")]
    return [*triggers, f"DROP TABLE IF EXISTS {quote_ident(fts)}", f"DROP TABLE IF EXISTS {quote_ident(ids)}"]


def create_sql(collection: Collection) -> list[str]:
    """The index, filled from the stored records, and its triggers (nothing without searchable fields)."""
    fields = searchable(collection)
    if not fields:
        return []
    if dialect.current.get() is dialect.POSTGRESQL:
        return create_sql_postgres(collection, fields)
    table, fts, ids = (quote_ident(n) for n in _names(collection.name))
    cols = ", ".join(quote_ident(f) for f in fields)
    new_cols = ", ".join(f"new.{quote_ident(f)}" for f in fields)
    rowid_of = f"(SELECT fts_rowid FROM {ids} WHERE id = {{}}.id)"
    insert = f"INSERT INTO {fts} (rowid, {cols}) VALUES ({rowid_of.format('new')}, {new_cols});"
    delete = f"DELETE FROM {fts} WHERE rowid = {rowid_of.format('old')};"
    name = _names(collection.name)[0]
    return [
        f"CREATE TABLE {ids} (fts_rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE)",
        f"CREATE VIRTUAL TABLE {fts} USING fts5({cols}, tokenize = 'unicode61 remove_diacritics 2')",
        f"INSERT INTO {ids} (id) SELECT id FROM {table}",
        f"INSERT INTO {fts} (rowid, {cols}) SELECT i.fts_rowid, "
        + ", ".join(f"t.{quote_ident(f)}" for f in fields)
        + f" FROM {table} AS t JOIN {ids} AS i ON i.id = t.id",
        f"CREATE TRIGGER {quote_ident(name + ':fts_ai')} AFTER INSERT ON {table} BEGIN "
        f"INSERT INTO {ids} (id) VALUES (new.id); {insert} END",
        f"CREATE TRIGGER {quote_ident(name + ':fts_au')} AFTER UPDATE OF {cols} ON {table} BEGIN "
        f"{delete} {insert} END",
        f"CREATE TRIGGER {quote_ident(name + ':fts_ad')} AFTER DELETE ON {table} BEGIN "
        f"{delete} DELETE FROM {ids} WHERE id = old.id; END",
    ]


def create_sql_postgres(collection: Collection, fields: list[str]) -> list[str]:
    """PostgreSQL: one GIN index on the document expression, built from the stored rows; kept by
    PostgreSQL on every write (and dropped with the table or a column it reads)."""
    table, fts, _ = (quote_ident(n) for n in _names(collection.name))
    return [f"CREATE INDEX {fts} ON {table} USING gin ({document_postgres(fields)})"]


def document_postgres(fields: list[str], alias: str = "") -> str:
    """The tsvector of `fields` as one document. The list query spells it exactly as the index does
    (column names, order, separators), so PostgreSQL matches through the index when the caller may
    search every searchable field; with some hidden it scans the visible ones."""
    prefix = f"{alias}." if alias else ""
    text = " || ' ' || ".join(f"coalesce({prefix}{quote_ident(f)}, '')" for f in fields)
    return f"to_tsvector('simple'::regconfig, sb_fold({text}))"


def _words(text: str, position: int) -> list[str]:
    words = _WORD_RE.findall(text)
    if not words:
        raise FilterError("@search() needs at least one word", position)
    if len(words) > MAX_WORDS:
        raise FilterError(f"@search() takes at most {MAX_WORDS} words", position)
    return words


def tsquery_postgres(text: str, position: int) -> str:
    """The caller's words as a tsquery: each quoted (words are \\w+, so no tsquery syntax from the
    client), all required (`&`); `word*` is a prefix (`:*`)."""
    words = _words(text, position)
    return " & ".join(f"'{w[:-1]}':*" if w.endswith("*") else f"'{w}'" for w in words)


def match_query(text: str, columns: list[str], position: int) -> str:
    """The caller's words as an FTS5 query over `columns`: every word quoted (no FTS5 syntax from the
    client), all of them required; `word*` is a prefix."""
    words = _words(text, position)
    quoted = " ".join(f'"{w[:-1]}"*' if w.endswith("*") else f'"{w}"' for w in words)
    return "{" + " ".join(columns) + "} : (" + quoted + ")"


def join(
    collection: Collection, hidden: frozenset[str], text: str, alias: str, position: int
) -> tuple[str, list[object], str, str]:
    """(the join of the matches as `alias`, its params, the rank expression — ascending is best first —,
    the condition) for `@search(text)`."""
    fields = searchable(collection)
    if not fields:
        raise FilterError(f"'{collection.name}' has no searchable fields", position)
    visible = [f for f in fields if f not in hidden]
    if not visible:
        raise FilterError("no searchable field of this collection can be searched by this caller", position)
    if dialect.current.get() is dialect.POSTGRESQL:
        return join_postgres(visible, text, alias, position)
    _, fts, ids = (quote_ident(n) for n in _names(collection.name))
    sql = (
        f" LEFT JOIN (SELECT i.id AS id, f.rank AS rank FROM {fts}(?) AS f "
        f"JOIN {ids} AS i ON i.fts_rowid = f.rowid) AS {alias} ON {alias}.id = {ALIAS}.id"
    )
    # `=` (not IS NOT NULL) lets SQLite turn the LEFT JOIN into a join driven by the matches when
    # @search is a top-level condition; negated, the compiler COALESCEs the NULL of a non-match.
    return sql, [match_query(text, visible, position)], f"{alias}.rank", f"{alias}.id = {ALIAS}.id"


def join_postgres(
    visible: list[str], text: str, alias: str, position: int
) -> tuple[str, list[object], str, str]:
    """PostgreSQL: the tsquery once, as a one-row subquery PostgreSQL folds into the condition (so
    the GIN index drives the match); the condition is the document `@@` it."""
    document = document_postgres(visible, ALIAS)
    sql = f" CROSS JOIN (SELECT to_tsquery('simple'::regconfig, sb_fold(?)) AS q) AS {alias}"
    # ts_rank is higher for a better match; negated so that ascending is best first, as FTS5's bm25.
    # As double precision: a keyset cursor carries the value out as text and back as a parameter, and
    # a real (float4) read as a Python float is not equal to itself once bound back.
    return (
        sql,
        [tsquery_postgres(text, position)],
        f"(-ts_rank({document}, {alias}.q)::double precision)",
        f"{document} @@ {alias}.q",
    )
