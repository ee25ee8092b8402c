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
    if dialect.current.get() is dialect.POSTGRESQL:  # no index there (create_sql refuses one)
        return []
    table, fts, ids = _names(collection_name)
    triggers = [f"DROP TRIGGER IF EXISTS {quote_ident(f'{table}:fts_{op}')}" for op in ("ai", "au", "ad")]
    return [*triggers, f"DROP TABLE IF EXISTS {quote_ident(fts)}", f"DROP TABLE IF EXISTS {quote_ident(ids)}"]


def create_sql(collection: Collection) -> list[str]:
    """The index, filled from the stored records, and its triggers (nothing without searchable fields)."""
    fields = searchable(collection)
    if not fields:
        return []
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


def match_query(text: str, columns: list[str], position: int) -> str:
    """The caller's words as an FTS5 query over `columns`: every word quoted (no FTS5 syntax from the
    client), all of them required; `word*` is a prefix."""
    words = _WORD_RE.findall(text)
    if not words:
        raise FilterError("@search() needs at least one word", position)
    if len(words) > MAX_WORDS:
        raise FilterError(f"@search() takes at most {MAX_WORDS} words", position)
    quoted = " ".join(f'"{w[:-1]}"*' if w.endswith("*") else f'"{w}"' for w in words)
    return "{" + " ".join(columns) + "} : (" + quoted + ")"


def join(
    collection: Collection, hidden: frozenset[str], text: str, alias: str, position: int
) -> tuple[str, list[object], str]:
    """(LEFT JOIN of the matches as `alias`, its params, the rank expression) for `@search(text)`."""
    fields = searchable(collection)
    if not fields:
        raise FilterError(f"'{collection.name}' has no searchable fields", position)
    visible = [f for f in fields if f not in hidden]
    if not visible:
        raise FilterError("no searchable field of this collection can be searched by this caller", position)
    _, fts, ids = (quote_ident(n) for n in _names(collection.name))
    sql = (
        f" LEFT JOIN (SELECT i.id AS id, f.rank AS rank FROM {fts}(?) AS f "
        f"JOIN {ids} AS i ON i.fts_rowid = f.rowid) AS {alias} ON {alias}.id = {ALIAS}.id"
    )
    return sql, [match_query(text, visible, position)], f"{alias}.rank"
